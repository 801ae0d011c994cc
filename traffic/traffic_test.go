package traffic

import (
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func openDB(t *testing.T) (*bolt.DB, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db, path
}

func TestRatesFromGrowingCounters(t *testing.T) {
	s, err := Open(nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Counters as accounting reports them: bytes today, growing.
	samples := []struct {
		at       time.Duration
		up, down uint64
	}{
		{0, 1000, 5000}, // baseline: no point before it has bytes
		{10 * time.Second, 2250, 5000},
		{20 * time.Second, 2250, 30000},
		{30 * time.Second, 100, 200}, // 00:00 UTC: a new day counts whole
	}
	for _, x := range samples {
		if err := s.Record(t0.Add(x.at), map[string]Counters{"e1": {x.up, x.down}}); err != nil {
			t.Fatal(err)
		}
	}
	pts := s.Series("e1", Hour, t0.Add(35*time.Second))
	want := []struct {
		up, down, today uint64
		upBps           float64
	}{{0, 0, 6000, 0}, {1250, 0, 7250, 1000}, {0, 25000, 32250, 0}, {100, 200, 300, 80}}
	if len(pts) != len(want) {
		t.Fatalf("got %d points, want %d: %+v", len(pts), len(want), pts)
	}
	for i, w := range want {
		p := pts[i]
		if p.Up != w.up || p.Down != w.down || p.Today != w.today || p.UpBps() != w.upBps {
			t.Errorf("point %d = %+v (up %v bit/s), want %+v", i, p, p.UpBps(), w)
		}
		if !p.Start.Equal(t0.Add(time.Duration(i) * 10 * time.Second)) {
			t.Errorf("point %d starts %v", i, p.Start)
		}
	}
	// The node's total is the sum of the growth.
	node := s.Series(NodeID, Hour, t0.Add(35*time.Second))
	if len(node) != 4 || node[2].Down != 25000 || node[1].Up != 1250 {
		t.Errorf("node series %+v", node)
	}
	// The week ring has one 5-minute point with all of it.
	wk := s.Series("e1", Week, t0.Add(35*time.Second))
	if len(wk) != 1 || wk[0].Up != 1350 || wk[0].Down != 25200 || wk[0].Dur != 5*time.Minute || wk[0].Today != 300 {
		t.Errorf("week %+v", wk)
	}
}

func TestRingsAreBoundedAndForgetOldLaps(t *testing.T) {
	s, _ := Open(nil, time.Second)
	var up uint64
	// Three hours at 1 s = 3 fine laps.
	for i := 0; i < 3*FineSlots; i++ {
		up += 10
		s.Record(t0.Add(time.Duration(i)*time.Second), map[string]Counters{"e1": {up, 0}})
	}
	now := t0.Add(time.Duration(3*FineSlots-1) * time.Second)
	pts := s.Series("e1", Hour, now)
	if len(pts) != FineSlots {
		t.Fatalf("fine ring holds %d points, want %d", len(pts), FineSlots)
	}
	if first := pts[0].Start; !first.Equal(now.Add(-time.Duration(FineSlots-1) * time.Second)) {
		t.Errorf("oldest fine point %v", first)
	}
	// Later, without samples, the old lap reads as empty, not as now.
	if got := s.Series("e1", Hour, now.Add(time.Duration(FineSlots)*time.Second)); len(got) != 0 {
		t.Errorf("a lap later the fine ring still shows %d points", len(got))
	}
	if got := s.Series("e1", Week, now); len(got) != (3*FineSlots)/CoarseFactor {
		t.Errorf("coarse points %d", len(got))
	}
}

func TestSurvivesRestartAndExpires(t *testing.T) {
	db, _ := openDB(t)
	s, err := Open(db, 0)
	if err != nil {
		t.Fatal(err)
	}
	s.Record(t0, map[string]Counters{"e1": {100, 100}, "e2": {0, 0}})
	s.Record(t0.Add(10*time.Second), map[string]Counters{"e1": {600, 100}, "e2": {0, 40}})

	s2, err := Open(db, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The last counters survive too: no bytes are counted twice.
	s2.Record(t0.Add(20*time.Second), map[string]Counters{"e1": {700, 100}})
	pts := s2.Series("e1", Hour, t0.Add(25*time.Second))
	if len(pts) != 3 || pts[1].Up != 500 || pts[2].Up != 100 {
		t.Fatalf("after restart: %+v", pts)
	}
	if pts := s2.Series("e2", Hour, t0.Add(25*time.Second)); len(pts) != 2 || pts[1].Down != 40 {
		t.Fatalf("e2 after restart: %+v", pts)
	}
	// After the daemon was down for an hour, the hour's bytes are no spike.
	s2.Record(t0.Add(time.Hour), map[string]Counters{"e1": {1_000_700, 100}})
	s2.Record(t0.Add(time.Hour+10*time.Second), map[string]Counters{"e1": {1_000_800, 100}})
	pts = s2.Series("e1", Hour, t0.Add(time.Hour+15*time.Second))
	if len(pts) < 2 {
		t.Fatalf("after a gap: %+v", pts)
	}
	if pts = pts[len(pts)-2:]; pts[0].Up != 0 || pts[0].Today != 1_000_800 || pts[1].Up != 100 || pts[1].Today != 1_000_900 {
		t.Fatalf("after a gap: %+v", pts)
	}
	// Eight days later e2 (no longer sampled) is deleted from disk as well.
	late := t0.Add(8 * 24 * time.Hour)
	s2.Record(late, map[string]Counters{"e1": {0, 0}})
	s3, _ := Open(db, 0)
	if _, ok := s3.series["e2"]; ok {
		t.Error("e2 not expired")
	}
	if _, ok := s3.series["e1"]; !ok {
		t.Error("e1 expired although sampled")
	}
	var keys int
	db.View(func(tx *bolt.Tx) error { keys = tx.Bucket([]byte(Bucket)).Stats().KeyN; return nil })
	if max := 3 * (FineSlots + CoarseSlots + 1); keys > max {
		t.Errorf("%d keys on disk", keys)
	}
}

func TestParseKeyAndRange(t *testing.T) {
	for _, k := range [][]byte{key("e1", 'f', 359), key("a\x00b", 'c', 2015), key("x", 'l', 0)} {
		id, kind, idx, ok := parseKey(k)
		if !ok || key(id, kind, idx) == nil || string(key(id, kind, idx)) != string(k) {
			t.Errorf("parseKey(%q) = %q %c %d %v", k, id, kind, idx, ok)
		}
	}
	if _, _, _, ok := parseKey([]byte("junk")); ok {
		t.Error("junk key parsed")
	}
	for in, want := range map[string]Range{"": Hour, "1h": Hour, "7d": Week} {
		if r, err := ParseRange(in); err != nil || r != want {
			t.Errorf("ParseRange(%q) = %v, %v", in, r, err)
		}
	}
	if _, err := ParseRange("1y"); err == nil {
		t.Error("1y accepted")
	}
}
