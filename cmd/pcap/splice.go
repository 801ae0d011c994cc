package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/arkgw/arkgw/pcapstream/wire"
)

// splicer moves the records of P frames from the daemon's connection to
// stdout with splice(2) through a pipe: the pages the daemon's writev put
// in the socket are handed on to the file without a copy into this
// process (the kernel still copies them into the page cache, as a write
// would). It needs a stdout that takes splice (a file or a pipe); where it
// does not, the first frame is finished with read and write and the
// splicer turns itself off.
type splicer struct {
	conn    *net.UnixConn
	rc      syscall.RawConn
	out     *os.File
	outFd   int
	pr, pw  int
	size    int  // the pipe's capacity
	off     bool // stdout refused splice: use read and write
	scratch []byte
}

// pipeSize is asked for the pipe: a 512 KiB block of records at once
// (unprivileged processes may ask up to /proc/sys/fs/pipe-max-size, 1 MiB
// by default).
const pipeSize = 1 << 20

// newSplicer returns nil when no pipe can be made.
func newSplicer(conn *net.UnixConn, out *os.File) *splicer {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil
	}
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC); err != nil {
		return nil
	}
	s := &splicer{conn: conn, rc: rc, out: out, outFd: int(out.Fd()), pr: p[0], pw: p[1], size: 64 << 10}
	if n, err := fcntl(s.pw, fSetPipeSz, pipeSize); err == nil {
		s.size = n
	}
	return s
}

func (s *splicer) close() {
	syscall.Close(s.pr)
	syscall.Close(s.pw)
}

const fSetPipeSz = 1031 // F_SETPIPE_SZ

func fcntl(fd, cmd, arg int) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), uintptr(cmd), uintptr(arg))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// outError is a failure to write stdout (the stream itself is intact).
type outError struct{ err error }

func (e *outError) Error() string { return "write stdout: " + e.err.Error() }
func (e *outError) Unwrap() error { return e.err }

// copy moves the n payload bytes of the current frame from the connection
// to stdout. On an outError the rest of the frame has been read and
// dropped, so the next frame can be read.
func (s *splicer) copy(n int) error {
	for n > 0 {
		var m int
		var serr error
		err := s.rc.Read(func(fd uintptr) bool {
			m, serr = splice(int(fd), s.pw, min(n, s.size), spliceNonblock)
			return serr != syscall.EAGAIN
		})
		if err == nil {
			err = serr
		}
		if err != nil {
			return err
		}
		if m == 0 {
			return fmt.Errorf("truncated frame: %w", io.ErrUnexpectedEOF)
		}
		n -= m
		if err := s.drain(m); err != nil {
			if _, derr := io.CopyN(io.Discard, s.conn, int64(n)); derr != nil {
				return derr
			}
			return err
		}
	}
	return nil
}

// drain writes the m bytes in the pipe to stdout.
func (s *splicer) drain(m int) error {
	for m > 0 && !s.off {
		k, err := splice(s.pr, s.outFd, m, 0)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EINVAL || err == syscall.EAGAIN || err == syscall.ENOSYS:
			s.off = true // stdout takes no splice: finish with read and write
		case err != nil:
			s.discard(m)
			return &outError{err}
		default:
			m -= k
		}
	}
	for m > 0 {
		if s.scratch == nil {
			s.scratch = make([]byte, 64<<10)
		}
		k, err := syscall.Read(s.pr, s.scratch[:min(m, len(s.scratch))])
		if err == syscall.EINTR {
			continue
		}
		if err != nil || k == 0 {
			return fmt.Errorf("read own pipe: %v", err)
		}
		m -= k
		if _, err := s.out.Write(s.scratch[:k]); err != nil {
			s.discard(m)
			return &outError{err}
		}
	}
	return nil
}

// discard empties the pipe of m bytes.
func (s *splicer) discard(m int) {
	var b [4096]byte
	for m > 0 {
		k, err := syscall.Read(s.pr, b[:min(m, len(b))])
		if err == syscall.EINTR {
			continue
		}
		if err != nil || k == 0 {
			return
		}
		m -= k
	}
}

const spliceNonblock = 0x2 | 0x1 // SPLICE_F_NONBLOCK | SPLICE_F_MOVE

func splice(in, out, n, flags int) (int, error) {
	r, _, e := syscall.Syscall6(syscall.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n), uintptr(flags))
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// readHeader reads exactly one frame header (nothing of the payload, which
// copy then moves).
func readHeader(conn *net.UnixConn, h []byte) (typ byte, n int, err error) {
	if _, err := io.ReadFull(conn, h[:wire.HeaderLen]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, 0, fmt.Errorf("truncated frame header: %w", err)
		}
		return 0, 0, err
	}
	return wire.ParseHeader(h)
}
