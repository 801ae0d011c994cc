package daemon

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/arkgw/arkgw/alertsum"
	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/store"
	"github.com/arkgw/arkgw/traffic"
)

func writeSelfSigned(t *testing.T, certPath, keyPath string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "arkgw test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(k)
	os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
}

func testDaemon(t *testing.T, passwordHash string) (*Daemon, *fakeRunner) {
	t.Helper()
	r := newFakeRunner()
	pol := testPolicy(t, "")
	m := newTestManager(t, pol, r, nil)
	auth, err := newWebAuth(passwordHash)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := traffic.Open(m.store.DB(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return &Daemon{log: m.log, mgr: m, auth: auth, alertsPath: pol.AlertsFile(), traffic: tr, alertSum: alertsum.New()}, r
}

func TestAPISubmitListStop(t *testing.T) {
	d, _ := testDaemon(t, "")
	srv := httptest.NewServer(d.apiHandler())
	defer srv.Close()

	body, _ := json.Marshal(SubmitRequest{Manifest: goodManifest, Name: "m.toml", Dir: "/tmp"})
	resp, err := http.Post(srv.URL+pathExperiments, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var x store.Experiment
	json.NewDecoder(resp.Body).Decode(&x)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || x.ID == "" {
		t.Fatalf("submit: %s %+v", resp.Status, x)
	}
	d.mgr.tick(context.Background())
	waitState(t, d.mgr, x.ID, store.Running)

	resp, _ = http.Get(srv.URL + pathExperiments)
	var list []ExperimentView
	json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if len(list) != 1 || list[0].Live == nil || list[0].Live.BytesDownToday != 200 {
		t.Fatalf("list: %+v", list)
	}

	resp, _ = http.Post(srv.URL+pathExperiments+"/"+x.ID+"/stop", "application/json", nil)
	resp.Body.Close()
	if got, _ := d.mgr.store.Get(x.ID); resp.StatusCode != 200 || got.State != store.Completed || got.Reason != store.ReasonStoppedStaff {
		t.Fatalf("stop: %s %+v", resp.Status, got)
	}

	// A refused manifest: 422 with one line per conflict.
	bad, _ := json.Marshal(SubmitRequest{Manifest: strings.Replace(goodManifest, "max_mbps = 1", "max_mbps = 1000", 1)})
	resp, _ = http.Post(srv.URL+pathExperiments, "application/json", bytes.NewReader(bad))
	var e ErrorResponse
	json.NewDecoder(resp.Body).Decode(&e)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnprocessableEntity || len(e.Conflicts) != 1 || !strings.Contains(e.Conflicts[0], "max_mbps") {
		t.Fatalf("refused submit: %s %+v", resp.Status, e)
	}
	// Garbage: 400 naming the expected shape.
	resp, _ = http.Post(srv.URL+pathExperiments, "application/json", strings.NewReader("{"))
	json.NewDecoder(resp.Body).Decode(&e)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(e.Error, "manifest") {
		t.Fatalf("garbage submit: %s %+v", resp.Status, e)
	}
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`)

// owner is a browser-like client of the web listener: a cookie jar, no
// automatic redirects.
type owner struct {
	t   *testing.T
	srv *httptest.Server
	c   *http.Client
}

func newOwner(t *testing.T, srv *httptest.Server) *owner {
	jar, _ := cookiejar.New(nil)
	return &owner{t: t, srv: srv, c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (o *owner) get(path string) (*http.Response, string) {
	o.t.Helper()
	resp, err := o.c.Get(o.srv.URL + path)
	if err != nil {
		o.t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

func (o *owner) post(path string, form url.Values) (*http.Response, string) {
	o.t.Helper()
	resp, err := o.c.PostForm(o.srv.URL+path, form)
	if err != nil {
		o.t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

// login fills in the login form.
func (o *owner) login(pass string) *http.Response {
	o.t.Helper()
	_, page := o.get("/login")
	m := csrfRE.FindStringSubmatch(page)
	if m == nil {
		o.t.Fatalf("login page has no CSRF token:\n%s", page)
	}
	resp, _ := o.post("/login", url.Values{"csrf": {m[1]}, "password": {pass}})
	return resp
}

func TestPageLoginCSRFAndStop(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	d, _ := testDaemon(t, string(hash))
	srv := httptest.NewServer(d.webHandler())
	defer srv.Close()
	x, err := d.mgr.Submit([]byte(goodManifest), "m.toml", "/")
	if err != nil {
		t.Fatal(err)
	}
	d.mgr.tick(context.Background())
	waitState(t, d.mgr, x.ID, store.Running)

	o := newOwner(t, srv)
	if resp, _ := o.get("/"); resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/login" {
		t.Fatalf("no session: %s %s", resp.Status, resp.Header.Get("Location"))
	}
	if resp, _ := o.get(pathTraffic); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("JSON without session: %s", resp.Status)
	}
	if resp := o.login("wrong"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong password: %s", resp.Status)
	}
	if resp := o.login("s3cret"); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("login: %s", resp.Status)
	}
	resp, page := o.get("/")
	if resp.StatusCode != 200 || !strings.Contains(page, `mailto:researcher@example.edu`) || !strings.Contains(page, "ping survey") {
		t.Fatalf("page: %s\n%s", resp.Status, page)
	}
	for _, h := range []string{"Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options"} {
		if resp.Header.Get(h) == "" {
			t.Errorf("missing security header %s", h)
		}
	}
	_, confirm := o.get("/stop/" + x.ID)
	m := csrfRE.FindStringSubmatch(confirm)
	if m == nil {
		t.Fatalf("confirmation page has no CSRF token:\n%s", confirm)
	}
	if resp, _ := o.post("/stop/"+x.ID, url.Values{}); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("POST without CSRF token: %s", resp.Status)
	}
	if resp, _ := o.post("/stop/"+x.ID, url.Values{"csrf": {strings.Repeat("0", 64)}}); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("POST with a forged token: %s", resp.Status)
	}
	// Another session's token is not this one's.
	o2 := newOwner(t, srv)
	o2.login("s3cret")
	if resp, _ := o2.post("/stop/"+x.ID, url.Values{"csrf": {m[1]}}); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("POST with another session's token: %s", resp.Status)
	}
	if got, _ := d.mgr.store.Get(x.ID); got.State != store.Running {
		t.Fatal("refused POST stopped the experiment")
	}
	if resp, _ := o.post("/stop/"+x.ID, url.Values{"csrf": {m[1]}}); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("POST with token: %s", resp.Status)
	}
	if got, _ := d.mgr.store.Get(x.ID); got.State != store.Completed || got.Reason != store.ReasonStoppedOwner {
		t.Fatalf("after owner stop: %+v", got)
	}
	// Log out: the session is gone.
	_, page = o.get("/")
	m = csrfRE.FindStringSubmatch(page)
	if resp, _ := o.post("/logout", url.Values{"csrf": {m[1]}}); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("logout: %s", resp.Status)
	}
	if resp, _ := o.get("/"); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("after logout: %s", resp.Status)
	}
}

// TestWebServesPageRoutesOnly: the CLI's API (submit with any dir, an
// experiment's stdout, the flow log, the list, alerts, pause over JSON)
// and /metrics are not on the web listener, even for the logged-in owner.
func TestWebServesPageRoutesOnly(t *testing.T) {
	d, _ := testDaemon(t, "") // no password: loopback is the owner
	d.flows = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, `{"flows":[]}`) })
	x, err := d.mgr.Submit([]byte(goodManifest), "m.toml", "/")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(d.webHandler())
	defer srv.Close()
	o := newOwner(t, srv)
	for _, c := range []struct{ method, path string }{
		{"POST", pathExperiments},
		{"GET", pathExperiments},
		{"GET", pathExperiments + "/" + x.ID},
		{"GET", pathExperiments + "/" + x.ID + "/logs"},
		{"POST", pathExperiments + "/" + x.ID + "/stop"},
		{"GET", pathAlerts},
		{"GET", pathFlows + "?dst=198.51.100.1"},
		{"POST", pathPause},
		{"POST", pathResume},
		{"GET", "/api/v1/version"},
		{"GET", "/metrics"},
	} {
		req, _ := http.NewRequest(c.method, srv.URL+c.path, strings.NewReader(`{"manifest":"x","dir":"/"}`))
		req.Header.Set("Content-Type", "application/json")
		resp, err := o.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("web listener serves %s %s: %s", c.method, c.path, resp.Status)
		}
	}
	if p, _ := d.mgr.store.Paused(); p {
		t.Error("the web listener paused the node over the JSON API")
	}
	for _, path := range []string{"/", "/experiments/" + x.ID, pathExperiments + "/" + x.ID + "/traffic?range=7d", pathTraffic, "/flows"} {
		if resp, body := o.get(path); resp.StatusCode != 200 {
			t.Errorf("page route %s: %s %s", path, resp.Status, body)
		}
	}
}

// TestLoginOnceThenSession: bcrypt runs once per login, not per request;
// the cookie is HttpOnly, SameSite=Strict, and Secure under TLS.
func TestLoginOnceThenSession(t *testing.T) {
	for _, tlsOn := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%v", tlsOn), func(t *testing.T) {
			hash, _ := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
			d, _ := testDaemon(t, string(hash))
			d.auth.tls = tlsOn
			srv := httptest.NewUnstartedServer(d.webHandler())
			if tlsOn {
				srv.StartTLS()
			} else {
				srv.Start()
			}
			defer srv.Close()
			o := newOwner(t, srv)
			if tlsOn {
				o.c.Transport = srv.Client().Transport
			}
			resp := o.login("s3cret")
			var c *http.Cookie
			for _, k := range resp.Cookies() {
				if k.Name == sessionCookie {
					c = k
				}
			}
			if c == nil || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Secure != tlsOn || c.Path != "/" {
				t.Fatalf("session cookie %+v", c)
			}
			// A page load costs no bcrypt: a hash that takes seconds to check
			// would show; use the call counter instead of the clock.
			before := d.auth.bcrypts.Load()
			for i := 0; i < 20; i++ {
				if resp, _ := o.get("/"); resp.StatusCode != 200 {
					t.Fatalf("page %d with session: %s", i, resp.Status)
				}
			}
			if n := d.auth.bcrypts.Load() - before; n != 0 {
				t.Fatalf("%d bcrypt comparisons for 20 page loads with a session", n)
			}
			// Sessions expire.
			d.auth.now = func() time.Time { return time.Now().Add(sessionTTL + time.Minute) }
			if resp, _ := o.get("/"); resp.StatusCode != http.StatusSeeOther {
				t.Fatalf("expired session: %s", resp.Status)
			}
		})
	}
}

// TestFailedLoginsRateLimited: after loginFailsPerIP wrong passwords an
// address gets 429 without a bcrypt, even with the right password, until
// the window ends; other addresses fall under the global limit only.
func TestFailedLoginsRateLimited(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	d, _ := testDaemon(t, string(hash))
	now := time.Now()
	d.auth.now = func() time.Time { return now }
	srv := httptest.NewServer(d.webHandler())
	defer srv.Close()
	o := newOwner(t, srv)
	for i := 0; i < loginFailsPerIP; i++ {
		if resp := o.login("guess"); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("guess %d: %s", i, resp.Status)
		}
	}
	before := d.auth.bcrypts.Load()
	resp := o.login("s3cret")
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("after %d failures: %s", loginFailsPerIP, resp.Status)
	}
	if d.auth.bcrypts.Load() != before {
		t.Fatal("a refused login still ran bcrypt")
	}
	now = now.Add(loginWindow)
	if resp := o.login("s3cret"); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("after the window: %s", resp.Status)
	}
	// The global limit: many addresses together.
	for i := 0; i < loginFailsAll; i++ {
		d.auth.loginFailed(fmt.Sprintf("192.0.2.%d", i))
	}
	if ok, _ := d.auth.loginAllowed("198.51.100.7"); ok {
		t.Fatal("global failure limit not enforced")
	}
}

func TestLoginFormNeedsItsToken(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	d, _ := testDaemon(t, string(hash))
	srv := httptest.NewServer(d.webHandler())
	defer srv.Close()
	o := newOwner(t, srv)
	o.get("/login")
	if resp, _ := o.post("/login", url.Values{"password": {"s3cret"}}); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("login without token: %s", resp.Status)
	}
	// Cross-site POSTs are refused before anything else.
	req, _ := http.NewRequest("POST", srv.URL+"/login", strings.NewReader("password=s3cret"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	resp, err := o.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-site login: %s", resp.Status)
	}
}

func TestWebServerTimeoutsAndTLS(t *testing.T) {
	d, _ := testDaemon(t, "")
	srv, err := d.webServer(d.mgr.Policy())
	if err != nil {
		t.Fatal(err)
	}
	if srv.ReadHeaderTimeout <= 0 || srv.ReadTimeout <= 0 || srv.WriteTimeout <= 0 || srv.IdleTimeout <= 0 || srv.TLSConfig != nil {
		t.Fatalf("web server: read header %v read %v write %v idle %v tls %v", srv.ReadHeaderTimeout, srv.ReadTimeout, srv.WriteTimeout, srv.IdleTimeout, srv.TLSConfig != nil)
	}
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeSelfSigned(t, cert, key)
	pol := testPolicy(t, fmt.Sprintf("[web]\nlisten = \"127.0.0.1:8080\"\ntls_cert = %q\ntls_key = %q\n", cert, key))
	srv, err = d.webServer(pol)
	if err != nil || srv.TLSConfig == nil || len(srv.TLSConfig.Certificates) != 1 {
		t.Fatalf("TLS server: %v", err)
	}
	bad := testPolicy(t, fmt.Sprintf("[web]\nlisten = \"127.0.0.1:8080\"\ntls_cert = %q\ntls_key = %q\n", key, cert))
	if _, err := d.webServer(bad); err == nil || !strings.Contains(err.Error(), "tls_cert") {
		t.Fatalf("swapped cert and key: %v", err)
	}
	if _, err := configs.ParseNode("node.toml", []byte("[web]\ntls_cert = \"/x.pem\"\n")); err == nil || !strings.Contains(err.Error(), "tls_key") {
		t.Fatalf("cert without key: %v", err)
	}
}

// TestNoPasswordServesLoopbackOnly: without a password hash a request from
// a non-loopback address is refused even if the listener were reachable.
func TestNoPasswordServesLoopbackOnly(t *testing.T) {
	d, _ := testDaemon(t, "")
	h := d.webHandler()
	for addr, want := range map[string]int{"127.0.0.1:5000": 200, "[::1]:5000": 200, "192.0.2.7:5000": 401} {
		req := httptest.NewRequest("GET", "/", nil)
		req.RemoteAddr = addr
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != want {
			t.Errorf("from %s: %d, want %d", addr, rec.Code, want)
		}
	}
}

func TestWebWithoutPasswordOnlyOnLoopback(t *testing.T) {
	if err := checkWebExposure("0.0.0.0:8080", ""); err == nil || !strings.Contains(err.Error(), "password_hash") {
		t.Fatalf("public listen without password: %v", err)
	}
	for _, a := range []string{"127.0.0.1:8080", "[::1]:80", "localhost:8080"} {
		if err := checkWebExposure(a, ""); err != nil {
			t.Errorf("%s: %v", a, err)
		}
	}
	if err := checkWebExposure("0.0.0.0:8080", "$2a$..."); err != nil {
		t.Fatal(err)
	}
	if _, err := newWebAuth("plaintext"); err == nil || !strings.Contains(err.Error(), "bcrypt") {
		t.Fatalf("non-bcrypt hash: %v", err)
	}
}

func FuzzDecodeSubmit(f *testing.F) {
	f.Add([]byte(`{"manifest":"title = \"x\"","name":"m.toml","dir":"/tmp"}`))
	f.Add([]byte(`{"manifest":"","dir":"rel"}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := DecodeSubmit(bytes.NewReader(b))
		if err != nil {
			return
		}
		if strings.TrimSpace(req.Manifest) == "" || req.Name == "" || strings.Contains(req.Name, "/") && req.Name != "/" {
			t.Fatalf("accepted a bad request: %+v", req)
		}
	})
}

func TestFlowsPage(t *testing.T) {
	d, _ := testDaemon(t, "")
	var asked string
	d.flows = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked = r.URL.RawQuery
		if r.URL.Query().Get("port") == "0" {
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"error":"port \"0\": want 1-65535"}`)
			return
		}
		io.WriteString(w, `{"flows":[{"experiment":"x7","proto":6,"src":"10.250.0.2","dst":"198.51.100.9","sport":40000,"dport":22,
			"nat_src":"192.168.77.2","nat_sport":50123,"start":"2026-11-25T14:03:00Z","end":"2026-11-25T14:03:05Z","bytes_out":100,"bytes_in":2048}]}`)
	})
	srv := httptest.NewServer(d.webHandler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/flows?dst=198.51.100.9&port=22&at=2026-11-25T14:03:02Z")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	page := string(b)
	for _, want := range []string{`id="flows"`, "x7", "192.168.77.2:50123", "198.51.100.9:22", "2.0 kB"} {
		if !strings.Contains(page, want) {
			t.Errorf("flows page lacks %q:\n%s", want, page)
		}
	}
	if !strings.Contains(asked, "dst=198.51.100.9") || !strings.Contains(asked, "at=2026-11-25T14") {
		t.Errorf("flow API asked %q", asked)
	}
	resp, _ = http.Get(srv.URL + "/flows?port=0")
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "want 1-65535") {
		t.Errorf("bad query: the page does not show the API's message:\n%s", b)
	}
}

func TestBytesTextMatchesPolicyUnits(t *testing.T) {
	for n, want := range map[uint64]string{100_000_000: "100.0 MB", 2048: "2.0 kB", 999: "999 B", 1_500_000_000: "1.5 GB"} {
		if got := bytesText(n); got != want {
			t.Errorf("bytesText(%d) = %q, want %q", n, got, want)
		}
	}
}
