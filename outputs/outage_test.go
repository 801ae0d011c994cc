package outputs

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/arkgw/arkgw/store"
)

// metricValue reads one unlabelled metric of the shipper.
func metricValue(t *testing.T, s *Shipper, name string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(s.Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			if g := m.GetGauge(); g != nil {
				return g.GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not exported", name)
	return 0
}

// The store goes away for an hour (simulated: the shipper's clock is the
// test's) while the experiment keeps writing and then ends. The node says
// so (pending bytes, lag, one alert), backs off instead of hammering, and
// once the store is back (same port, same data) everything arrives once.
func TestStoreOutageOfAnHour(t *testing.T) {
	tmp := t.TempDir()
	s3db := filepath.Join(tmp, "s3.db")
	srv := startServer(t, s3db, "127.0.0.1:0")
	clk := newFakeClock()
	alerts := &alertLog{}
	pol := testPolicy(srv.Addr)
	pol.BacklogAlertBytes, pol.DiskBudgetBytes = 1<<20, 1<<20
	s, err := New(Config{Policy: pol, Node: testNode, DB: openDB(t, filepath.Join(tmp, "arkgw.db")),
		Clock: clk, Credentials: testCreds, Alerts: alerts, MinBackoff: time.Second, MaxBackoff: 5 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(tmp, "x1")
	if err := s.Track("x1", dir); err != nil {
		t.Fatal(err)
	}
	appendOutput(t, dir, "stdout", 300_000, 1)
	runShipper(t, s)
	waitFor(t, "the first output shipped", 30*time.Second, func() bool { p, _ := s.Progress("x1"); return p.ShippedBytes == 300_000 })

	srv.Stop()
	appendOutput(t, dir, "stdout", 2<<20+12345, 2)
	appendOutput(t, dir, "stderr", 5000, 3)
	s.mu.Lock()
	tries0 := s.attempts
	s.mu.Unlock()
	begin := clk.Now()
	for clk.Now().Before(begin.Add(time.Hour)) {
		// Both loops asleep: the scanner until the next interval, the
		// uploader until its backoff ends.
		clk.WaitWaiters(2, time.Second) // 1 when the uploader is idle
		clk.AdvanceToNext()
	}
	time.Sleep(50 * time.Millisecond)
	s.mu.Lock()
	tries := s.attempts - tries0
	s.mu.Unlock()
	// Doubling from 1 s to the 5-minute cap: about 20 tries in the hour,
	// not one per poke or per interval.
	if tries < 5 || tries > 30 {
		t.Errorf("%d upload tries during an hour of outage, want about 20 (backoff 1s doubling to 5m)", tries)
	}
	if p := metricValue(t, s, "arkgw_outputs_pending_bytes"); p != 2<<20+12345+5000 {
		t.Errorf("arkgw_outputs_pending_bytes = %v, want %d", p, 2<<20+12345+5000)
	}
	if lag := metricValue(t, s, "arkgw_outputs_upload_lag_seconds"); lag < 3000 {
		t.Errorf("arkgw_outputs_upload_lag_seconds = %v after an hour, want about 3600", lag)
	}
	if f := metricValue(t, s, "arkgw_outputs_upload_failures_total"); f < 5 {
		t.Errorf("arkgw_outputs_upload_failures_total = %v", f)
	}
	if n := alerts.count(); n != 1 {
		t.Fatalf("%d backlog alerts, want exactly 1: %+v", n, alerts.recs)
	}
	if r := alerts.recs[0]; r.Kind != KindOutputs || r.Rule != "backlog" || r.Node != testNode || r.Message == "" {
		t.Errorf("backlog alert %+v", r)
	}

	// The experiment ends during the outage.
	if err := s.Finish(completed("x1", begin, store.ReasonFinished), dir); err != nil {
		t.Fatal(err)
	}
	stdout, stderr := readFile(t, filepath.Join(dir, "stdout")), readFile(t, filepath.Join(dir, "stderr"))
	clk.Advance(10 * time.Minute)

	// The store comes back on the same port with the same data.
	srv = startServer(t, s3db, srv.Addr)
	deadline := time.Now().Add(60 * time.Second)
	for p, _ := s.Progress("x1"); !p.Shipped; p, _ = s.Progress("x1") {
		if time.Now().After(deadline) {
			t.Fatalf("not shipped a minute after the store came back: %+v", p)
		}
		clk.WaitWaiters(2, 100*time.Millisecond)
		clk.AdvanceToNext()
	}
	objs := srv.objects(t, "fleet/"+testNode+"/x1/")
	// 300 kB before the outage, then 2 MiB + 12345 in 1 MiB chunks.
	if n := checkStream(t, objs, "stdout", stdout); n != 4 {
		t.Errorf("stdout in %d chunks, want 4", n)
	}
	checkStream(t, objs, "stderr", stderr)
	for _, n := range []string{"status.json", "alerts.jsonl", "flows.jsonl"} {
		if _, ok := objs[n]; !ok {
			t.Errorf("%s missing from the store", n)
		}
	}
	if len(objs) != 4+1+3 {
		t.Errorf("%d objects, want 8 (4 stdout chunks, 1 stderr, 3 summaries)", len(objs))
	}
	if p := metricValue(t, s, "arkgw_outputs_pending_bytes"); p != 0 {
		t.Errorf("pending bytes %v after shipping", p)
	}
	if lag := metricValue(t, s, "arkgw_outputs_upload_lag_seconds"); lag != 0 {
		t.Errorf("lag %v after shipping", lag)
	}
	waitFor(t, "local copy removed for the 1 MiB budget", 10*time.Second, func() bool { p, _ := s.Progress("x1"); return p.LocalRemoved })
	if n := localBytes(dir); n > pol.DiskBudgetBytes {
		t.Errorf("local copies %d bytes, budget %d", n, pol.DiskBudgetBytes)
	}
	if n := alerts.count(); n != 1 {
		t.Errorf("%d backlog alerts in all, want 1", n)
	}
}
