// Package store keeps the daemon's state in one embedded bbolt file under the
// state directory: experiments and their lifecycle, and the buckets other
// components own (daily byte counters). bbolt commits are fsynced, so a state
// transition written before it is acted on survives a crash or power loss.
package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// States of an experiment.
const (
	Planned   = "planned"
	Running   = "running"
	Completed = "completed"
)

// Reasons an experiment completed.
const (
	ReasonFinished     = "finished"
	ReasonTimeout      = "timeout"
	ReasonStoppedOwner = "stopped by owner"
	ReasonStoppedStaff = "stopped by staff"
	ReasonQuota        = "quota"
	ReasonViolations   = "violations"
	ReasonRefused      = "refused at start"
	ReasonPolicy       = "refused after policy reload"
	ReasonLost         = "lost across restart"
)

var (
	bucketExperiments = []byte("experiments")
	// bucketActive indexes the planned and running experiments (id ->
	// slot), so that allocating a slot and the scheduler's tick read those,
	// not the whole history of a node.
	bucketActive = []byte("active")
	bucketMeta   = []byte("meta")
	keyNextID    = []byte("next_id")
	keyPaused    = []byte("paused")
)

// ErrNotFound is returned for an unknown experiment id.
var ErrNotFound = errors.New("no such experiment")

// Contact is one experimenter as shown to the node owner.
type Contact struct {
	Name  string `json:"name"`
	Email string `json:"email"`
}

// Experiment is the persisted record of one experiment.
type Experiment struct {
	ID            string    `json:"id"`
	Slot          int       `json:"slot"`
	Title         string    `json:"title"`
	Experimenters []Contact `json:"experimenters"`
	Manifest      string    `json:"manifest"`      // the TOML as submitted
	ManifestName  string    `json:"manifest_name"` // file name, for messages
	ManifestDir   string    `json:"manifest_dir"`  // directory files = ... is relative to
	State         string    `json:"state"`
	Reason        string    `json:"reason,omitempty"`
	Detail        string    `json:"detail,omitempty"`

	Submitted time.Time `json:"submitted"`
	Start     time.Time `json:"start"` // planned start
	Started   time.Time `json:"started,omitempty"`
	Deadline  time.Time `json:"deadline,omitempty"` // started + max hours
	Ended     time.Time `json:"ended,omitempty"`

	ExitCode int     `json:"exit_code,omitempty"`
	Signal   string  `json:"signal,omitempty"`
	OOM      bool    `json:"oom,omitempty"`
	CPUSecs  float64 `json:"cpu_seconds,omitempty"`

	Alerts    uint64 `json:"alerts"`
	BytesUp   uint64 `json:"bytes_up"`   // total, experiment -> Internet
	BytesDown uint64 `json:"bytes_down"` // total, Internet -> experiment
}

// Store is the daemon's state file. Safe for concurrent use.
type Store struct {
	db *bolt.DB
}

// Open opens (creating if needed) <dir>/arkgw.db.
func Open(dir string) (*Store, error) {
	path := filepath.Join(dir, "arkgw.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open state %s: locked by another process (is another arkgw running?)", path)
		}
		return nil, fmt.Errorf("open state %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketExperiments, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		if tx.Bucket(bucketActive) != nil {
			return nil
		}
		// A state file from before the index: build it once.
		active, err := tx.CreateBucket(bucketActive)
		if err != nil {
			return err
		}
		return tx.Bucket(bucketExperiments).ForEach(func(k, v []byte) error {
			var e Experiment
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			return index(active, &e)
		})
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("init state %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// DB exposes the bbolt handle to components that own buckets of their own.
func (s *Store) DB() *bolt.DB { return s.db }

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

// Create allocates the next experiment id ("x1", "x2", ...) and the lowest
// slot not used by a planned or running experiment, hands both to build,
// and stores the record build returns, all in one transaction: no other
// Create can see the slot free in between, so concurrent submits never
// share one. An error from build (a refused manifest) stores nothing and
// uses up no id. build runs with the state file's write lock held: it must
// be quick and must not call the Store.
func (s *Store) Create(build func(id string, slot int) (*Experiment, error)) (*Experiment, error) {
	var out *Experiment
	err := s.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		var n uint64
		if v := meta.Get(keyNextID); v != nil {
			if err := json.Unmarshal(v, &n); err != nil {
				return fmt.Errorf("read next id: %w", err)
			}
		}
		n++
		v, _ := json.Marshal(n)
		if err := meta.Put(keyNextID, v); err != nil {
			return err
		}
		id := fmt.Sprintf("x%d", n)
		used := map[int]bool{}
		err := tx.Bucket(bucketActive).ForEach(func(_, v []byte) error {
			var slot int
			if err := json.Unmarshal(v, &slot); err != nil {
				return err
			}
			used[slot] = true
			return nil
		})
		if err != nil {
			return fmt.Errorf("read active slots: %w", err)
		}
		slot := 0
		for used[slot] {
			slot++
		}
		e, err := build(id, slot)
		if err != nil {
			return err
		}
		if e.ID != id || e.Slot != slot {
			return fmt.Errorf("create experiment: record has id %q slot %d, allocated %q slot %d", e.ID, e.Slot, id, slot)
		}
		if e.State == Completed {
			return fmt.Errorf("create experiment %s: a new record must be planned or running", id)
		}
		out = e
		return put(tx, e)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// index records e in the active index, or removes it once completed.
func index(active *bolt.Bucket, e *Experiment) error {
	if e.State == Completed {
		return active.Delete([]byte(e.ID))
	}
	v, _ := json.Marshal(e.Slot)
	return active.Put([]byte(e.ID), v)
}

// put writes e and its index entry.
func put(tx *bolt.Tx, e *Experiment) error {
	v, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if err := tx.Bucket(bucketExperiments).Put([]byte(e.ID), v); err != nil {
		return err
	}
	return index(tx.Bucket(bucketActive), e)
}

// Put writes e (insert or replace).
func (s *Store) Put(e *Experiment) error {
	return s.db.Update(func(tx *bolt.Tx) error { return put(tx, e) })
}

// Update applies fn to the stored experiment id atomically and returns the
// result. fn's error aborts the update.
func (s *Store) Update(id string, fn func(*Experiment) error) (*Experiment, error) {
	var out Experiment
	err := s.db.Update(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketExperiments).Get([]byte(id))
		if v == nil {
			return fmt.Errorf("experiment %q: %w", id, ErrNotFound)
		}
		if err := json.Unmarshal(v, &out); err != nil {
			return err
		}
		if err := fn(&out); err != nil {
			return err
		}
		return put(tx, &out)
	})
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// Active returns the planned and running experiments, in the order of
// List.
func (s *Store) Active() ([]*Experiment, error) {
	var out []*Experiment
	err := s.db.View(func(tx *bolt.Tx) error {
		exps := tx.Bucket(bucketExperiments)
		add := appendTo(&out)
		return tx.Bucket(bucketActive).ForEach(func(k, _ []byte) error {
			if v := exps.Get(k); v != nil {
				return add(k, v)
			}
			return nil
		})
	})
	sortExperiments(out)
	return out, err
}

// Get returns one experiment.
func (s *Store) Get(id string) (*Experiment, error) {
	var e Experiment
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketExperiments).Get([]byte(id))
		if v == nil {
			return fmt.Errorf("experiment %q: %w", id, ErrNotFound)
		}
		return json.Unmarshal(v, &e)
	})
	if err != nil {
		return nil, err
	}
	return &e, nil
}

// List returns all experiments, planned first, then running, then completed
// (newest first within each).
func (s *Store) List() ([]*Experiment, error) {
	var out []*Experiment
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketExperiments).ForEach(appendTo(&out))
	})
	sortExperiments(out)
	return out, err
}

// appendTo decodes each record it is given and appends it to out.
func appendTo(out *[]*Experiment) func(_, v []byte) error {
	return func(_, v []byte) error {
		var e Experiment
		if err := json.Unmarshal(v, &e); err != nil {
			return err
		}
		*out = append(*out, &e)
		return nil
	}
}

// sortExperiments orders running, then planned, then completed, newest
// first within each.
func sortExperiments(out []*Experiment) {
	rank := map[string]int{Running: 0, Planned: 1, Completed: 2}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if rank[a.State] != rank[b.State] {
			return rank[a.State] < rank[b.State]
		}
		return a.Submitted.After(b.Submitted)
	})
}

// Paused reports whether the owner paused the node (no experiment starts).
func (s *Store) Paused() (bool, error) {
	var p bool
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keyPaused); v != nil {
			return json.Unmarshal(v, &p)
		}
		return nil
	})
	return p, err
}

// SetPaused records the node-wide pause switch.
func (s *Store) SetPaused(p bool) error {
	v, _ := json.Marshal(p)
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keyPaused, v)
	})
}
