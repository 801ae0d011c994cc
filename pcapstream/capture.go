package pcapstream

import (
	"fmt"
	"net"
	"sync/atomic"

	"github.com/arkgw/arkgw/nsdo"
	"github.com/gopacket/gopacket/pcapgo"
)

// capture is one open AF_PACKET socket and the goroutine reading it.
type capture struct {
	h       *pcapgo.EthernetHandle
	ifindex int
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
	for {
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
		rs := *s.readers.Load()
		if len(rs) == 0 {
			continue
		}
		keep := 0
		for _, r := range rs {
			keep = max(keep, r.snaplen)
		}
		keep = min(keep, len(data))
		p := &packet{ts: ci.Timestamp, length: ci.Length, data: append([]byte(nil), data[:keep]...)}
		for _, r := range rs {
			if r.offer(p) {
				s.dropped.Add(1)
			}
		}
	}
}
