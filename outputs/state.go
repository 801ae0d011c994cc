package outputs

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/arkgw/arkgw/store"
)

// Layout in the daemon's state file (bbolt), bucket "outputs":
//
//	exps/  id -> expRec: what is known of each experiment's results
//	queue/ seq(8, big-endian) -> item: objects waiting for the store, in
//	       the order they were queued (a chunk before the next one, and an
//	       experiment's status.json after everything else of it)
//	meta/  "backlog_alerted" -> "1" while the backlog alert stands
//
// Every change is one bbolt transaction (fsynced): an item is queued before
// anything depends on it and deleted only after the store confirmed its
// object, so a crash at any point re-sends at most the one object in flight,
// to the same name with the same bytes.
var (
	bucketRoot    = []byte("outputs")
	bucketExps    = []byte("exps")
	bucketQueue   = []byte("queue")
	bucketMeta    = []byte("meta")
	keyAlerted    = []byte("backlog_alerted")
	streamNames   = []string{"stdout", "stderr"}
	resultsSubdir = "results"
)

// expRec is one experiment's shipping state.
type expRec struct {
	ID      string                `json:"id"`
	Dir     string                `json:"dir"`
	Added   time.Time             `json:"added"`
	Streams map[string]*streamRec `json:"streams"`
	// Final: the experiment ended and its last objects are queued.
	Final bool `json:"final,omitempty"`
	// QueuedBytes and ShippedBytes count object bytes.
	QueuedBytes  int64 `json:"queued_bytes"`
	ShippedBytes int64 `json:"shipped_bytes"`
	// ShippedAt: everything of a final experiment is in the store.
	ShippedAt time.Time `json:"shipped_at,omitempty"`
	// Removed: the local copies were removed for the disk budget.
	Removed bool `json:"removed,omitempty"`
	// End is the completed record, kept from Finish until the summaries
	// are written (after Config.SummaryDelay); EndAt is when Finish came.
	End   *store.Experiment `json:"end,omitempty"`
	EndAt time.Time         `json:"end_at,omitzero"`
}

// streamRec: bytes [0, Queued) of a stream are queued as Chunks objects.
type streamRec struct {
	Queued int64 `json:"queued"`
	Chunks int   `json:"chunks"`
}

// item is one object to put.
type item struct {
	Exp      string    `json:"exp"`
	Name     string    `json:"name"` // under PREFIX/NODE/EXP/
	Path     string    `json:"path"` // local file it is read from
	Offset   int64     `json:"offset"`
	Length   int64     `json:"length"`
	Queued   time.Time `json:"queued"`
	Attempts int       `json:"attempts,omitempty"`
	// A multipart upload in progress: its id and the parts the store
	// confirmed (the store's ETags, for completing it, and the parts'
	// MD5s, for checking the object's ETag), so a restart continues it.
	UploadID string   `json:"upload_id,omitempty"`
	Parts    []string `json:"parts,omitempty"`
	PartMD5s []string `json:"part_md5s,omitempty"`
}

func initState(db *bolt.DB) error {
	return db.Update(func(tx *bolt.Tx) error {
		root, err := tx.CreateBucketIfNotExists(bucketRoot)
		if err != nil {
			return err
		}
		for _, b := range [][]byte{bucketExps, bucketQueue, bucketMeta} {
			if _, err := root.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
}

func sub(tx *bolt.Tx, name []byte) *bolt.Bucket { return tx.Bucket(bucketRoot).Bucket(name) }

func getExp(tx *bolt.Tx, id string) (*expRec, error) {
	v := sub(tx, bucketExps).Get([]byte(id))
	if v == nil {
		return nil, nil
	}
	var r expRec
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, fmt.Errorf("outputs state of experiment %s: %w", id, err)
	}
	return &r, nil
}

func putExp(tx *bolt.Tx, r *expRec) error {
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return sub(tx, bucketExps).Put([]byte(r.ID), v)
}

func forEachExp(tx *bolt.Tx, fn func(*expRec) error) error {
	return sub(tx, bucketExps).ForEach(func(k, v []byte) error {
		var r expRec
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("outputs state of experiment %s: %w", k, err)
		}
		return fn(&r)
	})
}

// enqueue appends it to the queue and counts it against its experiment.
func enqueue(tx *bolt.Tx, r *expRec, it item) error {
	q := sub(tx, bucketQueue)
	seq, err := q.NextSequence()
	if err != nil {
		return err
	}
	v, err := json.Marshal(it)
	if err != nil {
		return err
	}
	r.QueuedBytes += it.Length
	return q.Put(binary.BigEndian.AppendUint64(nil, seq), v)
}

func putItem(tx *bolt.Tx, key []byte, it *item) error {
	v, err := json.Marshal(it)
	if err != nil {
		return err
	}
	return sub(tx, bucketQueue).Put(key, v)
}

// backlog sums the queue: bytes waiting and the oldest queued time.
func backlog(tx *bolt.Tx) (pending int64, items int, oldest time.Time, err error) {
	err = sub(tx, bucketQueue).ForEach(func(k, v []byte) error {
		var it item
		if err := json.Unmarshal(v, &it); err != nil {
			return err
		}
		pending += it.Length
		items++
		if oldest.IsZero() || it.Queued.Before(oldest) {
			oldest = it.Queued
		}
		return nil
	})
	return
}
