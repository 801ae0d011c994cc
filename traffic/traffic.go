// Package traffic keeps each experiment's traffic over time for the owner
// page: it samples the experiments' up and down byte counters (bytes today,
// as accounting reports them) at a fixed interval and keeps two rings per
// experiment and one for the node's total:
//
//   - fine: the last FineSlots intervals (360 x 10 s = the last hour);
//   - coarse: the last CoarseSlots coarse intervals (2016 x 5 min = 7 days),
//     a coarse interval being CoarseFactor fine ones.
//
// Each ring has a fixed number of slots, addressed by the interval's number
// modulo the ring size, so memory and disk use are bounded by construction:
// an experiment never holds more than FineSlots+CoarseSlots slots, whatever
// runs for how long. A slot remembers the interval it belongs to, so a slot
// last written a lap ago reads as empty.
//
// The rings are persisted in the daemon's bbolt store (bucket Bucket): every
// sample writes the slots it changed in one transaction, so a restart keeps
// the history; an experiment whose newest sample is older than the coarse
// span is deleted at the next sample.
//
// The counters are "bytes today": they grow, and fall back to (near) zero
// at 00:00 UTC. A sample's bytes are the growth since the previous sample;
// a counter lower than the last one is a new day and counts in full. After
// a gap of more than MaxGap intervals the growth is not put in any interval.
package traffic

import (
	"context"
	"encoding/binary"
	"fmt"
	"sort"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Bucket is the bbolt bucket this package owns. Keys: "<id>\x00f<slot>" and
// "<id>\x00c<slot>" (slot: 2 bytes big endian) hold one slot each;
// "<id>\x00l" holds the last counters seen.
const Bucket = "traffic"

// NodeID is the series of the node's total (the sum over experiments).
const NodeID = "*node"

// Sizes of the rings.
const (
	DefaultInterval = 10 * time.Second
	FineSlots       = 360  // 1 h at 10 s
	CoarseFactor    = 30   // 5 min at 10 s
	CoarseSlots     = 2016 // 7 days at 5 min
	// MaxGap is the most intervals between two samples whose difference is
	// still put in the later interval. After a longer gap (the daemon was
	// down) the bytes of the gap belong to no interval: they are left out
	// rather than drawn as one spike; bytes today (Point.Today) stays exact.
	MaxGap = 3
)

// Counters are an experiment's byte counters at one moment: bytes today,
// experiment -> Internet (Up) and back (Down).
type Counters struct {
	Up, Down uint64
}

// Point is one slot of a series.
type Point struct {
	Start time.Time     // start of the interval
	Dur   time.Duration // its length
	Up    uint64        // bytes sent up during the interval
	Down  uint64        // bytes received during the interval
	Today uint64        // bytes today (up + down) at the last sample in it
}

// UpBps and DownBps are the point's mean rates in bit/s.
func (p Point) UpBps() float64   { return float64(p.Up) * 8 / p.Dur.Seconds() }
func (p Point) DownBps() float64 { return float64(p.Down) * 8 / p.Dur.Seconds() }

// Range selects a ring.
type Range int

const (
	Hour Range = iota // the fine ring
	Week              // the coarse ring
)

// ParseRange reads "1h" or "7d" (the API's range parameter).
func ParseRange(s string) (Range, error) {
	switch s {
	case "", "1h":
		return Hour, nil
	case "7d":
		return Week, nil
	}
	return 0, fmt.Errorf("range %q: want 1h or 7d", s)
}

func (r Range) String() string {
	if r == Week {
		return "7d"
	}
	return "1h"
}

type slot struct {
	n        int64 // interval number (unix nanoseconds / interval); 0 = empty
	up, down uint64
	today    uint64
}

const slotSize = 32

func (s slot) encode() []byte {
	b := make([]byte, slotSize)
	binary.BigEndian.PutUint64(b[0:], uint64(s.n))
	binary.BigEndian.PutUint64(b[8:], s.up)
	binary.BigEndian.PutUint64(b[16:], s.down)
	binary.BigEndian.PutUint64(b[24:], s.today)
	return b
}

func decodeSlot(b []byte) (slot, bool) {
	if len(b) != slotSize {
		return slot{}, false
	}
	return slot{n: int64(binary.BigEndian.Uint64(b)), up: binary.BigEndian.Uint64(b[8:]),
		down: binary.BigEndian.Uint64(b[16:]), today: binary.BigEndian.Uint64(b[24:])}, true
}

type series struct {
	fine   [FineSlots]slot
	coarse [CoarseSlots]slot
	last   Counters
	lastN  int64 // interval number of last
	seen   bool  // last is valid
	newest int64 // newest fine interval number written
}

// Store holds the series. Safe for concurrent use.
type Store struct {
	db       *bolt.DB // nil: memory only
	interval time.Duration

	mu     sync.Mutex
	series map[string]*series
}

// Open loads the series from db (nil: keep them in memory only). interval
// is the sampling interval (0 = DefaultInterval); it must stay the same
// across restarts for the stored slots to mean the same times.
func Open(db *bolt.DB, interval time.Duration) (*Store, error) {
	if interval <= 0 {
		interval = DefaultInterval
	}
	s := &Store{db: db, interval: interval, series: map[string]*series{}}
	if db == nil {
		return s, nil
	}
	err := db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte(Bucket))
		if err != nil {
			return err
		}
		return b.ForEach(func(k, v []byte) error {
			id, kind, idx, ok := parseKey(k)
			if !ok {
				return nil // not ours to understand; ignored
			}
			se := s.get(id)
			switch kind {
			case 'l':
				if len(v) == 24 {
					se.last = Counters{Up: binary.BigEndian.Uint64(v), Down: binary.BigEndian.Uint64(v[8:])}
					se.lastN = int64(binary.BigEndian.Uint64(v[16:]))
					se.seen = true
				}
			case 'f':
				if sl, ok := decodeSlot(v); ok && idx < FineSlots {
					se.fine[idx] = sl
					se.newest = max(se.newest, sl.n)
				}
			case 'c':
				if sl, ok := decodeSlot(v); ok && idx < CoarseSlots {
					se.coarse[idx] = sl
					se.newest = max(se.newest, sl.n*CoarseFactor)
				}
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("traffic: load bucket %q: %w", Bucket, err)
	}
	return s, nil
}

// Interval is the fine interval.
func (s *Store) Interval() time.Duration { return s.interval }

func (s *Store) get(id string) *series {
	se := s.series[id]
	if se == nil {
		se = &series{}
		s.series[id] = se
	}
	return se
}

func key(id string, kind byte, idx int) []byte {
	k := append([]byte(id), 0, kind)
	if kind != 'l' {
		k = binary.BigEndian.AppendUint16(k, uint16(idx))
	}
	return k
}

func parseKey(k []byte) (id string, kind byte, idx int, ok bool) {
	n := len(k)
	switch {
	case n >= 4 && k[n-4] == 0 && (k[n-3] == 'f' || k[n-3] == 'c'):
		return string(k[:n-4]), k[n-3], int(binary.BigEndian.Uint16(k[n-2:])), true
	case n >= 2 && k[n-2] == 0 && k[n-1] == 'l':
		return string(k[:n-2]), 'l', 0, true
	}
	return "", 0, 0, false
}

// Record adds one sample taken at now: the counters of every experiment
// that runs (those absent keep their history and get no point). The node's
// total is the sum of the experiments' growth. Series whose newest point is
// older than the coarse span are deleted.
func (s *Store) Record(now time.Time, counters map[string]Counters) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := now.UnixNano() / int64(s.interval)
	writes := map[string][]byte{}
	var total Counters
	ids := make([]string, 0, len(counters))
	for id := range counters {
		if id != NodeID {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	var nodeToday uint64
	for _, id := range ids {
		c := counters[id]
		se := s.get(id)
		var d Counters
		if se.seen && n > se.lastN && n-se.lastN <= MaxGap {
			d = Counters{Up: grow(c.Up, se.last.Up), Down: grow(c.Down, se.last.Down)}
		}
		se.last, se.lastN, se.seen = c, n, true
		lb := make([]byte, 24)
		binary.BigEndian.PutUint64(lb, c.Up)
		binary.BigEndian.PutUint64(lb[8:], c.Down)
		binary.BigEndian.PutUint64(lb[16:], uint64(n))
		writes[string(key(id, 'l', 0))] = lb
		s.add(id, se, n, d, c.Up+c.Down, writes)
		total.Up += d.Up
		total.Down += d.Down
		nodeToday += c.Up + c.Down
	}
	node := s.get(NodeID)
	node.seen = true
	s.add(NodeID, node, n, total, nodeToday, writes)

	// Expire series that have nothing left in the coarse span.
	var deletes []string
	for id, se := range s.series {
		if id != NodeID && se.newest <= n-int64(CoarseSlots*CoarseFactor) {
			deletes = append(deletes, id)
			delete(s.series, id)
		}
	}
	if s.db == nil {
		return nil
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte(Bucket))
		if err != nil {
			return err
		}
		for k, v := range writes {
			if err := b.Put([]byte(k), v); err != nil {
				return err
			}
		}
		for _, id := range deletes {
			prefix := append([]byte(id), 0)
			c := b.Cursor()
			for k, _ := c.Seek(prefix); k != nil && len(k) > len(prefix) && string(k[:len(prefix)]) == string(prefix); k, _ = c.Seek(prefix) {
				if err := c.Delete(); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// grow is the bytes counted between two readings of a "bytes today"
// counter: a lower reading is a new day (or new counters) and counts whole.
func grow(cur, last uint64) uint64 {
	if cur >= last {
		return cur - last
	}
	return cur
}

func (s *Store) add(id string, se *series, n int64, d Counters, today uint64, writes map[string][]byte) {
	fi := int(n % FineSlots)
	f := &se.fine[fi]
	if f.n != n {
		*f = slot{n: n}
	}
	f.up += d.Up
	f.down += d.Down
	f.today = today
	writes[string(key(id, 'f', fi))] = f.encode()

	cn := n / CoarseFactor
	ci := int(cn % CoarseSlots)
	c := &se.coarse[ci]
	if c.n != cn {
		*c = slot{n: cn}
	}
	c.up += d.Up
	c.down += d.Down
	c.today = today
	writes[string(key(id, 'c', ci))] = c.encode()
	se.newest = max(se.newest, n)
}

// Series returns the points of id in range r as of now, oldest first: one
// point per interval of the span that has a sample (intervals without one,
// such as before the experiment started or while the daemon was down, are
// left out). Unknown ids have no points.
func (s *Store) Series(id string, r Range, now time.Time) []Point {
	s.mu.Lock()
	defer s.mu.Unlock()
	se := s.series[id]
	if se == nil {
		return nil
	}
	n := now.UnixNano() / int64(s.interval)
	var ring []slot
	var size, dur int64
	switch r {
	case Week:
		ring, size, dur = se.coarse[:], CoarseSlots, int64(s.interval)*CoarseFactor
		n /= CoarseFactor
	default:
		ring, size, dur = se.fine[:], FineSlots, int64(s.interval)
	}
	var out []Point
	for k := n - size + 1; k <= n; k++ {
		if k <= 0 {
			continue
		}
		sl := ring[k%size]
		if sl.n != k {
			continue
		}
		out = append(out, Point{Start: time.Unix(0, k*dur).UTC(), Dur: time.Duration(dur), Up: sl.up, Down: sl.down, Today: sl.today})
	}
	return out
}

// Span is the time range r covers.
func (s *Store) Span(r Range) time.Duration {
	if r == Week {
		return s.interval * CoarseFactor * CoarseSlots
	}
	return s.interval * FineSlots
}

// Run samples source every interval until ctx ends. now is the clock
// (time.Now in the daemon). A failed write is reported to onErr and the
// sampling goes on: the in-memory series stay complete.
func (s *Store) Run(ctx context.Context, source func() map[string]Counters, now func() time.Time, onErr func(error)) error {
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := s.Record(now(), source()); err != nil && onErr != nil {
				onErr(err)
			}
		}
	}
}
