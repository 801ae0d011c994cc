package alert

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"syscall"
	"time"
)

// LineFunc receives one record and the raw JSON line it was read from
// (without the newline; valid only during the call). Returning an error stops
// the reader, which returns that error.
type LineFunc func(r Record, line []byte) error

// FollowInterval is how often Follow polls the file for new lines and for
// rotation.
var FollowInterval = 100 * time.Millisecond

// maxRotated bounds how many rotated files readers look for.
const maxRotated = 100

// ReadFile calls fn for every record in the alerts file at path, oldest first:
// the rotated files (path.N .. path.1) then path itself. Records whose Time is
// before since are skipped (zero since: all). Lines that are not records (a
// torn last line after a crash) are skipped. A missing file is not an error.
func ReadFile(path string, since time.Time, fn LineFunc) error {
	return readAll(path, since, fn, nil)
}

// Follow is ReadFile followed by `tail -F`: it then waits for new lines and
// calls fn for each until ctx ends (returning nil) or fn fails. It follows
// the file across rotations and re-creation, and needs only the file, not
// the daemon.
func Follow(ctx context.Context, path string, since time.Time, fn LineFunc) error {
	t := &tailer{path: path, since: since, fn: fn}
	// Open the current file before reading the rotated ones so that a
	// rotation in between is seen (its inode then shows up as path.1, which
	// is skipped because it is read as the current file).
	t.reopen()
	if err := readAll(path, since, fn, t); err != nil {
		return err
	}
	tick := time.NewTicker(FollowInterval)
	defer tick.Stop()
	defer t.close()
	for {
		if err := t.poll(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// rotatedAfter opens the rotated files newer than the one t followed (its
// inode t.ino) and older than the one it follows next (inode next),
// oldest first. The writer may rotate again meanwhile (it renames path.i
// to path.i+1 from the top down, then path to path.1), so the files are
// opened in one pass and told apart by inode, not by name: a file seen
// twice (before and after a rename) counts once, files newer than next
// are left for the next poll, and the pass is repeated while the followed
// file is not found (a rename in flight leaves a gap). A lookup by name
// after the pass had lost a whole file's records when a rotation came in
// between.
func (t *tailer) rotatedAfter(next uint64) []*os.File {
	for attempt := 0; attempt < 5; attempt++ {
		if attempt > 0 {
			time.Sleep(5 * time.Millisecond)
		}
		var files []*os.File // newest first
		seen := map[uint64]bool{}
		found := false
		for i, miss := 1, 0; i <= maxRotated && miss < 3; i++ {
			g, err := os.Open(RotatedName(t.path, i))
			if err != nil {
				miss++
				continue
			}
			miss = 0
			gi := inode(g)
			if gi == t.ino {
				g.Close()
				found = true
				break
			}
			if seen[gi] {
				g.Close()
				continue
			}
			seen[gi] = true
			if gi == next {
				// Rotated already: what came before it is newer.
				for _, h := range files {
					h.Close()
				}
				files = files[:0]
				g.Close()
				continue
			}
			files = append(files, g)
		}
		// Not found after a few passes: the followed file is gone (rotated
		// past Keep), so every rotated file older than next is newer.
		if found || attempt == 4 {
			slices.Reverse(files)
			return files
		}
		for _, h := range files {
			h.Close()
		}
	}
	return nil
}

func readAll(path string, since time.Time, fn LineFunc, cur *tailer) error {
	var curIno uint64
	if cur != nil && cur.f != nil {
		curIno = cur.ino
	}
	n := 0
	for i, miss := 1, 0; i <= maxRotated && miss < 3; i++ {
		if _, err := os.Stat(RotatedName(path, i)); err != nil {
			miss++ // a gap while the writer rotates
			continue
		}
		n, miss = i, 0
	}
	for i := n; i >= 1; i-- {
		name := RotatedName(path, i)
		f, err := os.Open(name)
		if err != nil {
			continue // rotated away meanwhile
		}
		if curIno != 0 && inode(f) == curIno {
			f.Close()
			continue
		}
		t := &tailer{path: name, since: since, fn: fn, f: f}
		err = t.drain(true)
		f.Close()
		if err != nil {
			return err
		}
	}
	if cur != nil {
		return cur.drain(false)
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open alerts file: %w", err)
	}
	defer f.Close()
	t := &tailer{path: path, since: since, fn: fn, f: f}
	return t.drain(true)
}

type tailer struct {
	path    string
	since   time.Time
	fn      LineFunc
	f       *os.File
	ino     uint64
	off     int64
	partial []byte
	buf     []byte
}

func inode(f *os.File) uint64 {
	st, err := f.Stat()
	if err != nil {
		return 0
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		return sys.Ino
	}
	return 0
}

func (t *tailer) reopen() {
	t.close()
	f, err := os.Open(t.path)
	if err != nil {
		return
	}
	t.f, t.ino, t.off, t.partial = f, inode(f), 0, t.partial[:0]
}

func (t *tailer) close() {
	if t.f != nil {
		t.f.Close()
		t.f = nil
	}
}

// drain reads to EOF, calling fn for each complete line; final also handles
// a last line without newline.
func (t *tailer) drain(final bool) error {
	if t.f == nil {
		return nil
	}
	if st, err := t.f.Stat(); err == nil && st.Size() < t.off {
		// Truncated in place: start over.
		t.off, t.partial = 0, t.partial[:0]
	}
	if t.buf == nil {
		t.buf = make([]byte, 64<<10)
	}
	for {
		n, err := t.f.ReadAt(t.buf, t.off)
		t.off += int64(n)
		if n > 0 {
			data := t.buf[:n]
			for {
				i := bytes.IndexByte(data, '\n')
				if i < 0 {
					t.partial = append(t.partial, data...)
					break
				}
				line := data[:i]
				if len(t.partial) > 0 {
					t.partial = append(t.partial, line...)
					line = t.partial
				}
				if err := t.line(line); err != nil {
					return err
				}
				t.partial = t.partial[:0]
				data = data[i+1:]
			}
		}
		if err == io.EOF || (err == nil && n == 0) {
			break
		}
		if err != nil {
			return fmt.Errorf("read alerts file %q: %w", t.path, err)
		}
	}
	if final && len(t.partial) > 0 {
		err := t.line(t.partial)
		t.partial = t.partial[:0]
		return err
	}
	return nil
}

func (t *tailer) line(line []byte) error {
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return nil
	}
	var r Record
	if err := json.Unmarshal(line, &r); err != nil {
		return nil // torn or foreign line
	}
	if !t.since.IsZero() && r.Time.Before(t.since) {
		return nil
	}
	return t.fn(r, line)
}

// poll reads what was appended and switches to a new file after rotation.
func (t *tailer) poll() error {
	if t.f == nil {
		t.reopen()
		if t.f == nil {
			return nil
		}
	}
	if err := t.drain(false); err != nil {
		return err
	}
	f, err := os.Open(t.path)
	if err != nil {
		return nil // rotated, new file not yet created: keep the old one
	}
	ino := inode(f)
	if ino == t.ino {
		f.Close()
		return nil
	}
	// Rotated: finish the old file (the writer may have appended between
	// our read and the rename), then the files rotated after it (when
	// several rotations happened since the last poll), then the new one.
	if err := t.drain(true); err != nil {
		f.Close()
		return err
	}
	for _, g := range t.rotatedAfter(ino) {
		mid := &tailer{path: g.Name(), since: t.since, fn: t.fn, f: g, buf: t.buf}
		err := mid.drain(true)
		g.Close()
		if err != nil {
			f.Close()
			return err
		}
	}
	t.close()
	t.f, t.ino, t.off, t.partial = f, ino, 0, t.partial[:0]
	return t.drain(false)
}
