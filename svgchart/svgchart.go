// Package svgchart draws the owner page's small time-series charts as
// inline SVG text, on the server: the page needs no script and no asset.
// It knows nothing of experiments or bytes: a chart is series of (time,
// value) points, an optional limit line (a rate cap, a daily budget) and a
// function that writes a value for the axis.
//
// The output is deterministic (same chart, same bytes), which the golden
// files in testdata/ check. Text in it (titles, labels) is XML-escaped.
package svgchart

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// XY is one point.
type XY struct {
	T time.Time
	V float64
}

// Series is one line (or bars) of a chart.
type Series struct {
	Name   string
	Color  string        // an SVG color, e.g. "#1565c0"
	Points []XY          // in time order
	Step   time.Duration // the points' spacing: a larger gap breaks the line
	Bars   bool          // draw bars of width Step instead of a line
}

// Chart is what to draw.
type Chart struct {
	Title         string // accessible name (<title>) and heading inside the chart
	Width, Height int    // view box; the SVG scales to its container's width
	From, To      time.Time
	Series        []Series
	// Limit is a horizontal dashed line (0 = none). When the points stay
	// below a quarter of it, the scale follows the points and the limit is
	// only named at the top ("↑ rate cap 5 Mbit/s"): a line near zero
	// under a far-away cap would show nothing.
	Limit      float64
	LimitLabel string
	Format     func(float64) string // axis labels; nil = %g
	// Spark draws only the lines: no axes, labels or legend (table rows).
	Spark bool
}

// Points counts the points of all series (the page marks charts with it).
func (c Chart) Points() int {
	n := 0
	for _, s := range c.Series {
		n += len(s.Points)
	}
	return n
}

var escaper = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&#39;")

// esc makes s safe as XML text or attribute: invalid UTF-8 and characters
// XML cannot carry (controls, U+FFFE, U+FFFF) become U+FFFD.
func esc(s string) string {
	s = strings.Map(func(r rune) rune {
		if (r < 0x20 && r != '\t') || r == 0xfffe || r == 0xffff {
			return '\ufffd'
		}
		return r
	}, strings.ToValidUTF8(s, "\ufffd"))
	return escaper.Replace(s)
}

// f writes a coordinate with one decimal, without trailing zeros.
func f(x float64) string {
	s := fmt.Sprintf("%.1f", x)
	s = strings.TrimSuffix(s, ".0")
	if s == "-0" {
		s = "0"
	}
	return s
}

// niceMax rounds v up to 1, 2 or 5 times a power of ten.
func niceMax(v float64) float64 {
	if v <= 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

// Render returns the chart as one <svg> element.
func Render(c Chart) string {
	if c.Width <= 0 {
		c.Width = 600
	}
	if c.Height <= 0 {
		c.Height = 160
	}
	if c.Format == nil {
		c.Format = func(v float64) string { return fmt.Sprintf("%g", v) }
	}
	if !c.To.After(c.From) {
		c.To = c.From.Add(time.Hour)
	}
	// Plot area.
	left, right, top, bottom := 64.0, 8.0, 24.0, 20.0
	if c.Spark {
		left, right, top, bottom = 1, 1, 2, 1
	}
	pw := float64(c.Width) - left - right
	ph := float64(c.Height) - top - bottom

	var vmax float64
	for _, s := range c.Series {
		for _, p := range s.Points {
			if p.V > vmax {
				vmax = p.V
			}
		}
	}
	limitOn := c.Limit > 0 && (vmax == 0 || vmax*4 >= c.Limit)
	if limitOn {
		vmax = math.Max(vmax, c.Limit)
	}
	ymax := niceMax(vmax * 1.05)
	span := c.To.Sub(c.From).Seconds()
	x := func(t time.Time) float64 {
		v := left + t.Sub(c.From).Seconds()/span*pw
		return math.Max(left, math.Min(left+pw, v))
	}
	y := func(v float64) float64 { return top + ph - math.Max(0, v)/ymax*ph }

	b := &strings.Builder{}
	fmt.Fprintf(b, `<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 %d %d" width="100%%" role="img" data-points="%d" font-family="system-ui,sans-serif" font-size="12">`,
		c.Width, c.Height, c.Points())
	fmt.Fprintf(b, `<title>%s</title>`, esc(c.Title))
	if !c.Spark {
		fmt.Fprintf(b, `<text x="%s" y="13" font-weight="bold">%s</text>`, f(left), esc(c.Title))
		// Legend, right-aligned on the title line.
		lx := float64(c.Width) - right
		for i := len(c.Series) - 1; i >= 0; i-- {
			s := c.Series[i]
			fmt.Fprintf(b, `<text x="%s" y="13" text-anchor="end" fill="%s">■ %s</text>`, f(lx), esc(s.Color), esc(s.Name))
			lx -= float64(len([]rune(s.Name)))*6.8 + 24
		}
		// Grid and y labels at 0, half and max.
		for _, v := range []float64{0, ymax / 2, ymax} {
			fmt.Fprintf(b, `<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="#ddd"/>`, f(left), f(y(v)), f(left+pw), f(y(v)))
			fmt.Fprintf(b, `<text x="%s" y="%s" text-anchor="end">%s</text>`, f(left-4), f(y(v)+4), esc(c.Format(v)))
		}
		// x labels: start, middle, end.
		layout := "15:04"
		if span > 24*3600 {
			layout = "Jan 2"
		}
		for i, t := range []time.Time{c.From, c.From.Add(c.To.Sub(c.From) / 2), c.To} {
			anchor := [...]string{"start", "middle", "end"}[i]
			fmt.Fprintf(b, `<text x="%s" y="%d" text-anchor="%s" fill="#555">%s</text>`, f(x(t)), c.Height-5, anchor, t.UTC().Format(layout))
		}
	} else {
		fmt.Fprintf(b, `<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="#ddd"/>`, f(left), f(y(0)), f(left+pw), f(y(0)))
	}
	if c.Limit > 0 && !limitOn {
		if !c.Spark && c.LimitLabel != "" {
			fmt.Fprintf(b, `<text class="limit" x="%s" y="%s" fill="#c62828">↑ %s</text>`, f(left+4), f(top+10), esc(c.LimitLabel))
		}
	} else if c.Limit > 0 {
		fmt.Fprintf(b, `<line class="limit" x1="%s" y1="%s" x2="%s" y2="%s" stroke="#c62828" stroke-dasharray="4 3"/>`, f(left), f(y(c.Limit)), f(left+pw), f(y(c.Limit)))
		if !c.Spark && c.LimitLabel != "" {
			fmt.Fprintf(b, `<text x="%s" y="%s" fill="#c62828">%s</text>`, f(left+4), f(y(c.Limit)-3), esc(c.LimitLabel))
		}
	}
	for _, s := range c.Series {
		if len(s.Points) == 0 {
			continue
		}
		if s.Bars {
			fmt.Fprintf(b, `<g class="series" data-name="%s" data-points="%d" fill="%s">`, esc(s.Name), len(s.Points), esc(s.Color))
			for _, p := range s.Points {
				x0, x1 := x(p.T), x(p.T.Add(s.Step))
				w := math.Max(1, x1-x0-1)
				fmt.Fprintf(b, `<rect x="%s" y="%s" width="%s" height="%s"/>`, f(x0), f(y(p.V)), f(w), f(y(0)-y(p.V)))
			}
			b.WriteString(`</g>`)
			continue
		}
		d := &strings.Builder{}
		var prev time.Time
		for i, p := range s.Points {
			cmd := "L"
			if i == 0 || (s.Step > 0 && p.T.Sub(prev) > s.Step*3/2) {
				cmd = "M"
			}
			prev = p.T
			// A point stands for its interval: draw it at the interval's end.
			px := x(p.T.Add(s.Step))
			if d.Len() > 0 {
				d.WriteByte(' ')
			}
			fmt.Fprintf(d, "%s%s %s", cmd, f(px), f(y(p.V)))
		}
		fmt.Fprintf(b, `<path class="series" data-name="%s" data-points="%d" d="%s" fill="none" stroke="%s" stroke-width="1.5" stroke-linejoin="round"/>`,
			esc(s.Name), len(s.Points), d.String(), esc(s.Color))
		if len(s.Points) == 1 {
			// A lone point would be an invisible path: mark it.
			p := s.Points[0]
			fmt.Fprintf(b, `<circle cx="%s" cy="%s" r="2" fill="%s"/>`, f(x(p.T.Add(s.Step))), f(y(p.V)), esc(s.Color))
		}
	}
	if c.Points() == 0 && !c.Spark {
		fmt.Fprintf(b, `<text x="%s" y="%s" text-anchor="middle" fill="#777">no data yet</text>`, f(left+pw/2), f(top+ph/2))
	}
	b.WriteString(`</svg>`)
	return b.String()
}
