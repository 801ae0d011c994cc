package daemon

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"golang.org/x/crypto/bcrypt"

	"github.com/arkgw/arkgw/store"
)

// TestBrowserOwnerStops drives Debian's headless chromium through the
// owner's page: the experiments and their contacts are shown, Stop goes
// through the confirmation form, and the page shows the new state.
func TestBrowserOwnerStops(t *testing.T) {
	chrome, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("chromium is not installed; .ci/run installs it (apt-get install chromium)")
		}
		t.Skip("needs chromium (apt-get install chromium)")
	}
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

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chrome), chromedp.NoSandbox, chromedp.Headless,
		chromedp.Flag("disable-gpu", true), chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("no-first-run", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, 60*time.Second)
	defer cancel()

	// Credentials travel as a Basic header, as a browser sends them after
	// the login prompt.
	auth := "Basic " + basic("owner", "s3cret")
	row := "#exp-" + x.ID
	if err := chromedp.Do(ctx, setHeaders(map[string]any{"Authorization": auth}), chromedp.Navigate(srv.URL+"/")); err != nil {
		t.Fatalf("browser: open page: %v", err)
	}
	running, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#running")))
	if err != nil {
		t.Fatalf("browser: running table: %v", err)
	}
	mail, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.CSS(row+" a[href^='mailto:']"), "href"))
	if err != nil {
		t.Fatalf("browser: contact link: %v", err)
	}
	contacts := mail.Value
	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(row+" a.stop")),
		chromedp.WaitVisible(chromedp.CSS("#confirm")),
		chromedp.Click(chromedp.CSS("#confirm")),
		chromedp.WaitVisible(chromedp.CSS("#completed")),
	)
	if err != nil {
		t.Fatalf("browser: stop through the confirmation form: %v", err)
	}
	state, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#completed "+row+" .state")))
	if err != nil {
		t.Fatalf("browser: completed row: %v", err)
	}
	if !strings.Contains(running, "ping survey") || contacts != "mailto:researcher@example.edu" {
		t.Fatalf("page showed running=%q contact=%q", running, contacts)
	}
	if !strings.Contains(state, store.ReasonStoppedOwner) {
		t.Fatalf("after Stop the page shows %q", state)
	}
	if got, _ := d.mgr.store.Get(x.ID); got.State != store.Completed {
		t.Fatalf("store: %+v", got)
	}

	// Without credentials the page is refused; a cross-site POST too.
	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no credentials: %s", resp.Status)
	}
	req, _ := http.NewRequest("POST", srv.URL+"/pause", strings.NewReader("csrf=x"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "https://evil.example")
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	req.SetBasicAuth("owner", "s3cret")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-site POST: %s", resp.Status)
	}
	if p, _ := d.mgr.store.Paused(); p {
		t.Fatal("cross-site POST paused the node")
	}
}
