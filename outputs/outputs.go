// Package outputs ships each experiment's results off the node to an
// S3-compatible object store (a cloud bucket, MinIO, Ceph RGW, Garage):
// stdout and stderr in chunks while it runs and the rest when it ends, then
// its alerts, a summary of its flows and status.json. See README.md for the
// object names and contents.
//
// Every object to send is first queued in the daemon's state file; it
// leaves the queue only after the store confirmed it (Content-MD5 checked
// by the store, ETag checked here), so restarts, crashes and store outages
// lose nothing and send nothing twice under different names. Local copies
// are removed only once shipped, and only when the disk budget needs room.
package outputs

import (
	"bufio"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/minio/minio-go/v7"
	mcreds "github.com/minio/minio-go/v7/pkg/credentials"
	bolt "go.etcd.io/bbolt"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/flowlog"
	"github.com/arkgw/arkgw/store"
)

// KindOutputs is the alert kind of the backlog alert.
const KindOutputs = "outputs"

// Clock is time for the backoff and the interval; tests inject one to let
// an hour pass at once.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Config builds a Shipper.
type Config struct {
	Policy configs.OutputsPolicy
	Node   string   // PREFIX/NODE/...
	DB     *bolt.DB // the daemon's state file; the shipper owns bucket "outputs"
	// Alerts gets the backlog alert (nil = none).
	Alerts alert.Sink
	// AlertsOf calls each for every alert of experiment id raised at or
	// after since (nil = none shipped).
	AlertsOf func(id string, since time.Time, each func(alert.Record) error) error
	// FlowsOf returns the flows of experiment id that ended at or after
	// since and started at or before until (nil = an empty summary). The
	// shipper asks an hour at a time, so that a long experiment's flows
	// are never all in memory at once.
	FlowsOf func(id string, since, until time.Time) ([]flowlog.Flow, error)
	Logger  hclog.Logger
	Clock   Clock // nil = real time

	// Credentials, when set, are used instead of reading
	// Policy.Credentials (tests).
	Credentials *Credentials
	// PartBytes is the multipart part size (default 8 MiB; the store's
	// minimum is 5 MiB except for the last part).
	PartBytes int64
	// MinBackoff and MaxBackoff bound the wait after a failed upload
	// (defaults 1 s and 5 min).
	MinBackoff, MaxBackoff time.Duration
	// SummaryDelay is how long after Finish the summaries are written
	// and the last objects queued (0 = at once). The flows of an
	// experiment's last connections reach the flow log a moment after its
	// network is removed (conntrack DESTROY events, flushed each second).
	SummaryDelay time.Duration
}

// Shipper queues and ships experiments' results. Safe for concurrent use;
// Run does the shipping.
type Shipper struct {
	cfg    Config
	pol    configs.OutputsPolicy
	db     *bolt.DB
	core   *minio.Core
	log    hclog.Logger
	clock  Clock
	alerts alert.Sink
	wake   chan struct{} // the uploader: new items
	scanW  chan struct{} // the scanner: an experiment ended
	m      *metrics

	// finMu serializes finalize: the summaries it writes must not change
	// under an item already queued.
	finMu sync.Mutex

	mu        sync.Mutex
	failures  int       // consecutive failed uploads
	lastErr   string    // the last upload error
	lastOK    time.Time // last confirmed object
	attempts  uint64    // puts tried (failures included)
	bucketsOK bool
}

// New checks the credentials and prepares the queue. Nothing is sent until
// Run.
func New(cfg Config) (*Shipper, error) {
	pol := cfg.Policy
	if pol.Push == "" || pol.Bucket == "" {
		return nil, errors.New("outputs: [outputs] push is not set")
	}
	if cfg.DB == nil {
		return nil, errors.New("outputs: no state file")
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.Alerts == nil {
		cfg.Alerts = alert.Discard
	}
	if cfg.PartBytes <= 0 {
		cfg.PartBytes = 8 << 20
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 5 * time.Minute
	}
	if pol.ChunkBytes <= 0 {
		pol.ChunkBytes = 16 << 20
	}
	if pol.Interval <= 0 {
		pol.Interval = 5 * time.Minute
	}
	var cr Credentials
	if cfg.Credentials != nil {
		cr = *cfg.Credentials
	} else {
		var err error
		if cr, err = LoadCredentials(pol.Credentials); err != nil {
			return nil, err
		}
	}
	tr, err := minio.DefaultTransport(pol.Secure)
	if err != nil {
		return nil, fmt.Errorf("outputs: %w", err)
	}
	client, err := minio.New(pol.Endpoint, &minio.Options{
		Transport: emptyBody{tr},
		Creds:     mcreds.NewStaticV4(cr.AccessKey, cr.SecretKey, cr.SessionToken),
		Secure:    pol.Secure, Region: pol.Region,
		// The shipper has its own backoff (and its own clock): one try per
		// request here.
		MaxRetries: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("outputs: endpoint %q: %w", pol.Endpoint, err)
	}
	if err := initState(cfg.DB); err != nil {
		return nil, fmt.Errorf("outputs: init queue in state file: %w", err)
	}
	s := &Shipper{
		cfg: cfg, pol: pol, db: cfg.DB, core: &minio.Core{Client: client},
		log: cfg.Logger.Named("outputs"), clock: cfg.Clock, alerts: cfg.Alerts,
		wake: make(chan struct{}, 1), scanW: make(chan struct{}, 1),
	}
	s.m = newMetrics(s)
	return s, nil
}

// Location is where experiment id's objects go: s3://BUCKET/PREFIX/NODE/ID/.
func (s *Shipper) Location(id string) string {
	return "s3://" + s.pol.Bucket + "/" + s.objectName(id, "")
}

func (s *Shipper) objectName(id, name string) string {
	n := path.Join(s.pol.Prefix, s.cfg.Node, id, name)
	if name == "" {
		n += "/"
	}
	return n
}

func (s *Shipper) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Track starts shipping a running experiment's stdout and stderr (in dir)
// at every interval. Idempotent (also after a restart).
func (s *Shipper) Track(id, dir string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		r, err := getExp(tx, id)
		if err != nil || r != nil {
			return err
		}
		return putExp(tx, newRec(id, dir, s.clock.Now()))
	})
}

func newRec(id, dir string, now time.Time) *expRec {
	return &expRec{ID: id, Dir: dir, Added: now.UTC(), Streams: map[string]*streamRec{"stdout": {}, "stderr": {}}}
}

// Unfinished lists the experiments whose end the shipper has not been told
// of (the daemon finishes those it knows have completed: a crash between
// completion and Finish).
func (s *Shipper) Unfinished() ([]string, error) {
	var ids []string
	err := s.db.View(func(tx *bolt.Tx) error {
		return forEachExp(tx, func(r *expRec) error {
			if !r.Final && r.End == nil {
				ids = append(ids, r.ID)
			}
			return nil
		})
	})
	return ids, err
}

// Finish queues the rest of an ended experiment's results: its remaining
// stdout and stderr, alerts.jsonl, flows.jsonl and, last, status.json
// (after SummaryDelay; the end is recorded in the state file meanwhile, so
// a restart does not lose it). Idempotent: a finished experiment is not
// queued again.
func (s *Shipper) Finish(x *store.Experiment, dir string) error {
	if s.cfg.SummaryDelay <= 0 {
		return s.finalize(x, dir)
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		r, err := getExp(tx, x.ID)
		if err != nil {
			return err
		}
		if r == nil {
			r = newRec(x.ID, dir, s.clock.Now())
		}
		if r.Final || r.End != nil {
			return nil
		}
		r.End, r.EndAt, r.Dir = x, s.clock.Now().UTC(), dir
		return putExp(tx, r)
	})
	if err != nil {
		return fmt.Errorf("outputs: record the end of experiment %s: %w", x.ID, err)
	}
	select {
	case s.scanW <- struct{}{}:
	default:
	}
	return nil
}

// finalizeDue finalizes the ended experiments whose SummaryDelay passed
// and returns how long until the next one is due (0: none waits).
func (s *Shipper) finalizeDue() time.Duration {
	var ends []*expRec
	s.db.View(func(tx *bolt.Tx) error {
		return forEachExp(tx, func(r *expRec) error {
			if r.End != nil && !r.Final {
				ends = append(ends, r)
			}
			return nil
		})
	})
	var next time.Duration
	now := s.clock.Now()
	for _, r := range ends {
		if wait := r.EndAt.Add(s.cfg.SummaryDelay).Sub(now); wait > 0 {
			if next == 0 || wait < next {
				next = wait
			}
			continue
		}
		if err := s.finalize(r.End, r.Dir); err != nil {
			s.log.Error("queue the results of an ended experiment", "experiment", r.ID, "error", err)
		}
	}
	return next
}

// finalize writes the summaries and queues the rest (Finish's work).
func (s *Shipper) finalize(x *store.Experiment, dir string) error {
	s.finMu.Lock()
	defer s.finMu.Unlock()
	var done bool
	if err := s.db.View(func(tx *bolt.Tx) error {
		r, err := getExp(tx, x.ID)
		done = r != nil && r.Final
		return err
	}); err != nil || done {
		return err
	}
	// The summaries are written beside the output first (the bytes that
	// are queued must not change); a crash before the queueing below
	// writes them again.
	rdir := filepath.Join(dir, resultsSubdir)
	if err := os.MkdirAll(rdir, 0o750); err != nil {
		return fmt.Errorf("outputs: experiment %s: %w", x.ID, err)
	}
	since := x.Started
	if since.IsZero() {
		since = x.Submitted
	}
	alertsPath := filepath.Join(rdir, "alerts.jsonl")
	if err := s.writeAlerts(alertsPath, x.ID, since); err != nil {
		return err
	}
	flowsPath := filepath.Join(rdir, "flows.jsonl")
	until := s.clock.Now()
	if x.Ended.After(until) {
		until = x.Ended
	}
	if err := s.writeFlows(flowsPath, x.ID, since, until); err != nil {
		return err
	}
	statusPath := filepath.Join(rdir, "status.json")
	err := s.db.Update(func(tx *bolt.Tx) error {
		r, err := getExp(tx, x.ID)
		if err != nil {
			return err
		}
		if r == nil {
			r = newRec(x.ID, dir, s.clock.Now())
		}
		if r.Final {
			return nil
		}
		if err := s.queueStreams(tx, r); err != nil {
			return err
		}
		// status.json is written inside the transaction: it names the
		// chunks just queued, and is queued last so that its presence in
		// the store says everything else of the experiment is there.
		doc := statusDoc(x, s.cfg.Node, r, readSandboxStatus(filepath.Join(dir, "status.json")))
		b, _ := json.MarshalIndent(doc, "", "  ")
		if err := writeFileSync(statusPath, append(b, '\n')); err != nil {
			return err
		}
		now := s.clock.Now().UTC()
		for _, f := range []struct{ name, path string }{{"alerts.jsonl", alertsPath}, {"flows.jsonl", flowsPath}, {"status.json", statusPath}} {
			st, err := os.Stat(f.path)
			if err != nil {
				return err
			}
			if err := enqueue(tx, r, item{Exp: x.ID, Name: f.name, Path: f.path, Length: st.Size(), Queued: now}); err != nil {
				return err
			}
		}
		r.Final, r.End = true, nil
		return putExp(tx, r)
	})
	if err != nil {
		return fmt.Errorf("outputs: queue results of experiment %s: %w", x.ID, err)
	}
	s.log.Info("experiment results queued", "experiment", x.ID, "location", s.Location(x.ID))
	s.checkBacklog()
	s.poke()
	return nil
}

// queueStreams queues the stdout and stderr bytes written since the last
// call, in chunks of at most ChunkBytes. The files only grow (the sandbox
// appends, capped), so a byte range, once queued, never changes.
func (s *Shipper) queueStreams(tx *bolt.Tx, r *expRec) error {
	now := s.clock.Now().UTC()
	for _, name := range streamNames {
		sr := r.Streams[name]
		if sr == nil {
			sr = &streamRec{}
			r.Streams[name] = sr
		}
		p := filepath.Join(r.Dir, name)
		st, err := os.Stat(p)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			return err
		}
		for sr.Queued < st.Size() {
			n := min(st.Size()-sr.Queued, s.pol.ChunkBytes)
			sr.Chunks++
			it := item{Exp: r.ID, Name: chunkName(name, sr.Chunks), Path: p, Offset: sr.Queued, Length: n, Queued: now}
			if err := enqueue(tx, r, it); err != nil {
				return err
			}
			sr.Queued += n
		}
	}
	return nil
}

// chunkName is "stdout/000001": numbered from 1, zero-padded so that the
// names sort in byte order.
func chunkName(stream string, n int) string { return fmt.Sprintf("%s/%06d", stream, n) }

// scan queues new output of every running experiment.
func (s *Shipper) scan() error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		var recs []*expRec
		if err := forEachExp(tx, func(r *expRec) error {
			if !r.Final {
				recs = append(recs, r)
			}
			return nil
		}); err != nil {
			return err
		}
		for _, r := range recs {
			if err := s.queueStreams(tx, r); err != nil {
				return fmt.Errorf("experiment %s: %w", r.ID, err)
			}
			if err := putExp(tx, r); err != nil {
				return err
			}
		}
		return nil
	})
	s.checkBacklog()
	return err
}

// Run ships until ctx ends: one loop queues new output every interval, one
// uploads the queue in order, backing off while the store fails.
func (s *Shipper) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			if err := s.scan(); err != nil {
				s.log.Error("queue running experiments' output", "error", err)
			} else {
				s.poke()
			}
			if err := s.enforceBudget(); err != nil {
				s.log.Error("disk budget", "error", err)
			}
			wait := s.pol.Interval
			if due := s.finalizeDue(); due > 0 && due < wait {
				wait = due
			}
			select {
			case <-ctx.Done():
				return
			case <-s.clock.After(wait):
			case <-s.scanW:
			}
		}
	}()
	s.upload(ctx)
	wg.Wait()
	return nil
}

// upload sends queued objects in order until ctx ends.
func (s *Shipper) upload(ctx context.Context) {
	for ctx.Err() == nil {
		key, it, err := s.next()
		if err != nil {
			s.log.Error("read upload queue", "error", err)
		}
		if it == nil {
			// Finish and every scan (each interval) wake it.
			select {
			case <-ctx.Done():
				return
			case <-s.wake:
			}
			continue
		}
		err = s.ensureBucket(ctx)
		if err == nil {
			err = s.put(ctx, key, it)
		}
		if ctx.Err() != nil {
			return
		}
		var perm *permanentError
		switch {
		case errors.As(err, &perm):
			// The local file is gone or shorter: nothing will ever
			// send it. Say so, once, and go on.
			s.log.Error("result object cannot be sent; dropped", "experiment", it.Exp, "object", it.Name, "error", err)
			s.m.lost.Add(1)
			if err := s.confirm(key, it, false); err != nil {
				s.log.Error("update upload queue", "error", err)
			}
		case err != nil:
			d := s.failed(it, err)
			select {
			case <-ctx.Done():
				return
			case <-s.clock.After(d):
			}
		default:
			s.succeeded(it)
			if err := s.confirm(key, it, true); err != nil {
				s.log.Error("update upload queue", "error", err)
			}
			if err := s.enforceBudget(); err != nil {
				s.log.Error("disk budget", "error", err)
			}
		}
		s.checkBacklog()
	}
}

// failed records a failed upload and returns how long to wait: doubling
// from MinBackoff up to MaxBackoff. The log says it on the first failure
// and then at each doubling, not once per try.
func (s *Shipper) failed(it *item, err error) time.Duration {
	s.m.failures.Add(1)
	s.mu.Lock()
	s.failures++
	n := s.failures
	s.lastErr = err.Error()
	s.mu.Unlock()
	d := s.cfg.MinBackoff
	for i := 1; i < n && d < s.cfg.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, s.cfg.MaxBackoff)
	if n&(n-1) == 0 {
		s.log.Warn("object store unreachable or refusing; results wait on the node", "experiment", it.Exp,
			"object", it.Name, "failures", n, "retry_in", d, "error", err)
	}
	return d
}

func (s *Shipper) succeeded(it *item) {
	s.mu.Lock()
	n := s.failures
	s.failures = 0
	s.lastErr = ""
	s.lastOK = s.clock.Now()
	s.mu.Unlock()
	if n > 0 {
		s.log.Info("object store reachable again", "failed_tries", n)
	}
	s.m.shipped.Add(float64(it.Length))
	s.log.Debug("object shipped", "experiment", it.Exp, "object", it.Name, "bytes", it.Length)
}

// next is the oldest queued object.
func (s *Shipper) next() ([]byte, *item, error) {
	var key []byte
	var it *item
	err := s.db.View(func(tx *bolt.Tx) error {
		k, v := sub(tx, bucketQueue).Cursor().First()
		if k == nil {
			return nil
		}
		key = append([]byte(nil), k...)
		it = new(item)
		return json.Unmarshal(v, it)
	})
	return key, it, err
}

// confirm removes a confirmed (or dropped) object from the queue and
// counts it; the experiment is shipped when its last object is.
func (s *Shipper) confirm(key []byte, it *item, ok bool) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if err := sub(tx, bucketQueue).Delete(key); err != nil {
			return err
		}
		r, err := getExp(tx, it.Exp)
		if err != nil || r == nil {
			return err
		}
		if ok {
			r.ShippedBytes += it.Length
		}
		if r.Final && r.ShippedAt.IsZero() && !queued(tx, it.Exp) {
			r.ShippedAt = s.clock.Now().UTC()
			s.log.Info("experiment results shipped", "experiment", it.Exp, "location", s.Location(it.Exp), "bytes", r.ShippedBytes)
		}
		return putExp(tx, r)
	})
}

// queued reports whether experiment id has objects in the queue.
func queued(tx *bolt.Tx, id string) bool {
	found := false
	sub(tx, bucketQueue).ForEach(func(_, v []byte) error {
		var it item
		if json.Unmarshal(v, &it) == nil && it.Exp == id {
			found = true
			return errStop
		}
		return nil
	})
	return found
}

var errStop = errors.New("stop")

// permanentError: the object can never be sent (its local bytes are gone).
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

func (s *Shipper) ensureBucket(ctx context.Context) error {
	s.mu.Lock()
	ok := s.bucketsOK
	s.mu.Unlock()
	if ok {
		return nil
	}
	exists, err := s.core.BucketExists(ctx, s.pol.Bucket)
	if err != nil {
		return fmt.Errorf("bucket %s at %s: %w", s.pol.Bucket, s.pol.Endpoint, err)
	}
	if !exists {
		return fmt.Errorf("bucket %s does not exist at %s; ask the platform to create it or fix [outputs] push", s.pol.Bucket, s.pol.Endpoint)
	}
	s.mu.Lock()
	s.bucketsOK = true
	s.mu.Unlock()
	return nil
}

// put sends one object and returns nil only when the store confirmed it:
// every request carries Content-MD5 (the store refuses a body that does
// not match) and the returned ETag must be the MD5 (single put) or the MD5
// of the parts' MD5s with the part count (multipart), as S3 defines it.
// Objects larger than a part go as a multipart upload whose id and
// confirmed parts are kept in the queue, so a restart continues it.
func (s *Shipper) put(ctx context.Context, key []byte, it *item) error {
	s.mu.Lock()
	s.attempts++
	s.mu.Unlock()
	f, err := os.Open(it.Path)
	if err != nil {
		return &permanentError{fmt.Errorf("open %s: %w", it.Path, err)}
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || st.Size() < it.Offset+it.Length {
		return &permanentError{fmt.Errorf("%s holds fewer bytes than were queued (%d+%d)", it.Path, it.Offset, it.Length)}
	}
	obj := s.objectName(it.Exp, it.Name)
	// DisableContentSha256 turns off minio-go's own (aws-chunked) payload
	// hashing; the payload is signed with the SHA-256 computed here.
	opts := minio.PutObjectOptions{ContentType: contentType(it.Name), DisableContentSha256: true}
	if strings.Contains(it.Name, "/") {
		opts.UserMetadata = map[string]string{"arkgw-offset": strconv.FormatInt(it.Offset, 10)}
	}
	if it.Length <= s.cfg.PartBytes {
		sum, sha, err := sums(io.NewSectionReader(f, it.Offset, it.Length))
		if err != nil {
			return err
		}
		info, err := s.core.PutObject(ctx, s.pol.Bucket, obj, io.NewSectionReader(f, it.Offset, it.Length), it.Length,
			base64.StdEncoding.EncodeToString(sum), sha, opts)
		if err != nil {
			return fmt.Errorf("put %s: %w", obj, err)
		}
		return checkETag(obj, info.ETag, hex.EncodeToString(sum))
	}
	nparts := int((it.Length + s.cfg.PartBytes - 1) / s.cfg.PartBytes)
	if it.UploadID == "" {
		id, err := s.core.NewMultipartUpload(ctx, s.pol.Bucket, obj, opts)
		if err != nil {
			return fmt.Errorf("start multipart upload of %s: %w", obj, err)
		}
		it.UploadID, it.Parts, it.PartMD5s = id, nil, nil
		if err := s.saveItem(key, it); err != nil {
			return err
		}
	}
	var all []byte
	if len(it.PartMD5s) != len(it.Parts) {
		return s.restartUpload(key, it, fmt.Errorf("upload %s of %s: parts and their MD5s disagree in the queue", it.UploadID, obj))
	}
	for i, m := range it.PartMD5s {
		b, err := hex.DecodeString(m)
		if err != nil || len(b) != md5.Size {
			return s.restartUpload(key, it, fmt.Errorf("part %d MD5 %q in the queue is not an MD5", i+1, m))
		}
		all = append(all, b...)
	}
	for p := len(it.Parts); p < nparts; p++ {
		off := int64(p) * s.cfg.PartBytes
		n := min(s.cfg.PartBytes, it.Length-off)
		sum, sha, err := sums(io.NewSectionReader(f, it.Offset+off, n))
		if err != nil {
			return err
		}
		part, err := s.core.PutObjectPart(ctx, s.pol.Bucket, obj, it.UploadID, p+1, io.NewSectionReader(f, it.Offset+off, n), n,
			minio.PutObjectPartOptions{Md5Base64: base64.StdEncoding.EncodeToString(sum), Sha256Hex: sha, DisableContentSha256: true})
		if err != nil {
			if minio.ToErrorResponse(err).Code == "NoSuchUpload" {
				return s.restartUpload(key, it, fmt.Errorf("put part %d of %s: the store forgot upload %s", p+1, obj, it.UploadID))
			}
			return fmt.Errorf("put part %d of %s: %w", p+1, obj, err)
		}
		if err := checkETag(fmt.Sprintf("%s part %d", obj, p+1), part.ETag, hex.EncodeToString(sum)); err != nil {
			return err
		}
		it.Parts = append(it.Parts, strings.Trim(part.ETag, `"`))
		it.PartMD5s = append(it.PartMD5s, hex.EncodeToString(sum))
		all = append(all, sum...)
		if err := s.saveItem(key, it); err != nil {
			return err
		}
	}
	parts := make([]minio.CompletePart, nparts)
	for i, e := range it.Parts {
		parts[i] = minio.CompletePart{PartNumber: i + 1, ETag: e}
	}
	info, err := s.core.CompleteMultipartUpload(ctx, s.pol.Bucket, obj, it.UploadID, parts, opts)
	if err != nil {
		if minio.ToErrorResponse(err).Code == "NoSuchUpload" {
			// Completed before a crash took the answer, or forgotten by
			// the store: send it again (same name, same bytes).
			return s.restartUpload(key, it, fmt.Errorf("complete %s: the store no longer knows upload %s", obj, it.UploadID))
		}
		return fmt.Errorf("complete multipart upload of %s: %w", obj, err)
	}
	whole := md5.Sum(all)
	return checkETag(obj, info.ETag, fmt.Sprintf("%s-%d", hex.EncodeToString(whole[:]), nparts))
}

// emptyBody makes an empty PUT carry "Content-Length: 0": minio-go hands
// net/http a non-nil body with length 0, which net/http sends chunked, and
// stores refuse a PUT without a length (MissingContentLength). Every
// request the shipper makes has a known length, so 0 means empty here.
type emptyBody struct{ http.RoundTripper }

func (t emptyBody) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodPut && r.ContentLength == 0 && r.Body != nil && r.Body != http.NoBody {
		r.Body.Close()
		r = r.Clone(r.Context())
		r.Body = http.NoBody
	}
	return t.RoundTripper.RoundTrip(r)
}

// restartUpload forgets a multipart upload the store cannot continue; the
// next try starts the object again.
func (s *Shipper) restartUpload(key []byte, it *item, cause error) error {
	it.UploadID, it.Parts, it.PartMD5s = "", nil, nil
	return errors.Join(cause, s.saveItem(key, it))
}

func (s *Shipper) saveItem(key []byte, it *item) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if sub(tx, bucketQueue).Get(key) == nil {
			return nil
		}
		return putItem(tx, key, it)
	})
}

// checkETag compares the store's ETag with the expected MD5 form. A store
// whose ETags are not MD5s (some encrypt at rest) is trusted on its
// Content-MD5 check alone.
func checkETag(what, got, want string) error {
	got = strings.ToLower(strings.Trim(got, `"`))
	if !md5Like(got) {
		return nil
	}
	if got != want {
		return fmt.Errorf("%s: the store answered ETag %s, want %s (bytes changed on the way?)", what, got, want)
	}
	return nil
}

func md5Like(e string) bool {
	h, _, _ := strings.Cut(e, "-")
	if len(h) != 32 {
		return false
	}
	_, err := hex.DecodeString(h)
	return err == nil
}

// sums reads r once for its MD5 (Content-MD5, ETag) and SHA-256 (the
// signed payload hash; minio-go would otherwise send plain-HTTP bodies as
// aws-chunked, which not every store decodes for parts).
func sums(r io.Reader) (md5sum []byte, sha256hex string, err error) {
	m, h := md5.New(), sha256.New()
	if _, err := io.Copy(io.MultiWriter(m, h), r); err != nil {
		return nil, "", err
	}
	return m.Sum(nil), hex.EncodeToString(h.Sum(nil)), nil
}

func contentType(name string) string {
	switch {
	case strings.HasSuffix(name, ".json"):
		return "application/json"
	case strings.HasSuffix(name, ".jsonl"):
		return "application/x-ndjson"
	}
	return "application/octet-stream"
}

// checkBacklog raises the backlog alert once when the bytes waiting pass
// the threshold while the store fails, and lifts it when they fall below
// half of it. (A burst of output that a working store takes in is no
// reason to call anyone.)
func (s *Shipper) checkBacklog() {
	s.mu.Lock()
	failing := s.failures > 0
	s.mu.Unlock()
	var pending int64
	var oldest time.Time
	var raise, clear bool
	// Read first; write (an fsync) only when the alert state changes.
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		if pending, _, oldest, err = backlog(tx); err != nil {
			return err
		}
		was := sub(tx, bucketMeta).Get(keyAlerted) != nil
		raise = !was && failing && s.pol.BacklogAlertBytes > 0 && pending >= s.pol.BacklogAlertBytes
		clear = was && pending < s.pol.BacklogAlertBytes/2
		return nil
	})
	if err == nil && (raise || clear) {
		err = s.db.Update(func(tx *bolt.Tx) error {
			meta := sub(tx, bucketMeta)
			if raise {
				if meta.Get(keyAlerted) != nil {
					raise = false // raised meanwhile
					return nil
				}
				return meta.Put(keyAlerted, []byte("1"))
			}
			s.log.Info("results backlog below half the alert threshold again", "pending_bytes", pending)
			return meta.Delete(keyAlerted)
		})
	}
	alerted := raise
	if err != nil {
		s.log.Error("check results backlog", "error", err)
		return
	}
	if !alerted {
		return
	}
	s.mu.Lock()
	lastErr, lastOK := s.lastErr, s.lastOK
	s.mu.Unlock()
	msg := fmt.Sprintf("%d MB of experiment results wait on this node to be shipped to s3://%s (queued since %s",
		pending>>20, path.Join(s.pol.Bucket, s.pol.Prefix), oldest.UTC().Format(time.RFC3339))
	if !lastOK.IsZero() {
		msg += "; last object confirmed " + lastOK.UTC().Format(time.RFC3339)
	}
	msg += ")"
	if lastErr != "" {
		msg += "; last error: " + lastErr
	}
	msg += ". Experiments keep running; check the store and [outputs] in node.toml."
	s.log.Warn("results backlog alert", "pending_bytes", pending)
	now := s.clock.Now().UTC()
	s.alerts.Emit(alert.Record{Time: now, Node: s.cfg.Node, Kind: KindOutputs, Rule: "backlog",
		Bytes: uint64(pending), FirstSeen: oldest.UTC(), LastSeen: now, Message: msg})
}

// Progress is an experiment's shipping state as the API shows it.
type Progress struct {
	// Shipped: every object of the ended experiment is in the store.
	Shipped      bool      `json:"shipped"`
	PendingBytes int64     `json:"pending_bytes"`
	ShippedBytes int64     `json:"shipped_bytes"`
	ShippedAt    time.Time `json:"shipped_at,omitzero"`
	// LocalRemoved: the node's copy was removed for the disk budget.
	LocalRemoved bool   `json:"local_removed,omitempty"`
	Location     string `json:"location"`
}

// Progress of experiment id; false when the shipper never saw it.
func (s *Shipper) Progress(id string) (Progress, bool) {
	var p Progress
	var ok bool
	s.db.View(func(tx *bolt.Tx) error {
		r, err := getExp(tx, id)
		if err != nil || r == nil {
			return err
		}
		ok = true
		p = Progress{Shipped: r.Final && !r.ShippedAt.IsZero(), PendingBytes: r.QueuedBytes - r.ShippedBytes,
			ShippedBytes: r.ShippedBytes, ShippedAt: r.ShippedAt, LocalRemoved: r.Removed, Location: s.Location(id)}
		return nil
	})
	return p, ok
}

// enforceBudget removes the local copies of shipped experiments, oldest
// shipped first, while the local copies of all experiments exceed the disk
// budget. Output not yet shipped is never removed.
func (s *Shipper) enforceBudget() error {
	var recs []*expRec
	if err := s.db.View(func(tx *bolt.Tx) error {
		return forEachExp(tx, func(r *expRec) error {
			if !r.Removed {
				recs = append(recs, r)
			}
			return nil
		})
	}); err != nil {
		return err
	}
	var total int64
	for _, r := range recs {
		total += localBytes(r.Dir)
	}
	s.m.setLocal(total)
	if total <= s.pol.DiskBudgetBytes {
		return nil
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].ShippedAt.Before(recs[j].ShippedAt) })
	for _, r := range recs {
		if total <= s.pol.DiskBudgetBytes {
			break
		}
		if !r.Final || r.ShippedAt.IsZero() {
			continue
		}
		n := localBytes(r.Dir)
		var errs []error
		for _, p := range localFiles(r.Dir) {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		if err := errors.Join(errs...); err != nil {
			return fmt.Errorf("remove local copy of experiment %s: %w", r.ID, err)
		}
		total -= n
		if err := s.db.Update(func(tx *bolt.Tx) error {
			cur, err := getExp(tx, r.ID)
			if err != nil || cur == nil {
				return err
			}
			cur.Removed = true
			return putExp(tx, cur)
		}); err != nil {
			return err
		}
		s.log.Info("local copy of shipped results removed for the disk budget", "experiment", r.ID, "bytes", n, "location", s.Location(r.ID))
	}
	s.m.setLocal(total)
	if total > s.pol.DiskBudgetBytes {
		s.log.Debug("local results exceed the disk budget but are not shipped yet", "bytes", total, "budget", s.pol.DiskBudgetBytes)
	}
	return nil
}

// localFiles are the copies the shipper may remove once shipped.
func localFiles(dir string) []string {
	return []string{
		filepath.Join(dir, "stdout"), filepath.Join(dir, "stderr"),
		filepath.Join(dir, resultsSubdir, "alerts.jsonl"), filepath.Join(dir, resultsSubdir, "flows.jsonl"),
		filepath.Join(dir, resultsSubdir, "status.json"),
	}
}

func localBytes(dir string) int64 {
	var n int64
	for _, p := range localFiles(dir) {
		if st, err := os.Stat(p); err == nil {
			n += st.Size()
		}
	}
	return n
}

// writeFileSync replaces path with data durably (temp file, fsync, rename).
func writeFileSync(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	_, err = w.Write(data)
	return finishTemp(f, w, tmp, path, err)
}
