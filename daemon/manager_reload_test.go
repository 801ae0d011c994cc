package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/arkgw/arkgw/store"
)

// narrowTCP is a running experiment the "[permit] tcp = 203.0.113.0/24"
// policy no longer admits (it declares 198.51.100.0/24:80).
const otherTCP = `tcp = ["203.0.113.0/24:80"]`

func twoRunning(t *testing.T, r *fakeRunner) (*Manager, *store.Experiment, *store.Experiment) {
	t.Helper()
	m := newTestManager(t, testPolicy(t, ""), r, nil)
	ctx := context.Background()
	a, err := m.Submit([]byte(goodManifest), "m.toml", "/")
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.Submit([]byte(strings.Replace(goodManifest, `tcp = ["198.51.100.0/24:80"]`, otherTCP, 1)), "m.toml", "/")
	if err != nil {
		t.Fatal(err)
	}
	m.tick(ctx)
	waitState(t, m, a.ID, store.Running)
	waitState(t, m, b.ID, store.Running)
	return m, a, b
}

// Each class of node.toml key on SIGHUP: keys that need a restart refuse
// the whole reload by name and change nothing; the rest apply.
func TestReloadKeyClasses(t *testing.T) {
	cases := []struct {
		name  string
		extra string
		// refused: the keys named in the refusal; empty = applied.
		refused []string
		// stops: whether experiment a (198.51.100.0/24:80) is stopped;
		// stopsB: b (203.0.113.0/24:80) too.
		stops, stopsB bool
	}{
		{"permit applies live", "[permit]\ntcp = [\"203.0.113.0/24:*\"]\n", nil, true, false},
		{"rate applies live", "[limits]\nmax_mbps = 2\n", nil, false, false},
		{"admission limits apply", "[limits]\nmax_ram_mb = 128\nmax_hours = 24\n[dns]\nqps = 5\n", nil, false, false},
		{"admission limit that running ones exceed", "[limits]\nmax_ram_mb = 32\n", nil, true, true},
		{"node name", "node = \"elsewhere\"\n", []string{"node"}, false, false},
		{"uplink", "uplink = \"eth9\"\n", []string{"uplink"}, false, false},
		{"web", "[web]\nlisten = \"127.0.0.1:9999\"\n", []string{"web.listen"}, false, false},
		{"dns upstreams", "[dns]\nupstreams = [\"192.0.2.53\"]\n", []string{"dns.upstreams"}, false, false},
		{"node_mbps", "[limits]\nnode_mbps = 50\n", []string{"limits.node_mbps"}, false, false},
		{"allow_missing_controllers", "[limits]\nallow_missing_controllers = [\"cpu\"]\n", []string{"limits.allow_missing_controllers"}, false, false},
		{"alerts", "[alerts]\nsyslog = \"udp://192.0.2.10:514\"\nstop_after = 5\n", []string{"alerts.syslog", "alerts.stop_after"}, false, false},
		{"flows", "[flows]\nretention_days = 3\n", []string{"flows.retention_days"}, false, false},
		{"restart key with a live one", "[permit]\ntcp = [\"203.0.113.0/24:*\"]\n[limits]\nnode_mbps = 50\n", []string{"limits.node_mbps"}, false, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newFakeRunner()
			m, a, b := twoRunning(t, r)
			old := m.Policy()
			p2 := &Policy{Node: mustNode(t, old.StateDir(), c.extra)}
			err := m.Reload(context.Background(), p2)
			if len(c.refused) > 0 {
				var re *ReloadError
				if !errors.As(err, &re) || strings.Join(re.RestartKeys, ",") != strings.Join(c.refused, ",") {
					t.Fatalf("Reload = %v, want refused naming %v", err, c.refused)
				}
				for _, k := range c.refused {
					if !strings.Contains(err.Error(), k) {
						t.Fatalf("message %q does not name %s", err, k)
					}
				}
				if m.Policy() != old {
					t.Fatal("a refused reload changed the policy in force")
				}
				if len(r.updates) != 0 {
					t.Fatalf("a refused reload reached the runner: %v", r.updates)
				}
			} else {
				if err != nil {
					t.Fatalf("Reload = %v", err)
				}
				if m.Policy() != p2 {
					t.Fatal("the new policy is not in force")
				}
				if len(r.updates) != 1 {
					t.Fatalf("runner updates %v, want one", r.updates)
				}
			}
			if c.stops {
				if got := waitState(t, m, a.ID, store.Completed); got.Reason != store.ReasonPolicy {
					t.Fatalf("a: %+v", got)
				}
			} else {
				time.Sleep(20 * time.Millisecond)
				if x, _ := m.store.Get(a.ID); x.State != store.Running {
					t.Fatalf("a stopped: %+v", x)
				}
			}
			if c.stopsB {
				waitState(t, m, b.ID, store.Completed)
			} else if x, _ := m.store.Get(b.ID); x.State != store.Running {
				t.Fatalf("b stopped: %+v", x)
			}
		})
	}
}

// When the runner cannot apply the new rules, nothing of the new policy is
// in force: not the rules (the previous ones are re-applied), not
// admission, and no experiment is stopped for it.
func TestReloadFailedApplyKeepsPreviousPolicy(t *testing.T) {
	r := newFakeRunner()
	m, a, b := twoRunning(t, r)
	old := m.Policy()
	effA, _ := m.Effective(a.ID)
	r.updateErr = errors.New("netlink: operation not permitted")
	p2 := &Policy{Node: mustNode(t, old.StateDir(), "[permit]\ntcp = [\"203.0.113.0/24:*\"]\n")}
	err := m.Reload(context.Background(), p2)
	var re *ReloadError
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "operation not permitted") || !strings.Contains(err.Error(), "previous policy stays in force") {
		t.Fatalf("Reload = %v", err)
	}
	if m.Policy() != old {
		t.Fatal("policy committed although the apply failed")
	}
	// Update 1: the new rules (b only); update 2: both previous ones back.
	if len(r.updates) != 2 || strings.Join(r.updates[0], ",") != b.ID || strings.Join(r.updates[1], ",") != a.ID+","+b.ID {
		t.Fatalf("runner updates %v, want [[%s] [%s %s]]", r.updates, b.ID, a.ID, b.ID)
	}
	// Admission still uses the previous policy: a manifest only it admits.
	if _, err := m.Submit([]byte(goodManifest), "m.toml", "/"); err != nil {
		t.Fatalf("admission changed with a failed reload: %v", err)
	}
	time.Sleep(20 * time.Millisecond)
	if x, _ := m.store.Get(a.ID); x.State != store.Running {
		t.Fatalf("experiment stopped by a reload that was not applied: %+v", x)
	}
	if eff, _ := m.Effective(a.ID); eff != effA {
		t.Fatalf("effective policy of %s replaced by a reload that was not applied", a.ID)
	}
}

// The comments of the shipped node.toml say which keys need a restart:
// every key RestartKeys can name is marked so there.
func TestNodeTomlNamesRestartKeys(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "configs", "node.toml"))
	if err != nil {
		t.Fatal(err)
	}
	pol := testPolicy(t, "")
	hash, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	all := &Policy{Node: mustNode(t, "/elsewhere", "node = \"n\"\nuplink = \"u\"\n"+
		"[web]\nlisten = \"127.0.0.1:1\"\npassword_hash = \""+string(hash)+"\"\n"+
		"[dns]\nupstreams = [\"192.0.2.53\"]\n[limits]\nnode_mbps = 1\nallow_missing_controllers = [\"cpu\"]\n"+
		"[alerts]\nnflog_group = 7\nfile = \"/x/a.jsonl\"\nsyslog = \"udp://192.0.2.10:514\"\nstop_after = 1\nwindow = \"1m\"\n"+
		"[flows]\nretention_days = 1\n")}
	keys := pol.RestartKeys(all)
	if len(keys) != 14 {
		t.Fatalf("RestartKeys found %d of 14 changed keys: %v", len(keys), keys)
	}
	text := string(data)
	for _, k := range keys {
		name := k[strings.LastIndex(k, ".")+1:]
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` *=.*#.*\(restart\)`)
		section := ""
		if i := strings.Index(k, "."); i >= 0 {
			section = "[" + k[:i] + "]"
		}
		body := text
		if section != "" {
			start := strings.Index(text, "\n"+section)
			if start < 0 {
				t.Fatalf("node.toml has no %s", section)
			}
			body = text[start+1:]
			if end := strings.Index(body[1:], "\n["); end >= 0 {
				body = body[:end+1]
			}
		}
		if !re.MatchString(body) {
			t.Errorf("configs/node.toml: %s is not marked \"(restart)\" in its comment", k)
		}
	}
}
