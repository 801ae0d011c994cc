package accounting

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/gateway/quota"
	"go.etcd.io/bbolt"
)

// fakeKernel mimics quota.Table: counters only grow, quota used is separate.
type fakeKernel struct {
	mu     sync.Mutex
	counts map[string]quota.Counts
	adds   []quota.Exp
	resets int
}

func newFake() *fakeKernel { return &fakeKernel{counts: map[string]quota.Counts{}} }

func (f *fakeKernel) Add(e quota.Exp) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.adds = append(f.adds, e)
	c, ok := f.counts[e.ID]
	if !ok {
		c.QuotaUsed = e.UsedBytes
	}
	c.Budget = e.BudgetBytes
	f.counts[e.ID] = c
	return !ok, nil
}
func (f *fakeKernel) Read() (map[string]quota.Counts, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := map[string]quota.Counts{}
	for k, v := range f.counts {
		m[k] = v
	}
	return m, nil
}
func (f *fakeKernel) ReadOne(id string) (quota.Counts, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts[id], nil
}
func (f *fakeKernel) ResetQuota(id string) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.counts[id]
	u := c.QuotaUsed
	c.QuotaUsed = 0
	f.counts[id] = c
	f.resets++
	return u, nil
}
func (f *fakeKernel) SetBudget(id string, b uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.counts[id]
	c.Budget = b
	f.counts[id] = c
	return nil
}
func (f *fakeKernel) Remove(id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.counts, id)
	return nil
}
func (f *fakeKernel) traffic(id string, up, down uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.counts[id]
	c.Up += up
	c.Down += down
	c.QuotaUsed += up + down
	f.counts[id] = c
}

type fakeShaper struct {
	mu    sync.Mutex
	rates []uint64
}

func (s *fakeShaper) Update(_ context.Context, id string, r uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rates = append(s.rates, r)
	return nil
}
func (s *fakeShaper) last() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.rates) == 0 {
		return 0
	}
	return s.rates[len(s.rates)-1]
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

type alerts struct {
	mu  sync.Mutex
	got []alert.Record
}

func (a *alerts) Emit(r alert.Record) { a.mu.Lock(); a.got = append(a.got, r); a.mu.Unlock() }
func (a *alerts) rules() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, r := range a.got {
		out = append(out, r.Rule)
	}
	return out
}

func openDB(t *testing.T, path string) *bbolt.DB {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func TestThrottleRate(t *testing.T) {
	for _, c := range []struct {
		left uint64
		secs float64
		cap  uint64
		want uint64
	}{
		{400_000, 43200, 5_000_000, MinThrottleBps}, // noon, 400 KB left: floor
		{1_000_000_000, 3600, 5_000_000, 2_222_222}, // 1 GB over an hour
		{1_000_000_000, 60, 5_000_000, 5_000_000},   // never above the cap
		{1_000_000_000, 60, 0, 133_333_333},         // no cap
		{100, 0.2, 5_000_000, MinThrottleBps},       // seconds clamped to 1
	} {
		if got := ThrottleRate(c.left, c.secs, c.cap); got != c.want {
			t.Errorf("ThrottleRate(%d, %v, %d) = %d, want %d", c.left, c.secs, c.cap, got, c.want)
		}
	}
}

func TestDayBoundaries(t *testing.T) {
	for _, c := range []struct {
		t    time.Time
		day  string
		left float64
	}{
		{time.Date(2026, 11, 25, 23, 59, 59, 0, time.UTC), "2026-11-25", 1},
		{time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC), "2026-11-26", 86400},
		{time.Date(2026, 12, 31, 12, 0, 0, 0, time.UTC), "2026-12-31", 43200},
		// 01:30 in UTC+2 is still the previous UTC day.
		{time.Date(2026, 11, 26, 1, 30, 0, 0, time.FixedZone("x", 2*3600)), "2026-11-25", 1800},
	} {
		if got := DayOf(c.t); got != c.day {
			t.Errorf("DayOf(%v) = %s, want %s", c.t, got, c.day)
		}
		if got := SecondsLeft(c.t); got != c.left {
			t.Errorf("SecondsLeft(%v) = %v, want %v", c.t, got, c.left)
		}
	}
}

func newAcct(t *testing.T, db *bbolt.DB, k Kernel, sh Shaper, al alert.Sink, clk *clock) *Accountant {
	a, err := New(Config{DB: db, Kernel: k, Shaper: sh, Alerts: al, Clock: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestBudgetAlertThrottleRollover(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, filepath.Join(t.TempDir(), "s.db"))
	defer db.Close()
	k, sh, al := newFake(), &fakeShaper{}, &alerts{}
	clk := &clock{t: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}
	a := newAcct(t, db, k, sh, al, clk)
	e := Exp{ID: "e1", HostIf: "arke1", CapBps: 5_000_000, BudgetBytes: 1_000_000_000}
	if err := a.Track(ctx, e); err != nil {
		t.Fatal(err)
	}
	k.traffic("e1", 500_000_000, 200_000_000)
	a.Poll(ctx)
	if st, _ := a.Status("e1"); st.UpBytes != 500_000_000 || st.DownBytes != 200_000_000 || st.Throttled {
		t.Fatalf("70%%: %+v", st)
	}
	if len(al.rules()) != 0 {
		t.Fatalf("alert before 80%%: %v", al.rules())
	}
	k.traffic("e1", 100_000_000, 0) // 80%
	a.Poll(ctx)
	st, _ := a.Status("e1")
	want := ThrottleRate(200_000_000, 43200, 5_000_000)
	if !st.Throttled || st.RateBps != want || sh.last() != want {
		t.Fatalf("80%%: %+v, shaper got %d, want rate %d", st, sh.last(), want)
	}
	// A policy reload lowers the cap: the throttled rate is applied again.
	sh.rates = nil
	if err := a.SetCap(ctx, "e1", 4_000_000); err != nil {
		t.Fatal(err)
	}
	if sh.last() != want {
		t.Fatalf("after SetCap the shaper got %v, want %d again", sh.rates, want)
	}
	if err := a.SetCap(ctx, "e1", 5_000_000); err != nil {
		t.Fatal(err)
	}
	k.traffic("e1", 1, 0)
	a.Poll(ctx)
	if r := al.rules(); len(r) != 1 || r[0] != RuleAlert80 {
		t.Fatalf("alerts %v, want one %s", r, RuleAlert80)
	}
	// Late in the day the leftover rate exceeds the cap: cap restored.
	clk.t = time.Date(2026, 11, 25, 23, 59, 0, 0, time.UTC)
	a.Poll(ctx)
	if st, _ := a.Status("e1"); st.Throttled || st.RateBps != 5_000_000 || sh.last() != 5_000_000 {
		t.Fatalf("late: %+v shaper %d", st, sh.last())
	}
	k.traffic("e1", 300_000_000, 0)
	a.Poll(ctx)
	if st, _ := a.Status("e1"); !st.Exhausted {
		t.Fatalf("100%%: %+v", st)
	}
	if r := al.rules(); len(r) != 2 || r[1] != RuleExhausted {
		t.Fatalf("alerts %v", r)
	}
	// Rollover.
	clk.t = time.Date(2026, 11, 26, 0, 0, 1, 0, time.UTC)
	k.traffic("e1", 10, 0) // straggler of the old day
	a.Poll(ctx)
	st, _ = a.Status("e1")
	if st.Day != "2026-11-26" || st.UpBytes != 0 || st.DownBytes != 0 || st.Exhausted || st.Throttled {
		t.Fatalf("after rollover: %+v", st)
	}
	if k.resets != 1 {
		t.Errorf("quota resets %d, want 1", k.resets)
	}
	h, err := a.History("e1")
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != 2 || h[0].Day != "2026-11-25" || h[0].Up != 900_000_011 || h[0].Down != 200_000_000 {
		t.Fatalf("history %+v", h)
	}
	// New day: the 80% alert can fire again.
	k.traffic("e1", 850_000_000, 0)
	a.Poll(ctx)
	if r := al.rules(); len(r) != 3 || r[2] != RuleAlert80 {
		t.Fatalf("alerts on day 2: %v", r)
	}
}

// A daemon restart (new Accountant, same store, kernel counters kept) loses
// nothing and counts nothing twice; a reboot (counters recreated) restarts
// the counters from the saved total and restores the quota's used bytes.
func TestRestartPersistence(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "s.db")
	db := openDB(t, path)
	k := newFake()
	clk := &clock{t: time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)}
	a := newAcct(t, db, k, nil, nil, clk)
	e := Exp{ID: "e2", HostIf: "arke2", BudgetBytes: 10_000_000}
	if err := a.Track(ctx, e); err != nil {
		t.Fatal(err)
	}
	k.traffic("e2", 1000, 2000)
	ctxRun, stop := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- a.Run(ctxRun) }()
	k.traffic("e2", 10, 20)
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	before, _ := a.Status("e2")
	if before.UpBytes != 1010 || before.DownBytes != 2020 {
		t.Fatalf("before restart %+v", before)
	}
	db.Close()

	// Traffic while the daemon is down: the kernel keeps counting.
	k.traffic("e2", 5, 5)
	db = openDB(t, path)
	defer db.Close()
	b := newAcct(t, db, k, nil, nil, clk)
	if err := b.Track(ctx, e); err != nil {
		t.Fatal(err)
	}
	after, _ := b.Status("e2")
	if after.UpBytes != 1015 || after.DownBytes != 2025 {
		t.Fatalf("after restart %+v, want 1015/2025", after)
	}
	b.Poll(ctx)
	if again, _ := b.Status("e2"); again != after {
		t.Fatalf("second poll changed totals: %+v -> %+v", after, again)
	}
	if err := b.Persist(); err != nil {
		t.Fatal(err)
	}

	// Reboot: the kernel forgets everything.
	k2 := newFake()
	c := newAcct(t, db, k2, nil, nil, clk)
	if err := c.Track(ctx, e); err != nil {
		t.Fatal(err)
	}
	if st, _ := c.Status("e2"); st.UpBytes != 1015 || st.DownBytes != 2025 {
		t.Fatalf("after reboot %+v", st)
	}
	if got := k2.adds[0].UsedBytes; got != 3040 {
		t.Errorf("quota recreated with used %d, want 3040", got)
	}
	k2.traffic("e2", 1, 0)
	c.Poll(ctx)
	if st, _ := c.Status("e2"); st.UpBytes != 1016 {
		t.Fatalf("after reboot + traffic %+v", st)
	}

	// Restart on the next day: yesterday goes to history, today starts at 0.
	clk.t = time.Date(2026, 11, 26, 8, 0, 0, 0, time.UTC)
	c.Persist()
	d := newAcct(t, db, k2, nil, nil, clk)
	if err := d.Track(ctx, e); err != nil {
		t.Fatal(err)
	}
	if st, _ := d.Status("e2"); st.Day != "2026-11-26" || st.UpBytes != 0 {
		t.Fatalf("next-day restart %+v", st)
	}
	h, _ := d.History("e2")
	if len(h) != 2 || h[0].Up != 1016 {
		t.Fatalf("history %+v", h)
	}
}
