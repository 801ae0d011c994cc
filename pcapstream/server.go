// Package pcapstream serves an experiment's own packets as pcap streams on a
// Unix socket. The daemon runs one Server per experiment; the socket lives in
// the experiment's directory and is bind-mounted into the sandbox at
// /run/ark/pcap.sock, where /usr/bin/pcap (cmd/pcap) connects to it. No
// setuid helper or capability is involved on the experiment's side.
//
// The capture is a pure Go AF_PACKET socket (gopacket's pcapgo; with
// Config.Ring a TPACKET_V3 ring from gopacket's afpacket) bound to the host
// end of the experiment's veth in the node's network namespace. Packets
// there carry the experiment's own addresses: NAT happens later, on the
// uplink. Both directions are captured. The socket exists only while at
// least one reader is connected: the first reader opens it, the last one to
// leave closes it.
//
// Every reader has a bounded queue (packets and bytes). The capture goroutine
// never waits for a reader: when a queue is full the packet is dropped for
// that reader and counted. Readers therefore cannot slow the capture, the
// experiment or the daemon.
//
// The wire protocol is in package wire and README.md.
package pcapstream

import (
	"context"
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
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// Defaults for Config fields left zero.
const (
	DefaultSnaplen      = 262144 // libpcap's MAXIMUM_SNAPLEN: full packets, including GSO/GRO super-frames
	DefaultQueuePackets = 4096
	DefaultQueueBytes   = 8 << 20
	DefaultMaxReaders   = 8
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
	DefaultCaptureBuf       = 4 << 20
	DefaultSocketMode       = 0o660
	// overflowWriteTimeout bounds writing the refusal to a connection over
	// the caps, from the accept loop (a fresh socket's buffer is empty, so
	// it does not wait in practice).
	overflowWriteTimeout = 10 * time.Millisecond
	// overflowLogEvery: connections refused over the caps are counted
	// always, logged at most this often.
	overflowLogEvery  = 10 * time.Second
	finalWriteTimeout = 2 * time.Second
	statsInterval     = time.Second
	maxBatch          = 256 << 10 // bytes of pcap records per P frame
	flushDelay        = 10 * time.Millisecond
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

	Snaplen      int // maximum bytes kept per packet; 0 = DefaultSnaplen
	QueuePackets int // per-reader queue bound in packets; 0 = DefaultQueuePackets
	QueueBytes   int // per-reader queue bound in bytes; 0 = DefaultQueueBytes
	MaxReaders   int // concurrent readers; 0 = DefaultMaxReaders
	// MaxPending bounds connections still in their handshake; 0 =
	// DefaultMaxPending. MaxConns bounds all connections of the
	// experiment; 0 = MaxReaders + MaxPending. A connection over either
	// is refused at once and closed.
	MaxPending int
	MaxConns   int
	// HandshakeTimeout closes a connection that has not sent its request
	// in time; 0 = DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// CaptureBuffer is the capture socket's receive buffer in bytes, or
	// the ring's size with Ring (what absorbs bursts while the capture
	// goroutine is not scheduled); 0 = DefaultCaptureBuf.
	CaptureBuffer int
	// Ring captures through a TPACKET_V3 memory-mapped ring
	// (gopacket/afpacket, pure Go) instead of pcapgo's one-recvmsg-per-packet
	// socket: far less CPU per packet, CaptureBuffer bytes of locked-in
	// kernel memory per capturing experiment, sparse packets delayed up to
	// 50 ms, and a closing capture lingers up to 40 ms.
	Ring bool

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

	// readers is the immutable slice the capture goroutine reads per packet;
	// it is replaced (under mu) whenever a reader joins or leaves.
	readers atomic.Pointer[[]*reader]

	mu      sync.Mutex
	cap     *capture // nil while no reader is connected
	all     map[*reader]struct{}
	conns   map[net.Conn]struct{}
	pending int // connections in their handshake
	stopped bool
	lastLog time.Time // of an over-the-caps refusal

	nextID atomic.Uint64
	ready  chan struct{} // closed when the socket exists

	// Totals (monotonic) for metrics and Stats.
	captured     atomic.Uint64
	delivered    atomic.Uint64
	dropped      atomic.Uint64
	kernelDrops  atomic.Uint64
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
	if cfg.Snaplen < 0 || cfg.QueuePackets < 0 || cfg.QueueBytes < 0 || cfg.MaxReaders < 0 || cfg.CaptureBuffer < 0 ||
		cfg.MaxPending < 0 || cfg.MaxConns < 0 || cfg.HandshakeTimeout < 0 {
		return nil, fmt.Errorf("pcapstream: experiment %q: negative snaplen, queue size or reader limit", cfg.Experiment)
	}
	if cfg.Snaplen == 0 || cfg.Snaplen > DefaultSnaplen {
		cfg.Snaplen = DefaultSnaplen
	}
	if cfg.QueuePackets == 0 {
		cfg.QueuePackets = DefaultQueuePackets
	}
	if cfg.QueueBytes == 0 {
		cfg.QueueBytes = DefaultQueueBytes
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
	empty := []*reader{}
	s.readers.Store(&empty)
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

// packet is one captured frame, shared read-only by every reader's queue.
type packet struct {
	ts     time.Time
	length int    // original length on the wire
	data   []byte // captured bytes (at most the largest snaplen of the readers at capture time)
}

// reader is one connected client.
type reader struct {
	id      uint64
	req     wire.Request
	snaplen int
	filter  *Filter
	q       chan *packet
	qbytes  atomic.Int64
	maxq    int64

	// accepted counts packets queued (capture goroutine only) to honour Count.
	accepted uint64

	delivered atomic.Uint64
	dropped   atomic.Uint64
	kbase     uint64 // s.kernelDrops when the reader joined

	end     chan struct{} // closed when the capture ends under the reader
	endOnce sync.Once
	endMsg  atomic.Pointer[string]
}

// wants reports whether p's frame is for r (count not reached, filter
// passes). Capture goroutine only.
func (r *reader) wants(frame []byte) bool {
	if r.req.Count != 0 && r.accepted >= r.req.Count {
		return false
	}
	return r.filter == nil || r.filter.Match(frame)
}

// room reports whether r's queue can take a frame of n bytes.
func (r *reader) room(n int) bool {
	return len(r.q) < cap(r.q) && r.qbytes.Load()+int64(min(n, r.snaplen)) <= r.maxq
}

// push queues p for r without blocking and reports whether it did.
// Capture goroutine only.
func (r *reader) push(p *packet) bool {
	n := int64(min(len(p.data), r.snaplen))
	select {
	case r.q <- p:
		r.qbytes.Add(n)
		r.accepted++
		return true
	default:
		r.dropped.Add(1)
		return false
	}
}

func (r *reader) stop(msg string) {
	r.endOnce.Do(func() {
		if msg != "" {
			r.endMsg.Store(&msg)
		}
		close(r.end)
	})
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
	r := &reader{
		req:     req,
		snaplen: snap,
		filter:  filter,
		q:       make(chan *packet, s.cfg.QueuePackets),
		maxq:    int64(s.cfg.QueueBytes),
		end:     make(chan struct{}),
	}
	if err := s.join(r); err != nil {
		log.Warn("pcap reader refused", "error", err)
		s.refuse(c, err.Error())
		return
	}
	log.Info("pcap reader connected", "snaplen", snap, "count", req.Count, "filter", req.Filter)

	// The client half-closes (or goes away) to stop; anything else it sends
	// after the request is ignored.
	gone := make(chan struct{})
	go func() {
		io.Copy(io.Discard, c)
		close(gone)
	}()

	reason := s.stream(ctx, c, r, gone)
	s.leave(r)
	// Write what is still queued (the client may be waiting for it after a
	// half-close), then the last stats; a client that does not read gets
	// a deadline, not a goroutine stuck forever.
	c.SetWriteDeadline(time.Now().Add(finalWriteTimeout))
	if reason != "client gone" {
		w := s.newFrameWriter(c, r, req.Nanos)
		w.drain()
		w.flush()
		if m := r.endMsg.Load(); m != nil {
			wire.WriteFrame(c, wire.FrameError, []byte(*m))
		}
	}
	st := s.readerStats(r)
	if reason != "client gone" {
		wire.WriteFrame(c, wire.FrameStats, st.Marshal())
	}
	log.Info("pcap reader disconnected", "reason", reason, "packets", st.Packets, "dropped", st.Dropped, "kernel_dropped", st.KernelDropped)
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

// stream copies r's queue to c until the client leaves, the count is
// reached, the capture ends or ctx is done, and says which.
func (s *Server) stream(ctx context.Context, c *net.UnixConn, r *reader, gone <-chan struct{}) string {
	w := s.newFrameWriter(c, r, r.req.Nanos)
	if err := w.header(); err != nil {
		return "client gone"
	}
	tick := time.NewTicker(statsInterval)
	defer tick.Stop()
	var last wire.Stats
	for {
		select {
		case p := <-r.q:
			w.add(p)
			w.drain()
			if len(w.buf) < maxBatch/4 && r.req.Count == 0 {
				// Little queued: wait a moment for more, so that a busy
				// stream costs a write per few milliseconds, not per
				// packet.
				time.Sleep(flushDelay)
				w.drain()
			}
			if err := w.flush(); err != nil {
				return "client gone"
			}
			if r.req.Count != 0 && r.delivered.Load() >= r.req.Count {
				return "count reached"
			}
		case <-tick.C:
			s.pollKernelDrops()
			if st := s.readerStats(r); st != last {
				last = st
				if err := wire.WriteFrame(c, wire.FrameStats, st.Marshal()); err != nil {
					return "client gone"
				}
			}
		case <-gone:
			return "client stopped"
		case <-r.end:
			return "capture ended"
		case <-ctx.Done():
			return "server stopping"
		}
	}
}

// frameWriter batches pcap records of queued packets into P frames. The
// records are written by a pcapgo.Writer into buf.
type frameWriter struct {
	c     net.Conn
	total *atomic.Uint64 // the server's delivered total
	r     *reader
	pw    *pcapgo.Writer
	buf   []byte
	n     uint64 // packets in buf
}

func (s *Server) newFrameWriter(c net.Conn, r *reader, nanos bool) *frameWriter {
	w := &frameWriter{c: c, total: &s.delivered, r: r, buf: make([]byte, wire.HeaderLen, 64<<10)}
	if nanos {
		w.pw = pcapgo.NewWriterNanos(w)
	} else {
		w.pw = pcapgo.NewWriter(w)
	}
	return w
}

// Write appends to the current frame (for pcapgo.Writer).
func (w *frameWriter) Write(b []byte) (int, error) {
	w.buf = append(w.buf, b...)
	return len(b), nil
}

// header writes the pcap global header (link type Ethernet).
func (w *frameWriter) header() error {
	if err := w.pw.WriteFileHeader(uint32(w.r.snaplen), layers.LinkTypeEthernet); err != nil {
		return err
	}
	return w.flush()
}

// add appends p's record, cut to the reader's snaplen.
func (w *frameWriter) add(p *packet) {
	data := p.data
	if len(data) > w.r.snaplen {
		data = data[:w.r.snaplen]
	}
	w.r.qbytes.Add(-int64(min(len(p.data), w.r.snaplen)))
	ci := gopacket.CaptureInfo{Timestamp: p.ts, CaptureLength: len(data), Length: max(p.length, len(data))}
	w.pw.WritePacket(ci, data) // cannot fail: ci is consistent and Write does not fail
	w.n++
}

// drain adds queued packets without waiting, up to a frame's worth and the
// reader's count.
func (w *frameWriter) drain() {
	for len(w.buf) < maxBatch {
		if w.r.req.Count != 0 && w.r.delivered.Load()+w.n >= w.r.req.Count {
			return
		}
		select {
		case p := <-w.r.q:
			w.add(p)
		default:
			return
		}
	}
}

func (w *frameWriter) flush() error {
	if len(w.buf) == wire.HeaderLen {
		return nil
	}
	wire.PutHeader(w.buf, wire.FramePcap, len(w.buf)-wire.HeaderLen)
	_, err := w.c.Write(w.buf)
	w.r.delivered.Add(w.n)
	w.total.Add(w.n)
	w.n = 0
	if cap(w.buf) > 4*maxBatch {
		w.buf = make([]byte, wire.HeaderLen, 64<<10)
	} else {
		w.buf = w.buf[:wire.HeaderLen]
	}
	return err
}

func (s *Server) refuse(c net.Conn, msg string) {
	s.refused.Add(1)
	c.SetWriteDeadline(time.Now().Add(finalWriteTimeout))
	if len(msg) > 1024 {
		msg = msg[:1024]
	}
	wire.WriteFrame(c, wire.FrameError, []byte(msg))
}

// join adds r, opening the capture if r is the first reader.
func (s *Server) join(r *reader) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("pcap server is stopping")
	}
	if len(s.all) >= s.cfg.MaxReaders {
		return fmt.Errorf("too many pcap readers for experiment %s (at most %d at once)", s.cfg.Experiment, s.cfg.MaxReaders)
	}
	if s.cap == nil {
		c, err := s.openCapture()
		if err != nil {
			return fmt.Errorf("cannot capture on %s: %w", s.cfg.Iface, err)
		}
		s.cap = c
		s.opens.Add(1)
		go s.captureLoop(c)
	}
	r.kbase = s.kernelDrops.Load()
	s.all[r] = struct{}{}
	s.publishLocked()
	return nil
}

// leave removes r, closing the capture if r was the last reader.
func (s *Server) leave(r *reader) {
	s.mu.Lock()
	delete(s.all, r)
	s.publishLocked()
	var c *capture
	if len(s.all) == 0 && s.cap != nil {
		c = s.cap
		s.cap = nil
		s.pollKernelDropsLocked(c)
		c.close()
	}
	s.mu.Unlock()
	if c != nil {
		<-c.done
	}
}

// publishLocked makes the capture goroutine see the current readers.
func (s *Server) publishLocked() {
	rs := make([]*reader, 0, len(s.all))
	for r := range s.all {
		rs = append(rs, r)
	}
	s.readers.Store(&rs)
}

// captureEnded is called by a capture goroutine that stopped on its own
// (an error, the interface went away): its readers are told and dropped.
func (s *Server) captureEnded(c *capture, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cap != c {
		return // closed by leave: expected
	}
	s.cap = nil
	msg := fmt.Sprintf("capture on %s ended: %v", s.cfg.Iface, err)
	s.log.Warn("capture ended", "error", err)
	for r := range s.all {
		r.stop(msg)
	}
}

func (s *Server) readerStats(r *reader) wire.Stats {
	return wire.Stats{
		Packets:       r.delivered.Load(),
		Dropped:       r.dropped.Load(),
		KernelDropped: s.kernelDrops.Load() - r.kbase,
	}
}

func (s *Server) pollKernelDrops() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cap != nil {
		s.pollKernelDropsLocked(s.cap)
	}
}

func (s *Server) pollKernelDropsLocked(c *capture) {
	if d, err := c.kernelDrops(); err == nil {
		s.kernelDrops.Add(d)
	}
}

// ReaderStats describes one connected reader.
type ReaderStats struct {
	Snaplen   int
	Count     uint64
	Filter    string
	Delivered uint64
	Dropped   uint64
	Queued    int
}

// Stats is a snapshot of a Server.
type Stats struct {
	Capturing     bool   // an AF_PACKET socket is open
	Captures      uint64 // times the capture was opened
	Captured      uint64 // packets read from the socket
	Delivered     uint64 // packets written to readers (summed over readers)
	Dropped       uint64 // packets lost by readers with full queues (summed)
	KernelDropped uint64 // packets the socket lost (PACKET_STATISTICS)
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
		Capturing:   s.cap != nil,
		Captures:    s.opens.Load(),
		Captured:    s.captured.Load(),
		Connections: s.acceptedConn.Load(),
		Refused:     s.refused.Load(),
		Overflow:    s.overflow.Load(),
		Open:        len(s.conns),
		Pending:     s.pending,
	}
	st.Delivered, st.Dropped = s.delivered.Load(), s.dropped.Load()
	for r := range s.all {
		st.Readers = append(st.Readers, ReaderStats{
			Snaplen: r.snaplen, Count: r.req.Count, Filter: r.req.Filter,
			Delivered: r.delivered.Load(), Dropped: r.dropped.Load(), Queued: len(r.q),
		})
	}
	st.KernelDropped = s.kernelDrops.Load()
	return st
}

// Capturing reports whether the AF_PACKET socket is open.
func (s *Server) Capturing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cap != nil
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
