package pcapstream

import (
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/arkgw/arkgw/nsdo"
	"github.com/gopacket/gopacket/pcapgo"
	"golang.org/x/sys/unix"
)

// Batching of the capture goroutine's wake-ups (see captureLoop).
const (
	rateWindow = 100 * time.Millisecond
	batchRate  = 2000 // packets per second above which the capture batches
	batchPause = 5 * time.Millisecond
)

// capture is one open AF_PACKET socket and the goroutine reading it.
type capture struct {
	h       *pcapgo.EthernetHandle
	ifindex int
	rc      syscall.RawConn // nil if unreachable: no batching
	closing atomic.Bool
	done    chan struct{} // closed when the capture goroutine returned
}

// openCapture opens the packet socket inside the configured netns. The
// socket stays bound to that namespace after the thread leaves it.
func (s *Server) openCapture() (*capture, error) {
	c := &capture{done: make(chan struct{})}
	err := nsdo.In(s.cfg.NS, func() error {
		ifi, err := net.InterfaceByName(s.cfg.Iface)
		if err != nil {
			return fmt.Errorf("find interface %q: %w (is the experiment's network up?)", s.cfg.Iface, err)
		}
		h, err := pcapgo.NewEthernetHandle(s.cfg.Iface)
		if err != nil {
			return fmt.Errorf("open packet socket on %q: %w", s.cfg.Iface, err)
		}
		c.h, c.ifindex = h, ifi.Index
		return nil
	})
	if err != nil {
		return nil, err
	}
	// The receive buffer is the snap length: frames are cut there.
	if err := c.h.SetCaptureLength(s.cfg.Snaplen); err != nil {
		c.h.Close()
		return nil, fmt.Errorf("set capture length %d on %q: %w", s.cfg.Snaplen, s.cfg.Iface, err)
	}
	rc, err := rawConn(c.h)
	if err == nil {
		err = setRcvBuf(rc, s.cfg.CaptureBuffer)
	}
	if err != nil {
		// Not fatal: the capture works, it just drops more in bursts.
		s.log.Warn("cannot enlarge the capture socket's receive buffer: expect kernel drops in bursts", "bytes", s.cfg.CaptureBuffer, "error", err)
	} else {
		c.rc = rc
	}
	// No promiscuous mode: a veth end hands every frame its peer sends to
	// packet sockets whatever its destination MAC, and promiscuous mode
	// would change the interface's flags for everyone.
	s.log.Debug("capture opened", "iface", s.cfg.Iface, "ifindex", c.ifindex)
	return c, nil
}

func (c *capture) close() {
	c.closing.Store(true)
	c.h.Close()
}

// kernelDrops returns the packets the socket dropped since the last call.
func (c *capture) kernelDrops() (uint64, error) {
	st, err := c.h.Stats()
	if err != nil {
		return 0, err
	}
	return uint64(st.Drops), nil
}

// captureLoop reads packets and offers each to every reader. It never
// blocks on a reader. It returns when the socket is closed (by leave, with
// the last reader) or fails (then captureEnded tells the readers).
func (s *Server) captureLoop(c *capture) {
	defer close(c.done)
	var accept []*reader // reused per packet
	var (
		winStart time.Time // rate window
		winCount int
		busy     bool      // the last window was above batchRate
		lastTS   time.Time // kernel timestamp of the last packet
	)
	for {
		// Under load, wake once per batchPause instead of once per packet:
		// when the last packet read was fresh, the socket has (nearly)
		// run dry; sleep and let the large receive buffer collect a batch.
		// Sparse traffic is read at once.
		if busy && c.rc != nil && time.Since(lastTS) < batchPause/4 {
			time.Sleep(batchPause)
		}
		data, ci, err := c.h.ZeroCopyReadPacketData()
		if err != nil {
			if c.closing.Load() {
				return
			}
			c.close()
			s.captureEnded(c, err)
			return
		}
		// pcapgo creates the socket for ETH_P_ALL before binding it to the
		// interface: frames of other interfaces (other experiments!) can
		// slip in between. Keep only frames of ours.
		if ci.InterfaceIndex != c.ifindex {
			continue
		}
		s.captured.Add(1)
		lastTS = ci.Timestamp
		winCount++
		if d := ci.Timestamp.Sub(winStart); d >= rateWindow || d < 0 {
			busy = float64(winCount)/d.Seconds() > batchRate && d > 0
			winStart, winCount = ci.Timestamp, 0
		}
		rs := *s.readers.Load()
		if len(rs) == 0 {
			continue
		}
		// Copy the frame once, only as far as the readers that will take
		// it want it; a reader with a full queue costs no copy.
		want := accept[:0]
		keep := 0
		for _, r := range rs {
			if !r.wants(data) {
				continue
			}
			if !r.room(len(data)) {
				r.dropped.Add(1)
				s.dropped.Add(1)
				continue
			}
			want = append(want, r)
			keep = max(keep, r.snaplen)
		}
		if len(want) == 0 {
			continue
		}
		keep = min(keep, len(data))
		p := &packet{ts: ci.Timestamp, length: ci.Length, data: append([]byte(nil), data[:keep]...)}
		for _, r := range want {
			if !r.push(p) {
				s.dropped.Add(1)
			}
		}
		clear(want)
		accept = want
	}
}

// rawConn reaches the socket of h. pcapgo.EthernetHandle does not expose
// it, so it is read from the handle's unexported file field; if a later
// gopacket renames that field, this reports an error and the capture runs
// without the larger buffer and the batching below.
func rawConn(h *pcapgo.EthernetHandle) (syscall.RawConn, error) {
	f := reflect.ValueOf(h).Elem().FieldByName("file")
	if !f.IsValid() || f.Type() != reflect.TypeOf((*os.File)(nil)) {
		return nil, errors.New("pcapgo.EthernetHandle has no file field (gopacket changed): cannot reach the socket")
	}
	file := reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Interface().(*os.File)
	return file.SyscallConn()
}

// setRcvBuf sets the socket receive buffer. The kernel's default
// (net.core.rmem_default, 208 KiB) holds only three 64 KiB GSO frames of a
// veth, so a capture drops whenever its goroutine is scheduled late.
func setRcvBuf(rc syscall.RawConn, size int) error {
	var serr error
	if err := rc.Control(func(fd uintptr) {
		// FORCE ignores net.core.rmem_max (needs CAP_NET_ADMIN, which the
		// daemon has); fall back to the capped call.
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size); serr != nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, size)
		}
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("setsockopt SO_RCVBUF %d: %w", size, serr)
	}
	return nil
}
