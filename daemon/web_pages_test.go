package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/store"
	"github.com/arkgw/arkgw/svgchart"
	"github.com/arkgw/arkgw/traffic"
)

func getBody(t *testing.T, srv *httptest.Server, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b)
}

var (
	pointsRE    = regexp.MustCompile(`data-points="(\d+)"`)
	dataLabelRE = regexp.MustCompile(` data-label="[^"]*"`)
)

func TestExperimentPageAndTraffic(t *testing.T) {
	d, _ := testDaemon(t, "")
	x, err := d.mgr.Submit([]byte(goodManifest), "m.toml", "/")
	if err != nil {
		t.Fatal(err)
	}
	d.mgr.tick(context.Background())
	waitState(t, d.mgr, x.ID, store.Running)
	// The experiment's own output is never on the page.
	dir := d.mgr.ExperimentDir(x.ID)
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "stdout"), []byte("SECRET-STDOUT"), 0o644)
	os.WriteFile(filepath.Join(dir, "stderr"), []byte("SECRET-STDERR"), 0o644)

	// Two samples: the sampler's source reads the running experiment.
	c := d.sampleCounters()
	if got := c[x.ID]; got != (traffic.Counters{Up: 100, Down: 200}) {
		t.Fatalf("sampled counters %+v", c)
	}
	now := time.Now()
	d.traffic.Record(now.Add(-2*time.Second), map[string]traffic.Counters{x.ID: {Up: 0, Down: 0}})
	d.traffic.Record(now.Add(-time.Second), map[string]traffic.Counters{x.ID: {Up: 1000, Down: 5000}})

	for i := 0; i < 4; i++ {
		d.alertSum.Add(alert.Record{Time: now.Add(time.Duration(i) * time.Second), Experiment: x.ID, Kind: alert.KindDNS, Rule: "dns-refused", Name: "blocked.test."})
	}
	d.alertSum.Add(alert.Record{Time: now, Experiment: x.ID, Kind: alert.KindPacket, Rule: "tcp-dst", Proto: "tcp", Dst: "203.0.113.5", DstPort: 25, Packets: 7})
	d.alertSum.Add(alert.Record{Time: now, Experiment: "other", Kind: alert.KindPacket, Rule: "udp-dst", Proto: "udp", Dst: "203.0.113.9", DstPort: 53})
	d.flows = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("experiment") != x.ID {
			t.Errorf("flow query %q", r.URL.RawQuery)
		}
		io.WriteString(w, `{"flows":[
			{"experiment":"`+x.ID+`","proto":6,"dst":"198.51.100.7","dport":80,"start":"2026-11-25T14:00:00Z","end":"2026-11-25T14:00:05Z","bytes_out":1000,"bytes_in":9000},
			{"experiment":"`+x.ID+`","proto":6,"dst":"198.51.100.7","dport":80,"start":"2026-11-25T14:01:00Z","end":"2026-11-25T14:01:05Z","bytes_out":1000,"bytes_in":9000},
			{"experiment":"`+x.ID+`","proto":1,"dst":"198.51.100.8","start":"2026-11-25T14:02:00Z","end":"2026-11-25T14:02:01Z","bytes_out":84,"bytes_in":84}]}`)
	})
	srv := httptest.NewServer(d.webHandler())
	defer srv.Close()

	code, page := getBody(t, srv, "/experiments/"+x.ID)
	page = dataLabelRE.ReplaceAllString(page, "")
	if code != 200 {
		t.Fatalf("experiment page: %d\n%s", code, page)
	}
	for _, want := range []string{
		"ping survey", `mailto:researcher@example.edu`, "ark-2026.1", // title, contact, container
		"tcp:           198.51.100.0/24 ports 80", "icmp:          echo-request", // the text arkgw check prints
		`title = &#34;ping survey&#34;`, // declared: the manifest
		`<td>dns/dns-refused</td><td>dns blocked.test.</td><td class="num count">4</td>`, // aggregated
		`<td>packet/tcp-dst</td><td>tcp 203.0.113.5:25</td><td class="num count">7</td>`,
		`<td>198.51.100.7</td><td class="num">80</td><td>tcp</td><td class="num">20.0 kB</td><td>2026-11-25 14:01:05</td>`,
		`href="/stop/` + x.ID + `"`, `id="cpu"`, `id="memory"`, `<pre id="declared">experiment:    ` + x.ID,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("experiment page lacks %q", want)
		}
	}
	if strings.Contains(page, "SECRET-") {
		t.Error("the experiment page shows the experiment's output")
	}
	if strings.Contains(page, "udp-dst") {
		t.Error("another experiment's alert on this page")
	}
	// Its graphs have points.
	if m := pointsRE.FindStringSubmatch(page[strings.Index(page, `id="rate-hour"`):]); m == nil || m[1] == "0" {
		t.Errorf("hour graph without points: %v", m)
	}

	code, body := getBody(t, srv, pathExperiments+"/"+x.ID+"/traffic?range=1h")
	var tr TrafficResponse
	if err := json.Unmarshal([]byte(body), &tr); code != 200 || err != nil {
		t.Fatalf("traffic JSON: %d %v %s", code, err, body)
	}
	if tr.Range != "1h" || tr.CapBps != 1e6 || len(tr.Points) != 2 || tr.Points[1].UpBytes != 1000 || tr.Points[1].UpBps != 8000 || tr.Points[1].DownBps != 40000 || tr.IntervalSeconds != 1 {
		t.Errorf("traffic JSON %+v", tr)
	}
	if code, _ := getBody(t, srv, pathExperiments+"/"+x.ID+"/traffic?range=1y"); code != http.StatusBadRequest {
		t.Errorf("range=1y: %d", code)
	}
	if code, _ := getBody(t, srv, pathExperiments+"/nosuch/traffic"); code != http.StatusNotFound {
		t.Errorf("unknown experiment: %d", code)
	}
	code, body = getBody(t, srv, pathTraffic+"?range=7d")
	if err := json.Unmarshal([]byte(body), &tr); code != 200 || err != nil || len(tr.Points) != 1 || tr.Points[0].DownBytes != 5000 || len(tr.AlertsPerHour) == 0 {
		t.Errorf("node traffic JSON %d %+v", code, tr)
	}

	// The front page: node graphs, a spark per running row, alerts aggregated.
	_, front := getBody(t, srv, "/")
	front = dataLabelRE.ReplaceAllString(front, "")
	row := front[strings.Index(front, `id="exp-`+x.ID+`"`):]
	if m := pointsRE.FindStringSubmatch(row); m == nil || m[1] != "4" {
		t.Errorf("row graph points %v", m)
	}
	if m := pointsRE.FindStringSubmatch(front[strings.Index(front, `id="node-traffic"`):]); m == nil || m[1] == "0" {
		t.Errorf("node graph points %v", m)
	}
	if strings.Count(front, `class="alert-group"`) != 3 || !strings.Contains(front, `<td>dns blocked.test.</td><td class="num count">4</td>`) {
		t.Errorf("front page alerts not aggregated:\n%s", front)
	}
	if m := pointsRE.FindStringSubmatch(front[strings.Index(front, `id="alerts-per-hour"`):]); m == nil || m[1] == "0" {
		t.Errorf("alerts per hour %v", m)
	}
}

func TestExperimentPageShowsWhyStartFailed(t *testing.T) {
	d, r := testDaemon(t, "")
	r.startErr = errors.New("container ark-2026.1 is not installed; import it with arkgw container import")
	x, err := d.mgr.Submit([]byte(goodManifest), "m.toml", "/")
	if err != nil {
		t.Fatal(err)
	}
	d.mgr.tick(context.Background())
	waitState(t, d.mgr, x.ID, store.Completed)
	srv := httptest.NewServer(d.webHandler())
	defer srv.Close()
	_, page := getBody(t, srv, "/experiments/"+x.ID)
	for _, want := range []string{store.ReasonRefused, "is not installed; import it", "tcp:           198.51.100.0/24 ports 80"} {
		if !strings.Contains(page, want) {
			t.Errorf("failed start page lacks %q:\n%s", want, page)
		}
	}
	if strings.Contains(page, `href="/stop/`) {
		t.Error("a completed experiment offers Stop")
	}
	if code, _ := getBody(t, srv, "/experiments/nosuch"); code != http.StatusNotFound {
		t.Errorf("unknown experiment page: %d", code)
	}
}

func TestContainerSHA(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "containers"), 0o755)
	sum := strings.Repeat("ab", 32)
	os.WriteFile(filepath.Join(dir, "containers", "ark-1.sha256"), []byte(sum+"  ark-1.sqfs\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "containers", "ark-2.sha256"), []byte("nothex\n"), 0o644)
	for v, want := range map[string]string{"ark-1": sum, "ark-2": "", "ark-3": "", "../x": ""} {
		if got := containerSHA(dir, v); got != want {
			t.Errorf("containerSHA(%q) = %q", v, got)
		}
	}
}

// TestSeedAlertsReadsTheWeekBeforeStart: at start the summary gets the
// alerts file's last week; records from the start on come through the
// sink and are not counted twice.
func TestSeedAlertsReadsTheWeekBeforeStart(t *testing.T) {
	d, _ := testDaemon(t, "")
	start := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	var lines []byte
	for _, r := range []alert.Record{
		{Time: start.Add(-8 * 24 * time.Hour), Experiment: "old", Kind: alert.KindDNS, Rule: "dns", Name: "a."},
		{Time: start.Add(-time.Hour), Experiment: "e1", Kind: alert.KindDNS, Rule: "dns", Name: "a."},
		{Time: start.Add(-time.Minute), Experiment: "e1", Kind: alert.KindDNS, Rule: "dns", Name: "a."},
		{Time: start.Add(time.Second), Experiment: "e1", Kind: alert.KindDNS, Rule: "dns", Name: "a."},
	} {
		b, err := alert.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, b...)
		if lines[len(lines)-1] != '\n' {
			lines = append(lines, '\n')
		}
	}
	if err := os.WriteFile(d.alertsPath, lines, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := d.seedAlerts(context.Background(), start); err != nil {
		t.Fatal(err)
	}
	gs := d.alertSum.Groups("", 0)
	if len(gs) != 1 || gs[0].Experiment != "e1" || gs[0].Count != 2 {
		t.Fatalf("seeded groups %+v", gs)
	}
	// A node without an alerts file yet is no error.
	d.alertsPath = filepath.Join(t.TempDir(), "none.jsonl")
	if err := d.seedAlerts(context.Background(), start); err != nil {
		t.Fatal(err)
	}
}

// TestDeclaredText: the declaration in arkgw check's words, untrimmed by a
// narrower node policy; limits it leaves out are the node's.
func TestDeclaredText(t *testing.T) {
	pol := testPolicy(t, "[permit]\ntcp = [\"198.51.100.0/25:80\"]\nicmp = [\"echo-request\"]\n[limits]\nmax_mbps = 5\n")
	man := strings.Replace(goodManifest, "max_mbps = 1", "max_mbps = 1000\nprotocols = [47]\nudp = [\"203.0.113.0/24:53\"]", 1)
	got, err := declaredText(pol.Node, "x9", "m.toml", man, "/")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"experiment:    x9 \"ping survey\"", "tcp:           198.51.100.0/24 ports 80", "udp:           203.0.113.0/24 ports 53",
		"protocols:     47", "limits:        1000 Mbit/s", "ram 64 MB", "icmp:          echo-request"} {
		if !strings.Contains(got, want) {
			t.Errorf("declared lacks %q:\n%s", want, got)
		}
	}
	// In force, the same manifest is trimmed (and refused).
	eff, conflicts, err := pol.Admit([]byte(man), "m.toml", "/", "x9", nil)
	if err != nil || len(conflicts) == 0 || eff == nil {
		t.Fatalf("admit under the narrow node: %v %v", conflicts, err)
	}
	if _, err := declaredText(pol.Node, "x9", "m.toml", "title = [", "/"); err == nil {
		t.Error("an unreadable manifest gave a declaration")
	}
}

func TestThinKeepsMeansAndGaps(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	s := svgchart.Series{Step: 10 * time.Second}
	for i := 0; i < 360; i++ {
		if i >= 100 && i < 110 {
			continue // a gap
		}
		s.Points = append(s.Points, svgchart.XY{T: t0.Add(time.Duration(i) * 10 * time.Second), V: float64(i % 6)})
	}
	got := thin(s, 60)
	if len(got.Points) > 62 || len(got.Points) < 55 || got.Step != time.Minute {
		t.Fatalf("thinned to %d points, step %v", len(got.Points), got.Step)
	}
	if got.Points[0].V != 2.5 || !got.Points[0].T.Equal(t0) {
		t.Errorf("first point %+v, want the mean 2.5 at the start", got.Points[0])
	}
	for _, p := range got.Points {
		if off := p.T.Sub(t0); off > 990*time.Second && off < 1100*time.Second {
			t.Errorf("a point inside the gap: %v", off)
		}
	}
	if small := thin(svgchart.Series{Points: s.Points[:10], Step: s.Step}, 60); len(small.Points) != 10 {
		t.Errorf("a short series changed: %d", len(small.Points))
	}
}
