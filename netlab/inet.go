package netlab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// Record is one entry of the fake Internet's log: a TCP connection, a UDP
// datagram, a DNS query or an HTTP request, with the addresses as inet saw
// them — Src is the node's uplink address when the node masquerades, or the
// original (e.g. spoofed) source when it does not.
type Record struct {
	Time    time.Time
	Service string // "dns", "echo", "http"
	Proto   string // "tcp", "udp"
	Src     netip.AddrPort
	Dst     netip.AddrPort
	Bytes   int64  // payload bytes received from the client (TCP echo: updated while open)
	Detail  string // dns: "name. TYPE"; http: "GET /path"
}

func (r Record) String() string {
	s := fmt.Sprintf("%s/%s %s -> %s %dB", r.Service, r.Proto, r.Src, r.Dst, r.Bytes)
	if r.Detail != "" {
		s += " " + r.Detail
	}
	return s
}

// Internet is the set of services run inside the fake Internet host: an
// authoritative DNS server for Zone and DeniedZone on DNS4/DNS6 port 53
// (UDP+TCP), TCP and UDP echo on port 7 and HTTP on port 80 on every
// address. HTTP paths: "/" greets with the client address, "/bytes?n=N"
// sends N bytes, "/echo" returns the request body.
type Internet struct {
	Host *Host

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	zones  *zoneDB

	mu      sync.Mutex
	log     []Record
	notify  chan struct{}
	closers []io.Closer
	conns   map[net.Conn]struct{}
	dns     []*dns.Server
	closed  bool
}

// StartInternet starts the services inside h (which should answer the
// service addresses, as inet in NewWorld does). The lab's cleanup stops
// them; so does Close.
func StartInternet(h *Host) (*Internet, error) {
	ctx, cancel := context.WithCancel(context.Background())
	in := &Internet{Host: h, ctx: ctx, cancel: cancel, zones: newZoneDB(),
		notify: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	h.lab.OnCleanup(in.Close)
	if err := in.start(); err != nil {
		in.Close()
		return nil, err
	}
	return in, nil
}

func (in *Internet) start() error {
	h := in.Host
	// Service addresses on lo: sockets bind to them explicitly (IPv6 does
	// not let a socket bind to an address that only a local route covers).
	for _, a := range []string{DNS4 + "/32", DNS6 + "/128"} {
		if err := h.AddAddr("lo", a); err != nil && !errors.Is(err, unix.EEXIST) {
			return err
		}
	}
	mux := dns.NewServeMux()
	mux.HandleFunc(".", in.serveDNS)
	for _, hp := range []string{net.JoinHostPort(DNS4, "53"), net.JoinHostPort(DNS6, "53")} {
		pc, err := h.ListenPacket("udp", hp)
		if err != nil {
			return fmt.Errorf("dns udp %s: %w", hp, err)
		}
		in.addCloser(pc)
		in.runDNS(&dns.Server{PacketConn: pc, Handler: mux})
		l, err := h.Listen("tcp", hp)
		if err != nil {
			return fmt.Errorf("dns tcp %s: %w", hp, err)
		}
		in.addCloser(l)
		in.runDNS(&dns.Server{Listener: l, Handler: mux, MaxTCPQueries: -1})
	}

	el, err := h.Listen("tcp", "[::]:7")
	if err != nil {
		return fmt.Errorf("echo tcp: %w", err)
	}
	in.addCloser(el)
	in.wg.Add(1)
	go in.acceptEcho(el)

	u4, err := h.ListenPacket("udp4", "0.0.0.0:7")
	if err != nil {
		return fmt.Errorf("echo udp4: %w", err)
	}
	in.addCloser(u4)
	u6, err := h.ListenPacket("udp6", "[::]:7")
	if err != nil {
		return fmt.Errorf("echo udp6: %w", err)
	}
	in.addCloser(u6)
	if err := freebind(u6); err != nil {
		return fmt.Errorf("echo udp6: %w", err)
	}
	p4 := ipv4.NewPacketConn(u4)
	if err := p4.SetControlMessage(ipv4.FlagDst, true); err != nil {
		return fmt.Errorf("echo udp4 pktinfo: %w", err)
	}
	p6 := ipv6.NewPacketConn(u6)
	if err := p6.SetControlMessage(ipv6.FlagDst, true); err != nil {
		return fmt.Errorf("echo udp6 pktinfo: %w", err)
	}
	in.wg.Add(2)
	go in.udpEcho4(p4)
	go in.udpEcho6(p6)

	hl, err := h.Listen("tcp", "[::]:80")
	if err != nil {
		return fmt.Errorf("http: %w", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(in.serveHTTP), ReadHeaderTimeout: 10 * time.Second}
	in.addCloser(srv)
	in.wg.Add(1)
	go func() {
		defer in.wg.Done()
		srv.Serve(hl)
	}()
	return nil
}

// freebind lets the IPv6 echo socket reply from addresses that only inet's
// local route covers (not configured on an interface).
func freebind(pc net.PacketConn) error {
	sc, ok := pc.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_FREEBIND, 1)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("set IPV6_FREEBIND: %w", serr)
	}
	return nil
}

func (in *Internet) addCloser(c io.Closer) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.closers = append(in.closers, c)
}

func (in *Internet) runDNS(s *dns.Server) {
	in.mu.Lock()
	in.dns = append(in.dns, s)
	in.mu.Unlock()
	in.wg.Add(1)
	go func() {
		defer in.wg.Done()
		s.ActivateAndServe()
	}()
}

// Close stops every service and waits for their goroutines. Idempotent.
func (in *Internet) Close() error {
	in.mu.Lock()
	if in.closed {
		in.mu.Unlock()
		return nil
	}
	in.closed = true
	closers := in.closers
	conns := in.conns
	servers := in.dns
	in.conns = map[net.Conn]struct{}{}
	in.mu.Unlock()
	in.cancel()
	for _, s := range servers {
		// Also ends idle DNS-over-TCP connections (which would otherwise
		// linger for the server's idle timeout).
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		s.ShutdownContext(ctx)
		cancel()
	}
	for _, c := range closers {
		c.Close()
	}
	for c := range conns {
		c.Close()
	}
	done := make(chan struct{})
	go func() { in.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-time.After(10 * time.Second):
		return errors.New("fake internet: services did not stop within 10s")
	}
}

// record appends r to the log and returns its index.
func (in *Internet) record(r Record) int {
	r.Src = unmap(r.Src)
	r.Dst = unmap(r.Dst)
	if r.Time.IsZero() {
		r.Time = time.Now()
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	in.log = append(in.log, r)
	close(in.notify)
	in.notify = make(chan struct{})
	return len(in.log) - 1
}

func (in *Internet) addBytes(i int, n int64) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.log[i].Bytes += n
	close(in.notify)
	in.notify = make(chan struct{})
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func addrPort(a net.Addr) netip.AddrPort {
	switch v := a.(type) {
	case *net.TCPAddr:
		return v.AddrPort()
	case *net.UDPAddr:
		return v.AddrPort()
	case nil:
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// Log returns a copy of the log.
func (in *Internet) Log() []Record {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([]Record(nil), in.log...)
}

// Seen reports whether a logged record satisfies cond.
func (in *Internet) Seen(cond func(Record) bool) bool {
	for _, r := range in.Log() {
		if cond(r) {
			return true
		}
	}
	return false
}

// WaitSeen waits up to timeout for a record satisfying cond (records
// logged before the call count).
func (in *Internet) WaitSeen(cond func(Record) bool, timeout time.Duration) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		in.mu.Lock()
		notify := in.notify
		in.mu.Unlock()
		if in.Seen(cond) {
			return true
		}
		select {
		case <-notify:
		case <-deadline.C:
			return in.Seen(cond)
		}
	}
}

func (in *Internet) serveDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Compress = true
	proto := w.RemoteAddr().Network()
	detail := ""
	if len(req.Question) != 1 || req.Opcode != dns.OpcodeQuery {
		m.Rcode = dns.RcodeFormatError
		if req.Opcode != dns.OpcodeQuery {
			m.Rcode = dns.RcodeNotImplemented
		}
	} else {
		q := req.Question[0]
		detail = q.Name + " " + dns.TypeToString[q.Qtype]
		in.zones.answer(q, m)
	}
	in.record(Record{Service: "dns", Proto: proto, Src: addrPort(w.RemoteAddr()), Dst: addrPort(w.LocalAddr()),
		Bytes: int64(req.Len()), Detail: detail})
	size := dns.MinMsgSize
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(opt.UDPSize(), false)
		if int(opt.UDPSize()) > size {
			size = int(opt.UDPSize())
		}
	}
	if proto == "udp" {
		m.Truncate(size) // sets TC when the answer does not fit
	}
	w.WriteMsg(m)
}

func (in *Internet) track(c net.Conn) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.closed {
		return false
	}
	in.conns[c] = struct{}{}
	return true
}

func (in *Internet) untrack(c net.Conn) {
	in.mu.Lock()
	defer in.mu.Unlock()
	delete(in.conns, c)
}

func (in *Internet) acceptEcho(l net.Listener) {
	defer in.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		if !in.track(c) {
			c.Close()
			return
		}
		i := in.record(Record{Service: "echo", Proto: "tcp", Src: addrPort(c.RemoteAddr()), Dst: addrPort(c.LocalAddr())})
		in.wg.Add(1)
		go func() {
			defer in.wg.Done()
			defer in.untrack(c)
			defer c.Close()
			buf := make([]byte, 32<<10)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					in.addBytes(i, int64(n))
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}

func (in *Internet) udpEcho4(p *ipv4.PacketConn) {
	defer in.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, cm, src, err := p.ReadFrom(buf)
		if err != nil {
			if in.ctx.Err() != nil {
				return
			}
			continue
		}
		var dst netip.AddrPort
		var wcm *ipv4.ControlMessage
		if cm != nil && cm.Dst != nil {
			a, _ := netip.AddrFromSlice(cm.Dst)
			dst = netip.AddrPortFrom(a.Unmap(), EchoPort)
			wcm = &ipv4.ControlMessage{Src: cm.Dst}
		}
		in.record(Record{Service: "echo", Proto: "udp", Src: addrPort(src), Dst: dst, Bytes: int64(n)})
		p.WriteTo(buf[:n], wcm, src)
	}
}

func (in *Internet) udpEcho6(p *ipv6.PacketConn) {
	defer in.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, cm, src, err := p.ReadFrom(buf)
		if err != nil {
			if in.ctx.Err() != nil {
				return
			}
			continue
		}
		var dst netip.AddrPort
		var wcm *ipv6.ControlMessage
		if cm != nil && cm.Dst != nil {
			a, _ := netip.AddrFromSlice(cm.Dst)
			dst = netip.AddrPortFrom(a, EchoPort)
			wcm = &ipv6.ControlMessage{Src: cm.Dst}
		}
		in.record(Record{Service: "echo", Proto: "udp", Src: addrPort(src), Dst: dst, Bytes: int64(n)})
		p.WriteTo(buf[:n], wcm, src)
	}
}

func (in *Internet) serveHTTP(w http.ResponseWriter, r *http.Request) {
	src, _ := netip.ParseAddrPort(r.RemoteAddr)
	var dst netip.AddrPort
	if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		dst = addrPort(la)
	}
	i := in.record(Record{Service: "http", Proto: "tcp", Src: src, Dst: dst, Detail: r.Method + " " + r.URL.RequestURI()})
	w.Header().Set("Server", "netlab-inet")
	switch {
	case r.URL.Path == "/bytes":
		size, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || size < 0 || size > 1<<30 {
			http.Error(w, "use /bytes?n=N with 0 <= N <= 1073741824", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		chunk := []byte(strings.Repeat("x", 32<<10))
		for size > 0 {
			k := min(size, int64(len(chunk)))
			if _, err := w.Write(chunk[:k]); err != nil {
				return
			}
			size -= k
		}
	case r.URL.Path == "/echo":
		body, _ := io.ReadAll(io.LimitReader(r.Body, 64<<20))
		in.addBytes(i, int64(len(body)))
		w.Write(body)
	default:
		fmt.Fprintf(w, "netlab inet: hello %s, you reached %s\n", src.Addr(), dst.Addr())
	}
}
