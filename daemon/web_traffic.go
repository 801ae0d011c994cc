package daemon

import (
	"context"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"os"
	"time"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/alertsum"
	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/svgchart"
	"github.com/arkgw/arkgw/traffic"
)

// pathTraffic is the node's total traffic (and alerts per hour);
// pathExperiments/ID/traffic is one experiment's.
const pathTraffic = "/api/v1/traffic"

const (
	colorUp    = "#1565c0"
	colorDown  = "#2e7d32"
	colorToday = "#6a1b9a"
	colorAlert = "#c62828"
)

type cpuSample struct {
	at   time.Time
	secs float64
	pct  float64 // of one core over the last interval; -1 = not yet known
}

// sampleCounters is the sampler's source: the byte counters (bytes today)
// of every running experiment. It also keeps each one's CPU use over the
// last interval for the experiment page.
func (d *Daemon) sampleCounters() map[string]traffic.Counters {
	d.mgr.mu.Lock()
	ids := make([]string, 0, len(d.mgr.running))
	for id := range d.mgr.running {
		ids = append(ids, id)
	}
	d.mgr.mu.Unlock()
	now := d.mgr.clock.Now()
	out := make(map[string]traffic.Counters, len(ids))
	d.cpuMu.Lock()
	defer d.cpuMu.Unlock()
	if d.cpu == nil {
		d.cpu = map[string]cpuSample{}
	}
	for _, id := range ids {
		st, ok := d.mgr.Status(id)
		if !ok {
			continue
		}
		out[id] = traffic.Counters{Up: st.BytesUpToday, Down: st.BytesDownToday}
		s := cpuSample{at: now, secs: st.CPUSeconds, pct: -1}
		if prev, ok := d.cpu[id]; ok && now.After(prev.at) && st.CPUSeconds >= prev.secs {
			s.pct = (st.CPUSeconds - prev.secs) / now.Sub(prev.at).Seconds() * 100
		}
		d.cpu[id] = s
	}
	for id := range d.cpu {
		if _, ok := out[id]; !ok {
			delete(d.cpu, id)
		}
	}
	return out
}

// cpuText is the experiment's CPU use over the last sample interval against
// its limit.
func (d *Daemon) cpuText(id string, eff *configs.Effective) string {
	d.cpuMu.Lock()
	s, ok := d.cpu[id]
	d.cpuMu.Unlock()
	text := "measured at the next sample"
	if ok && s.pct >= 0 {
		text = fmt.Sprintf("%.0f%% of a core", s.pct)
	}
	if eff != nil && eff.Limits.CPUPercent > 0 {
		text += fmt.Sprintf(" (limit %d%%, class %s)", eff.Limits.CPUPercent, eff.Limits.CPUClass)
	}
	return text
}

func rateText(v float64) string {
	switch {
	case v >= 1e9:
		return fmt.Sprintf("%.3g Gbit/s", v/1e9)
	case v >= 1e6:
		return fmt.Sprintf("%.3g Mbit/s", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.3g kbit/s", v/1e3)
	}
	return fmt.Sprintf("%.3g bit/s", v)
}

func spanText(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		return fmt.Sprintf("last %d days", int(d/(24*time.Hour)))
	case d >= time.Hour && d%time.Hour == 0:
		if d == time.Hour {
			return "last hour"
		}
		return fmt.Sprintf("last %d hours", int(d/time.Hour))
	}
	return "last " + d.String()
}

func (d *Daemon) rateSeries(id string, r traffic.Range, now time.Time) (pts []traffic.Point, up, down svgchart.Series) {
	pts = d.traffic.Series(id, r, now)
	up = svgchart.Series{Name: "up", Color: colorUp}
	down = svgchart.Series{Name: "down", Color: colorDown}
	for _, p := range pts {
		up.Points = append(up.Points, svgchart.XY{T: p.Start, V: p.UpBps()})
		down.Points = append(down.Points, svgchart.XY{T: p.Start, V: p.DownBps()})
		up.Step, down.Step = p.Dur, p.Dur
	}
	return pts, up, down
}

// rateChart draws bit/s up and down over range r against the rate cap.
func (d *Daemon) rateChart(id, title string, r traffic.Range, capBps float64, now time.Time) template.HTML {
	_, up, down := d.rateSeries(id, r, now)
	span := d.traffic.Span(r)
	c := svgchart.Chart{Title: title + ", " + spanText(span) + " (bit/s)", Width: 420, Height: 160,
		From: now.Add(-span), To: now, Series: []svgchart.Series{up, down}, Format: rateText, Limit: capBps}
	if capBps > 0 {
		c.LimitLabel = "rate cap " + rateText(capBps)
	}
	return template.HTML(svgchart.Render(c))
}

// todayChart draws bytes today (up + down) over the last hour against the
// daily budget.
func (d *Daemon) todayChart(id string, budget float64, now time.Time) template.HTML {
	s := svgchart.Series{Name: "bytes today", Color: colorToday}
	for _, p := range d.traffic.Series(id, traffic.Hour, now) {
		s.Points = append(s.Points, svgchart.XY{T: p.Start, V: float64(p.Today)})
		s.Step = p.Dur
	}
	span := d.traffic.Span(traffic.Hour)
	c := svgchart.Chart{Title: "Bytes today (UTC day), " + spanText(span), Width: 420, Height: 150,
		From: now.Add(-span), To: now, Series: []svgchart.Series{s}, Limit: budget,
		Format: func(v float64) string { return bytesText(uint64(v)) }}
	if budget > 0 {
		c.LimitLabel = "daily budget " + bytesText(uint64(budget))
	}
	return template.HTML(svgchart.Render(c))
}

// sparkChart is the small up+down graph of an experiment's row, scaled to
// its own peak (the row states the cap).
func (d *Daemon) sparkChart(id string, now time.Time) template.HTML {
	_, up, down := d.rateSeries(id, traffic.Hour, now)
	up, down = thin(up, sparkPoints), thin(down, sparkPoints)
	span := d.traffic.Span(traffic.Hour)
	return template.HTML(svgchart.Render(svgchart.Chart{Title: id + " traffic, " + spanText(span), Width: 160, Height: 32, Spark: true,
		From: now.Add(-span), To: now, Series: []svgchart.Series{up, down}}))
}

// sparkPoints bounds the points of a row's graph: 160 px wide, a point per
// minute of the hour is all it can show (and 20 rows of 360-point paths
// made the front page 185 kB).
const sparkPoints = 60

// thin merges runs of consecutive points into one with their mean, so that
// s has at most max points; gaps (points further apart than the step)
// end a run.
func thin(s svgchart.Series, max int) svgchart.Series {
	if len(s.Points) <= max || s.Step <= 0 {
		return s
	}
	k := (len(s.Points) + max - 1) / max
	out := s
	out.Points = nil
	out.Step = s.Step * time.Duration(k)
	for i := 0; i < len(s.Points); {
		j, sum := i, 0.0
		for j < len(s.Points) && j-i < k && (j == i || s.Points[j].T.Sub(s.Points[j-1].T) <= s.Step) {
			sum += s.Points[j].V
			j++
		}
		out.Points = append(out.Points, svgchart.XY{T: s.Points[i].T, V: sum / float64(j-i)})
		i = j
	}
	return out
}

// alertsHours is how many hours the front page's alert chart shows.
const alertsHours = 24

func (d *Daemon) alertsChart(now time.Time) template.HTML {
	s := svgchart.Series{Name: "alerts", Color: colorAlert, Bars: true, Step: time.Hour}
	for _, h := range d.alertSum.PerHour(now, alertsHours) {
		if h.Count > 0 {
			s.Points = append(s.Points, svgchart.XY{T: h.Start, V: float64(h.Count)})
		}
	}
	to := now.UTC().Truncate(time.Hour).Add(time.Hour)
	return template.HTML(svgchart.Render(svgchart.Chart{Title: "Alerts per hour, last 24 hours", Width: 420, Height: 130,
		From: to.Add(-alertsHours * time.Hour), To: to, Series: []svgchart.Series{s},
		Format: func(v float64) string { return fmt.Sprintf("%g", v) }}))
}

// TrafficPoint is one interval of GET .../traffic.
type TrafficPoint struct {
	Start      time.Time `json:"t"`
	Seconds    float64   `json:"seconds"`
	UpBytes    uint64    `json:"up_bytes"`
	DownBytes  uint64    `json:"down_bytes"`
	UpBps      float64   `json:"up_bps"`
	DownBps    float64   `json:"down_bps"`
	TodayBytes uint64    `json:"today_bytes"`
}

// TrafficResponse is the body of GET /api/v1/experiments/ID/traffic and
// GET /api/v1/traffic (the node's total, with alerts per hour).
type TrafficResponse struct {
	Experiment      string               `json:"experiment,omitempty"`
	Range           string               `json:"range"`
	IntervalSeconds float64              `json:"interval_seconds"`
	From            time.Time            `json:"from"`
	To              time.Time            `json:"to"`
	CapBps          float64              `json:"cap_bps,omitempty"`
	BudgetBytes     uint64               `json:"budget_bytes,omitempty"`
	Points          []TrafficPoint       `json:"points"`
	AlertsPerHour   []alertsum.HourCount `json:"alerts_per_hour,omitempty"`
}

func (d *Daemon) trafficResponse(id string, r traffic.Range, now time.Time) TrafficResponse {
	span := d.traffic.Span(r)
	res := TrafficResponse{Experiment: id, Range: r.String(), From: now.Add(-span).UTC(), To: now.UTC(), Points: []TrafficPoint{}}
	res.IntervalSeconds = d.traffic.Interval().Seconds()
	if r == traffic.Week {
		res.IntervalSeconds *= traffic.CoarseFactor
	}
	for _, p := range d.traffic.Series(id, r, now) {
		res.Points = append(res.Points, TrafficPoint{Start: p.Start, Seconds: p.Dur.Seconds(), UpBytes: p.Up, DownBytes: p.Down,
			UpBps: p.UpBps(), DownBps: p.DownBps(), TodayBytes: p.Today})
	}
	return res
}

func (d *Daemon) handleTraffic(w http.ResponseWriter, r *http.Request) {
	rg, err := traffic.ParseRange(r.URL.Query().Get("range"))
	if err != nil {
		writeErr(w, http.StatusBadRequest, err)
		return
	}
	x, err := d.mgr.store.Get(r.PathValue("id"))
	if err != nil {
		writeErr(w, http.StatusNotFound, fmt.Errorf("experiment %q: %w", r.PathValue("id"), err))
		return
	}
	res := d.trafficResponse(x.ID, rg, d.mgr.clock.Now())
	if st, ok := d.mgr.Status(x.ID); ok {
		res.CapBps, res.BudgetBytes = st.RateMbps*1e6, st.BudgetBytes
	} else if eff, _, err := d.effectiveOf(x); err == nil {
		res.CapBps, res.BudgetBytes = eff.Limits.MaxMbps*1e6, uint64(eff.Limits.MaxMBPerDay)*1e6
	}
	writeJSON(w, http.StatusOK, res)
}

func (d *Daemon) handleNodeTraffic(w http.ResponseWriter, r *http.Request) {
	rg, err := traffic.ParseRange(r.URL.Query().Get("range"))
	if err != nil {
		writeErr(w, http.StatusBadRequest, err)
		return
	}
	now := d.mgr.clock.Now()
	res := d.trafficResponse(traffic.NodeID, rg, now)
	res.Experiment = ""
	hours := alertsHours
	if rg == traffic.Week {
		hours = alertsum.Hours
	}
	res.AlertsPerHour = d.alertSum.PerHour(now, hours)
	writeJSON(w, http.StatusOK, res)
}

// seedAlerts feeds the alert summary with what the alerts file holds of
// the week before start (once; alerts from start on arrive through the
// sink, so they are not read twice). It runs beside the daemon: a week of
// a flood's alerts can take seconds to read on a small node.
func (d *Daemon) seedAlerts(ctx context.Context, start time.Time) error {
	err := alert.ReadFile(d.alertsPath, start.Add(-alertsum.Hours*time.Hour), func(r alert.Record, _ []byte) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if r.Time.Before(start) {
			d.alertSum.Add(r)
		}
		return nil
	})
	if ctx.Err() != nil {
		return nil
	}
	if errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	return err
}
