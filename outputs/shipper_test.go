package outputs

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	bolt "go.etcd.io/bbolt"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/flowlog"
	"github.com/arkgw/arkgw/store"
)

const testNode = "ark-test-1"

// alertLog collects emitted alerts.
type alertLog struct {
	mu   sync.Mutex
	recs []alert.Record
}

func (a *alertLog) Emit(r alert.Record) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.recs = append(a.recs, r)
}

func (a *alertLog) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.recs)
}

func testPolicy(endpoint string) configs.OutputsPolicy {
	return configs.OutputsPolicy{
		Push: "s3://" + testBucket + "/fleet", Bucket: testBucket, Prefix: "fleet", Endpoint: endpoint,
		Interval: 5 * time.Minute, ChunkBytes: 1 << 20, DiskBudgetBytes: 3 << 20, BacklogAlertBytes: 1 << 20,
	}
}

func openDB(t *testing.T, path string) *bolt.DB {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// runShipper starts s.Run until the test ends.
func runShipper(t *testing.T, s *Shipper) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func completed(id string, started time.Time, reason string) *store.Experiment {
	return &store.Experiment{
		ID: id, Title: "traceroute to the world", Experimenters: []store.Contact{{Name: "Ada", Email: "ada@example.edu"}},
		State: store.Completed, Reason: reason, ExitCode: 3, CPUSecs: 1.5,
		Submitted: started.Add(-time.Minute), Started: started, Ended: started.Add(2 * time.Hour),
		BytesUp: 1000, BytesDown: 2000, Alerts: 2,
	}
}

// A running experiment's output is shipped in chunks at each interval; when
// it ends the rest follows with alerts, flows and status.json, and the
// local copy goes once the disk budget needs the room.
func TestShipsExperimentResults(t *testing.T) {
	tmp := t.TempDir()
	srv := startServer(t, filepath.Join(tmp, "s3.db"), "127.0.0.1:0")
	clk := newFakeClock()
	start := clk.Now()
	t0 := start.Add(10 * time.Minute)
	alerts := []alert.Record{
		{Time: t0, Experiment: "x1", Kind: alert.KindPacket, Rule: "tcp", Proto: "tcp", Dst: "192.0.2.7", DstPort: 25, Packets: 3},
		{Time: t0.Add(time.Minute), Experiment: "x1", Kind: alert.KindDNS, Rule: "dns", Name: "evil.example.", QType: "A"},
	}
	flows := []flowlog.Flow{
		{Experiment: "x1", Proto: 6, Dst: netip.MustParseAddr("198.51.100.1"), DPort: 443, Start: t0, End: t0.Add(time.Second), BytesOut: 100, BytesIn: 1000, PktsOut: 2, PktsIn: 3},
		{Experiment: "x1", Proto: 6, Dst: netip.MustParseAddr("198.51.100.1"), DPort: 443, Start: t0.Add(time.Hour), End: t0.Add(time.Hour + time.Minute), BytesOut: 50, BytesIn: 500, PktsOut: 1, PktsIn: 1},
		{Experiment: "x1", Proto: 17, Dst: netip.MustParseAddr("198.51.100.2"), DPort: 53, Start: t0.Add(time.Minute), End: t0.Add(time.Minute), BytesOut: 40, BytesIn: 80, PktsOut: 1, PktsIn: 1},
		// Across an hour boundary: the flow log returns it for both hours;
		// it counts once.
		{Experiment: "x1", Proto: 6, Dst: netip.MustParseAddr("198.51.100.1"), DPort: 443, Start: t0.Add(40 * time.Minute), End: t0.Add(55 * time.Minute), BytesOut: 7, BytesIn: 9, PktsOut: 1, PktsIn: 1},
		{Experiment: "x9", Proto: 6, Dst: netip.MustParseAddr("203.0.113.1"), DPort: 80, Start: t0, End: t0},
	}
	var sinceSeen time.Time
	cfg := Config{
		Policy: testPolicy(srv.Addr), Node: testNode, DB: openDB(t, filepath.Join(tmp, "arkgw.db")),
		Clock: clk, Credentials: testCreds, Alerts: &alertLog{},
		AlertsOf: func(id string, since time.Time, each func(alert.Record) error) error {
			sinceSeen = since
			for _, r := range alerts {
				if r.Experiment == id {
					if err := each(r); err != nil {
						return err
					}
				}
			}
			return nil
		},
		// As flowlog.Store.Find: ended at or after since, started at or
		// before until (and one experiment's alone is not promised).
		FlowsOf: func(id string, since, until time.Time) ([]flowlog.Flow, error) {
			var out []flowlog.Flow
			for _, f := range flows {
				if !f.End.Before(since) && !f.Start.After(until) {
					out = append(out, f)
				}
			}
			return out, nil
		},
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(tmp, "experiments", "x1")
	dir2 := filepath.Join(tmp, "experiments", "x2")
	for _, d := range []string{dir, dir2} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Track("x1", dir); err != nil {
		t.Fatal(err)
	}
	appendOutput(t, dir, "stdout", 1<<20+500_000, 1)
	appendOutput(t, dir, "stderr", 1000, 2)
	runShipper(t, s)

	pending := func(id string) func() bool {
		return func() bool { p, ok := s.Progress(id); return ok && p.PendingBytes == 0 && p.ShippedBytes > 0 }
	}
	// While it runs: what was written so far, in chunks of at most 1 MiB.
	waitFor(t, "the running experiment's first output in the store", 30*time.Second, pending("x1"))
	prefix := "fleet/" + testNode + "/x1/"
	objs := srv.objects(t, prefix)
	if n := checkStream(t, objs, "stdout", readFile(t, filepath.Join(dir, "stdout"))); n != 2 {
		t.Errorf("stdout in %d chunks, want 2", n)
	}
	checkStream(t, objs, "stderr", readFile(t, filepath.Join(dir, "stderr")))

	// The next interval ships what was written since, as new chunks.
	appendOutput(t, dir, "stdout", 700_000, 3)
	clk.Advance(5 * time.Minute)
	waitFor(t, "the next interval's output", 30*time.Second, func() bool {
		p, _ := s.Progress("x1")
		return p.PendingBytes == 0 && p.ShippedBytes == 1<<20+500_000+1000+700_000
	})

	// A second experiment keeps running (shipped so far, not finished):
	// its local copy must stay whatever the budget.
	if err := s.Track("x2", dir2); err != nil {
		t.Fatal(err)
	}
	appendOutput(t, dir2, "stdout", 2<<20, 4)

	// x1 ends: the rest of its output and its summaries.
	appendOutput(t, dir, "stdout", 300_000, 5)
	stdout, stderr := readFile(t, filepath.Join(dir, "stdout")), readFile(t, filepath.Join(dir, "stderr"))
	if err := os.WriteFile(filepath.Join(dir, "status.json"), []byte(`{"stdout":{"bytes":2500000,"dropped":4096},"stderr":{"bytes":1000}}`), 0o640); err != nil {
		t.Fatal(err)
	}
	x := completed("x1", start, store.ReasonTimeout)
	if err := s.Finish(x, dir); err != nil {
		t.Fatal(err)
	}
	if err := s.Finish(x, dir); err != nil { // idempotent
		t.Fatal(err)
	}
	clk.Advance(5 * time.Minute)
	waitFor(t, "x1 shipped", 30*time.Second, func() bool { p, _ := s.Progress("x1"); return p.Shipped })
	waitFor(t, "x2's output shipped", 30*time.Second, pending("x2"))
	if !sinceSeen.Equal(start) {
		t.Errorf("alerts asked since %s, want the start %s", sinceSeen, start)
	}

	objs = srv.objects(t, prefix)
	var names []string
	for n := range objs {
		names = append(names, n)
	}
	sort.Strings(names)
	want := []string{"alerts.jsonl", "flows.jsonl", "status.json", "stderr/000001", "stdout/000001", "stdout/000002", "stdout/000003", "stdout/000004"}
	if !slices.Equal(names, want) {
		t.Fatalf("objects under %s: %v, want %v", prefix, names, want)
	}
	// stdout/000003 is the 700 kB of the second interval, 000004 the rest.
	if got := len(objs["stdout/000003"].Data); got != 700_000 {
		t.Errorf("stdout/000003 holds %d bytes, want 700000", got)
	}
	checkStream(t, objs, "stdout", stdout)
	checkStream(t, objs, "stderr", stderr)

	var st Status
	if err := json.Unmarshal(objs["status.json"].Data, &st); err != nil {
		t.Fatalf("status.json: %v\n%s", err, objs["status.json"].Data)
	}
	if st.Experiment != "x1" || st.Node != testNode || st.Reason != store.ReasonTimeout || st.ExitCode != 3 ||
		!st.Started.Equal(x.Started) || !st.Ended.Equal(x.Ended) || st.Title != x.Title || len(st.Experimenters) != 1 {
		t.Errorf("status.json = %+v", st)
	}
	if !slices.Equal(st.LimitsHit, []string{"max_hours", "output_mb"}) {
		t.Errorf("limits_hit %v, want [max_hours output_mb]", st.LimitsHit)
	}
	if st.Stdout != (Stream{Bytes: int64(len(stdout)), Chunks: 4, Dropped: 4096}) || st.Stderr != (Stream{Bytes: 1000, Chunks: 1}) {
		t.Errorf("status.json streams: stdout %+v stderr %+v", st.Stdout, st.Stderr)
	}
	var wantAlerts bytes.Buffer
	for _, r := range alerts {
		b, _ := alert.Marshal(r)
		wantAlerts.Write(append(b, '\n'))
	}
	if got := objs["alerts.jsonl"].Data; !bytes.Equal(got, wantAlerts.Bytes()) {
		t.Errorf("alerts.jsonl:\n%s\nwant\n%s", got, wantAlerts.Bytes())
	}
	lines := strings.Split(strings.TrimSpace(string(objs["flows.jsonl"].Data)), "\n")
	if len(lines) != 2 {
		t.Fatalf("flows.jsonl has %d lines, want 2 (x9's flow is not x1's):\n%s", len(lines), objs["flows.jsonl"].Data)
	}
	var f0, f1 FlowSummary
	json.Unmarshal([]byte(lines[0]), &f0)
	json.Unmarshal([]byte(lines[1]), &f1)
	want0 := FlowSummary{Dst: "198.51.100.1", Port: 443, Proto: "tcp", Flows: 3, PacketsOut: 4, BytesOut: 157, PacketsIn: 5, BytesIn: 1509,
		FirstSeen: t0, LastSeen: t0.Add(time.Hour + time.Minute)}
	want1 := FlowSummary{Dst: "198.51.100.2", Port: 53, Proto: "udp", Flows: 1, PacketsOut: 1, BytesOut: 40, PacketsIn: 1, BytesIn: 80,
		FirstSeen: t0.Add(time.Minute), LastSeen: t0.Add(time.Minute)}
	if f0 != want0 || f1 != want1 {
		t.Errorf("flows.jsonl:\n%+v\n%+v\nwant\n%+v\n%+v", f0, f1, want0, want1)
	}

	// Disk budget 3 MiB: x1 (2.5 MB) plus x2 (2 MiB) exceed it, so the
	// shipped x1 goes; x2 is not finished and stays although over.
	waitFor(t, "x1's local copy removed", 10*time.Second, func() bool { p, _ := s.Progress("x1"); return p.LocalRemoved })
	if _, err := os.Stat(filepath.Join(dir, "stdout")); !os.IsNotExist(err) {
		t.Errorf("x1 stdout still on the node: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir2, "stdout")); err != nil {
		t.Errorf("x2's stdout (running) was removed: %v", err)
	}
	if n := localBytes(dir) + localBytes(dir2); n > cfg.Policy.DiskBudgetBytes {
		t.Errorf("local copies %d bytes, budget %d", n, cfg.Policy.DiskBudgetBytes)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(s.Collector())
	if n, err := testutil.GatherAndCount(reg, "arkgw_outputs_pending_bytes"); err != nil || n != 1 {
		t.Errorf("arkgw_outputs_pending_bytes: %d series, %v", n, err)
	}
	if v := testutil.ToFloat64(s.m.shipped); v != float64(s.mustProgress(t, "x1").ShippedBytes+s.mustProgress(t, "x2").ShippedBytes) {
		t.Errorf("shipped bytes counter %v", v)
	}
	if p := s.mustProgress(t, "x1"); p.Location != "s3://"+testBucket+"/"+prefix {
		t.Errorf("location %q", p.Location)
	}
}

func (s *Shipper) mustProgress(t *testing.T, id string) Progress {
	t.Helper()
	p, ok := s.Progress(id)
	if !ok {
		t.Fatalf("no progress for %s", id)
	}
	return p
}

// With a SummaryDelay the end is recorded at once and the summaries follow
// later, also when the shipper restarts in between.
func TestSummaryDelaySurvivesRestart(t *testing.T) {
	tmp := t.TempDir()
	srv := startServer(t, filepath.Join(tmp, "s3.db"), "127.0.0.1:0")
	clk := newFakeClock()
	cfg := Config{Policy: testPolicy(srv.Addr), Node: testNode, DB: openDB(t, filepath.Join(tmp, "arkgw.db")),
		Clock: clk, Credentials: testCreds, SummaryDelay: 10 * time.Second}
	s1, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(tmp, "x1")
	appendOutput(t, dir, "stdout", 1000, 1)
	if err := s1.Track("x1", dir); err != nil {
		t.Fatal(err)
	}
	if err := s1.Finish(completed("x1", clk.Now(), store.ReasonFinished), dir); err != nil {
		t.Fatal(err)
	}
	if ids, _ := s1.Unfinished(); len(ids) != 0 {
		t.Errorf("Unfinished = %v after Finish, want none", ids)
	}

	// The daemon restarts before the delay is over.
	s2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	runShipper(t, s2)
	waitFor(t, "stdout shipped", 30*time.Second, func() bool { p, _ := s2.Progress("x1"); return p.ShippedBytes == 1000 })
	clk.WaitWaiters(1, 5*time.Second)
	if _, ok := srv.objects(t, "fleet/"+testNode+"/x1/")["status.json"]; ok {
		t.Fatal("status.json shipped before the summary delay")
	}
	clk.Advance(10 * time.Second)
	waitFor(t, "x1 shipped after the delay", 30*time.Second, func() bool { p, _ := s2.Progress("x1"); return p.Shipped })
	objs := srv.objects(t, "fleet/"+testNode+"/x1/")
	if len(objs) != 4 {
		t.Errorf("%d objects, want stdout/000001 and the three summaries", len(objs))
	}
}
