package flowlog

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

var bucketFlows = []byte("flows")

// Store keeps one bbolt file per UTC day (by the day a flow ended) under
// dir, and deletes days older than the retention. Safe for concurrent use.
type Store struct {
	dir       string
	retention int // days; 0 = keep forever

	mu   sync.Mutex
	days map[string]*bolt.DB // "2006-01-02" -> open file
	seq  uint32
}

const dayLayout = "2006-01-02"

// OpenStore opens (creating) the flow store in dir.
func OpenStore(dir string, retentionDays int) (*Store, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("flow store %s: %w", dir, err)
	}
	s := &Store{dir: dir, retention: retentionDays, days: map[string]*bolt.DB{}}
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
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketFlows)
		return err
	}); err != nil {
		db.Close()
		return nil, err
	}
	s.days[day] = db
	return db, nil
}

// Append writes finished flows in one transaction per day touched.
func (s *Store) Append(flows []Flow) error {
	byDay := map[string][]*Flow{}
	for i := range flows {
		f := &flows[i]
		end := f.End
		if end.IsZero() {
			end = f.Start
		}
		d := end.UTC().Format(dayLayout)
		byDay[d] = append(byDay[d], f)
	}
	for day, fs := range byDay {
		db, err := s.day(day, true)
		if err != nil {
			return err
		}
		// Keys in order: bbolt then appends to each leaf page in turn
		// instead of seeking and splitting at random (several times faster
		// for a batch of thousands).
		type kv struct{ k, v []byte }
		kvs := make([]kv, len(fs))
		s.mu.Lock()
		for i, f := range fs {
			s.seq++
			kvs[i] = kv{indexKey(f, s.seq), f.encode()}
		}
		s.mu.Unlock()
		sort.Slice(kvs, func(i, j int) bool { return bytes.Compare(kvs[i].k, kvs[j].k) < 0 })
		err = db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketFlows)
			b.FillPercent = 0.9
			for _, e := range kvs {
				if err := b.Put(e.k, e.v); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("flow store %s: %w", day, err)
		}
	}
	return nil
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
	// A flow is stored under the day it ended, which is on or after both
	// At and Since: older day files cannot hold a match.
	from := q.At
	if from.IsZero() || (!q.Since.IsZero() && q.Since.After(from)) {
		from = q.Since
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
			c := tx.Bucket(bucketFlows).Cursor()
			for slot := firstSlot; slot < slotsADay; slot++ {
				lo, hi := [16]byte{}, [16]byte{}
				for i := range hi {
					hi[i] = 0xff
				}
				if q.Dst.IsValid() {
					lo, hi = prefixRange(q.Dst)
				}
				seek := binary.BigEndian.AppendUint16(nil, uint16(slot))
				seek = append(seek, lo[:]...)
				for k, v := c.Seek(seek); k != nil; k, v = c.Next() {
					if len(k) != keyLen || int(binary.BigEndian.Uint16(k)) != slot || bytes.Compare(k[2:18], hi[:]) > 0 {
						break
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
