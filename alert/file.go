package alert

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
)

// FileOptions configure a FileSink. Zero values take the defaults.
type FileOptions struct {
	// MaxBytes rotates the file when a write would take it past this size
	// (default 64 MiB; negative: never rotate).
	MaxBytes int64
	// Keep is how many rotated files (path.1 newest .. path.N oldest) are
	// kept (default 5).
	Keep int
	// MaxPending bounds the bytes accepted by Emit but not yet written; past
	// it records are dropped and counted (default 32 MiB). Emit never waits
	// for the disk.
	MaxPending int
	// Mode of a newly created file (default 0640).
	Mode os.FileMode
	// Logger for write errors (default: none).
	Logger hclog.Logger
}

// FileSink appends one JSON object a line to a file and fsyncs it.
//
// Emit only encodes the record and queues the bytes; one writer goroutine
// writes everything queued with a single write(2) and then fsyncs, so under
// load many records share one fsync (group commit) while a lone record is on
// disk within one fsync of Emit. Close writes and syncs everything Emit
// accepted. A crash of the process loses at most the records queued in the
// last moments; Sync waits until everything emitted so far is durable.
// Safe for concurrent use.
type FileSink struct {
	path string
	opts FileOptions

	mu       sync.Mutex
	cond     *sync.Cond // signalled when work is queued, written or closed
	pending  []byte
	queued   uint64 // records accepted by Emit
	durable  uint64 // records written and fsynced
	closed   bool
	writeErr error

	f    *os.File
	size int64

	done    chan struct{}
	dropped atomic.Uint64
	written atomic.Uint64
	syncs   atomic.Uint64
}

// NewFileSink opens (creating it and its directory if needed) path for
// appending and starts the writer. Close it to flush.
func NewFileSink(path string, opts FileOptions) (*FileSink, error) {
	if opts.MaxBytes == 0 {
		opts.MaxBytes = 64 << 20
	}
	if opts.Keep <= 0 {
		opts.Keep = 5
	}
	if opts.MaxPending <= 0 {
		opts.MaxPending = 32 << 20
	}
	if opts.Mode == 0 {
		opts.Mode = 0o640
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("create directory of alerts file %q: %w", path, err)
	}
	s := &FileSink{path: path, opts: opts, done: make(chan struct{})}
	s.cond = sync.NewCond(&s.mu)
	if err := s.open(); err != nil {
		return nil, err
	}
	go s.writer()
	return s, nil
}

// Path returns the file written.
func (s *FileSink) Path() string { return s.path }

func (s *FileSink) open() error {
	f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, s.opts.Mode)
	if err != nil {
		return fmt.Errorf("open alerts file %q: %w", s.path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("stat alerts file %q: %w", s.path, err)
	}
	s.f, s.size = f, st.Size()
	return nil
}

// Emit queues r as one JSON line. It never waits for the disk; when more than
// MaxPending bytes are waiting, the record is dropped and counted (Dropped).
func (s *FileSink) Emit(r Record) {
	b, err := Marshal(r)
	if err != nil { // cannot happen for Record; count it rather than panic
		s.dropped.Add(1)
		return
	}
	s.mu.Lock()
	if s.closed || len(s.pending)+len(b)+1 > s.opts.MaxPending {
		s.mu.Unlock()
		s.dropped.Add(1)
		return
	}
	s.pending = append(s.pending, b...)
	s.pending = append(s.pending, '\n')
	s.queued++
	s.mu.Unlock()
	s.cond.Broadcast()
}

// Dropped is the number of records Emit refused (backlog full or closed).
func (s *FileSink) Dropped() uint64 { return s.dropped.Load() }

// Written is the number of records written and fsynced.
func (s *FileSink) Written() uint64 { return s.written.Load() }

// Syncs is the number of fsyncs done (fewer than Written under load).
func (s *FileSink) Syncs() uint64 { return s.syncs.Load() }

// Sync waits until every record Emit accepted before the call is written and
// fsynced, and returns the last write error, if any.
func (s *FileSink) Sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	want := s.queued
	for s.durable < want && s.writeErr == nil && !(s.closed && s.f == nil) {
		s.cond.Wait()
	}
	return s.writeErr
}

// Close writes and fsyncs everything accepted, stops the writer and closes
// the file. Later Emits are dropped. Close is idempotent.
func (s *FileSink) Close() error {
	s.mu.Lock()
	already := s.closed
	s.closed = true
	s.mu.Unlock()
	s.cond.Broadcast()
	if !already {
		<-s.done
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writeErr
}

func (s *FileSink) writer() {
	defer close(s.done)
	var buf []byte
	for {
		s.mu.Lock()
		for len(s.pending) == 0 && !s.closed {
			s.cond.Wait()
		}
		if len(s.pending) == 0 && s.closed {
			err := s.f.Close()
			s.f = nil
			if err != nil && s.writeErr == nil {
				s.writeErr = fmt.Errorf("close alerts file %q: %w", s.path, err)
			}
			s.mu.Unlock()
			s.cond.Broadcast()
			return
		}
		buf, s.pending = s.pending, buf[:0]
		upto := s.queued
		s.mu.Unlock()

		n := countLines(buf)
		err := s.write(buf)
		s.mu.Lock()
		if err != nil {
			s.writeErr = err
			s.dropped.Add(uint64(n))
			s.opts.Logger.Error("alerts file write failed; records lost", "path", s.path, "records", n, "error", err)
		} else {
			s.writeErr = nil
			s.written.Add(uint64(n))
		}
		s.durable = upto
		s.mu.Unlock()
		s.cond.Broadcast()
	}
}

func countLines(b []byte) int {
	n := 0
	for _, c := range b {
		if c == '\n' {
			n++
		}
	}
	return n
}

// write appends buf (whole lines) and fsyncs, rotating first when needed.
func (s *FileSink) write(buf []byte) error {
	if s.f == nil {
		if err := s.open(); err != nil {
			return err
		}
	}
	if s.opts.MaxBytes > 0 && s.size > 0 && s.size+int64(len(buf)) > s.opts.MaxBytes {
		if err := s.rotate(); err != nil {
			return err
		}
	}
	n, err := s.f.Write(buf)
	s.size += int64(n)
	if err != nil {
		return fmt.Errorf("write alerts file %q: %w", s.path, err)
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("fsync alerts file %q: %w", s.path, err)
	}
	s.syncs.Add(1)
	return nil
}

// rotate renames path.(i) to path.(i+1) (dropping the oldest), path to
// path.1, and opens a new path.
func (s *FileSink) rotate() error {
	if err := s.f.Close(); err != nil {
		s.opts.Logger.Warn("close alerts file before rotation", "path", s.path, "error", err)
	}
	s.f = nil
	if err := os.Remove(RotatedName(s.path, s.opts.Keep)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove oldest alerts file: %w", err)
	}
	for i := s.opts.Keep - 1; i >= 1; i-- {
		if err := os.Rename(RotatedName(s.path, i), RotatedName(s.path, i+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("rotate alerts file: %w", err)
		}
	}
	if err := os.Rename(s.path, RotatedName(s.path, 1)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("rotate alerts file: %w", err)
	}
	if err := s.open(); err != nil {
		return err
	}
	syncDir(filepath.Dir(s.path))
	return nil
}

// Marshal encodes r as one line of JSON (without the newline and without
// HTML escaping, so "Name <email>" stays readable).
func Marshal(r Record) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(r); err != nil {
		return nil, err
	}
	return bytes.TrimRight(b.Bytes(), "\n"), nil
}

// RotatedName is the name of the i-th rotated alerts file (1 = newest).
func RotatedName(path string, i int) string {
	return path + "." + strconv.Itoa(i)
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

// ensure interface
var _ Sink = (*FileSink)(nil)
