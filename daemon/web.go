package daemon

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/flowlog"
	"github.com/arkgw/arkgw/store"
	"golang.org/x/crypto/bcrypt"
)

//go:embed templates/*.html
var templateFS embed.FS

var templates = template.Must(template.ParseFS(templateFS, "templates/*.html"))

// webAuth is the owner page's access control.
type webAuth struct {
	passwordHash []byte // bcrypt; empty = no login (then the page is served on loopback only)
	csrfKey      []byte
}

func newWebAuth(passwordHash string) (*webAuth, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	a := &webAuth{csrfKey: key}
	if passwordHash != "" {
		if _, err := bcrypt.Cost([]byte(passwordHash)); err != nil {
			return nil, fmt.Errorf("node.toml: web.password_hash is not a bcrypt hash (%v); make one with 'htpasswd -nbB owner PASSWORD' and copy the part after the colon", err)
		}
		a.passwordHash = []byte(passwordHash)
	}
	return a, nil
}

// csrf is the token forms carry: an HMAC of the authenticated principal under
// a key made at start, so it cannot be guessed by another origin.
func (a *webAuth) csrf(principal string) string {
	m := hmac.New(sha256.New, a.csrfKey)
	m.Write([]byte("csrf:" + principal))
	return hex.EncodeToString(m.Sum(nil))
}

func (a *webAuth) principal(r *http.Request) (string, bool) {
	if a.passwordHash == nil {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		ip := net.ParseIP(host)
		return "local", ip != nil && ip.IsLoopback()
	}
	user, pass, ok := r.BasicAuth()
	if !ok {
		return "", false
	}
	if bcrypt.CompareHashAndPassword(a.passwordHash, []byte(pass)) != nil {
		return "", false
	}
	return "owner:" + user, true
}

// secure wraps the whole web listener: security headers, authentication,
// and cross-origin protection for every state-changing request.
func (a *webAuth) secure(next http.Handler) http.Handler {
	cop := http.NewCrossOriginProtection()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'")
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		if _, ok := a.principal(r); !ok {
			if a.passwordHash != nil {
				h.Set("WWW-Authenticate", `Basic realm="arkgw", charset="UTF-8"`)
			}
			http.Error(w, "authentication required", http.StatusUnauthorized)
			return
		}
		if err := cop.Check(r); err != nil {
			http.Error(w, "cross-origin request refused", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (a *webAuth) checkCSRF(r *http.Request) bool {
	p, _ := a.principal(r)
	got := r.PostFormValue("csrf")
	want := a.csrf(p)
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// webHandler serves the owner page and, behind the same auth, the API and
// metrics.
func (d *Daemon) webHandler(metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", d.handlePage)
	mux.HandleFunc("GET /stop/{id}", d.handleStopConfirm)
	mux.HandleFunc("POST /stop/{id}", d.handleStopForm)
	mux.HandleFunc("GET /pause", d.handlePauseConfirm)
	mux.HandleFunc("POST /pause", d.handlePauseForm)
	mux.HandleFunc("POST /resume", d.handleResumeForm)
	if d.flows != nil {
		mux.HandleFunc("GET /flows", d.handleFlowsPage)
	}
	api := d.apiHandler()
	mux.Handle("/api/", api)
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	return d.auth.secure(mux)
}

type pageRow struct {
	ID, Title                        string
	Experimenters                    []store.Contact
	Start, Started, Ended, Remaining string
	Today, Budget, Rate              string
	Alerts                           uint64
	Reason, Detail                   string
}

type alertRow struct {
	Time, Experiment, Rule, What, Message string
	Count                                 uint64
}

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
		Paused                      bool
		Running, Planned, Completed []pageRow
		Alerts                      []alertRow
	}{Node: d.mgr.Policy().NodeName(), Now: now.UTC().Format("2006-01-02 15:04 UTC"), CSRF: d.auth.csrf(p), Paused: paused}
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
			data.Running = append(data.Running, row)
		case store.Planned:
			data.Planned = append(data.Planned, row)
		default:
			data.Completed = append(data.Completed, row)
		}
	}
	recs, _ := d.recentAlerts(time.Time{}, "", 50)
	for i := len(recs) - 1; i >= 0; i-- {
		a := recs[i]
		what := strings.TrimSpace(fmt.Sprintf("%s %s → %s", a.Proto, a.Src, a.Dst))
		if a.DstPort != 0 {
			what += fmt.Sprintf(":%d", a.DstPort)
		}
		if a.Name != "" {
			what = fmt.Sprintf("DNS %s %s", a.QType, a.Name)
		}
		n := a.Packets
		if n == 0 {
			n = 1
		}
		data.Alerts = append(data.Alerts, alertRow{Time: stamp(a.Time), Experiment: a.Experiment, Rule: a.Rule, What: what, Message: a.Message, Count: n})
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := templates.ExecuteTemplate(w, "page.html", data); err != nil {
		d.log.Warn("render page", "error", err)
	}
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04")
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

func (d *Daemon) confirm(w http.ResponseWriter, r *http.Request, question, detail, action, button string) {
	p, _ := d.auth.principal(r)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	templates.ExecuteTemplate(w, "confirm.html", map[string]string{
		"Question": question, "Detail": detail, "Action": action, "Button": button, "CSRF": d.auth.csrf(p),
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
		"/stop/"+x.ID, "Stop "+x.ID)
}

func (d *Daemon) handleStopForm(w http.ResponseWriter, r *http.Request) {
	if !d.auth.checkCSRF(r) {
		http.Error(w, "missing or wrong form token; reload the page and try again", http.StatusForbidden)
		return
	}
	if err := d.mgr.Stop(r.Context(), r.PathValue("id"), store.ReasonStoppedOwner); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (d *Daemon) handlePauseConfirm(w http.ResponseWriter, r *http.Request) {
	d.confirm(w, r, "Stop all experiments and pause this node?",
		"Every running experiment is stopped now and no planned one starts until you resume.", "/pause", "Stop all and pause")
}

func (d *Daemon) handlePauseForm(w http.ResponseWriter, r *http.Request) {
	if !d.auth.checkCSRF(r) {
		http.Error(w, "missing or wrong form token; reload the page and try again", http.StatusForbidden)
		return
	}
	if err := d.mgr.StopAll(r.Context(), store.ReasonStoppedOwner); err != nil {
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
// API (the same query the CLI makes) and renders the answer.
func (d *Daemon) handleFlowsPage(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	data := struct {
		Q        map[string]string
		Searched bool
		Err      string
		Rows     []flowRow
	}{Q: map[string]string{}}
	for _, k := range []string{"dst", "port", "sport", "proto", "at"} {
		data.Q[k] = q.Get(k)
		data.Searched = data.Searched || q.Get(k) != ""
	}
	if data.Searched {
		rec := httptest.NewRecorder()
		api := r.Clone(r.Context())
		api.URL.Path = pathFlows
		d.flows.ServeHTTP(rec, api)
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
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := templates.ExecuteTemplate(w, "flows.html", data); err != nil {
		d.log.Warn("render flows page", "error", err)
	}
}
