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
	srv := httptest.NewServer(d.webHandler())
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

	// Log in through the form, as the owner does.
	row := "#exp-" + x.ID
	err = chromedp.Do(ctx,
		chromedp.Navigate(srv.URL+"/"),
		chromedp.WaitVisible(chromedp.CSS("#password")),
		chromedp.SetValue(chromedp.CSS("#password"), "s3cret"),
		chromedp.Click(chromedp.CSS("#loginbtn")),
		chromedp.WaitVisible(chromedp.CSS("#running")),
	)
	if err != nil {
		t.Fatalf("browser: log in: %v", err)
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
		chromedp.WaitVisible(chromedp.CSS("#reason")),
	)
	if err != nil {
		t.Fatalf("browser: stop through the confirmation form: %v", err)
	}
	state, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#reason")))
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

	// Without a session the page is refused; a cross-site POST too.
	resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("no session: %s", resp.Status)
	}
	req, _ := http.NewRequest("POST", srv.URL+"/pause", strings.NewReader("csrf=x"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "https://evil.example")
	req.Header.Set("Sec-Fetch-Site", "cross-site")
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
