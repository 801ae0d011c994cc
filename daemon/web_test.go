package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/arkgw/arkgw/store"
)

func testDaemon(t *testing.T, passwordHash string) (*Daemon, *fakeRunner) {
	t.Helper()
	r := newFakeRunner()
	pol := testPolicy(t, "")
	m := newTestManager(t, pol, r, nil)
	auth, err := newWebAuth(passwordHash)
	if err != nil {
		t.Fatal(err)
	}
	return &Daemon{log: m.log, mgr: m, auth: auth, alertsPath: pol.AlertsFile()}, r
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

func TestPageAuthCSRFAndStop(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	d, _ := testDaemon(t, string(hash))
	srv := httptest.NewServer(d.webHandler(nil))
	defer srv.Close()
	x, err := d.mgr.Submit([]byte(goodManifest), "m.toml", "/")
	if err != nil {
		t.Fatal(err)
	}
	d.mgr.tick(context.Background())
	waitState(t, d.mgr, x.ID, store.Running)

	get := func(path, pass string) (*http.Response, string) {
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		if pass != "" {
			req.SetBasicAuth("owner", pass)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(b)
	}
	if resp, _ := get("/", ""); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no credentials: %s", resp.Status)
	}
	if resp, _ := get("/", "wrong"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong password: %s", resp.Status)
	}
	resp, page := get("/", "s3cret")
	if resp.StatusCode != 200 || !strings.Contains(page, `mailto:researcher@example.edu`) || !strings.Contains(page, "ping survey") {
		t.Fatalf("page: %s\n%s", resp.Status, page)
	}
	for _, h := range []string{"Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options"} {
		if resp.Header.Get(h) == "" {
			t.Errorf("missing security header %s", h)
		}
	}
	_, confirm := get("/stop/"+x.ID, "s3cret")
	m := csrfRE.FindStringSubmatch(confirm)
	if m == nil {
		t.Fatalf("confirmation page has no CSRF token:\n%s", confirm)
	}
	post := func(form url.Values) *http.Response {
		req, _ := http.NewRequest("POST", srv.URL+"/stop/"+x.ID, strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth("owner", "s3cret")
		resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := post(url.Values{}); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("POST without CSRF token: %s", resp.Status)
	}
	if resp := post(url.Values{"csrf": {strings.Repeat("0", 64)}}); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("POST with a forged token: %s", resp.Status)
	}
	if got, _ := d.mgr.store.Get(x.ID); got.State != store.Running {
		t.Fatal("refused POST stopped the experiment")
	}
	if resp := post(url.Values{"csrf": {m[1]}}); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("POST with token: %s", resp.Status)
	}
	if got, _ := d.mgr.store.Get(x.ID); got.State != store.Completed || got.Reason != store.ReasonStoppedOwner {
		t.Fatalf("after owner stop: %+v", got)
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
	srv := httptest.NewServer(d.webHandler(nil))
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
