package daemon

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"embed"
	"encoding/hex"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/bcrypt"
)

//go:embed templates/*.html
var templateFS embed.FS

var templates = template.Must(template.ParseFS(templateFS, "templates/*.html"))

// The owner page's session and login limits.
const (
	sessionCookie = "arkgw_session"
	loginCookie   = "arkgw_login" // binds the login form's CSRF token to this browser
	sessionTTL    = 12 * time.Hour
	maxSessions   = 64 // the oldest session gives way (an owner, a few browsers)
	// Failed logins: at most loginFailsPerIP per address and loginFailsAll
	// in total per loginWindow; then 429 until the window ends. Together
	// with one bcrypt at a time this bounds the CPU a guesser can burn.
	loginFailsPerIP = 5
	loginFailsAll   = 20
	loginWindow     = time.Minute
	maxFormBytes    = 64 << 10
)

// Timeouts of the web listener: a slow or idle client cannot hold a
// connection (and a descriptor) for long.
const (
	webReadHeaderTimeout = 10 * time.Second
	webReadTimeout       = 30 * time.Second
	webWriteTimeout      = 60 * time.Second
	webIdleTimeout       = 120 * time.Second
)

// webAuth is the owner page's access control: one login (bcrypt, once)
// opens a session kept in memory (a daemon restart logs the owner out);
// every form carries a token bound to the session.
type webAuth struct {
	passwordHash []byte // bcrypt; empty = no login (then the page is served on loopback only)
	key          []byte // HMAC key of CSRF tokens, made at start
	tls          bool   // cookies are Secure
	now          func() time.Time

	mu       sync.Mutex
	sessions map[string]time.Time // session id -> expiry
	fails    map[string]*failWindow
	allFails failWindow

	bcryptMu sync.Mutex   // one bcrypt at a time
	bcrypts  atomic.Int64 // comparisons made (tests: once per login)
}

type failWindow struct {
	start time.Time
	n     int
}

func newWebAuth(passwordHash string) (*webAuth, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	a := &webAuth{key: key, now: time.Now, sessions: map[string]time.Time{}, fails: map[string]*failWindow{}}
	if passwordHash != "" {
		if _, err := bcrypt.Cost([]byte(passwordHash)); err != nil {
			return nil, fmt.Errorf("node.toml: web.password_hash is not a bcrypt hash (%v); make one with 'htpasswd -nbB owner PASSWORD' and copy the part after the colon", err)
		}
		a.passwordHash = []byte(passwordHash)
	}
	return a, nil
}

func (a *webAuth) mac(s string) string {
	m := hmac.New(sha256.New, a.key)
	m.Write([]byte(s))
	return hex.EncodeToString(m.Sum(nil))
}

// csrf is the token forms carry: an HMAC of the principal (the session)
// under a key made at start, so another origin can neither read nor guess it.
func (a *webAuth) csrf(principal string) string { return a.mac("csrf:" + principal) }

func isLoopback(r *http.Request) bool {
	host, _, _ := net.SplitHostPort(r.RemoteAddr)
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// principal is who makes the request: "local" when there is no password
// (loopback only), else the session.
func (a *webAuth) principal(r *http.Request) (string, bool) {
	if a.passwordHash == nil {
		return "local", isLoopback(r)
	}
	c, err := r.Cookie(sessionCookie)
	if err != nil || c.Value == "" {
		return "", false
	}
	a.mu.Lock()
	exp, ok := a.sessions[c.Value]
	if ok && !a.now().Before(exp) {
		delete(a.sessions, c.Value)
		ok = false
	}
	a.mu.Unlock()
	if !ok {
		return "", false
	}
	return "session:" + c.Value, true
}

func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func (a *webAuth) newSession() string {
	id := randomToken()
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, exp := range a.sessions {
		if !now.Before(exp) {
			delete(a.sessions, k)
		}
	}
	for len(a.sessions) >= maxSessions {
		var oldest string
		for k, exp := range a.sessions {
			if oldest == "" || exp.Before(a.sessions[oldest]) {
				oldest = k
			}
		}
		delete(a.sessions, oldest)
	}
	a.sessions[id] = now.Add(sessionTTL)
	return id
}

func (a *webAuth) cookie(name, value string, maxAge int) *http.Cookie {
	return &http.Cookie{Name: name, Value: value, Path: "/", MaxAge: maxAge, HttpOnly: true, Secure: a.tls, SameSite: http.SameSiteStrictMode}
}

// loginAllowed says whether ip may try a password now; retry is how long
// to wait if not.
func (a *webAuth) loginAllowed(ip string) (ok bool, retry time.Duration) {
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, w := range []*failWindow{a.fails[ip], &a.allFails} {
		if w == nil || now.Sub(w.start) >= loginWindow {
			continue
		}
		limit := loginFailsPerIP
		if w == &a.allFails {
			limit = loginFailsAll
		}
		if w.n >= limit {
			return false, loginWindow - now.Sub(w.start)
		}
	}
	return true, 0
}

func (a *webAuth) loginFailed(ip string) {
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.fails) > 4096 {
		a.fails = map[string]*failWindow{} // bounded; the global window still holds
	}
	for _, w := range []*failWindow{a.fails[ip], &a.allFails} {
		if w == nil {
			w = &failWindow{}
			a.fails[ip] = w
		}
		if now.Sub(w.start) >= loginWindow {
			*w = failWindow{start: now}
		}
		w.n++
	}
}

// secure wraps the whole web listener: security headers, form size limit,
// authentication (the login page excepted) and cross-origin protection for
// every state-changing request.
func (a *webAuth) secure(next http.Handler) http.Handler {
	cop := http.NewCrossOriginProtection()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		if a.tls {
			h.Set("Strict-Transport-Security", "max-age=31536000")
		}
		if r.Body != nil {
			r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
		}
		if err := cop.Check(r); err != nil {
			http.Error(w, "cross-origin request refused", http.StatusForbidden)
			return
		}
		if r.URL.Path == "/login" {
			next.ServeHTTP(w, r)
			return
		}
		if _, ok := a.principal(r); !ok {
			if a.passwordHash != nil && r.Method == http.MethodGet && !strings.HasPrefix(r.URL.Path, "/api/") {
				http.Redirect(w, r, "/login", http.StatusSeeOther)
				return
			}
			http.Error(w, "authentication required: log in at /login", http.StatusUnauthorized)
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

// webHandler serves the owner page's routes only: the views, Stop, pause
// and resume, login, and the JSON behind the graphs. The CLI's API
// (submit, logs, flows, ...) and /metrics are on the root-only Unix socket
// only.
func (d *Daemon) webHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", d.handlePage)
	mux.HandleFunc("GET /experiments/{id}", d.handleExperimentPage)
	mux.HandleFunc("GET /stop/{id}", d.handleStopConfirm)
	mux.HandleFunc("POST /stop/{id}", d.handleStopForm)
	mux.HandleFunc("GET /pause", d.handlePauseConfirm)
	mux.HandleFunc("POST /pause", d.handlePauseForm)
	mux.HandleFunc("POST /resume", d.handleResumeForm)
	mux.HandleFunc("GET /login", d.handleLoginPage)
	mux.HandleFunc("POST /login", d.handleLogin)
	mux.HandleFunc("POST /logout", d.handleLogout)
	if d.flows != nil {
		mux.HandleFunc("GET /flows", d.handleFlowsPage)
	}
	mux.HandleFunc("GET "+pathTraffic, d.handleNodeTraffic)
	mux.HandleFunc("GET "+pathExperiments+"/{id}/traffic", d.handleTraffic)
	return d.auth.secure(mux)
}

// webServer is the owner page's server, with its timeouts; TLS when the
// policy names a certificate.
func (d *Daemon) webServer(pol *Policy) (*http.Server, error) {
	srv := &http.Server{
		Handler:           d.webHandler(),
		ReadHeaderTimeout: webReadHeaderTimeout,
		ReadTimeout:       webReadTimeout,
		WriteTimeout:      webWriteTimeout,
		IdleTimeout:       webIdleTimeout,
		MaxHeaderBytes:    32 << 10,
	}
	cert, key := pol.WebTLS()
	if cert == "" {
		return srv, nil
	}
	kp, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("node.toml: web.tls_cert %q / web.tls_key %q: %v; give a PEM certificate chain and its private key", cert, key, err)
	}
	srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{kp}}
	return srv, nil
}

func (d *Daemon) handleLoginPage(w http.ResponseWriter, r *http.Request) {
	d.renderLogin(w, r, "", http.StatusOK)
}

func (d *Daemon) renderLogin(w http.ResponseWriter, r *http.Request, msg string, code int) {
	if d.auth.passwordHash == nil {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	lc := ""
	if c, err := r.Cookie(loginCookie); err == nil && len(c.Value) == 64 {
		lc = c.Value
	} else {
		lc = randomToken()
		http.SetCookie(w, d.auth.cookie(loginCookie, lc, 3600))
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	d.render(w, "login.html", map[string]string{"Node": d.mgr.Policy().NodeName(), "CSRF": d.auth.mac("login:" + lc), "Error": msg})
}

func (d *Daemon) handleLogin(w http.ResponseWriter, r *http.Request) {
	if d.auth.passwordHash == nil {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	c, err := r.Cookie(loginCookie)
	if err != nil || r.PostFormValue("csrf") == "" ||
		subtle.ConstantTimeCompare([]byte(r.PostFormValue("csrf")), []byte(d.auth.mac("login:"+c.Value))) != 1 {
		d.renderLogin(w, r, "The form expired; try again.", http.StatusForbidden)
		return
	}
	ip, _, _ := net.SplitHostPort(r.RemoteAddr)
	if ok, retry := d.auth.loginAllowed(ip); !ok {
		w.Header().Set("Retry-After", strconv.Itoa(int(retry.Seconds())+1))
		d.renderLogin(w, r, "Too many failed logins; wait a minute and try again.", http.StatusTooManyRequests)
		return
	}
	d.auth.bcryptMu.Lock()
	d.auth.bcrypts.Add(1)
	err = bcrypt.CompareHashAndPassword(d.auth.passwordHash, []byte(r.PostFormValue("password")))
	d.auth.bcryptMu.Unlock()
	if err != nil {
		d.auth.loginFailed(ip)
		d.log.Warn("failed owner page login", "remote", ip)
		d.renderLogin(w, r, "Wrong password.", http.StatusUnauthorized)
		return
	}
	http.SetCookie(w, d.auth.cookie(sessionCookie, d.auth.newSession(), int(sessionTTL.Seconds())))
	http.SetCookie(w, d.auth.cookie(loginCookie, "", -1))
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (d *Daemon) handleLogout(w http.ResponseWriter, r *http.Request) {
	if !d.auth.checkCSRF(r) {
		http.Error(w, "missing or wrong form token; reload the page and try again", http.StatusForbidden)
		return
	}
	if c, err := r.Cookie(sessionCookie); err == nil {
		d.auth.mu.Lock()
		delete(d.auth.sessions, c.Value)
		d.auth.mu.Unlock()
	}
	http.SetCookie(w, d.auth.cookie(sessionCookie, "", -1))
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

func (d *Daemon) render(w http.ResponseWriter, name string, data any) {
	if w.Header().Get("Content-Type") == "" {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
	}
	if err := templates.ExecuteTemplate(w, name, data); err != nil {
		d.log.Warn("render page", "template", name, "error", err)
	}
}
