package svgchart

import (
	"encoding/xml"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/*.svg from the current output")

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func ramp(n int, step time.Duration, skip map[int]bool, v func(int) float64) []XY {
	var out []XY
	for i := 0; i < n; i++ {
		if skip[i] {
			continue
		}
		out = append(out, XY{T: t0.Add(time.Duration(i) * step), V: v(i)})
	}
	return out
}

func mbit(v float64) string { return fmt.Sprintf("%g Mbit/s", v/1e6) }

func TestGolden(t *testing.T) {
	step := 10 * time.Second
	cases := []struct {
		name  string
		chart Chart
	}{
		{"rate", Chart{
			Title: "Traffic, last hour", Width: 600, Height: 160, From: t0, To: t0.Add(10 * step),
			Limit: 1e6, LimitLabel: "cap 1 Mbit/s", Format: mbit,
			Series: []Series{
				{Name: "up", Color: "#1565c0", Step: step, Points: ramp(10, step, map[int]bool{4: true}, func(i int) float64 { return float64(i) * 1e5 })},
				{Name: "down", Color: "#2e7d32", Step: step, Points: ramp(10, step, nil, func(i int) float64 { return 3e5 })},
			},
		}},
		{"spark", Chart{
			Title: "e1 <script>", Width: 120, Height: 24, From: t0, To: t0.Add(6 * step), Spark: true, Limit: 2e6,
			Series: []Series{{Name: "up", Color: "#1565c0", Step: step, Points: ramp(6, step, nil, func(i int) float64 { return float64(i%3) * 1e6 })}},
		}},
		{"bars", Chart{
			Title: "Alerts per hour", Width: 600, Height: 120, From: t0, To: t0.Add(24 * time.Hour),
			Series: []Series{{Name: "alerts", Color: "#c62828", Step: time.Hour, Bars: true, Points: ramp(24, time.Hour, nil, func(i int) float64 { return float64(i % 5) })}},
		}},
		{"offscale", Chart{Title: "Traffic", From: t0, To: t0.Add(6 * step), Limit: 5e6, LimitLabel: "rate cap 5 Mbit/s", Format: mbit,
			Series: []Series{{Name: "up", Color: "#1565c0", Step: step, Points: ramp(6, step, nil, func(i int) float64 { return float64(i) * 1e4 })}}}},
		{"empty", Chart{Title: "Bytes today", From: t0, To: t0.Add(time.Hour), Limit: 100e6, LimitLabel: "budget 100 MB"}},
		{"single", Chart{Title: "one", From: t0, To: t0.Add(time.Minute),
			Series: []Series{{Name: "x", Color: "red", Step: step, Points: []XY{{t0, 5}}}}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := Render(c.chart)
			// Well-formed XML whatever the input.
			if err := xml.Unmarshal([]byte(got), new(struct{})); err != nil {
				t.Fatalf("not well-formed: %v\n%s", err, got)
			}
			if strings.Contains(got, "<script") {
				t.Fatal("title not escaped")
			}
			if !strings.Contains(got, fmt.Sprintf(`data-points="%d"`, c.chart.Points())) {
				t.Errorf("no data-points=%d", c.chart.Points())
			}
			path := filepath.Join("testdata", c.name+".svg")
			if *update {
				if err := os.WriteFile(path, []byte(got+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if got+"\n" != string(want) {
				t.Errorf("%s differs from the output:\n%s", path, got)
			}
		})
	}
}

func TestGapBreaksLine(t *testing.T) {
	step := 10 * time.Second
	got := Render(Chart{From: t0, To: t0.Add(time.Minute), Series: []Series{{Name: "up", Step: step,
		Points: ramp(6, step, map[int]bool{2: true, 3: true}, func(int) float64 { return 1 })}}})
	i := strings.Index(got, ` d="`)
	d := got[i+4 : i+4+strings.Index(got[i+4:], `"`)]
	if strings.Count(d, "M") != 2 || strings.Count(d, "L") != 2 {
		t.Errorf("path %q: want two pieces around the gap", d)
	}
}

// TestLimitScale: a limit within reach is drawn to scale; one far above
// the points is named, and the points keep the scale.
func TestLimitScale(t *testing.T) {
	step := 10 * time.Second
	for _, c := range []struct {
		peak     float64
		line     bool
		axisText string
	}{{3e5, true, "1 Mbit/s"}, {1e4, false, "0.01 Mbit/s"}, {0, true, "1 Mbit/s"}} {
		var pts []XY
		if c.peak > 0 {
			pts = ramp(3, step, nil, func(i int) float64 { return c.peak * float64(i) / 2 })
		}
		got := Render(Chart{From: t0, To: t0.Add(time.Minute), Limit: 1e6, LimitLabel: "cap", Format: mbit,
			Series: []Series{{Name: "up", Step: step, Points: pts}}})
		if line := strings.Contains(got, `<line class="limit"`); line != c.line {
			t.Errorf("peak %g: limit line drawn %v, want %v", c.peak, line, c.line)
		}
		if !c.line && !strings.Contains(got, "↑ cap") {
			t.Errorf("peak %g: off-scale limit not named", c.peak)
		}
		if !strings.Contains(got, ">"+c.axisText+"<") {
			t.Errorf("peak %g: axis lacks %q:\n%s", c.peak, c.axisText, got)
		}
	}
}

func TestNiceMax(t *testing.T) {
	for in, want := range map[float64]float64{0: 1, 0.3: 0.5, 1: 1, 1.1: 2, 3: 5, 7: 10, 12e6: 20e6, 10.5e6: 20e6} {
		if got := niceMax(in); got != want {
			t.Errorf("niceMax(%g) = %g, want %g", in, got, want)
		}
	}
}

// FuzzRender: whatever the text and values (titles and legends can carry
// experiment-supplied names, invalid UTF-8, control characters), the
// output is one well-formed SVG element.
func FuzzRender(f *testing.F) {
	f.Add("Traffic", "up", "cap", 1.0, 2.0, int64(10), false, false)
	f.Add("<b>&\"'", "\x00\x1b]0;x\a", "↑", math.NaN(), math.Inf(1), int64(0), true, true)
	f.Fuzz(func(t *testing.T, title, name, label string, v1, v2 float64, stepSec int64, spark, bars bool) {
		step := time.Duration(stepSec%3600) * time.Second
		got := Render(Chart{Title: title, From: t0, To: t0.Add(time.Hour), Limit: v2, LimitLabel: label, Spark: spark,
			Series: []Series{{Name: name, Color: name, Step: step, Bars: bars, Points: []XY{{t0, v1}, {t0.Add(time.Minute), v2}}}}})
		if err := xml.Unmarshal([]byte(got), new(struct{})); err != nil {
			t.Fatalf("not well-formed: %v\n%s", err, got)
		}
	})
}
