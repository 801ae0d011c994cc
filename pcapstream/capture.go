package pcapstream

import (
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/afpacket"
	"github.com/gopacket/gopacket/pcapgo"
	"golang.org/x/sys/unix"

	"github.com/arkgw/arkgw/nsdo"
)

// Batching of the capture goroutine's wake-ups (see captureLoop).
const (
	rateWindow = 100 * time.Millisecond
	batchRate  = 2000 // packets per second above which the capture batches
	batchPause = 5 * time.Millisecond
)

// capture is one open AF_PACKET socket and the goroutine reading it:
// either pcapgo's recvmsg socket (h) or, with Config.Ring, a TPACKET_V3
// ring (tp).
type capture struct {
	h       *pcapgo.EthernetHandle
	tp      *afpacket.TPacket
	tpMu    sync.Mutex // guards tp's fd between close and stats
	tpDrops uint64     // drops already reported (SocketStats is cumulative)
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
		c.ifindex = ifi.Index
		if s.cfg.Ring {
			tp, err := newRing(s.cfg.Iface, s.cfg.CaptureBuffer)
			if err != nil {
				return fmt.Errorf("open packet ring on %q: %w", s.cfg.Iface, err)
			}
			c.tp = tp
			return nil
		}
		h, err := pcapgo.NewEthernetHandle(s.cfg.Iface)
		if err != nil {
			return fmt.Errorf("open packet socket on %q: %w", s.cfg.Iface, err)
		}
		c.h = h
		return nil
	})
	if err != nil {
		return nil, err
	}
	if c.tp != nil {
		s.log.Debug("capture opened", "iface", s.cfg.Iface, "ifindex", c.ifindex, "ring_bytes", s.cfg.CaptureBuffer)
		return c, nil
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

// close stops the capture. A pcapgo socket is closed at once (a blocked
// read returns). A ring is unmapped by the capture goroutine itself when it
// next wakes (at most ringIdleMax): unmapping it under a reader would crash
// the daemon.
func (c *capture) close() {
	c.closing.Store(true)
	if c.h != nil {
		c.h.Close()
	}
}

// closeRing releases the ring; capture goroutine only.
func (c *capture) closeRing() {
	c.tpMu.Lock()
	defer c.tpMu.Unlock()
	c.tp.Close()
	c.tp = nil
}

// kernelDrops returns the packets the socket dropped since the last call.
func (c *capture) kernelDrops() (uint64, error) {
	if c.h != nil {
		st, err := c.h.Stats()
		if err != nil {
			return 0, err
		}
		return uint64(st.Drops), nil
	}
	c.tpMu.Lock()
	defer c.tpMu.Unlock()
	if c.tp == nil {
		return 0, nil
	}
	_, v3, err := c.tp.SocketStats()
	if err != nil {
		return 0, err
	}
	d := uint64(v3.Drops()) - c.tpDrops
	c.tpDrops = uint64(v3.Drops())
	return d, nil
}

// read returns the next frame (valid until the next call).
func (c *capture) read() ([]byte, gopacket.CaptureInfo, error) {
	if c.h != nil {
		return c.h.ZeroCopyReadPacketData()
	}
	return c.tp.ZeroCopyReadPacketData()
}

// Ring geometry (Config.Ring). A TPACKET_V3 block is handed over when full
// or after ringBlockTimeout, whichever comes first, so sparse traffic waits
// at most that long but a block may go out nearly empty: many small blocks
// (CaptureBuffer / ringBlockSize of them) keep the ring from running out
// while the capture goroutine is late. A block must hold a whole 64 KiB GSO
// frame (V3 cuts frames at the block size). With no block ready the
// capture goroutine sleeps from batchPause up to ringIdleMax.
const (
	ringBlockSize    = 128 << 10
	ringBlockTimeout = 10 * time.Millisecond
	ringIdleMax      = 40 * time.Millisecond
)

func newRing(iface string, bytes int) (*afpacket.TPacket, error) {
	return afpacket.NewTPacket(
		afpacket.OptInterface(iface),
		afpacket.TPacketVersion3,
		afpacket.OptBlockSize(ringBlockSize),
		afpacket.OptNumBlocks(max(2, bytes/ringBlockSize)),
		afpacket.OptBlockTimeout(ringBlockTimeout),
		afpacket.OptPollTimeout(0), // never block in poll(2): see captureLoop
	)
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
		busy     bool         // the last window was above batchRate
		lastTS   time.Time    // kernel timestamp of the last packet
		idle     = batchPause // ring: pause after finding no block ready
	)
	for {
		// Under load, wake once per batchPause instead of once per packet:
		// when the last packet read was fresh, the socket has (nearly)
		// run dry; sleep and let the large receive buffer collect a batch.
		// Sparse traffic is read at once.
		if busy && c.rc != nil && time.Since(lastTS) < batchPause/4 {
			time.Sleep(batchPause)
		}
		data, ci, err := c.read()
		if c.tp != nil && (c.closing.Load() || (err != nil && !errors.Is(err, afpacket.ErrTimeout))) {
			c.closeRing()
		}
		if err != nil {
			if c.closing.Load() {
				return
			}
			if errors.Is(err, afpacket.ErrTimeout) {
				// The ring is polled without blocking (a goroutine parked
				// in a long poll(2) keeps the Go scheduler's sysmon busy):
				// sleep, longer while nothing comes.
				time.Sleep(idle)
				idle = min(2*idle, ringIdleMax)
				continue
			}
			c.close()
			s.captureEnded(c, err)
			return
		}
		if c.closing.Load() {
			return
		}
		// pcapgo creates the socket for ETH_P_ALL before binding it to the
		// interface: frames of other interfaces (other experiments!) can
		// slip in between. Keep only frames of ours.
		if ci.InterfaceIndex != c.ifindex {
			continue
		}
		s.captured.Add(1)
		idle = batchPause
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
