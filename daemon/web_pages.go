package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/alertsum"
	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/flowlog"
	"github.com/arkgw/arkgw/store"
	"github.com/arkgw/arkgw/traffic"
)

type pageRow struct {
	ID, Title                        string
	Experimenters                    []store.Contact
	Start, Started, Ended, Remaining string
	Today, Budget, Rate              string
	Alerts                           uint64
	Reason, Detail                   string
	Spark                            template.HTML
}

// alertRow is one aggregated alert line: (experiment, rule, destination).
type alertRow struct {
	Experiment, Rule, Destination, First, Last, Message string
	Count                                               uint64
}

func alertRows(gs []alertsum.Group) []alertRow {
	out := make([]alertRow, 0, len(gs))
	for _, g := range gs {
		out = append(out, alertRow{Experiment: g.Experiment, Rule: g.Rule, Destination: g.Destination,
			First: stampSec(g.First), Last: stampSec(g.Last), Message: g.Message, Count: g.Count})
	}
	return out
}

// pageAlerts is how many alert groups a page lists.
const pageAlerts = 50

func (d *Daemon) handlePage(w http.ResponseWriter, r *http.Request) {
	views, err := d.views()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	now := d.mgr.clock.Now()
	p, _ := d.auth.principal(r)
	paused, _ := d.mgr.store.Paused()
	data := struct {
		Node, Now, CSRF             string
		Login, Paused               bool
		Running, Planned, Completed []pageRow
		Alerts                      []alertRow
		NodeTraffic, AlertsPerHour  template.HTML
		HasFlows                    bool
	}{Node: d.mgr.Policy().NodeName(), Now: now.UTC().Format("2006-01-02 15:04 UTC"), CSRF: d.auth.csrf(p),
		Login: d.auth.passwordHash != nil, Paused: paused, HasFlows: d.flows != nil}
	for _, v := range views {
		row := pageRow{
			ID: v.ID, Title: v.Title, Experimenters: v.Experimenters, Alerts: v.Alerts,
			Start: stamp(v.Start), Started: stamp(v.Started), Ended: stamp(v.Ended),
			Reason: v.Reason, Detail: v.Detail, Today: bytesText(v.BytesUp + v.BytesDown),
		}
		if v.Live != nil {
			row.Today = bytesText(v.Live.BytesUpToday + v.Live.BytesDownToday)
			if v.Live.BudgetBytes > 0 {
				row.Budget = bytesText(v.Live.BudgetBytes)
			}
			if v.Live.RateMbps > 0 {
				row.Rate = fmt.Sprintf("%.3g Mbit/s", v.Live.RateMbps)
			}
		}
		if !v.Deadline.IsZero() {
			row.Remaining = v.Deadline.Sub(now).Truncate(time.Minute).String()
		}
		switch v.State {
		case store.Running:
			row.Spark = d.sparkChart(v.ID, now)
			data.Running = append(data.Running, row)
		case store.Planned:
			data.Planned = append(data.Planned, row)
		default:
			data.Completed = append(data.Completed, row)
		}
	}
	data.NodeTraffic = d.rateChart(traffic.NodeID, "Node traffic", traffic.Hour, 0, now)
	data.AlertsPerHour = d.alertsChart(now)
	data.Alerts = alertRows(d.alertSum.Groups("", pageAlerts))
	d.render(w, "page.html", data)
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04")
}

func stampSec(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05")
}

// bytesText uses decimal units, as the policy does (max_mb_per_day = 100
// is 100,000,000 bytes), so the page shows the owner's numbers back.
func bytesText(n uint64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.1f GB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.1f MB", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1f kB", float64(n)/1e3)
	}
	return fmt.Sprintf("%d B", n)
}

// expPage is what /experiments/ID shows.
type expPage struct {
	ID, Title, State, Reason, Detail, CSRF                            string
	Experimenters                                                     []store.Contact
	Container, ContainerSHA                                           string
	Submitted, Start, Started, Deadline, Remaining, Ended, ExitStatus string
	Running, Stoppable                                                bool
	Today, Budget, Rate, Total                                        string
	CPU, Memory                                                       string
	Effective, Declared, Manifest                                     string
	Conflicts                                                         []string
	PolicyErr                                                         string
	RateHour, RateWeek, TodayChart                                    template.HTML
	Destinations                                                      []destRow
	DestErr                                                           string
	Alerts                                                            []alertRow
}

type destRow struct {
	Proto, Addr, Port, Bytes, LastSeen string
	bytes                              uint64
	last                               time.Time
}

func (d *Daemon) handleExperimentPage(w http.ResponseWriter, r *http.Request) {
	x, err := d.mgr.store.Get(r.PathValue("id"))
	if err != nil {
		http.Error(w, fmt.Sprintf("experiment %q: %v", r.PathValue("id"), err), http.StatusNotFound)
		return
	}
	now := d.mgr.clock.Now()
	p, _ := d.auth.principal(r)
	pg := expPage{
		ID: x.ID, Title: x.Title, State: x.State, Reason: x.Reason, Detail: x.Detail, CSRF: d.auth.csrf(p),
		Experimenters: x.Experimenters, Submitted: stamp(x.Submitted), Start: stamp(x.Start),
		Started: stamp(x.Started), Deadline: stamp(x.Deadline), Ended: stamp(x.Ended),
		Running: x.State == store.Running, Stoppable: x.State != store.Completed,
		Total:    bytesText(x.BytesUp+x.BytesDown) + fmt.Sprintf(" (%s up, %s down)", bytesText(x.BytesUp), bytesText(x.BytesDown)),
		Manifest: x.Manifest,
	}
	if txt, err := declaredText(d.mgr.Policy().Node, x.ID, x.ManifestName, x.Manifest, x.ManifestDir); err == nil {
		pg.Declared = txt
	}
	if x.State == store.Running && !x.Deadline.IsZero() {
		pg.Remaining = x.Deadline.Sub(now).Truncate(time.Minute).String()
	}
	if x.State == store.Completed {
		switch {
		case x.Signal != "":
			pg.ExitStatus = "killed by signal " + x.Signal
		case !x.Started.IsZero():
			pg.ExitStatus = fmt.Sprintf("exit status %d", x.ExitCode)
		}
		if x.OOM {
			pg.ExitStatus += " (out of memory)"
		}
	}
	eff, conflicts, perr := d.effectiveOf(x)
	var capBps, budget float64
	if perr != nil {
		pg.PolicyErr = perr.Error()
	} else {
		pg.Conflicts = conflicts
		var b strings.Builder
		configs.FormatEffective(&b, eff)
		pg.Effective = b.String()
		pg.Container = eff.Container
		pg.ContainerSHA = containerSHA(d.mgr.Policy().StateDir(), eff.Container)
		capBps = eff.Limits.MaxMbps * 1e6
		budget = float64(eff.Limits.MaxMBPerDay) * 1e6
	}
	if st, ok := d.mgr.Status(x.ID); ok {
		pg.Today = bytesText(st.BytesUpToday + st.BytesDownToday)
		if st.BudgetBytes > 0 {
			budget = float64(st.BudgetBytes)
			pg.Budget = bytesText(st.BudgetBytes)
		}
		if st.RateMbps > 0 {
			capBps = st.RateMbps * 1e6
			pg.Rate = fmt.Sprintf("%.3g Mbit/s", st.RateMbps)
		}
		pg.CPU = d.cpuText(x.ID, eff)
		// Memory in MiB, as max_ram_mb is (the cgroup limit is max_ram_mb << 20).
		pg.Memory = fmt.Sprintf("%.1f MiB", float64(st.MemoryBytes)/(1<<20))
		switch {
		case st.MemoryLimit > 0:
			pg.Memory += fmt.Sprintf(" of %.0f MiB", float64(st.MemoryLimit)/(1<<20))
		case eff != nil && eff.Limits.MaxRAMMB > 0:
			pg.Memory += fmt.Sprintf(" of %d MiB (max_ram_mb)", eff.Limits.MaxRAMMB)
		}
	}
	pg.RateHour = d.rateChart(x.ID, "Traffic", traffic.Hour, capBps, now)
	pg.RateWeek = d.rateChart(x.ID, "Traffic", traffic.Week, capBps, now)
	pg.TodayChart = d.todayChart(x.ID, budget, now)
	pg.Destinations, pg.DestErr = d.topDestinations(r.Context(), x, now)
	pg.Alerts = alertRows(d.alertSum.Groups(x.ID, pageAlerts))
	d.render(w, "experiment.html", pg)
}

// effectiveOf is the experiment's effective policy: the running one, or
// the manifest admitted under the policy in force now (with its conflicts).
func (d *Daemon) effectiveOf(x *store.Experiment) (*configs.Effective, []string, error) {
	if eff, ok := d.mgr.Effective(x.ID); ok {
		return eff, nil, nil
	}
	return d.mgr.Policy().Admit([]byte(x.Manifest), x.ManifestName, x.ManifestDir, x.ID, d.mgr.runner.DefaultRouters())
}

// containerSHA is the sha256 of an installed container image when the
// node knows it: a "<version>.sha256" file beside the image under
// <state_dir>/containers (as `arkgw container import` writes it), else "".
func containerSHA(stateDir, version string) string {
	if version == "" || strings.ContainsAny(version, "/\\") {
		return ""
	}
	b, err := os.ReadFile(filepath.Join(stateDir, "containers", version+".sha256"))
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) == 0 || len(f[0]) != 64 || strings.Trim(strings.ToLower(f[0]), "0123456789abcdef") != "" {
		return ""
	}
	return strings.ToLower(f[0])
}

// topDestinations sums the experiment's flows of the last day (the flow
// log, as `arkgw flows` asks it) by (protocol, address, port), most bytes
// first.
func (d *Daemon) topDestinations(ctx context.Context, x *store.Experiment, now time.Time) ([]destRow, string) {
	if d.flows == nil || x.Started.IsZero() {
		return nil, ""
	}
	since := now.Add(-24 * time.Hour)
	if x.Started.After(since) {
		since = x.Started
	}
	q := url.Values{"experiment": {x.ID}, "since": {since.UTC().Format(time.RFC3339)}, "limit": {"5000"}}
	req := httptest.NewRequestWithContext(ctx, "GET", pathFlows+"?"+q.Encode(), nil)
	rec := httptest.NewRecorder()
	d.flows.ServeHTTP(rec, req)
	var res struct {
		flowlog.Result
		Error string `json:"error"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &res); err != nil || rec.Code != http.StatusOK {
		if res.Error == "" {
			res.Error = "flow log unavailable"
		}
		return nil, res.Error
	}
	return sumDestinations(append(res.Flows, res.Open...), now, 20), ""
}

func sumDestinations(flows []flowlog.Flow, now time.Time, max int) []destRow {
	type key struct {
		proto uint8
		addr  string
		port  uint16
	}
	sums := map[key]*destRow{}
	for _, f := range flows {
		k := key{f.Proto, f.Dst.String(), f.DPort}
		row := sums[k]
		if row == nil {
			row = &destRow{Proto: alert.ProtoName(f.Proto), Addr: k.addr}
			if f.DPort != 0 {
				row.Port = fmt.Sprint(f.DPort)
			}
			sums[k] = row
		}
		row.bytes += f.BytesOut + f.BytesIn
		end := f.End
		if end.IsZero() {
			end = now
		}
		if end.After(row.last) {
			row.last = end
		}
	}
	out := make([]destRow, 0, len(sums))
	for _, r := range sums {
		r.Bytes, r.LastSeen = bytesText(r.bytes), stampSec(r.last)
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].bytes != out[j].bytes {
			return out[i].bytes > out[j].bytes
		}
		return out[i].last.After(out[j].last)
	})
	if len(out) > max {
		out = out[:max]
	}
	return out
}

func (d *Daemon) confirm(w http.ResponseWriter, r *http.Request, question, detail, action, button, back string) {
	p, _ := d.auth.principal(r)
	d.render(w, "confirm.html", map[string]string{
		"Question": question, "Detail": detail, "Action": action, "Button": button, "CSRF": d.auth.csrf(p), "Back": back,
	})
}

func (d *Daemon) handleStopConfirm(w http.ResponseWriter, r *http.Request) {
	x, err := d.mgr.store.Get(r.PathValue("id"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	d.confirm(w, r, fmt.Sprintf("Stop experiment %s?", x.ID),
		fmt.Sprintf("%q will be stopped now: its processes are killed and its network removed.", x.Title),
		"/stop/"+x.ID, "Stop "+x.ID, "/experiments/"+x.ID)
}

func (d *Daemon) handleStopForm(w http.ResponseWriter, r *http.Request) {
	if !d.auth.checkCSRF(r) {
		http.Error(w, "missing or wrong form token; reload the page and try again", http.StatusForbidden)
		return
	}
	id := r.PathValue("id")
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	if err := d.mgr.Stop(ctx, id, store.ReasonStoppedOwner); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	http.Redirect(w, r, "/experiments/"+url.PathEscape(id), http.StatusSeeOther)
}

func (d *Daemon) handlePauseConfirm(w http.ResponseWriter, r *http.Request) {
	d.confirm(w, r, "Stop all experiments and pause this node?",
		"Every running experiment is stopped now and no planned one starts until you resume.", "/pause", "Stop all and pause", "/")
}

func (d *Daemon) handlePauseForm(w http.ResponseWriter, r *http.Request) {
	if !d.auth.checkCSRF(r) {
		http.Error(w, "missing or wrong form token; reload the page and try again", http.StatusForbidden)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 60*time.Second)
	defer cancel()
	if err := d.mgr.StopAll(ctx, store.ReasonStoppedOwner); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (d *Daemon) handleResumeForm(w http.ResponseWriter, r *http.Request) {
	if !d.auth.checkCSRF(r) {
		http.Error(w, "missing or wrong form token; reload the page and try again", http.StatusForbidden)
		return
	}
	d.mgr.Resume()
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

type flowRow struct {
	Experiment, Proto, Inside, Public, Dst, Start, End, Bytes string
}

// handleFlowsPage is the owner's "who sent this?" form. It asks the flow
// log (the same query the CLI makes over the Unix socket) and renders the
// answer; the flow log's JSON itself is not served on the web listener.
func (d *Daemon) handleFlowsPage(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	data := struct {
		Q        map[string]string
		Searched bool
		Err      string
		Rows     []flowRow
	}{Q: map[string]string{}}
	fq := url.Values{}
	for _, k := range []string{"dst", "port", "sport", "proto", "at"} {
		data.Q[k] = q.Get(k)
		data.Searched = data.Searched || q.Get(k) != ""
		if q.Get(k) != "" {
			fq.Set(k, q.Get(k))
		}
	}
	if data.Searched {
		rec := httptest.NewRecorder()
		d.flows.ServeHTTP(rec, httptest.NewRequestWithContext(r.Context(), "GET", pathFlows+"?"+fq.Encode(), nil))
		var res struct {
			flowlog.Result
			Error string `json:"error"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &res); err != nil || rec.Code != http.StatusOK {
			data.Err = res.Error
			if data.Err == "" {
				data.Err = "flow log unavailable"
			}
		}
		for i, f := range append(res.Flows, res.Open...) {
			end := stamp(f.End)
			if i >= len(res.Flows) {
				end = "open"
			}
			data.Rows = append(data.Rows, flowRow{
				Experiment: f.Experiment, Proto: alert.ProtoName(f.Proto),
				Inside: fmt.Sprintf("%s:%d", f.Src, f.SPort), Public: fmt.Sprintf("%s:%d", f.NATSrc, f.NATSPort),
				Dst: fmt.Sprintf("%s:%d", f.Dst, f.DPort), Start: f.Start.UTC().Format("2006-01-02 15:04:05"), End: end,
				Bytes: bytesText(f.BytesOut) + " / " + bytesText(f.BytesIn),
			})
		}
	}
	d.render(w, "flows.html", data)
}
