package flowlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"reflect"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// segCounts counts compacted segments and runs over all day files.
func segCounts(t testing.TB, s *Store) (compacted, runs int) {
	t.Helper()
	for _, day := range s.dayNames() {
		for _, ss := range daySegs(t, s, day) {
			runs += ss.runs
			compacted += len(ss.levels[levelSlot])
		}
	}
	return compacted, runs
}

func daySegs(t testing.TB, s *Store, day string) map[int]*slotSegs {
	t.Helper()
	db, err := s.day(day, false)
	if err != nil || db == nil {
		t.Fatalf("day %s: %v", day, err)
	}
	var out map[int]*slotSegs
	db.View(func(tx *bolt.Tx) error {
		out = listSegs(tx.Bucket(bucketSegs))
		return nil
	})
	return out
}

// levels summarises one slot: level -> number of segments.
func levels(ss *slotSegs) map[uint8]int {
	out := map[uint8]int{}
	if ss != nil {
		for l, names := range ss.levels {
			out[l] = len(names)
		}
	}
	return out
}

var day0 = time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)

// testStore opens a store whose wall clock is well past day0's flows.
func testStore(dir string) (*Store, error) {
	return openStore(dir, 0, func() time.Time { return day0.AddDate(0, 0, 10) })
}

func TestDataClockIgnoresFlowsFromTheFuture(t *testing.T) {
	s, err := openStore(t.TempDir(), 0, func() time.Time { return day0.Add(14*time.Hour + 5*time.Minute) })
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Append([]Flow{at("x1", 84, 0, "198.51.100.9")})
	// A flow a year ahead (a wrong clock) does not finish today's slots.
	s.Append([]Flow{mkFlow("x2", "10.250.0.2", "198.51.100.9", 22, day0.AddDate(1, 0, 0), time.Second)})
	if got := levels(daySegs(t, s, day0.Format(dayLayout))[84]); !reflect.DeepEqual(got, map[uint8]int{0: 1}) {
		t.Fatalf("slot 84: %v, want its run left open", got)
	}
	if want := day0.Add(84 * slotLen); !s.latest.Equal(want) {
		t.Fatalf("data clock %v, want %v", s.latest, want)
	}
}

// at is a short flow ending in slot slot of day0 (plus off).
func at(exp string, slot int, off time.Duration, dst string) Flow {
	end := day0.Add(time.Duration(slot)*slotLen + off)
	return mkFlow(exp, "10.250.0.2", dst, 22, end.Add(-time.Second), time.Second)
}

func TestStoreRunPerFlushAndTiers(t *testing.T) {
	s, err := testStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	day := day0.Format(dayLayout)
	// One flush within slot 84 (14:00-14:10): one run.
	if err := s.Append([]Flow{at("x1", 84, time.Minute, "198.51.100.9"), at("x2", 84, 2*time.Minute, "198.51.100.1")}); err != nil {
		t.Fatal(err)
	}
	if got := levels(daySegs(t, s, day)[84]); !reflect.DeepEqual(got, map[uint8]int{0: 1}) {
		t.Fatalf("after one flush: %v, want one level-0 run", got)
	}
	// A flush across a slot boundary: one run in each slot.
	if err := s.Append([]Flow{at("x1", 84, 9*time.Minute, "198.51.100.9"), at("x1", 85, 0, "198.51.100.9")}); err != nil {
		t.Fatal(err)
	}
	segs := daySegs(t, s, day)
	if got := levels(segs[84]); !reflect.DeepEqual(got, map[uint8]int{0: 2}) {
		t.Fatalf("slot 84: %v, want two runs", got)
	}
	if got := levels(segs[85]); !reflect.DeepEqual(got, map[uint8]int{0: 1}) {
		t.Fatalf("slot 85: %v, want one run", got)
	}
	// Slot 85 stays open (the data clock is at 14:10): mergeFanout runs of
	// level 0 become one of level 1, and so on up the tiers.
	for i := 1; i < mergeFanout*mergeFanout; i++ {
		if err := s.Append([]Flow{at("x1", 85, time.Duration(i)*time.Second, "198.51.100.9")}); err != nil {
			t.Fatal(err)
		}
		got := levels(daySegs(t, s, day)[85])
		n := i + 1
		want := map[uint8]int{}
		for l := uint8(0); n > 0; l++ {
			if n%mergeFanout > 0 {
				want[l] = n % mergeFanout
			}
			n /= mergeFanout
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("after %d runs: levels %v, want %v", i+1, got, want)
		}
	}
	if got, _ := s.Find(Query{Dst: netip.MustParsePrefix("198.51.100.9/32")}); len(got) != 2+mergeFanout*mergeFanout {
		t.Fatalf("found %d flows, want %d", len(got), 2+mergeFanout*mergeFanout)
	}
}

func TestStoreCompactsFinishedSlots(t *testing.T) {
	s, err := testStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	day := day0.Format(dayLayout)
	for i := 0; i < 5; i++ {
		s.Append([]Flow{at("x1", 84, time.Duration(i)*time.Minute, fmt.Sprintf("198.51.100.%d", 9-i))})
	}
	// 14:10 + grace not reached yet: slot 84 is open.
	s.Append([]Flow{at("x2", 85, closeGrace-time.Second, "198.51.100.200")})
	if got := levels(daySegs(t, s, day)[84]); got[0] != 5 || got[levelSlot] != 0 {
		t.Fatalf("slot 84 before its grace ended: %v, want 5 runs", got)
	}
	// The data clock passes 14:10 + grace: the runs become one segment.
	s.Append([]Flow{at("x2", 85, closeGrace, "198.51.100.200")})
	if got := levels(daySegs(t, s, day)[84]); !reflect.DeepEqual(got, map[uint8]int{levelSlot: 1}) {
		t.Fatalf("slot 84 after it ended: %v, want one compacted segment", got)
	}
	check := func(what string, want int) {
		t.Helper()
		got, err := s.Find(Query{Dst: netip.MustParsePrefix("198.51.100.0/28")})
		if err != nil || len(got) != want {
			t.Fatalf("%s: found %d flows (%v), want %d", what, len(got), err, want)
		}
		for i := 1; i < len(got); i++ {
			if got[i].Start.Before(got[i-1].Start) {
				t.Fatalf("%s: not sorted by start", what)
			}
		}
	}
	check("compacted", 5)
	// Late flows for a finished slot wait as runs until mergeFanout of them
	// gathered, then fold into the slot's segment.
	for i := 0; i < mergeFanout-1; i++ {
		s.Append([]Flow{at("x3", 84, 30*time.Second, "198.51.100.1")})
	}
	if got := levels(daySegs(t, s, day)[84]); got[levelSlot] != 1 || got[0] != mergeFanout-1 {
		t.Fatalf("slot 84 with late runs: %v", got)
	}
	check("late runs", 5+mergeFanout-1)
	s.Append([]Flow{at("x3", 84, 30*time.Second, "198.51.100.1")})
	if got := levels(daySegs(t, s, day)[84]); !reflect.DeepEqual(got, map[uint8]int{levelSlot: 1}) {
		t.Fatalf("slot 84 after %d late runs: %v, want one compacted segment", mergeFanout, got)
	}
	check("late runs folded in", 5+mergeFanout)
	// A finished day keeps its late runs below mergeFanout (rare; found all
	// the same).
	s.Append([]Flow{at("x3", 84, 40*time.Second, "198.51.100.1")})
	s.Append([]Flow{mkFlow("x4", "10.250.0.2", "203.0.113.1", 7, day0.Add(24*time.Hour+closeGrace), time.Second)})
	if got := levels(daySegs(t, s, day)[84]); !reflect.DeepEqual(got, map[uint8]int{0: 1, levelSlot: 1}) {
		t.Fatalf("slot 84 with one late run: %v", got)
	}
	check("late run after the day", 5+mergeFanout+1)
}

// TestStoreFindMatchesScan checks lookups over runs, compacted slots and
// several days against a plain filter of everything appended.
func TestStoreFindMatchesScan(t *testing.T) {
	dir := t.TempDir()
	s, err := testStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(7, 8))
	dsts := []string{"198.51.100.1", "198.51.100.2", "198.51.100.77", "198.51.101.5", "203.0.113.9", "2001:db8:100::9", "2001:db8:100::a", "2001:db8:200::1"}
	var all []Flow
	clock := day0.Add(23 * time.Hour)
	// 40 flushes over 3 days, time moving forward in bursts; some flows
	// long (open across slots and midnight), some late.
	for b := 0; b < 40; b++ {
		clock = clock.Add(time.Duration(rng.IntN(int(90 * time.Minute))))
		var fs []Flow
		for j := rng.IntN(60); j >= 0; j-- {
			end := clock.Add(-time.Duration(rng.IntN(int(time.Minute))))
			if rng.IntN(10) == 0 {
				end = clock.Add(-time.Duration(rng.IntN(int(3 * time.Hour)))) // late
			}
			dur := time.Duration(rng.IntN(int(time.Minute)))
			if rng.IntN(8) == 0 {
				dur = time.Duration(rng.IntN(int(5 * time.Hour)))
			}
			f := mkFlow(fmt.Sprintf("x%d", rng.IntN(4)), fmt.Sprintf("10.250.0.%d", 2+4*rng.IntN(3)), dsts[rng.IntN(len(dsts))],
				uint16(20+rng.IntN(4)), end.Add(-dur), dur)
			f.SPort = uint16(1024 + rng.IntN(5))
			fs = append(fs, f)
		}
		if err := s.Append(fs); err != nil {
			t.Fatal(err)
		}
		all = append(all, fs...)
		if b == 25 { // a restart in the middle
			s.Close()
			if s, err = testStore(dir); err != nil {
				t.Fatal(err)
			}
		}
	}
	defer s.Close()
	compacted, runs := segCounts(t, s)
	if compacted == 0 || runs == 0 || len(s.dayNames()) < 3 {
		t.Fatalf("want compacted slots, runs and several days; have %d, %d, days %v", compacted, runs, s.dayNames())
	}
	canon := func(fs []Flow) []string {
		out := make([]string, len(fs))
		for i, f := range fs {
			out[i] = fmt.Sprintf("%v %x", f.Start.UnixNano(), f.encode())
		}
		sort.Strings(out)
		return out
	}
	prefixes := []string{"198.51.100.1/32", "198.51.100.0/24", "198.51.0.0/16", "2001:db8:100::/48", "2001:db8:100::9/128", "0.0.0.0/0"}
	for i := 0; i < 400; i++ {
		var q Query
		if rng.IntN(4) > 0 {
			q.Dst = netip.MustParsePrefix(prefixes[rng.IntN(len(prefixes))])
		}
		if rng.IntN(2) == 0 {
			q.Port = uint16(20 + rng.IntN(4))
		}
		t0 := all[rng.IntN(len(all))].Start.Add(time.Duration(rng.IntN(int(20 * time.Minute))))
		switch rng.IntN(4) {
		case 0:
			q.At = t0
		case 1:
			q.Since, q.Until = t0, t0.Add(time.Hour)
		case 2:
			q.Until = t0
		}
		if rng.IntN(5) == 0 {
			q.Src = netip.MustParseAddr("10.250.0.6")
		}
		if rng.IntN(5) == 0 {
			q.Experiment = "x1"
		}
		q.Limit = 100000
		got, err := s.Find(q)
		if err != nil {
			t.Fatal(err)
		}
		var want []Flow
		for k := range all {
			if q.match(&all[k]) {
				want = append(want, all[k])
			}
		}
		if g, w := canon(got), canon(want); !reflect.DeepEqual(g, w) {
			t.Fatalf("query %+v: found %d flows, a scan finds %d", q, len(g), len(w))
		}
		for k := 1; k < len(got); k++ {
			if got[k].Start.Before(got[k-1].Start) {
				t.Fatalf("query %+v: not sorted by start", q)
			}
		}
	}
	if got, _ := s.Find(Query{Limit: 100000}); len(got) != len(all) {
		t.Fatalf("store holds %d flows, appended %d", len(got), len(all))
	}
}

// TestStoreKeysUniqueAcrossReopen: flows identical in dst, port and start
// appended before and after a restart are both kept (merges would
// otherwise collapse equal keys).
func TestStoreKeysUniqueAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	f := at("x1", 10, 0, "198.51.100.9")
	for i := 0; i < 3; i++ {
		s, err := testStore(dir)
		if err != nil {
			t.Fatal(err)
		}
		g := f
		g.Experiment = fmt.Sprintf("x%d", i)
		if err := s.Append([]Flow{g, g}); err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	s, err := testStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Slot 10 over: its three runs become one segment, all six kept.
	s.Append([]Flow{mkFlow("y", "10.250.0.2", "203.0.113.1", 7, day0.Add(25*time.Hour), time.Second)})
	if got := levels(daySegs(t, s, day0.Format(dayLayout))[10]); !reflect.DeepEqual(got, map[uint8]int{levelSlot: 1}) {
		t.Fatalf("slot 10: %v, want compacted", got)
	}
	if got, _ := s.Find(Query{Dst: netip.MustParsePrefix("198.51.100.9/32"), Port: 22}); len(got) != 6 {
		t.Fatalf("found %d flows, want 6", len(got))
	}
}

// TestStoreCrashDuringCompaction: a compaction that dies before it commits
// (here: fails after writing the merged segment, before deleting the runs)
// loses and duplicates nothing; after a restart it is done again.
func TestStoreCrashDuringCompaction(t *testing.T) {
	dir := t.TempDir()
	s, err := testStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	crash := errors.New("power cut")
	s.failMerge = func(level uint8) error {
		if level == levelSlot {
			return crash
		}
		return nil
	}
	for i := 0; i < 20; i++ {
		if err := s.Append([]Flow{at("x1", 84, time.Duration(i)*time.Second, "198.51.100.9")}); err != nil {
			t.Fatal(err)
		}
	}
	err = s.Append([]Flow{at("x2", 86, 0, "198.51.100.9")}) // slot 84 is over
	if !errors.Is(err, errCompacting) || !errors.Is(err, crash) {
		t.Fatalf("append during a failing compaction: %v, want errCompacting", err)
	}
	q := Query{Dst: netip.MustParsePrefix("198.51.100.9/32"), Limit: 1000}
	if got, _ := s.Find(q); len(got) != 21 {
		t.Fatalf("after a failed compaction: %d flows, want 21", len(got))
	}
	if got := levels(daySegs(t, s, day0.Format(dayLayout))[84]); got[levelSlot] != 0 || got[0]+got[1]*mergeFanout+got[2]*mergeFanout*mergeFanout != 20 {
		t.Fatalf("slot 84 after a failed compaction: %v, want the runs untouched", got)
	}
	s.Close()

	s, err = testStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, _ := s.Find(q); len(got) != 21 {
		t.Fatalf("after restart: %d flows, want 21", len(got))
	}
	if err := s.Append([]Flow{at("x3", 86, time.Second, "198.51.100.10")}); err != nil {
		t.Fatal(err)
	}
	if got := levels(daySegs(t, s, day0.Format(dayLayout))[84]); !reflect.DeepEqual(got, map[uint8]int{levelSlot: 1}) {
		t.Fatalf("slot 84 after restart: %v, want compacted", got)
	}
	if got, _ := s.Find(q); len(got) != 21 {
		t.Fatalf("after compaction: %d flows, want 21", len(got))
	}
}

// TestRecorderCountsCompactionFailureAsStored: the flows of a batch whose
// compaction failed are stored, not lost.
func TestRecorderCountsCompactionFailureAsStored(t *testing.T) {
	s, err := testStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.failMerge = func(uint8) error { return errors.New("disk hiccup") }
	s.Append([]Flow{at("x1", 84, 0, "198.51.100.9")}) // a run to compact
	r := NewRecorder(Config{Store: s})
	r.pending = []Flow{at("x2", 90, 0, "198.51.100.9"), at("x2", 90, 1, "198.51.100.10")}
	r.Flush()
	if st := r.Stats(); st.Recorded != 2 || st.Lost != 0 {
		t.Fatalf("stats %+v, want 2 recorded, 0 lost", st)
	}
}

// TestStoreMigratesLegacyLayout: a day file of the first layout (one tree
// keyed slot | dst | port | start | seq) is converted on open.
func TestStoreMigratesLegacyLayout(t *testing.T) {
	dir := t.TempDir()
	flows := []Flow{at("x1", 3, 0, "198.51.100.9"), at("x2", 3, time.Second, "198.51.100.1"), at("x3", 100, 0, "198.51.100.9")}
	db, err := bolt.Open(filepath.Join(dir, day0.Format(dayLayout)+".db"), 0o640, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error {
		b, _ := tx.CreateBucket(bucketLegacy)
		for i := range flows {
			k := binary.BigEndian.AppendUint16(nil, uint16(slotOf(flows[i].End)))
			b.Put(append(k, indexKey(&flows[i], uint32(i+1))...), flows[i].encode())
		}
		return nil
	})
	db.Close()
	s, err := testStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	segs := daySegs(t, s, day0.Format(dayLayout))
	if len(segs) != 2 || len(segs[3].levels[levelSlot]) != 1 || len(segs[100].levels[levelSlot]) != 1 {
		t.Fatalf("migrated segments: %v", segs)
	}
	got, _ := s.Find(Query{Dst: netip.MustParsePrefix("198.51.100.9/32"), Port: 22})
	if len(got) != 2 || got[0].Experiment != "x1" || got[1].Experiment != "x3" {
		t.Fatalf("after migration: %+v", got)
	}
	if err := s.days[day0.Format(dayLayout)].View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketLegacy) != nil {
			return errors.New("old bucket still there")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestFindSkipsSegmentsByStart: a segment whose earliest flow started after
// At (or Until) is not opened; one with a long flow that started before is.
func TestFindSkipsSegmentsByStart(t *testing.T) {
	s, err := testStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	long := mkFlow("long", "10.250.0.2", "198.51.100.9", 22, day0.Add(10*time.Hour), 5*time.Hour)
	s.Append([]Flow{at("a", 62, 0, "198.51.100.9"), at("b", 100, 0, "198.51.100.9"), long})
	for _, ss := range daySegs(t, s, day0.Format(dayLayout)) {
		for _, names := range ss.levels {
			for _, n := range names {
				if slot := int(binary.BigEndian.Uint16(n)); slot == 90 && segMinStart(n) != long.Start.UnixNano() {
					t.Fatalf("slot 90 segment min start %v, want %v", segMinStart(n), long.Start.UnixNano())
				}
			}
		}
	}
	got, _ := s.Find(Query{Dst: netip.MustParsePrefix("198.51.100.9/32"), Port: 22, At: day0.Add(10*time.Hour + time.Minute)})
	if len(got) != 1 || got[0].Experiment != "long" {
		t.Fatalf("at 10:01: %+v, want only the long flow", got)
	}
}

// storeWritten is the bytes of pages the store's open day files wrote.
func storeWritten(s *Store) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for _, db := range s.days {
		st := db.Stats()
		n += st.TxStats.GetPageAlloc()
	}
	return n
}

// TestFindDuringMerges: readers running while runs are merged and slots
// compacted see every flow appended before them exactly once.
func TestFindDuringMerges(t *testing.T) {
	s, err := testStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var appended atomic.Int64
	done := make(chan error, 1)
	go func() {
		defer close(done)
		n := 0
		for b := 0; b < 150; b++ {
			var fs []Flow
			for j := 0; j < 20; j++ {
				end := day0.Add(time.Duration(b) * 20 * time.Second) // 5 slots in all, 30 runs each
				f := mkFlow(fmt.Sprintf("f%d", n), "10.250.0.2", fmt.Sprintf("198.51.100.%d", n%7), 22, end.Add(-time.Second), time.Second)
				fs = append(fs, f)
				n++
			}
			if err := s.Append(fs); err != nil {
				done <- err
				return
			}
			appended.Store(int64(n))
		}
	}()
	for finished := false; !finished; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			finished = true
		default:
		}
		before := appended.Load()
		got, err := s.Find(Query{Dst: netip.MustParsePrefix("198.51.100.0/24"), Limit: 100000})
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, f := range got {
			if seen[f.Experiment] {
				t.Fatalf("flow %s found twice", f.Experiment)
			}
			seen[f.Experiment] = true
		}
		if int64(len(got)) < before {
			t.Fatalf("found %d flows, %d were appended before the lookup", len(got), before)
		}
	}
	compacted, runs := segCounts(t, s)
	if compacted < 3 {
		t.Fatalf("%d compacted segments, %d runs: the test did not exercise compaction", compacted, runs)
	}
}
