package daemon

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/store"
)

// fakeRunner records what the manager asks of the kernel side.
type fakeRunner struct {
	mu       sync.Mutex
	started  map[string]*fakeInstance
	adopted  []string
	swept    map[string]bool
	updates  [][]string
	startErr error
	adoptErr error
	// updateErr fails the next Update (then clears itself).
	updateErr error
	// stopGate, when set, holds every instance's Stop until it is closed.
	stopGate chan struct{}
}

type fakeInstance struct {
	id      string
	gate    chan struct{}
	done    chan struct{}
	once    sync.Once
	stopped bool
	result  Result
}

func (f *fakeInstance) Done() <-chan struct{} { return f.done }
func (f *fakeInstance) Result() Result        { return f.result }
func (f *fakeInstance) Status() Status {
	return Status{BytesUpToday: 100, BytesDownToday: 200, RateMbps: 1}
}
func (f *fakeInstance) Stop(context.Context) error {
	if f.gate != nil {
		<-f.gate
	}
	f.stopped = true
	f.exit(Result{Signal: "killed"})
	return nil
}
func (f *fakeInstance) exit(r Result) {
	f.once.Do(func() { f.result = r; close(f.done) })
}

func newFakeRunner() *fakeRunner { return &fakeRunner{started: map[string]*fakeInstance{}} }

func (r *fakeRunner) Start(_ context.Context, eff *configs.Effective, slot int, dir string) (Instance, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.startErr != nil {
		return nil, r.startErr
	}
	i := &fakeInstance{id: eff.ID, done: make(chan struct{}), gate: r.stopGate}
	r.started[eff.ID] = i
	return i, nil
}

func (r *fakeRunner) Adopt(_ context.Context, eff *configs.Effective, slot int, dir string) (Instance, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.adoptErr != nil {
		return nil, r.adoptErr
	}
	r.adopted = append(r.adopted, eff.ID)
	i := &fakeInstance{id: eff.ID, done: make(chan struct{})}
	r.started[eff.ID] = i
	return i, nil
}

func (r *fakeRunner) Update(_ context.Context, effs []*configs.Effective) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ids []string
	for _, e := range effs {
		ids = append(ids, e.ID)
	}
	r.updates = append(r.updates, ids)
	if err := r.updateErr; err != nil {
		r.updateErr = nil
		return err
	}
	return nil
}

func (r *fakeRunner) Sweep(_ context.Context, keep map[string]bool) error {
	r.mu.Lock()
	r.swept = keep
	r.mu.Unlock()
	return nil
}

func (r *fakeRunner) DefaultRouters() []netip.Addr { return nil }

func (r *fakeRunner) instance(id string) *fakeInstance {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.started[id]
}

type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

const goodManifest = `
title = "ping survey"
container = "ark-2026.1"
command = ["/bin/true"]
max_hours = 1
cpu = "minimal"
max_ram_mb = 64
max_mbps = 1
ip = "ipv4"
icmp = ["echo-request"]
tcp = ["198.51.100.0/24:80"]
[[experimenters]]
name = "A. Researcher"
email = "researcher@example.edu"
`

// labNode turns on the documentation prefixes the test manifests use.
const labNode = "\n[lab]\ndocumentation_prefixes = true\n"

func testPolicy(t *testing.T, extra string) *Policy {
	t.Helper()
	dir := t.TempDir()
	n, err := configs.ParseNode("node.toml", []byte("state_dir = \""+dir+"\"\n"+extra+labNode))
	if err != nil {
		t.Fatal(err)
	}
	return &Policy{Node: n}
}

func newTestManager(t *testing.T, pol *Policy, r Runner, clk Clock) *Manager {
	t.Helper()
	st, err := store.Open(pol.StateDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return NewManager(Options{Store: st, Runner: r, Policy: pol, Clock: clk})
}

func waitState(t *testing.T, m *Manager, id, state string) *store.Experiment {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		x, err := m.store.Get(id)
		if err == nil && x.State == state {
			return x
		}
		if time.Now().After(deadline) {
			t.Fatalf("experiment %s: state %v, want %s", id, x, state)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestLifecyclePlannedRunningCompleted(t *testing.T) {
	clk := &testClock{t: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}
	r := newFakeRunner()
	m := newTestManager(t, testPolicy(t, ""), r, clk)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	planned := strings.Replace(goodManifest, `max_hours = 1`, "max_hours = 1\nstart = 2026-11-25T13:00:00Z", 1)
	x, err := m.Submit([]byte(planned), "m.toml", "/")
	if err != nil {
		t.Fatal(err)
	}
	if x.State != store.Planned || !x.Start.Equal(time.Date(2026, 11, 25, 13, 0, 0, 0, time.UTC)) {
		t.Fatalf("submitted: %+v", x)
	}
	m.tick(ctx)
	if r.instance(x.ID) != nil {
		t.Fatal("started before its start time")
	}
	clk.add(time.Hour)
	m.tick(ctx)
	run := waitState(t, m, x.ID, store.Running)
	if !run.Deadline.Equal(clk.Now().Add(time.Hour)) {
		t.Fatalf("deadline %v, want start + max_hours", run.Deadline)
	}
	// The command exits on its own.
	r.instance(x.ID).exit(Result{ExitCode: 3, CPUSecs: 1.5})
	done := waitState(t, m, x.ID, store.Completed)
	if done.Reason != store.ReasonFinished || done.ExitCode != 3 || done.BytesUp != 100 || done.BytesDown != 200 {
		t.Fatalf("completed: %+v", done)
	}
	if !r.instance(x.ID).stopped {
		t.Fatal("runner leftovers not removed after the command exited")
	}
}

func TestMaxDurationEnforced(t *testing.T) {
	clk := &testClock{t: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}
	r := newFakeRunner()
	m := newTestManager(t, testPolicy(t, ""), r, clk)
	ctx := context.Background()
	x, err := m.Submit([]byte(goodManifest), "m.toml", "/")
	if err != nil {
		t.Fatal(err)
	}
	m.tick(ctx)
	waitState(t, m, x.ID, store.Running)
	clk.add(61 * time.Minute)
	m.tick(ctx)
	if got := waitState(t, m, x.ID, store.Completed); got.Reason != store.ReasonTimeout {
		t.Fatalf("reason %q, want timeout", got.Reason)
	}
}

func TestRefusedWithOneLinePerConflict(t *testing.T) {
	m := newTestManager(t, testPolicy(t, "[permit]\ntcp = [\"198.51.100.0/24:443\"]\nicmp = [\"echo-reply\"]\n"), newFakeRunner(), nil)
	_, err := m.Submit([]byte(goodManifest), "m.toml", "/")
	var ref *RefusedError
	if !errors.As(err, &ref) {
		t.Fatalf("Submit = %v, want RefusedError", err)
	}
	if len(ref.Conflicts) != 2 || !strings.HasPrefix(ref.Conflicts[0], "icmp[0]") && !strings.HasPrefix(ref.Conflicts[1], "icmp[0]") {
		t.Fatalf("conflicts = %q, want one for tcp[0] and one for icmp[0]", ref.Conflicts)
	}
	list, _ := m.store.List()
	if len(list) != 0 {
		t.Fatalf("a refused experiment was stored: %+v", list[0])
	}
	// An unreadable manifest is an error, not a refusal.
	if _, err := m.Submit([]byte("title = "), "bad.toml", "/"); err == nil || errors.As(err, &ref) {
		t.Fatalf("bad TOML: %v", err)
	}
}

func TestStopAndStartFailure(t *testing.T) {
	r := newFakeRunner()
	m := newTestManager(t, testPolicy(t, ""), r, nil)
	ctx := context.Background()
	x, _ := m.Submit([]byte(goodManifest), "m.toml", "/")
	m.tick(ctx)
	waitState(t, m, x.ID, store.Running)
	if err := m.Stop(ctx, x.ID, store.ReasonStoppedOwner); err != nil {
		t.Fatal(err)
	}
	if got, _ := m.store.Get(x.ID); got.State != store.Completed || got.Reason != store.ReasonStoppedOwner {
		t.Fatalf("after stop: %+v", got)
	}
	if _, err := os.Stat(filepath.Join(m.ExperimentDir(x.ID))); err != nil {
		t.Fatalf("experiment dir not made: %v", err)
	}

	r.startErr = errors.New("add veth: file exists")
	y, _ := m.Submit([]byte(goodManifest), "m.toml", "/")
	m.tick(ctx)
	got := waitState(t, m, y.ID, store.Completed)
	if got.Reason != store.ReasonRefused || !strings.Contains(got.Detail, "add veth") {
		t.Fatalf("failed start recorded as %+v", got)
	}
	if got.ExitCode != ExitStartFailed {
		t.Errorf("failed start recorded exit %d, want %d (never 0: the command did not run)", got.ExitCode, ExitStartFailed)
	}
	// The experiment's stderr says why, for `arkgw logs ID --stderr`.
	b, err := os.ReadFile(filepath.Join(m.ExperimentDir(y.ID), "stderr"))
	if err != nil || !strings.Contains(string(b), "failed to start") || !strings.Contains(string(b), "add veth: file exists") {
		t.Errorf("stderr of a failed start = %q, %v; want the reason", b, err)
	}
}

func TestRecoverAdoptsOrCleansUp(t *testing.T) {
	pol := testPolicy(t, "")
	r := newFakeRunner()
	m := newTestManager(t, pol, r, nil)
	ctx := context.Background()
	a, _ := m.Submit([]byte(goodManifest), "m.toml", "/")
	b, _ := m.Submit([]byte(goodManifest), "m.toml", "/")
	m.tick(ctx)
	waitState(t, m, a.ID, store.Running)
	waitState(t, m, b.ID, store.Running)

	// "Restart": a new manager on the same store adopts both.
	r2 := newFakeRunner()
	m2 := NewManager(Options{Store: m.store, Runner: r2, Policy: pol})
	if err := m2.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if len(r2.adopted) != 2 || !r2.swept[a.ID] || !r2.swept[b.ID] {
		t.Fatalf("adopted %v, sweep kept %v", r2.adopted, r2.swept)
	}
	// A runner that cannot adopt: experiments are recorded as lost (Adopt
	// removes what it found).
	r3 := newFakeRunner()
	r3.adoptErr = errors.New("netns gone")
	m3 := NewManager(Options{Store: m.store, Runner: r3, Policy: pol})
	m3.Recover(ctx)
	if got, _ := m.store.Get(a.ID); got.State != store.Completed || got.Reason != store.ReasonLost || !strings.Contains(got.Detail, "netns gone") {
		t.Fatalf("unadoptable experiment: %+v", got)
	}
	// The next start keeps nothing: nothing runs any more.
	r4 := newFakeRunner()
	NewManager(Options{Store: m.store, Runner: r4, Policy: pol}).Recover(ctx)
	if len(r4.swept) != 0 {
		t.Fatalf("sweep kept %v", r4.swept)
	}
}

func TestReloadStopsConflictingAndUpdatesTheRest(t *testing.T) {
	r := newFakeRunner()
	m := newTestManager(t, testPolicy(t, ""), r, nil)
	ctx := context.Background()
	a, _ := m.Submit([]byte(goodManifest), "m.toml", "/")
	b, _ := m.Submit([]byte(strings.Replace(goodManifest, `tcp = ["198.51.100.0/24:80"]`, `tcp = ["203.0.113.0/24:80"]`, 1)), "m.toml", "/")
	m.tick(ctx)
	waitState(t, m, a.ID, store.Running)
	waitState(t, m, b.ID, store.Running)

	// The owner narrows TCP to 203.0.113.0/24: a is no longer admitted.
	p2 := &Policy{Node: mustNode(t, m.Policy().StateDir(), "[permit]\ntcp = [\"203.0.113.0/24:*\"]\n")}
	if err := m.Reload(ctx, p2); err != nil {
		t.Fatal(err)
	}
	got := waitState(t, m, a.ID, store.Completed)
	if got.Reason != store.ReasonPolicy || !strings.Contains(got.Detail, "tcp[0]") {
		t.Fatalf("conflicting experiment after reload: %+v", got)
	}
	if x, _ := m.store.Get(b.ID); x.State != store.Running {
		t.Fatalf("admitted experiment stopped by reload: %+v", x)
	}
	if len(r.updates) != 1 || len(r.updates[0]) != 1 || r.updates[0][0] != b.ID {
		t.Fatalf("rules updated for %v, want only %s", r.updates, b.ID)
	}
}

func mustNode(t *testing.T, stateDir, extra string) *configs.NodePolicy {
	n, err := configs.ParseNode("node.toml", []byte("state_dir = \""+stateDir+"\"\n"+extra+labNode))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestPauseStopsAllAndHoldsPlanned(t *testing.T) {
	r := newFakeRunner()
	m := newTestManager(t, testPolicy(t, ""), r, nil)
	ctx := context.Background()
	a, _ := m.Submit([]byte(goodManifest), "m.toml", "/")
	m.tick(ctx)
	waitState(t, m, a.ID, store.Running)
	if err := m.StopAll(ctx, store.ReasonStoppedOwner); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, a.ID, store.Completed)
	b, _ := m.Submit([]byte(goodManifest), "m.toml", "/")
	m.tick(ctx)
	if x, _ := m.store.Get(b.ID); x.State != store.Planned {
		t.Fatalf("started while paused: %+v", x)
	}
	m.Resume()
	m.tick(ctx)
	waitState(t, m, b.ID, store.Running)
}

// A daemon shutdown returns at once although experiments still run: they
// outlive it and are re-adopted at the next start.
func TestShutdownDoesNotWaitForExperiments(t *testing.T) {
	r := newFakeRunner()
	m := newTestManager(t, testPolicy(t, ""), r, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	x, _ := m.Submit([]byte(goodManifest), "m.toml", "/")
	waitState(t, m, x.ID, store.Running)
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return while an experiment runs")
	}
	if r.instance(x.ID).stopped {
		t.Fatal("shutdown stopped the experiment")
	}
	if got, _ := m.store.Get(x.ID); got.State != store.Running {
		t.Fatalf("after shutdown: %+v", got)
	}
}
