package flowlog

import (
	"bytes"
	"container/heap"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Layout of a day file (bbolt):
//
//	segs/ slot(2) | level(1) | id(8) | min start(8) -> segment: a bucket
//	      of the flows that ended in that 10-minute slot, key dst(16) |
//	      port(2) | start(8) | seq(4), value Flow.encode()
//	meta  (its bucket sequence numbers the day's flows: keys stay unique
//	      across restarts)
//
// Write path (LSM-like, all in bbolt): each Append writes its batch, sorted,
// as new level-0 segments ("runs"), one per slot it touches, in one
// transaction. A new bucket filled in key order only appends pages, so a
// flush costs about its own size however big the day already is (inserting
// into one growing tree made bbolt copy and rewrite pages all over it on
// every flush). Append then merges runs:
//
//   - tiers (in the run's own transaction: one commit per flush): when an
//     open slot holds mergeFanout runs of one level, they are merged into
//     one run of the next level (a 10-minute slot of 1-second flushes keeps
//     at most a few dozen runs; each flow is rewritten about
//     log_fanout(runs) times);
//   - slot compaction (own transaction): once the slot is over (by the data
//     clock: the newest flow end appended, plus closeGrace) its runs are
//     merged into one compacted segment (level levelSlot); late runs (rare:
//     a flow is flushed within a second of its end; bulk loads of old
//     flows) are folded in once mergeFanout of them gathered.
//
// So a finished day has at most 144 compacted segments (plus fewer than
// mergeFanout late runs per slot), and the current slot a few dozen runs. Every merge is one transaction (write merged segment,
// delete its inputs): a crash mid-merge leaves the inputs, losing and
// duplicating nothing. Lookups seek the destination range in every segment of
// the slots that can hold a match (flows end at or after At and Since) whose
// earliest start (in its name) is not after At and Until: a "who sent this
// at T" query opens only the segments around T.
var (
	bucketSegs   = []byte("segs")
	bucketMeta   = []byte("meta")
	bucketLegacy = []byte("flows") // one tree keyed slot | dst | port | start | seq (migrated on open)
)

const (
	segNameLen  = 2 + 1 + 8 + 8
	levelSlot   = 0xff // a slot's compacted segment
	mergeFanout = 8
	closeGrace  = 2 * time.Minute
)

func segName(slot int, level uint8, id uint64, minStart int64) []byte {
	b := binary.BigEndian.AppendUint16(make([]byte, 0, segNameLen), uint16(slot))
	b = append(b, level)
	b = binary.BigEndian.AppendUint64(b, id)
	return binary.BigEndian.AppendUint64(b, uint64(minStart))
}

// segMinStart is the earliest flow start (Unix ns) in a segment.
func segMinStart(name []byte) int64 { return int64(binary.BigEndian.Uint64(name[11:])) }

// keyStart is the start (Unix ns) in a flow key.
func keyStart(k []byte) int64 { return int64(binary.BigEndian.Uint64(k[18:])) }

// errCompacting marks an Append error that came after its flows were
// committed: the flows are stored, only merging segments failed (retried on
// the next Append).
var errCompacting = errors.New("flows stored, but compacting the flow store failed")

// Store keeps one bbolt file per UTC day (by the day a flow ended) under
// dir, and deletes days older than the retention. Safe for concurrent use.
type Store struct {
	dir       string
	retention int // days; 0 = keep forever

	mu      sync.Mutex
	days    map[string]*bolt.DB // "2006-01-02" -> open file
	runDays map[string]bool     // days where merges may fall due (runs in open slots)
	latest  time.Time           // data clock: the newest flow end appended
	now     func() time.Time    // wall clock (tests set it)

	// failMerge (tests) runs inside a merge transaction after the merged
	// segment is written; an error aborts (rolls back) the merge.
	failMerge func(level uint8) error
}

const dayLayout = "2006-01-02"

// OpenStore opens (creating) the flow store in dir.
func OpenStore(dir string, retentionDays int) (*Store, error) {
	return openStore(dir, retentionDays, time.Now)
}

func openStore(dir string, retentionDays int, now func() time.Time) (*Store, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("flow store %s: %w", dir, err)
	}
	s := &Store{dir: dir, retention: retentionDays, days: map[string]*bolt.DB{}, runDays: map[string]bool{}, now: now}
	names, _ := filepath.Glob(filepath.Join(dir, "*.db"))
	for _, n := range names {
		day := strings.TrimSuffix(filepath.Base(n), ".db")
		if _, err := time.Parse(dayLayout, day); err != nil {
			continue
		}
		if _, err := s.day(day, false); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

func (s *Store) day(day string, create bool) (*bolt.DB, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if db := s.days[day]; db != nil {
		return db, nil
	}
	path := filepath.Join(s.dir, day+".db")
	if !create {
		if _, err := os.Stat(path); err != nil {
			return nil, nil
		}
	}
	// NoFreelistSync and batched commits keep SD-card writes low.
	db, err := bolt.Open(path, 0o640, &bolt.Options{Timeout: 2 * time.Second, NoFreelistSync: true})
	if err != nil {
		return nil, fmt.Errorf("flow store %s: %w", path, err)
	}
	dayStart, _ := time.Parse(dayLayout, day)
	var runs bool
	lastSlot := -1
	err = db.Update(func(tx *bolt.Tx) error {
		segs, err := tx.CreateBucketIfNotExists(bucketSegs)
		if err != nil {
			return err
		}
		if _, err := tx.CreateBucketIfNotExists(bucketMeta); err != nil {
			return err
		}
		if err := migrateLegacy(tx, segs); err != nil {
			return fmt.Errorf("migrate old layout: %w", err)
		}
		for slot, ss := range listSegs(segs) {
			runs = runs || ss.runs > 0
			lastSlot = max(lastSlot, slot)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("flow store %s: %w", path, err)
	}
	s.days[day] = db
	if runs {
		s.runDays[day] = true
	}
	// The data clock restarts no earlier than the start of the newest slot
	// on disk (a flow in it ended at or after that).
	if lastSlot >= 0 {
		s.advanceLocked(dayStart.Add(time.Duration(lastSlot) * slotLen))
	}
	return db, nil
}

// maxAhead: the data clock ignores flow ends further ahead of the wall clock
// (a clock that was set wrong would otherwise declare every slot finished
// and turn each flush into a compaction).
const maxAhead = time.Hour

func (s *Store) advanceLocked(t time.Time) {
	if t.After(s.latest) && !t.After(s.now().Add(maxAhead)) {
		s.latest = t
	}
}

// migrateLegacy moves the flows of the first layout (one tree keyed by
// slot first) into compacted segments; its keys are already in segment
// order within a slot.
func migrateLegacy(tx *bolt.Tx, segs *bolt.Bucket) error {
	old := tx.Bucket(bucketLegacy)
	if old == nil {
		return nil
	}
	minStart := map[int]int64{}
	c := old.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(k) == 2+keyLen && v != nil {
			slot, st := int(binary.BigEndian.Uint16(k)), keyStart(k[2:])
			if m, ok := minStart[slot]; !ok || st < m {
				minStart[slot] = st
			}
		}
	}
	var cur *bolt.Bucket
	curSlot := -1
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(k) != 2+keyLen || v == nil {
			continue
		}
		if slot := int(binary.BigEndian.Uint16(k)); slot != curSlot {
			id, err := segs.NextSequence()
			if err != nil {
				return err
			}
			if cur, err = segs.CreateBucket(segName(slot, levelSlot, id, minStart[slot])); err != nil {
				return err
			}
			cur.FillPercent = 1
			curSlot = slot
		}
		if err := cur.Put(k[2:], v); err != nil {
			return err
		}
	}
	return tx.DeleteBucket(bucketLegacy)
}

// Append writes finished flows: per day touched, one transaction that adds
// each slot's share of the batch as a new sorted run (and does the tier
// merges that makes due). Compactions of finished slots follow in their own
// transactions; if only those fail, the error wraps errCompacting (the flows
// are stored).
func (s *Store) Append(flows []Flow) error {
	if len(flows) == 0 {
		return nil
	}
	type kv struct{ k, v []byte }
	byDay := map[string]map[int][]kv{}
	var latest time.Time
	ahead := s.now().Add(maxAhead)
	for i := range flows {
		f := &flows[i]
		end := endOf(f).UTC()
		if end.After(latest) && !end.After(ahead) {
			latest = end
		}
		d := end.Format(dayLayout)
		if byDay[d] == nil {
			byDay[d] = map[int][]kv{}
		}
		slot := slotOf(end)
		byDay[d][slot] = append(byDay[d][slot], kv{indexKey(f, 0), f.encode()})
	}
	s.mu.Lock()
	s.advanceLocked(latest)
	latest = s.latest
	s.mu.Unlock()
	days := make([]string, 0, len(byDay))
	for d := range byDay {
		days = append(days, d)
	}
	sort.Strings(days)
	for _, day := range days {
		bySlot := byDay[day]
		slots := make([]int, 0, len(bySlot))
		for slot, kvs := range bySlot {
			slots = append(slots, slot)
			// Sorted by dst | port | start; seq (numbered in this
			// order below) breaks ties, so the keys end up sorted.
			slices.SortStableFunc(kvs, func(a, b kv) int { return bytes.Compare(a.k, b.k) })
		}
		sort.Ints(slots)
		db, err := s.day(day, true)
		if err != nil {
			return err
		}
		dayStart, _ := time.Parse(dayLayout, day)
		err = db.Update(func(tx *bolt.Tx) error {
			segs, meta := tx.Bucket(bucketSegs), tx.Bucket(bucketMeta)
			seq := meta.Sequence()
			for _, slot := range slots {
				id, err := segs.NextSequence()
				if err != nil {
					return err
				}
				kvs := bySlot[slot]
				minStart := keyStart(kvs[0].k)
				for _, e := range kvs {
					minStart = min(minStart, keyStart(e.k))
				}
				b, err := segs.CreateBucket(segName(slot, 0, id, minStart))
				if err != nil {
					return err
				}
				b.FillPercent = 1 // filled in key order: pack pages full
				for _, e := range kvs {
					seq++
					binary.BigEndian.PutUint32(e.k[keyLen-4:], uint32(seq))
					if err := b.Put(e.k, e.v); err != nil {
						return err
					}
				}
			}
			if err := meta.SetSequence(seq); err != nil {
				return err
			}
			// Tier merges are small: same transaction, one commit.
			for {
				slot, inputs, level, due, _ := nextMerge(listSegs(segs), dayStart, latest, true)
				if !due {
					return nil
				}
				if err := s.merge(segs, slot, inputs, level); err != nil {
					return err
				}
			}
		})
		if err != nil {
			return fmt.Errorf("flow store %s: %w", day, err)
		}
		s.mu.Lock()
		s.runDays[day] = true
		s.mu.Unlock()
	}
	if err := s.compact(); err != nil {
		return fmt.Errorf("%w: %w", errCompacting, err)
	}
	return nil
}

// slotSegs are the segment names of one slot.
type slotSegs struct {
	runs   int                // segments below levelSlot
	levels map[uint8][][]byte // level -> names
}

func listSegs(segs *bolt.Bucket) map[int]*slotSegs {
	out := map[int]*slotSegs{}
	c := segs.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if v != nil || len(k) != segNameLen {
			continue
		}
		slot := int(binary.BigEndian.Uint16(k))
		ss := out[slot]
		if ss == nil {
			ss = &slotSegs{levels: map[uint8][][]byte{}}
			out[slot] = ss
		}
		if k[2] != levelSlot {
			ss.runs++
		}
		ss.levels[k[2]] = append(ss.levels[k[2]], bytes.Clone(k))
	}
	return out
}

// nextMerge picks the next merge of a day's segments: inputs and the level
// of the merged segment; ok=false when nothing is due. runs reports whether
// a merge may fall due later without new runs (open slots hold runs).
func nextMerge(bySlot map[int]*slotSegs, dayStart, latest time.Time, tiersOnly bool) (slot int, inputs [][]byte, level uint8, ok, runs bool) {
	slots := make([]int, 0, len(bySlot))
	for s := range bySlot {
		slots = append(slots, s)
	}
	sort.Ints(slots)
	for _, slot := range slots {
		ss := bySlot[slot]
		over := !dayStart.Add(time.Duration(slot+1)*slotLen + closeGrace).After(latest)
		compacted := len(ss.levels[levelSlot])
		full := over && ss.runs > 0 && (compacted == 0 || ss.runs >= mergeFanout)
		if !tiersOnly && (full || compacted > 1) {
			for _, names := range ss.levels {
				inputs = append(inputs, names...)
			}
			return slot, inputs, levelSlot, true, true
		}
		lowest := -1 // tiers: only while the slot is open (a finished one is compacted whole)
		for l, names := range ss.levels {
			if !over && l < levelSlot-1 && len(names) >= mergeFanout && (lowest < 0 || int(l) < lowest) {
				lowest = int(l)
			}
		}
		if lowest >= 0 {
			return slot, ss.levels[uint8(lowest)], uint8(lowest + 1), true, true
		}
		runs = runs || (!over && ss.runs > 0)
	}
	return 0, nil, 0, false, runs
}

// compact runs the merges due in every day that may hold runs.
func (s *Store) compact() error {
	s.mu.Lock()
	latest := s.latest
	days := make(map[string]*bolt.DB, len(s.runDays))
	for d := range s.runDays {
		days[d] = s.days[d]
	}
	s.mu.Unlock()
	for day, db := range days {
		if db == nil {
			continue
		}
		runs, err := s.compactDay(db, day, latest)
		if err != nil {
			return fmt.Errorf("flow store %s: %w", day, err)
		}
		if !runs {
			s.mu.Lock()
			delete(s.runDays, day)
			s.mu.Unlock()
		}
	}
	return nil
}

func (s *Store) compactDay(db *bolt.DB, day string, latest time.Time) (runs bool, err error) {
	dayStart, err := time.Parse(dayLayout, day)
	if err != nil {
		return false, err
	}
	due := false
	err = db.View(func(tx *bolt.Tx) error {
		_, _, _, due, runs = nextMerge(listSegs(tx.Bucket(bucketSegs)), dayStart, latest, false)
		return nil
	})
	if err != nil || !due {
		return runs, err
	}
	// Each merge is its own transaction: bounded memory, and a crash keeps
	// every merge done before it.
	for due {
		err = db.Update(func(tx *bolt.Tx) error {
			segs := tx.Bucket(bucketSegs)
			var slot int
			var inputs [][]byte
			var level uint8
			slot, inputs, level, due, runs = nextMerge(listSegs(segs), dayStart, latest, false)
			if !due {
				return nil
			}
			return s.merge(segs, slot, inputs, level)
		})
		if err != nil {
			return true, err
		}
	}
	return runs, nil
}

// merge writes the union of the input segments, in key order, as one new
// segment, then deletes the inputs (all in the caller's transaction).
func (s *Store) merge(segs *bolt.Bucket, slot int, inputs [][]byte, level uint8) error {
	id, err := segs.NextSequence()
	if err != nil {
		return err
	}
	minStart := segMinStart(inputs[0])
	for _, name := range inputs {
		minStart = min(minStart, segMinStart(name))
	}
	out, err := segs.CreateBucket(segName(slot, level, id, minStart))
	if err != nil {
		return err
	}
	out.FillPercent = 1
	h := make(cursorHeap, 0, len(inputs))
	for _, name := range inputs {
		b := segs.Bucket(name)
		if b == nil {
			continue
		}
		c := b.Cursor()
		if k, v := c.First(); k != nil {
			h = append(h, &segCursor{c, k, v})
		}
	}
	heap.Init(&h)
	var last []byte
	for len(h) > 0 {
		top := h[0]
		if top.v != nil && !bytes.Equal(top.k, last) { // nil v: a nested bucket, not a flow
			if err := out.Put(top.k, top.v); err != nil {
				return err
			}
			last = top.k
		}
		if top.k, top.v = top.c.Next(); top.k == nil {
			heap.Pop(&h)
		} else {
			heap.Fix(&h, 0)
		}
	}
	if s.failMerge != nil {
		if err := s.failMerge(level); err != nil {
			return err
		}
	}
	for _, name := range inputs {
		if err := segs.DeleteBucket(name); err != nil {
			return err
		}
	}
	return nil
}

type segCursor struct {
	c    *bolt.Cursor
	k, v []byte
}

type cursorHeap []*segCursor

func (h cursorHeap) Len() int           { return len(h) }
func (h cursorHeap) Less(i, j int) bool { return bytes.Compare(h[i].k, h[j].k) < 0 }
func (h cursorHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *cursorHeap) Push(x any)        { *h = append(*h, x.(*segCursor)) }
func (h *cursorHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// Query selects flows. Zero fields do not restrict.
type Query struct {
	Experiment string
	Dst        netip.Prefix // destination (same inside and outside: NAT changes the source)
	Src        netip.Addr   // inside source or NATed (public) source
	Port       uint16       // destination port
	SPort      uint16       // source port, inside or NATed (public)
	Proto      uint8
	At         time.Time // flows open at this instant
	Since      time.Time // flows that ended at or after
	Until      time.Time // flows that started at or before
	Limit      int       // 0 = 1000
}

func (q *Query) match(f *Flow) bool {
	if q.Experiment != "" && f.Experiment != q.Experiment {
		return false
	}
	if q.Dst.IsValid() && !q.Dst.Contains(f.Dst) {
		return false
	}
	if q.Src.IsValid() && f.Src != q.Src && f.NATSrc != q.Src {
		return false
	}
	if q.Port != 0 && f.DPort != q.Port {
		return false
	}
	if q.SPort != 0 && f.SPort != q.SPort && f.NATSPort != q.SPort {
		return false
	}
	if q.Proto != 0 && f.Proto != q.Proto {
		return false
	}
	end := f.End
	if end.IsZero() {
		end = time.Now()
	}
	if !q.At.IsZero() && (q.At.Before(f.Start) || q.At.After(end)) {
		return false
	}
	if !q.Since.IsZero() && end.Before(q.Since) {
		return false
	}
	if !q.Until.IsZero() && f.Start.After(q.Until) {
		return false
	}
	return true
}

// Find returns the stored flows matching q, oldest start first.
func (s *Store) Find(q Query) ([]Flow, error) {
	limit := q.Limit
	if limit <= 0 {
		limit = 1000
	}
	// A flow is stored under the day and slot it ended in, which is at or
	// after both At and Since: older days and slots cannot hold a match.
	from := q.At
	if from.IsZero() || (!q.Since.IsZero() && q.Since.After(from)) {
		from = q.Since
	}
	// ... and a match started at or before At and Until.
	startMax := q.At
	if startMax.IsZero() || (!q.Until.IsZero() && q.Until.Before(startMax)) {
		startMax = q.Until
	}
	lo, hi := [16]byte{}, [16]byte{}
	for i := range hi {
		hi[i] = 0xff
	}
	if q.Dst.IsValid() {
		lo, hi = prefixRange(q.Dst)
	}
	seek := append([]byte(nil), lo[:]...)
	exact := lo == hi && q.Port != 0 // one destination and port: seek straight to it
	if exact {
		seek = binary.BigEndian.AppendUint16(seek, q.Port)
	}
	var out []Flow
	for _, day := range s.dayNames() {
		if !from.IsZero() && day < from.UTC().Format(dayLayout) {
			continue
		}
		db, err := s.day(day, false)
		if err != nil || db == nil {
			continue
		}
		firstSlot := 0
		if !from.IsZero() && day == from.UTC().Format(dayLayout) {
			firstSlot = slotOf(from)
		}
		err = db.View(func(tx *bolt.Tx) error {
			segs := tx.Bucket(bucketSegs)
			sc := segs.Cursor()
			for name, v := sc.Seek(binary.BigEndian.AppendUint16(nil, uint16(firstSlot))); name != nil; name, v = sc.Next() {
				if v != nil || len(name) != segNameLen {
					continue
				}
				if !startMax.IsZero() && segMinStart(name) > startMax.UnixNano() {
					continue // every flow in it started too late
				}
				b := segs.Bucket(name)
				if b == nil {
					continue
				}
				c := b.Cursor()
				for k, v := c.Seek(seek); k != nil; k, v = c.Next() {
					if len(k) != keyLen {
						continue
					}
					if bytes.Compare(k[:16], hi[:]) > 0 {
						break
					}
					if q.Port != 0 {
						if p := binary.BigEndian.Uint16(k[16:]); p != q.Port {
							if exact && p > q.Port {
								break
							}
							continue
						}
					}
					if !startMax.IsZero() && keyStart(k) > startMax.UnixNano() {
						if exact {
							break // later starts follow
						}
						continue
					}
					f, err := decodeFlow(v)
					if err != nil {
						continue
					}
					if q.match(&f) {
						out = append(out, f)
					}
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
	if len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out, nil
}

func (s *Store) dayNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.days))
	for d := range s.days {
		names = append(names, d)
	}
	sort.Strings(names)
	return names
}

// Expire deletes day files older than the retention, as of now.
func (s *Store) Expire(now time.Time) error {
	if s.retention <= 0 {
		return nil
	}
	cut := now.UTC().AddDate(0, 0, -s.retention).Format(dayLayout)
	s.mu.Lock()
	defer s.mu.Unlock()
	for d, db := range s.days {
		if d < cut {
			db.Close()
			delete(s.days, d)
			delete(s.runDays, d)
			if err := os.Remove(filepath.Join(s.dir, d+".db")); err != nil && !os.IsNotExist(err) {
				return err
			}
		}
	}
	return nil
}

// Close closes every day file.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var first error
	for d, db := range s.days {
		if err := db.Close(); err != nil && first == nil {
			first = err
		}
		delete(s.days, d)
	}
	return first
}
