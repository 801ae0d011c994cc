package nsholder

import (
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// seqConn is one end of the creator-holder SOCK_SEQPACKET socket pair,
// driven through Go's poller via an *os.File. Not net.UnixConn: the holder
// is part of the small arkgw-init binary, and linking the net package in
// made it start measurably slower (it starts with every experiment, and
// the sandbox init it re-executes as, with every launch).
type seqConn struct {
	f  *os.File
	rc syscall.RawConn
}

// newSeqConn takes ownership of fd (a socket).
func newSeqConn(fd int, name string) (*seqConn, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("control socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), name) // non-blocking: registered with the poller
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return &seqConn{f: f, rc: rc}, nil
}

// send writes one message, with file descriptors as SCM_RIGHTS in oob.
func (c *seqConn) send(b, oob []byte) error {
	var err error
	werr := c.rc.Write(func(fd uintptr) bool {
		err = unix.Sendmsg(int(fd), b, oob, nil, 0)
		return err != unix.EAGAIN
	})
	if werr != nil {
		return werr
	}
	return err
}

// recv reads one message; received descriptors are close-on-exec.
func (c *seqConn) recv(buf, oob []byte) (n, oobn int, err error) {
	rerr := c.rc.Read(func(fd uintptr) bool {
		n, oobn, _, _, err = unix.Recvmsg(int(fd), buf, oob, unix.MSG_CMSG_CLOEXEC)
		return err != unix.EAGAIN
	})
	if rerr != nil {
		return 0, 0, rerr
	}
	return n, oobn, err
}

// msgBuf returns a buffer for the next message: buf when it fits, else one
// of the message's size. A reader that waits with a 1 MiB buffer each (one
// per experiment, on both sides) held most of a busy daemon's memory;
// messages are a few hundred bytes.
func (c *seqConn) msgBuf(buf []byte) ([]byte, error) {
	var n int
	var err error
	rerr := c.rc.Read(func(fd uintptr) bool {
		// MSG_TRUNC: the length of the whole datagram, not what fits.
		n, _, err = unix.Recvfrom(int(fd), nil, unix.MSG_PEEK|unix.MSG_TRUNC)
		return err != unix.EAGAIN
	})
	if rerr != nil {
		return nil, rerr
	}
	if err != nil {
		return nil, err
	}
	if n <= len(buf) {
		return buf, nil
	}
	return make([]byte, min(n, maxMsg)), nil
}

// Close ends the connection; a reader waiting in recv returns an error.
func (c *seqConn) Close() error { return c.f.Close() }
