// Package pcapstream serves an experiment's own packets as pcap streams on a
// Unix socket. The daemon runs one Server per experiment; the socket lives in
// the experiment's directory and is bind-mounted into the sandbox at
// /run/ark/pcap.sock, where /usr/bin/pcap (cmd/pcap) connects to it. No
// setuid helper or capability is involved on the experiment's side.
//
// Every connected reader gets its own capture: a pure Go AF_PACKET socket
// with a TPACKET_V3 ring (capture.go), bound to the host end of the
// experiment's veth in the node's network namespace, with the reader's
// filter compiled to classic BPF and run by the kernel (filterbpf.go).
// Packets there carry the experiment's own addresses: NAT happens later, on
// the uplink. Both directions are captured. A socket exists only while its
// reader is connected.
//
// The reader's goroutine frames the pcap records in place in each ring block
// and sends the block with one writev. A reader that does not keep up holds
// its own ring's blocks: its kernel ring drops (counted for that reader),
// and nothing else waits. Readers therefore cannot slow the capture of
// others, the experiment or the daemon.
//
// The wire protocol is in package wire and README.md.
package pcapstream

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/nsdo"
	"github.com/arkgw/arkgw/pcapstream/wire"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Defaults for Config fields left zero.
const (
	DefaultSnaplen    = 262144 // libpcap's MAXIMUM_SNAPLEN: full packets, including GSO/GRO super-frames
	DefaultMaxReaders = 8
	// DefaultMaxPending bounds connections of one experiment that have not
	// finished their handshake; DefaultMaxConns bounds all its connections
	// (readers, handshakes, refusals being written). An experiment may run
	// 512 processes with 1024 descriptors each: without these bounds it
	// could hold the daemon's whole descriptor table open through its
	// socket (docs/HARDENING.md, "Descriptors").
	DefaultMaxPending = 4
	DefaultMaxConns   = DefaultMaxReaders + DefaultMaxPending
	// DefaultHandshakeTimeout: cmd/pcap sends its request at once; a
	// connection that says nothing for this long is closed (the DNS proxy
	// closes idle TCP after 2 s too).
	DefaultHandshakeTimeout = 2 * time.Second
	// DefaultCaptureBuf is each reader's ring: what absorbs bursts while
	// the reader's goroutine or client is late (tcpdump -B 4096). Kernel
	// memory, per connected reader: at most MaxReaders times this per
	// experiment (README.md, "Memory").
	DefaultCaptureBuf = 4 << 20
	DefaultSocketMode = 0o660
	// overflowWriteTimeout bounds writing the refusal to a connection over
	// the caps, from the accept loop (a fresh socket's buffer is empty, so
	// it does not wait in practice).
	overflowWriteTimeout = 10 * time.Millisecond
	// overflowLogEvery: connections refused over the caps are counted
	// always, logged at most this often.
	overflowLogEvery  = 10 * time.Second
	finalWriteTimeout = 2 * time.Second
	statsInterval     = time.Second
)

// Config configures a Server for one experiment.
type Config struct {
	Experiment string  // experiment id (configs.ValidID)
	NS         nsdo.NS // netns holding Iface (the node's); zero value = current
	Iface      string  // host end of the experiment's veth, "ark<id>"

	SocketPath string      // Unix socket to create (at most 107 bytes); a stale socket there is replaced
	SocketUID  int         // owner of the socket file: the uid the sandboxed process has on the host
	SocketGID  int         // group of the socket file
	SocketMode os.FileMode // permission bits; 0 = 0660

	Snaplen    int // maximum bytes kept per packet; 0 = DefaultSnaplen
	MaxReaders int // concurrent readers; 0 = DefaultMaxReaders
	// MaxPending bounds connections still in their handshake; 0 =
	// DefaultMaxPending. MaxConns bounds all connections of the
	// experiment; 0 = MaxReaders + MaxPending. A connection over either
	// is refused at once and closed.
	MaxPending int
	MaxConns   int
	// HandshakeTimeout closes a connection that has not sent its request
	// in time; 0 = DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// CaptureBuffer is the size in bytes of each reader's TPACKET_V3 ring
	// (kernel memory, while the reader is connected); 0 =
	// DefaultCaptureBuf.
	CaptureBuffer int

	Logger hclog.Logger // nil = no logging
	// Alerts receives the server's own faults (accept failing, for example
	// with descriptors exhausted), at most one alert per fault per window
	// (alert.Faults); nil = logged only.
	Alerts alert.Sink
	Node   string // node name for those alerts
}

// Server serves pcap streams of one experiment's veth. Create it with New,
// run it with Run; it is also a prometheus.Collector (register it yourself).
type Server struct {
	descOnce sync.Once
	desc     *descs
	cfg      Config
	log      hclog.Logger
	faults   *alert.Faults

	mu      sync.Mutex
	all     map[*reader]struct{} // readers with an open capture
	conns   map[net.Conn]struct{}
	pending int // connections in their handshake
	stopped bool
	lastLog time.Time // of an over-the-caps refusal

	nextID atomic.Uint64
	ready  chan struct{} // closed when the socket exists

	// Totals (monotonic) for metrics and Stats.
	captured     atomic.Uint64
	delivered    atomic.Uint64
	dropped      atomic.Uint64 // ring drops of readers that left
	opens        atomic.Uint64
	acceptedConn atomic.Uint64
	refused      atomic.Uint64
	overflow     atomic.Uint64
}

// New checks cfg and returns a Server. It touches nothing; Run creates the
// socket.
func New(cfg Config) (*Server, error) {
	if err := configs.ValidID(cfg.Experiment); err != nil {
		return nil, fmt.Errorf("pcapstream: %w", err)
	}
	if cfg.Iface == "" {
		return nil, fmt.Errorf("pcapstream: experiment %q: no interface given (want the veth host end \"ark%s\")", cfg.Experiment, cfg.Experiment)
	}
	if cfg.SocketPath == "" {
		return nil, fmt.Errorf("pcapstream: experiment %q: no socket path given", cfg.Experiment)
	}
	if len(cfg.SocketPath) > 107 {
		return nil, fmt.Errorf("pcapstream: socket path %q is %d bytes, Unix sockets allow 107: use a shorter experiment directory", cfg.SocketPath, len(cfg.SocketPath))
	}
	if cfg.Snaplen < 0 || cfg.MaxReaders < 0 || cfg.CaptureBuffer < 0 ||
		cfg.MaxPending < 0 || cfg.MaxConns < 0 || cfg.HandshakeTimeout < 0 {
		return nil, fmt.Errorf("pcapstream: experiment %q: negative snaplen, queue size or reader limit", cfg.Experiment)
	}
	if cfg.Snaplen == 0 || cfg.Snaplen > DefaultSnaplen {
		cfg.Snaplen = DefaultSnaplen
	}
	if cfg.CaptureBuffer == 0 {
		cfg.CaptureBuffer = DefaultCaptureBuf
	}
	if cfg.MaxReaders == 0 {
		cfg.MaxReaders = DefaultMaxReaders
	}
	if cfg.MaxPending == 0 {
		cfg.MaxPending = DefaultMaxPending
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = cfg.MaxReaders + cfg.MaxPending
	}
	if cfg.HandshakeTimeout == 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.SocketMode == 0 {
		cfg.SocketMode = DefaultSocketMode
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	s := &Server{
		cfg:    cfg,
		log:    log.With("experiment", cfg.Experiment),
		faults: alert.NewFaults(alert.FaultsConfig{Sink: cfg.Alerts, Logger: log.With("experiment", cfg.Experiment), Node: cfg.Node}),
		all:    map[*reader]struct{}{},
		conns:  map[net.Conn]struct{}{},
		ready:  make(chan struct{}),
	}
	return s, nil
}

// Run creates the socket and serves readers until ctx is done. It then
// disconnects every reader (each gets a last stats frame), stops the
// capture, removes the socket and returns nil. It returns an error only if
// the socket cannot be created. Run may be called once.
func (s *Server) Run(ctx context.Context) error {
	l, err := s.listen()
	if err != nil {
		return err
	}
	close(s.ready)
	s.log.Debug("pcap socket ready", "path", s.cfg.SocketPath, "iface", s.cfg.Iface)

	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			if ctx.Err() == nil && isTemporary(err) {
				delay := s.faults.Report(alert.Record{Kind: alert.KindFault, Rule: "pcap-accept", Experiment: s.cfg.Experiment,
					Message: fmt.Sprintf("accept on pcap socket %s failed: %v; the experiment's pcap readers cannot connect until it works (descriptors exhausted?)", s.cfg.SocketPath, err)})
				select {
				case <-time.After(delay):
					continue
				case <-ctx.Done():
				}
			}
			if ctx.Err() == nil {
				s.log.Error("pcap socket closed unexpectedly", "error", err)
			}
			break
		}
		s.mu.Lock()
		if s.stopped {
			s.mu.Unlock()
			c.Close()
			continue
		}
		if len(s.conns) >= s.cfg.MaxConns || s.pending >= s.cfg.MaxPending {
			// Over the caps: refuse from here and close, without a
			// goroutine or a descriptor kept for it.
			msg := fmt.Sprintf("too many pcap connections for experiment %s (at most %d, of which %d without a request)", s.cfg.Experiment, s.cfg.MaxConns, s.cfg.MaxPending)
			logIt := time.Since(s.lastLog) >= overflowLogEvery
			if logIt {
				s.lastLog = time.Now()
			}
			s.mu.Unlock()
			n := s.overflow.Add(1)
			s.refused.Add(1)
			c.SetWriteDeadline(time.Now().Add(overflowWriteTimeout))
			wire.WriteFrame(c, wire.FrameError, []byte(msg))
			c.Close()
			if logIt {
				s.log.Warn("pcap connections over the cap refused", "max_conns", s.cfg.MaxConns, "max_pending", s.cfg.MaxPending, "refused_total", n)
			}
			continue
		}
		s.conns[c] = struct{}{}
		s.pending++
		s.mu.Unlock()
		s.acceptedConn.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serve(ctx, c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
	cancel()
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
	wg.Wait()
	s.faults.Close()
	// serve stops the capture with its last reader; nothing is left here.
	return nil
}

// Ready is closed once Run has created the socket, so a sandbox that binds
// it can be launched.
func (s *Server) Ready() <-chan struct{} { return s.ready }

func isTemporary(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}

// listen creates the Unix socket with its owner and mode. A stale socket
// from an earlier daemon is removed; any other file there is an error.
func (s *Server) listen() (*net.UnixListener, error) {
	p := s.cfg.SocketPath
	if fi, err := os.Lstat(p); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("pcapstream: %s exists and is not a socket: remove it or choose another experiment directory", p)
		}
		if err := os.Remove(p); err != nil {
			return nil, fmt.Errorf("pcapstream: remove stale socket %s: %w", p, err)
		}
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: p, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("pcapstream: listen on %s: %w", p, err)
	}
	l.SetUnlinkOnClose(true)
	if err := os.Chown(p, s.cfg.SocketUID, s.cfg.SocketGID); err != nil {
		l.Close()
		return nil, fmt.Errorf("pcapstream: chown %s to %d:%d: %w", p, s.cfg.SocketUID, s.cfg.SocketGID, err)
	}
	if err := os.Chmod(p, s.cfg.SocketMode.Perm()); err != nil {
		l.Close()
		return nil, fmt.Errorf("pcapstream: chmod %s: %w", p, err)
	}
	return l, nil
}

// A block's records always fit in one P frame.
const _ = uint(wire.MaxFrame - ringBlockSize)

// reader is one connected client and its capture.
type reader struct {
	req     wire.Request
	snaplen int
	ring    *ring // opened by join, closed by leave

	delivered atomic.Uint64
	why       atomic.Pointer[string] // set (by the watcher) to end the stream
	statsDue  atomic.Bool

	// The reader's goroutine only.
	endMsg string // an error for the user, sent before the last stats
	hdr    [wire.HeaderLen]byte
	iov    [][]byte // frame header, then the records of one block
}

// stop ends r's stream with reason (the first reason wins) and wakes its
// goroutine.
func (r *reader) stop(reason string) {
	r.why.CompareAndSwap(nil, &reason)
	r.ring.wake()
}

// serve runs one connection: handshake, join, stream, leave.
func (s *Server) serve(ctx context.Context, c *net.UnixConn) {
	defer c.Close()
	log := s.log.With("reader", s.nextID.Add(1))
	if uid, pid, ok := peerCred(c); ok {
		log = log.With("peer_uid", uid, "peer_pid", pid)
	}

	// A reader that stopped reading blocks its writes; on shutdown a
	// deadline ends them.
	stopWatch := context.AfterFunc(ctx, func() { c.SetWriteDeadline(time.Now().Add(finalWriteTimeout)) })
	defer stopWatch()

	c.SetReadDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	req, filter, err := readHandshake(c)
	s.mu.Lock()
	s.pending--
	s.mu.Unlock()
	if err != nil {
		log.Debug("bad pcap request", "error", err)
		s.refuse(c, err.Error())
		return
	}
	c.SetReadDeadline(time.Time{})
	snap := s.cfg.Snaplen
	if req.Snaplen != 0 && int(req.Snaplen) < snap {
		snap = int(req.Snaplen)
	}
	prog, err := filter.BPF(uint32(snap))
	if err != nil {
		log.Debug("pcap filter does not compile", "error", err)
		s.refuse(c, err.Error())
		return
	}
	r := &reader{req: req, snaplen: snap}
	// Room for a few whole blocks in the connection, so that sending one
	// is one writev that does not wait for the client (and wake both
	// sides once per 200 KiB, the default buffer).
	setSendBuf(c, 4*ringBlockSize)
	if err := s.join(r, prog); err != nil {
		log.Warn("pcap reader refused", "error", err)
		s.refuse(c, err.Error())
		return
	}
	log.Info("pcap reader connected", "snaplen", snap, "count", req.Count, "filter", req.Filter, "bpf_instructions", len(prog))

	// The client half-closes (or goes away) to stop; anything else it sends
	// after the request is ignored.
	gone := make(chan struct{})
	go func() {
		io.Copy(io.Discard, c)
		close(gone)
	}()

	reason := s.stream(ctx, c, r, gone)
	if reason != "client gone" && reason != "count reached" {
		// Send what the ring still holds (the client may be waiting for
		// it after a half-close); a client that does not read gets a
		// deadline, not a goroutine stuck forever.
		c.SetWriteDeadline(time.Now().Add(finalWriteTimeout))
		s.drain(c, r)
	}
	s.leave(r)
	st := s.readerStats(r)
	if reason != "client gone" {
		c.SetWriteDeadline(time.Now().Add(finalWriteTimeout))
		if r.endMsg != "" {
			wire.WriteFrame(c, wire.FrameError, []byte(r.endMsg))
		}
		wire.WriteFrame(c, wire.FrameStats, st.Marshal())
	}
	log.Info("pcap reader disconnected", "reason", reason, "packets", st.Packets, "dropped", st.Dropped)
	c.Close()
	<-gone
}

// readHandshake reads a client's request (untrusted bytes from the sandbox)
// and compiles its filter.
func readHandshake(r io.Reader) (wire.Request, *Filter, error) {
	req, err := wire.ReadRequest(r)
	if err != nil {
		return req, nil, err
	}
	if req.Filter == "" {
		return req, nil, nil
	}
	f, err := ParseFilter(req.Filter)
	return req, f, err
}

// stream sends r's ring to c, a block at a time, until the client leaves,
// the count is reached, the capture ends or ctx is done, and says which.
func (s *Server) stream(ctx context.Context, c *net.UnixConn, r *reader, gone <-chan struct{}) string {
	if err := wire.WriteFrame(c, wire.FramePcap, fileHeader(r.snaplen, r.req.Nanos)); err != nil {
		return "client gone"
	}
	// The watcher turns the events that end a stream, and the stats
	// ticks, into flags and a wake-up of the goroutine below, which
	// otherwise waits only for the ring.
	quit := make(chan struct{})
	defer close(quit)
	go func() {
		tick := time.NewTicker(statsInterval)
		defer tick.Stop()
		for {
			select {
			case <-gone:
				r.stop("client stopped")
				return
			case <-ctx.Done():
				r.stop("server stopping")
				return
			case <-tick.C:
				r.statsDue.Store(true)
				r.ring.wake()
			case <-quit:
				return
			}
		}
	}()
	var last wire.Stats
	for {
		if why := r.why.Load(); why != nil {
			return *why
		}
		if r.statsDue.Swap(false) {
			if st := s.readerStats(r); st != last {
				last = st
				if err := wire.WriteFrame(c, wire.FrameStats, st.Marshal()); err != nil {
					return "client gone"
				}
			}
		}
		if r.ring.ready() {
			done, err := s.sendBlock(c, r)
			switch {
			case errors.Is(err, errRingLayout):
				r.endMsg = fmt.Sprintf("capture on %s ended: %v", s.cfg.Iface, err)
				s.log.Error("capture ended", "error", err)
				return "capture ended"
			case err != nil:
				if why := r.why.Load(); why != nil {
					return *why // e.g. the shutdown deadline
				}
				return "client gone"
			case done:
				return "count reached"
			}
			continue
		}
		err := r.ring.wait()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			r.ring.unwake() // then the flags are checked above
			continue
		}
		if err == nil && !r.ring.ready() {
			err = r.ring.sockErr()
		}
		if err != nil {
			r.endMsg = fmt.Sprintf("capture on %s ended: %v", s.cfg.Iface, err)
			s.log.Warn("capture ended", "error", err)
			return "capture ended"
		}
	}
}

// sendBlock sends the current block's records (up to the reader's count)
// as one P frame with one writev, then hands the block back to the kernel.
// It reports whether the count is reached.
func (s *Server) sendBlock(c *net.UnixConn, r *reader) (bool, error) {
	limit := 0
	if r.req.Count != 0 {
		limit = int(min(r.req.Count-r.delivered.Load(), 1<<30))
	}
	iov, num, err := r.ring.records(append(r.iov[:0], r.hdr[:]), limit, r.req.Nanos)
	s.captured.Add(uint64(num))
	n := len(iov) - 1
	if err == nil && n > 0 {
		size := 0
		for _, b := range iov[1:] {
			size += len(b)
		}
		wire.PutHeader(r.hdr[:], wire.FramePcap, size)
		bufs := net.Buffers(iov)
		_, err = bufs.WriteTo(c)
	}
	// The records point into the block: only now is it the kernel's again.
	r.ring.release()
	clear(iov)
	r.iov = iov[:0]
	if err != nil {
		return false, err
	}
	r.delivered.Add(uint64(n))
	s.delivered.Add(uint64(n))
	return r.req.Count != 0 && r.delivered.Load() >= r.req.Count, nil
}

// drain sends the blocks the ring holds at the end of a stream. It first
// waits for the kernel to retire the block it is filling (the block
// timeout), so that what was captured before the client asked to stop is
// delivered.
func (s *Server) drain(c *net.UnixConn, r *reader) {
	time.Sleep(2 * ringBlockTimeout)
	for i := 0; i < r.ring.nblocks && r.ring.ready(); i++ {
		if r.req.Count != 0 && r.delivered.Load() >= r.req.Count {
			return
		}
		if done, err := s.sendBlock(c, r); err != nil || done {
			return
		}
	}
}

// fileHeader is the pcap global header (little endian, as the records
// framed in capture.go; link type Ethernet).
func fileHeader(snaplen int, nanos bool) []byte {
	b := make([]byte, 24)
	magic := uint32(0xa1b2c3d4)
	if nanos {
		magic = 0xa1b23c4d
	}
	binary.LittleEndian.PutUint32(b[0:], magic)
	binary.LittleEndian.PutUint16(b[4:], 2)
	binary.LittleEndian.PutUint16(b[6:], 4)
	binary.LittleEndian.PutUint32(b[16:], uint32(snaplen))
	binary.LittleEndian.PutUint32(b[20:], 1) // LINKTYPE_ETHERNET
	return b
}

func (s *Server) refuse(c net.Conn, msg string) {
	s.refused.Add(1)
	c.SetWriteDeadline(time.Now().Add(finalWriteTimeout))
	if len(msg) > 1024 {
		msg = msg[:1024]
	}
	wire.WriteFrame(c, wire.FrameError, []byte(msg))
}

// join opens r's capture with its filter program and adds r.
func (s *Server) join(r *reader, prog []bpf.Instruction) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("pcap server is stopping")
	}
	if len(s.all) >= s.cfg.MaxReaders {
		return fmt.Errorf("too many pcap readers for experiment %s (at most %d at once)", s.cfg.Experiment, s.cfg.MaxReaders)
	}
	rg, err := openRing(s.cfg.NS, s.cfg.Iface, prog, s.cfg.CaptureBuffer)
	if err != nil {
		return fmt.Errorf("cannot capture on %s: %w", s.cfg.Iface, err)
	}
	r.ring = rg
	s.opens.Add(1)
	s.all[r] = struct{}{}
	s.log.Debug("capture opened", "iface", s.cfg.Iface, "ring_bytes", rg.bs*rg.nblocks, "bpf_instructions", len(prog))
	return nil
}

// leave closes r's capture and removes r; its drops go to the total.
func (s *Server) leave(r *reader) {
	r.ring.pollDrops()
	r.ring.close()
	s.mu.Lock()
	delete(s.all, r)
	s.dropped.Add(r.ring.drops.Load())
	s.mu.Unlock()
}

func (s *Server) readerStats(r *reader) wire.Stats {
	r.ring.pollDrops()
	return wire.Stats{Packets: r.delivered.Load(), Dropped: r.ring.drops.Load()}
}

// ReaderStats describes one connected reader.
type ReaderStats struct {
	Snaplen   int
	Count     uint64
	Filter    string
	Delivered uint64
	Dropped   uint64 // packets its ring lost (PACKET_STATISTICS)
}

// Stats is a snapshot of a Server.
type Stats struct {
	Capturing     bool   // at least one reader's AF_PACKET socket is open
	Captures      uint64 // captures opened (one per reader)
	Captured      uint64 // packets read from the readers' rings (once per reader)
	Delivered     uint64 // packets written to readers (summed over readers)
	Dropped       uint64 // packets the readers' rings lost, summed: a reader that does not keep up loses only its own
	KernelDropped uint64 // the same packets: every loss is in a reader's own kernel ring (kept for the metric)
	Connections   uint64 // connections accepted
	Refused       uint64 // connections refused (bad request, too many readers, no capture, over the caps)
	Overflow      uint64 // of those, refused at accept for being over MaxConns or MaxPending
	Open          int    // connections held now (readers and handshakes)
	Pending       int    // of those, still in their handshake
	Readers       []ReaderStats
}

// Stats returns a snapshot.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{
		Capturing:   len(s.all) > 0,
		Captures:    s.opens.Load(),
		Captured:    s.captured.Load(),
		Delivered:   s.delivered.Load(),
		Dropped:     s.dropped.Load(),
		Connections: s.acceptedConn.Load(),
		Refused:     s.refused.Load(),
		Overflow:    s.overflow.Load(),
		Open:        len(s.conns),
		Pending:     s.pending,
	}
	for r := range s.all {
		r.ring.pollDrops()
		d := r.ring.drops.Load()
		st.Dropped += d
		st.Readers = append(st.Readers, ReaderStats{
			Snaplen: r.snaplen, Count: r.req.Count, Filter: r.req.Filter,
			Delivered: r.delivered.Load(), Dropped: d,
		})
	}
	st.KernelDropped = st.Dropped
	return st
}

// Capturing reports whether any reader's AF_PACKET socket is open.
func (s *Server) Capturing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.all) > 0
}

// setSendBuf enlarges c's send buffer (SO_SNDBUFFORCE: the daemon has
// CAP_NET_ADMIN; else SO_SNDBUF, capped by net.core.wmem_max).
func setSendBuf(c *net.UnixConn, n int) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, n) != nil {
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, n)
		}
	})
}

func peerCred(c *net.UnixConn) (uid uint32, pid int32, ok bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, 0, false
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return 0, 0, false
	}
	return cred.Uid, cred.Pid, true
}
