package runner

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"golang.org/x/crypto/bcrypt"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/daemon"
	"github.com/arkgw/arkgw/netlab"
	"github.com/arkgw/arkgw/store"
)

// browserSample is the traffic sampling interval of the browser test (the
// daemon's is 10 s).
const browserSample = 500 * time.Millisecond

// newBrowser starts Debian's headless chromium with a fresh profile.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	chrome, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("chromium is not installed; .ci/run installs it (apt-get install chromium)")
		}
		t.Skip("needs chromium (apt-get install chromium)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chrome), chromedp.NoSandbox, chromedp.Headless,
		chromedp.Flag("disable-gpu", true), chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("no-first-run", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelB := chromedp.NewContext(actx)
	ctx, cancelC := context.WithTimeout(ctx, 3*time.Minute)
	t.Cleanup(func() { cancelC(); cancelB(); cancelA() })
	return ctx
}

// freeLoopback is a loopback address with a port free right now.
func freeLoopback(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func screenshotDir(t *testing.T) string {
	if d := os.Getenv("ARKGW_SCREENSHOTS"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	return t.TempDir()
}

// TestPrivilegedBrowserOwnerPage runs a netlab node with the demo's two
// experiments and drives the owner page in Debian's headless chromium: log
// in, the front page's graphs have points once traffic flowed, the
// misbehaving experiment's page shows its declaration, top destinations
// and alerts aggregated, screenshots at desktop and phone width (the page
// must not scroll sideways at 360 px), and Stop through its confirmation.
func TestPrivilegedBrowserOwnerPage(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds network namespaces and sandboxes")
	}
	ctx := newBrowser(t)
	shots := screenshotDir(t)
	w := netlab.NewWorld(t)
	listen := freeLoopback(t)
	hash, err := bcrypt.GenerateFromPassword([]byte("owner-pass"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	nd := startNodeListen(t, w, t.TempDir(), 6000+os.Getpid()%1000, listen, func(c *daemon.Config) {
		c.SampleInterval = browserSample
		c.Policy.Node.Web.PasswordHash = string(hash)
	})
	good, bad := nd.submit(t, demoGood), nd.submit(t, demoBad)
	for _, id := range []string{good, bad} {
		nd.waitState(t, id, store.Running, 30*time.Second)
	}
	// Traffic flowed: both experiments' counters grew, and a few samples
	// were taken since.
	deadline := time.Now().Add(45 * time.Second)
	for _, id := range []string{good, bad} {
		for {
			x, err := nd.client.Get(id)
			if err == nil && x.Live != nil && x.Live.BytesUpToday > 0 && x.Live.BytesDownToday > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("experiment %s: no traffic counted: %+v %v", id, x, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	nd.waitAlert(t, bad, func(r alert.Record) bool { return r.Rule == "tcp-dst" && r.DstPort == 22 })
	time.Sleep(4 * browserSample)
	base := "http://" + listen

	err = chromedp.Do(ctx,
		chromedp.EmulateViewport(1280, 900),
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.CSS("#password")), // redirected to the login form
		chromedp.SetValue(chromedp.CSS("#password"), "owner-pass"),
		chromedp.Click(chromedp.CSS("#loginbtn")),
		chromedp.WaitVisible(chromedp.CSS("#running")),
	)
	if err != nil {
		t.Fatalf("browser: log in: %v", err)
	}
	points := func(sel string) int {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[int](fmt.Sprintf(`(() => { const e = document.querySelector(%q); return e ? +e.getAttribute("data-points") : -1 })()`, sel)))
		if err != nil {
			t.Fatalf("browser: %s: %v", sel, err)
		}
		return v
	}
	for _, sel := range []string{"#node-traffic svg", "#exp-" + good + " .spark svg", "#exp-" + bad + " .spark svg", "#alerts-per-hour svg"} {
		if n := points(sel); n <= 0 {
			t.Errorf("front page: graph %s has %d points", sel, n)
		}
	}
	navText := func(url string) (string, error) {
		if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
			return "", err
		}
		return chromedp.Run(ctx, chromedp.Text(chromedp.CSS("body")))
	}
	// The JSON behind the graphs, as the browser (the session) sees it:
	// bytes in the intervals, not only zeros.
	for _, id := range []string{good, bad} {
		body, err := navText(base + "/api/v1/experiments/" + id + "/traffic?range=1h")
		if err != nil {
			t.Fatalf("browser: traffic JSON: %v", err)
		}
		var tr daemon.TrafficResponse
		if err := json.Unmarshal([]byte(body), &tr); err != nil {
			t.Fatalf("traffic JSON of %s: %v\n%s", id, err, body)
		}
		var up, down uint64
		for _, p := range tr.Points {
			up += p.UpBytes
			down += p.DownBytes
		}
		if len(tr.Points) < 3 || up == 0 || down == 0 || tr.CapBps <= 0 {
			t.Errorf("traffic of %s: %d points, %d bytes up, %d down, cap %v", id, len(tr.Points), up, down, tr.CapBps)
		}
	}

	// The misbehaving experiment's page: its flows reach the flow log (open
	// ones from conntrack) within a few seconds.
	expURL := base + "/experiments/" + bad
	var page string
	for end := time.Now().Add(30 * time.Second); ; {
		page, err = navText(expURL)
		if err != nil {
			t.Fatalf("browser: experiment page: %v", err)
		}
		if strings.Contains(page, "198.51.100.1") || time.Now().After(end) {
			break
		}
		time.Sleep(time.Second)
	}
	for _, want := range []string{"Survey that breaks its declaration", "mallory@example.org", "ark-2026.1",
		"icmp:          echo-request", "dns:           arkgw.test", // the effective policy as arkgw check prints it
		"packet/tcp-dst", "tcp 203.0.113.10:22", "CPU now", "Memory now"} {
		if !strings.Contains(page, want) {
			t.Errorf("experiment page lacks %q", want)
		}
	}
	dests, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#destinations")))
	if err != nil || !strings.Contains(dests, "198.51.100.1") || !strings.Contains(dests, "icmp") {
		t.Errorf("top destinations: %q %v", dests, err)
	}
	// One row per (rule, destination), with its count.
	rows, err := chromedp.Run(ctx, chromedp.Evaluate[int](`[...document.querySelectorAll("#alerts tr.alert-group")].filter(r => r.cells[0].textContent == "packet/tcp-dst" && r.cells[1].textContent == "tcp 203.0.113.10:22").length`))
	if err != nil || rows != 1 {
		t.Errorf("alert rows for tcp-dst 203.0.113.10:22: %d %v", rows, err)
	}
	if n := points("#rate-hour svg"); n <= 0 {
		t.Errorf("experiment page: rate graph has %d points", n)
	}
	if n := points("#bytes-today svg"); n <= 0 {
		t.Errorf("experiment page: bytes-today graph has %d points", n)
	}

	// Screenshots at desktop and phone width; at 360 px nothing but the
	// tables' own scroll boxes may be wider than the screen.
	for _, width := range []int64{1280, 360} {
		for name, url := range map[string]string{"front": base + "/", "experiment": expURL} {
			err := chromedp.Do(ctx, chromedp.EmulateViewport(width, 800), chromedp.Navigate(url), chromedp.WaitVisible(chromedp.CSS("h1")))
			if err != nil {
				t.Fatalf("browser: %s at %d px: %v", name, width, err)
			}
			png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
			if err != nil {
				t.Fatalf("browser: screenshot %s at %d px: %v", name, width, err)
			}
			path := filepath.Join(shots, fmt.Sprintf("%s-%d.png", name, width))
			if err := os.WriteFile(path, png, 0o644); err != nil {
				t.Fatal(err)
			}
			sw, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.documentElement.scrollWidth`))
			if err != nil || sw > int(width) {
				t.Errorf("%s at %d px: the page is %d px wide (%v)", name, width, sw, err)
			}
		}
	}
	t.Logf("screenshots in %s", shots)

	// Stop through the confirmation form.
	err = chromedp.Do(ctx,
		chromedp.EmulateViewport(1280, 900),
		chromedp.Navigate(expURL),
		chromedp.Click(chromedp.CSS("#stop")),
		chromedp.WaitVisible(chromedp.CSS("#confirm")),
		chromedp.Click(chromedp.CSS("#confirm")),
		chromedp.WaitVisible(chromedp.CSS("#reason")),
	)
	if err != nil {
		t.Fatalf("browser: stop through the confirmation form: %v", err)
	}
	reason, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#reason")))
	if err != nil || reason != store.ReasonStoppedOwner {
		t.Errorf("after Stop the page says %q (%v)", reason, err)
	}
	if x := nd.waitState(t, bad, store.Completed, 30*time.Second); x.Reason != store.ReasonStoppedOwner {
		t.Errorf("record after Stop: %+v", x.Experiment)
	}
	if x, _ := nd.client.Get(good); x.State != store.Running {
		t.Errorf("the other experiment is %s", x.State)
	}
}
