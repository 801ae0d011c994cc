package netlab

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// MaxCapture bounds the packets a Capture keeps; later ones are counted in
// Dropped and discarded.
const MaxCapture = 100000

// Capture records the packets seen on one interface of a host (AF_PACKET
// socket opened inside the namespace), from its creation until Close or the
// test's cleanup.
type Capture struct {
	Host  *Host
	Iface string

	handle *pcapgo.EthernetHandle
	done   chan struct{}

	mu      sync.Mutex
	raw     []rawPacket
	dropped int
	err     error
	notify  chan struct{} // closed and replaced on every new packet
	closed  bool
}

type rawPacket struct {
	data []byte
	ci   gopacket.CaptureInfo
}

// Capture starts capturing on iface of h; it fails t if the socket cannot be
// opened. It is closed at t's cleanup.
func (h *Host) Capture(t testing.TB, iface string) *Capture {
	t.Helper()
	c, err := h.StartCapture(iface)
	if err != nil {
		t.Fatalf("netlab: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// StartCapture is Capture without a testing.TB; the lab's cleanup closes it.
func (h *Host) StartCapture(iface string) (*Capture, error) {
	var eh *pcapgo.EthernetHandle
	err := h.Do(func() (err error) {
		eh, err = pcapgo.NewEthernetHandle(iface)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("host %q: capture on %s: %w", h.Name, iface, err)
	}
	c := &Capture{Host: h, Iface: iface, handle: eh, done: make(chan struct{}), notify: make(chan struct{})}
	h.lab.mu.Lock()
	h.lab.captures = append(h.lab.captures, c)
	h.lab.mu.Unlock()
	go c.loop()
	return c, nil
}

func (c *Capture) loop() {
	defer close(c.done)
	for {
		data, ci, err := c.handle.ReadPacketData()
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return
		}
		if err != nil {
			c.err = err
			c.mu.Unlock()
			return
		}
		if len(c.raw) < MaxCapture {
			c.raw = append(c.raw, rawPacket{data: data, ci: ci})
			close(c.notify)
			c.notify = make(chan struct{})
		} else {
			c.dropped++
		}
		c.mu.Unlock()
	}
}

// Close stops the capture and waits for its reader; packets stay readable.
func (c *Capture) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	err := c.handle.Close()
	<-c.done
	return err
}

// Dropped is the number of packets discarded beyond MaxCapture.
func (c *Capture) Dropped() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dropped
}

// Err is the read error that stopped the capture early, if any.
func (c *Capture) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func decode(r rawPacket) gopacket.Packet {
	data := append([]byte(nil), r.data...)
	p := gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.Default)
	md := p.Metadata()
	md.CaptureInfo = r.ci
	return p
}

// Packets returns decoded copies of the packets captured so far.
func (c *Capture) Packets() []gopacket.Packet {
	c.mu.Lock()
	raw := c.raw
	c.mu.Unlock()
	out := make([]gopacket.Packet, len(raw))
	for i, r := range raw {
		out[i] = decode(r)
	}
	return out
}

// Count returns how many captured packets satisfy cond.
func (c *Capture) Count(cond func(gopacket.Packet) bool) int {
	n := 0
	for _, p := range c.Packets() {
		if cond(p) {
			n++
		}
	}
	return n
}

// Wait reports whether a packet satisfying cond was captured, waiting up to
// timeout for one to arrive. Packets captured before the call count too.
func (c *Capture) Wait(cond func(gopacket.Packet) bool, timeout time.Duration) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	next := 0
	for {
		c.mu.Lock()
		raw := c.raw[next:]
		notify := c.notify
		closed := c.closed || c.err != nil
		c.mu.Unlock()
		for _, r := range raw {
			if cond(decode(r)) {
				return true
			}
		}
		next += len(raw)
		if closed {
			return false
		}
		select {
		case <-notify:
		case <-deadline.C:
			// One last look at what arrived meanwhile.
			c.mu.Lock()
			raw = c.raw[next:]
			c.mu.Unlock()
			for _, r := range raw {
				if cond(decode(r)) {
					return true
				}
			}
			return false
		}
	}
}

// IsICMPEcho reports whether p is an ICMPv4 or ICMPv6 echo request
// (reply=false) or reply (reply=true); a helper for Wait conditions.
func IsICMPEcho(p gopacket.Packet, reply bool) bool {
	if l, ok := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4); ok {
		want := uint8(layers.ICMPv4TypeEchoRequest)
		if reply {
			want = layers.ICMPv4TypeEchoReply
		}
		return l.TypeCode.Type() == want
	}
	if l, ok := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6); ok {
		want := uint8(layers.ICMPv6TypeEchoRequest)
		if reply {
			want = layers.ICMPv6TypeEchoReply
		}
		return l.TypeCode.Type() == want
	}
	return false
}
