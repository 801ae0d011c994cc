package dnsproxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/arkgw/arkgw/alert"
)

// fakeUpstream is an in-process authoritative server on 127.0.0.1 (UDP and
// TCP on one port) that counts and records what it is asked.
type fakeUpstream struct {
	addr    string
	queries atomic.Int64
	mu      sync.Mutex
	ids     []uint16
	srcs    map[string]bool // UDP source addresses seen
	tcpSrcs map[string]bool
	names   []string
	answer  func(w dns.ResponseWriter, r *dns.Msg) *dns.Msg // nil: default
}

func startUpstream(t testing.TB, answer func(w dns.ResponseWriter, r *dns.Msg) *dns.Msg) *fakeUpstream {
	t.Helper()
	u := &fakeUpstream{answer: answer, srcs: map[string]bool{}, tcpSrcs: map[string]bool{}}
	var pc net.PacketConn
	var l net.Listener
	for i := 0; ; i++ {
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		if i > 10 {
			t.Fatal(err)
		}
	}
	u.addr = pc.LocalAddr().String()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		u.queries.Add(1)
		u.mu.Lock()
		u.ids = append(u.ids, r.Id)
		if w.RemoteAddr().Network() == "udp" {
			u.srcs[w.RemoteAddr().String()] = true
		} else {
			u.tcpSrcs[w.RemoteAddr().String()] = true
		}
		if len(r.Question) > 0 {
			u.names = append(u.names, r.Question[0].Name)
		}
		u.mu.Unlock()
		var m *dns.Msg
		if u.answer != nil {
			m = u.answer(w, r)
		} else {
			m = defaultAnswer(r)
		}
		if m != nil {
			_ = w.WriteMsg(m)
		}
	})
	us := &dns.Server{PacketConn: pc, Handler: h}
	ts := &dns.Server{Listener: l, Handler: h, MaxTCPQueries: -1}
	go us.ActivateAndServe()
	go ts.ActivateAndServe()
	t.Cleanup(func() { us.Shutdown(); ts.Shutdown() })
	return u
}

func defaultAnswer(r *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(r)
	q := r.Question[0]
	switch q.Qtype {
	case dns.TypeA:
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 0}, A: net.IPv4(198, 51, 100, 80)})
	case dns.TypeAAAA:
		m.Answer = append(m.Answer, &dns.AAAA{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: 0}, AAAA: net.ParseIP("2001:db8:100::80")})
	}
	if o := r.IsEdns0(); o != nil {
		m.SetEdns0(1232, o.Do())
	}
	return m
}

func (u *fakeUpstream) seenIDs() []uint16 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]uint16(nil), u.ids...)
}

type alertLog struct {
	mu  sync.Mutex
	rec []alert.Record
}

func (a *alertLog) Emit(r alert.Record) { a.mu.Lock(); a.rec = append(a.rec, r); a.mu.Unlock() }
func (a *alertLog) records() []alert.Record {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]alert.Record(nil), a.rec...)
}

// startProxy runs a proxy on 127.0.0.1 and a free port until the test ends.
func startProxy(t testing.TB, cfg Config) *Proxy {
	t.Helper()
	if cfg.Experiment == "" {
		cfg.Experiment = "e1"
	}
	cfg.Listen = []string{"127.0.0.1:0"}
	if cfg.Timeout == 0 {
		cfg.Timeout = 500 * time.Millisecond
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return after cancel")
		}
	})
	return p
}

func query(t testing.TB, p *Proxy, network, name string, qtype uint16, edns int) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	if edns > 0 {
		m.SetEdns0(uint16(edns), true)
	}
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	r, _, err := c.Exchange(m, p.Addrs()[0].String())
	if err != nil {
		t.Fatalf("query %s %s over %s: %v", name, dns.Type(qtype), network, err)
	}
	if r.Id != m.Id {
		t.Fatalf("answer id %d, query id %d", r.Id, m.Id)
	}
	return r
}

func TestAllowedForwarded(t *testing.T) {
	up := startUpstream(t, nil)
	p := startProxy(t, Config{Names: []string{"example.org"}, Upstreams: []string{up.addr}})
	for _, net := range []string{"udp", "tcp"} {
		for _, name := range []string{"example.org.", "www.Example.ORG."} {
			for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
				r := query(t, p, net, name, qt, 1232)
				if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].Header().Rrtype != qt {
					t.Fatalf("%s %s %s: got %v", net, name, dns.Type(qt), r)
				}
				if r.Question[0].Name != name {
					t.Errorf("question name %q, want the client's %q", r.Question[0].Name, name)
				}
				if o := r.IsEdns0(); o == nil || !o.Do() {
					t.Errorf("EDNS with DO lost: %v", r)
				}
			}
		}
	}
	if got := up.queries.Load(); got != 8 {
		t.Errorf("upstream got %d queries, want 8", got)
	}
	if s := p.Stats(); s.Allowed != 8 || s.Refused != 0 {
		t.Errorf("stats %+v", s)
	}
}

func TestDeniedNoUpstreamQuery(t *testing.T) {
	for _, nx := range []bool{false, true} {
		t.Run(fmt.Sprint("nxdomain=", nx), func(t *testing.T) {
			up := startUpstream(t, nil)
			al := &alertLog{}
			p := startProxy(t, Config{Experiment: "exp7", Names: []string{"example.org"}, Upstreams: []string{up.addr}, DenyNXDomain: nx, Alerts: al})
			want := dns.RcodeRefused
			if nx {
				want = dns.RcodeNameError
			}
			for _, name := range []string{"evil-example.org.", "example.org.evil.test.", "evil\\.example.org.", "Denied.Test."} {
				r := query(t, p, "udp", name, dns.TypeA, 1232)
				if r.Rcode != want {
					t.Errorf("%s: rcode %s, want %s", name, dns.RcodeToString[r.Rcode], dns.RcodeToString[want])
				}
				if o := r.IsEdns0(); o == nil || len(o.Option) != 1 || o.Option[0].(*dns.EDNS0_EDE).InfoCode != dns.ExtendedErrorCodeBlocked {
					t.Errorf("%s: want an extended error Blocked: %v", name, r)
				}
			}
			r := query(t, p, "tcp", "denied.test.", dns.TypeTXT, 0)
			if r.Rcode != want {
				t.Errorf("tcp: rcode %s", dns.RcodeToString[r.Rcode])
			}
			if n := up.queries.Load(); n != 0 {
				t.Fatalf("upstream asked %d times for denied names", n)
			}
			deadline := time.Now().Add(5 * time.Second)
			for len(al.records()) < 5 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			recs := al.records()
			if len(recs) != 5 {
				t.Fatalf("got %d alerts, want 5: %+v", len(recs), recs)
			}
			r0 := recs[0]
			if r0.Kind != alert.KindDNS || r0.Rule != "dns" || r0.Experiment != "exp7" || r0.Name != "evil-example.org." || r0.QType != "A" ||
				!strings.Contains(r0.Message, "manifest's dns list") || r0.Time.IsZero() {
				t.Errorf("alert %+v", r0)
			}
			if recs[4].QType != "TXT" || recs[4].Name != "denied.test." {
				t.Errorf("alert %+v", recs[4])
			}
			if s := p.Stats(); s.Refused != 5 || s.Allowed != 0 {
				t.Errorf("stats %+v", s)
			}
		})
	}
}

func TestAlertFloodBounded(t *testing.T) {
	up := startUpstream(t, nil)
	al := &alertLog{}
	p := startProxy(t, Config{Names: []string{"example.org"}, Upstreams: []string{up.addr}, Alerts: al, AlertRate: 1, AlertBurst: 20})
	for i := 0; i < 200; i++ {
		query(t, p, "udp", fmt.Sprintf("r%d.denied.test.", i), dns.TypeA, 0)
	}
	s := p.Stats()
	if s.Refused != 200 || s.Alerts > 30 || s.Alerts+s.AlertsSuppressed != 200 {
		t.Errorf("stats %+v", s)
	}
}

func TestAlertsNotRepeated(t *testing.T) {
	up := startUpstream(t, nil)
	al := &alertLog{}
	p := startProxy(t, Config{Names: []string{"example.org"}, Upstreams: []string{up.addr}, Alerts: al})
	for i := 0; i < 5; i++ {
		query(t, p, "udp", "denied.test.", dns.TypeA, 0)
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.Stats().Alerts+p.Stats().AlertsSuppressed < 5 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if s := p.Stats(); s.Alerts != 1 || s.AlertsSuppressed != 4 || s.Refused != 5 {
		t.Errorf("stats %+v", s)
	}
}

// A Sink that blocks must not hold up answers.
func TestBlockingSink(t *testing.T) {
	up := startUpstream(t, nil)
	release := make(chan struct{})
	sink := alert.SinkFunc(func(alert.Record) { <-release })
	defer close(release)
	p := startProxy(t, Config{Names: []string{"example.org"}, Upstreams: []string{up.addr}, Alerts: sink, AlertInterval: time.Nanosecond, AlertRate: 1e6, AlertBurst: 1000})
	start := time.Now()
	for i := 0; i < 400; i++ {
		query(t, p, "udp", fmt.Sprintf("d%d.denied.test.", i), dns.TypeA, 0)
	}
	if time.Since(start) > 20*time.Second {
		t.Errorf("queries slowed by the sink")
	}
	if s := p.Stats(); s.AlertsDropped == 0 {
		t.Errorf("expected dropped alerts with a stuck sink: %+v", s)
	}
}

func TestIDsRandomised(t *testing.T) {
	up := startUpstream(t, nil)
	p := startProxy(t, Config{Any: true, Upstreams: []string{up.addr}})
	c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
	for i := 0; i < 50; i++ {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("n%d.example.org.", i), dns.TypeA)
		m.Id = 4242
		r, _, err := c.Exchange(m, p.Addrs()[0].String())
		if err != nil {
			t.Fatal(err)
		}
		if r.Id != 4242 {
			t.Fatalf("client id not restored: %d", r.Id)
		}
	}
	ids := up.seenIDs()
	distinct := map[uint16]bool{}
	for _, id := range ids {
		if id == 4242 {
			t.Errorf("client id passed upstream")
		}
		distinct[id] = true
	}
	if len(distinct) < 45 {
		t.Errorf("only %d distinct upstream ids in %d queries", len(distinct), len(ids))
	}
}

// Upstream sockets are reused: many queries, few source ports.
func TestUpstreamReuse(t *testing.T) {
	up := startUpstream(t, nil)
	p := startProxy(t, Config{Any: true, Upstreams: []string{up.addr}, CacheSize: -1})
	for i := 0; i < 100; i++ {
		query(t, p, "udp", "example.org.", dns.TypeA, 0)
		query(t, p, "tcp", "example.org.", dns.TypeA, 0)
	}
	up.mu.Lock()
	n := len(up.srcs)
	up.mu.Unlock()
	if n > udpSockets || up.queries.Load() != 200 {
		t.Errorf("%d upstream source ports for %d queries", n, up.queries.Load())
	}
}

// rawUpstream answers each query with: an answer for another name under the
// right ID, an answer with a wrong ID, and then (if good) the right answer.
func TestMismatchedAnswersDropped(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 4096)
		for {
			n, src, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			q := new(dns.Msg)
			if q.Unpack(buf[:n]) != nil {
				continue
			}
			send := func(m *dns.Msg) {
				b, _ := m.Pack()
				pc.WriteTo(b, src)
			}
			bad := new(dns.Msg)
			bad.SetQuestion("poison.example.org.", dns.TypeA)
			bad.Id = q.Id
			bad.Response = true
			bad.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "poison.example.org.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 3600}, A: net.IPv4(6, 6, 6, 6)}}
			send(bad)
			wt := new(dns.Msg)
			wt.SetReply(q)
			wt.Question[0].Qtype = dns.TypeMX
			send(wt)
			wid := defaultAnswer(q)
			wid.Id = q.Id + 1
			wid.Answer[0].(*dns.A).A = net.IPv4(6, 6, 6, 7)
			send(wid)
			send(defaultAnswer(q))
		}
	}()
	p := startProxy(t, Config{Any: true, Upstreams: []string{pc.LocalAddr().String()}})
	r := query(t, p, "udp", "www.example.org.", dns.TypeA, 0)
	if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "198.51.100.80" {
		t.Fatalf("answer %v", r)
	}
	deadline := time.Now().Add(2 * time.Second)
	for p.Stats().Mismatched < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if s := p.Stats(); s.Mismatched != 3 {
		t.Errorf("mismatched %d, want 3", s.Mismatched)
	}
}

func bigAnswer(r *dns.Msg, n int, ttl uint32) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(r)
	q := r.Question[0]
	for i := 0; i < n; i++ {
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: net.IPv4(198, 51, 100, byte(i))})
	}
	if o := r.IsEdns0(); o != nil {
		m.SetEdns0(4096, o.Do())
	}
	return m
}

func TestTruncatedToClientSize(t *testing.T) {
	up := startUpstream(t, func(w dns.ResponseWriter, r *dns.Msg) *dns.Msg {
		m := bigAnswer(r, 60, 0) // 60 A records: ~ 1000 bytes compressed
		if w.RemoteAddr().Network() == "udp" {
			if o := r.IsEdns0(); o != nil {
				m.Truncate(int(o.UDPSize()))
			} else {
				m.Truncate(512)
			}
		}
		return m
	})
	p := startProxy(t, Config{Any: true, Upstreams: []string{up.addr}})
	// No EDNS: 512 bytes at most, TC set.
	m := new(dns.Msg)
	m.SetQuestion("many.example.org.", dns.TypeA)
	c := &dns.Client{Net: "udp", UDPSize: 65535, Timeout: 5 * time.Second}
	r, _, err := c.Exchange(m, p.Addrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	r.Compress = true
	b, _ := r.Pack()
	if !r.Truncated || len(b) > 512 || len(r.Answer) == 0 {
		t.Errorf("no-EDNS answer: tc=%v len=%d", r.Truncated, len(b))
	}
	// EDNS 1232: the whole answer fits (compressed).
	r = query(t, p, "udp", "many.example.org.", dns.TypeA, 1232)
	if r.Truncated || len(r.Answer) != 60 {
		t.Errorf("EDNS 1232: tc=%v answers=%d", r.Truncated, len(r.Answer))
	}
	// TCP: everything.
	r = query(t, p, "tcp", "many.example.org.", dns.TypeA, 0)
	if r.Truncated || len(r.Answer) != 60 {
		t.Errorf("tcp: tc=%v answers=%d", r.Truncated, len(r.Answer))
	}
	if p.Stats().Truncated == 0 {
		t.Errorf("truncation not counted")
	}
}

func TestTCPFallback(t *testing.T) {
	up := startUpstream(t, func(w dns.ResponseWriter, r *dns.Msg) *dns.Msg {
		ttl := uint32(0)
		if strings.HasPrefix(r.Question[0].Name, "bigc.") {
			ttl = 60
		}
		m := bigAnswer(r, 200, ttl) // > 1232 bytes
		if w.RemoteAddr().Network() == "udp" {
			m.Truncate(512)
		}
		return m
	})
	p := startProxy(t, Config{Any: true, Upstreams: []string{up.addr}})
	r := query(t, p, "tcp", "big.example.org.", dns.TypeA, 0)
	if r.Truncated || len(r.Answer) != 200 {
		t.Fatalf("tcp client: tc=%v answers=%d", r.Truncated, len(r.Answer))
	}
	up.mu.Lock()
	ntcp := len(up.tcpSrcs)
	up.mu.Unlock()
	if ntcp == 0 || p.Stats().TCPFallbacks == 0 {
		t.Errorf("no TCP fallback upstream: %+v", p.Stats())
	}
	// UDP client gets a truncated answer and the TC bit.
	r = query(t, p, "udp", "big2.example.org.", dns.TypeA, 1232)
	if !r.Truncated {
		t.Errorf("udp client: want TC")
	}
	// A cached large answer is truncated for a UDP client, whole over TCP.
	query(t, p, "tcp", "bigc.example.org.", dns.TypeA, 0)
	n := up.queries.Load()
	r = query(t, p, "udp", "bigc.example.org.", dns.TypeA, 0)
	if !r.Truncated || len(r.Answer) == 0 || up.queries.Load() != n || p.Stats().CacheHits != 1 {
		t.Errorf("cached large answer over UDP: tc=%v answers=%d hits=%d", r.Truncated, len(r.Answer), p.Stats().CacheHits)
	}
	r = query(t, p, "tcp", "bigc.example.org.", dns.TypeA, 0)
	if r.Truncated || len(r.Answer) != 200 || up.queries.Load() != n {
		t.Errorf("cached large answer over TCP: tc=%v answers=%d", r.Truncated, len(r.Answer))
	}
}

func TestRetryOtherUpstream(t *testing.T) {
	// A "dead" upstream: reads queries, never answers.
	dead, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	up := startUpstream(t, nil)
	p := startProxy(t, Config{Any: true, Upstreams: []string{dead.LocalAddr().String(), up.addr}, Timeout: 300 * time.Millisecond})
	for i := 0; i < 3; i++ {
		r := query(t, p, "udp", fmt.Sprintf("x%d.example.org.", i), dns.TypeA, 0)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
			t.Fatalf("answer %v", r)
		}
	}
	// The first query times out on the dead one; later ones skip it (one
	// more error is tolerated: a very slow box may time out the live one).
	if s := p.Stats(); s.UpstreamErrors < 1 || s.UpstreamErrors > 2 {
		t.Errorf("upstream errors %d, want 1 (dead upstream marked down)", s.UpstreamErrors)
	}
	// Both dead: SERVFAIL, counted.
	p2 := startProxy(t, Config{Any: true, Upstreams: []string{dead.LocalAddr().String()}, Timeout: 200 * time.Millisecond})
	r := query(t, p2, "udp", "example.org.", dns.TypeA, 1232)
	if r.Rcode != dns.RcodeServerFailure || p2.Stats().UpstreamFailures != 1 {
		t.Errorf("rcode %s stats %+v", dns.RcodeToString[r.Rcode], p2.Stats())
	}
}

func TestRateLimit(t *testing.T) {
	up := startUpstream(t, nil)
	p := startProxy(t, Config{Any: true, Upstreams: []string{up.addr}, QPS: 5})
	refused := 0
	for i := 0; i < 30; i++ {
		r := query(t, p, "udp", "example.org.", dns.TypeA, 1232)
		if r.Rcode == dns.RcodeRefused {
			refused++
		}
	}
	s := p.Stats()
	if refused < 15 || s.RateLimited != uint64(refused) {
		t.Errorf("refused %d, stats %+v", refused, s)
	}
}

func TestCacheTTL(t *testing.T) {
	up := startUpstream(t, func(w dns.ResponseWriter, r *dns.Msg) *dns.Msg {
		return bigAnswer(r, 1, 30)
	})
	p := startProxy(t, Config{Any: true, Upstreams: []string{up.addr}})
	now := time.Now()
	var clock atomic.Int64
	clock.Store(now.UnixNano())
	p.cache.mu.Lock()
	p.cache.now = func() time.Time { return time.Unix(0, clock.Load()) }
	p.cache.mu.Unlock()

	r := query(t, p, "udp", "c.example.org.", dns.TypeA, 0)
	if r.Answer[0].Header().Ttl != 30 {
		t.Fatalf("ttl %d", r.Answer[0].Header().Ttl)
	}
	clock.Add(int64(10 * time.Second))
	r = query(t, p, "udp", "C.example.org.", dns.TypeA, 0)
	if got := r.Answer[0].Header().Ttl; got != 20 || r.Question[0].Name != "C.example.org." {
		t.Errorf("cached: ttl %d (want 20), question %s", got, r.Question[0].Name)
	}
	if up.queries.Load() != 1 || p.Stats().CacheHits != 1 {
		t.Errorf("upstream queries %d, cache hits %d", up.queries.Load(), p.Stats().CacheHits)
	}
	// A different type or DO bit is a different entry.
	query(t, p, "udp", "c.example.org.", dns.TypeA, 1232)
	if up.queries.Load() != 2 {
		t.Errorf("EDNS query answered from the non-EDNS entry")
	}
	clock.Add(int64(21 * time.Second))
	query(t, p, "udp", "c.example.org.", dns.TypeA, 0)
	if up.queries.Load() != 3 {
		t.Errorf("expired entry served")
	}
}

func TestTTLZeroNotCached(t *testing.T) {
	up := startUpstream(t, nil) // TTL 0
	p := startProxy(t, Config{Any: true, Upstreams: []string{up.addr}})
	query(t, p, "udp", "z.example.org.", dns.TypeA, 0)
	query(t, p, "udp", "z.example.org.", dns.TypeA, 0)
	if up.queries.Load() != 2 {
		t.Errorf("TTL 0 answer cached")
	}
}

func TestOpcodesAndMalformed(t *testing.T) {
	up := startUpstream(t, nil)
	p := startProxy(t, Config{Any: true, Upstreams: []string{up.addr}})
	c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
	for _, op := range []int{dns.OpcodeIQuery, dns.OpcodeStatus, dns.OpcodeNotify, dns.OpcodeUpdate, 3, 15} {
		m := new(dns.Msg)
		m.SetQuestion("example.org.", dns.TypeSOA)
		m.Opcode = op
		r, _, err := c.Exchange(m, p.Addrs()[0].String())
		if err != nil {
			t.Fatalf("opcode %d: %v", op, err)
		}
		if r.Rcode != dns.RcodeNotImplemented || r.Opcode != op {
			t.Errorf("opcode %d: rcode %s", op, dns.RcodeToString[r.Rcode])
		}
	}
	// Zone transfers are refused.
	m := new(dns.Msg)
	m.SetAxfr("example.org.")
	r, _, err := (&dns.Client{Net: "tcp"}).Exchange(m, p.Addrs()[0].String())
	if err != nil || r.Rcode != dns.RcodeRefused {
		t.Errorf("axfr: %v %v", r, err)
	}
	// Garbage after a header: FORMERR with the same ID.
	conn, err := net.Dial("udp", p.Addrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte{0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xff, 0xff})
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	if err != nil || n < 12 || buf[0] != 0xab || buf[1] != 0xcd || buf[3]&0xf != dns.RcodeFormatError || buf[2]&0x80 == 0 {
		t.Errorf("malformed: % x %v", buf[:n], err)
	}
	if up.queries.Load() != 0 {
		t.Errorf("upstream asked")
	}
}

// Pipelined queries on one TCP connection are answered concurrently: a slow
// query does not hold up the ones after it.
func TestTCPPipelining(t *testing.T) {
	up := startUpstream(t, func(w dns.ResponseWriter, r *dns.Msg) *dns.Msg {
		if strings.HasPrefix(r.Question[0].Name, "slow.") {
			time.Sleep(400 * time.Millisecond)
		}
		return defaultAnswer(r)
	})
	p := startProxy(t, Config{Any: true, Upstreams: []string{up.addr}})
	conn, err := net.Dial("tcp", p.Addrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	dc := &dns.Conn{Conn: conn}
	names := []string{"slow.example.org."}
	for i := 0; i < 20; i++ {
		names = append(names, fmt.Sprintf("fast%d.example.org.", i))
	}
	for i, n := range names {
		m := new(dns.Msg)
		m.SetQuestion(n, dns.TypeA)
		m.Id = uint16(i + 1)
		if err := dc.WriteMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var order []uint16
	for range names {
		r, err := dc.ReadMsg()
		if err != nil {
			t.Fatal(err)
		}
		if int(r.Id) < 1 || int(r.Id) > len(names) || r.Question[0].Name != names[r.Id-1] {
			t.Fatalf("answer %d does not match its question %v", r.Id, r.Question)
		}
		order = append(order, r.Id)
	}
	if order[0] == 1 {
		t.Errorf("the slow query was answered first: queries were served one at a time (%v)", order)
	}
	if order[len(order)-1] != 1 {
		t.Errorf("order %v: slow query should come last", order)
	}
}

func TestClientsRestricted(t *testing.T) {
	up := startUpstream(t, nil)
	p := startProxy(t, Config{Any: true, Upstreams: []string{up.addr}, Clients: []netip.Prefix{netip.MustParsePrefix("10.250.0.0/30")}})
	c := &dns.Client{Net: "udp", Timeout: 300 * time.Millisecond}
	m := new(dns.Msg)
	m.SetQuestion("example.org.", dns.TypeA)
	if _, _, err := c.Exchange(m, p.Addrs()[0].String()); err == nil {
		t.Errorf("answered a client outside Clients")
	}
	if p.Stats().ClientsRejected == 0 || up.queries.Load() != 0 {
		t.Errorf("stats %+v", p.Stats())
	}
}

func TestUpstreamsFromResolvConf(t *testing.T) {
	f := t.TempDir() + "/resolv.conf"
	writeFile(t, f, "# comment\nnameserver 192.0.2.1\nnameserver 2001:db8::1\nsearch example.org\noptions ndots:2\n")
	got, err := UpstreamsFromResolvConf(f)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "192.0.2.1:53,[2001:db8::1]:53" {
		t.Errorf("got %v", got)
	}
	writeFile(t, f, "search example.org\n")
	if _, err := UpstreamsFromResolvConf(f); err == nil {
		t.Errorf("no nameservers accepted")
	}
	if _, err := UpstreamsFromResolvConf(f + ".missing"); err == nil {
		t.Errorf("missing file accepted")
	}
}

func TestNewErrors(t *testing.T) {
	for _, cfg := range []Config{
		{Experiment: "e1", Listen: []string{"127.0.0.1:0"}, ResolvConf: "/nonexistent/resolv.conf"},  // no upstreams
		{Experiment: "e1", Upstreams: []string{"192.0.2.1"}},                                         // no listen
		{Experiment: "e1", Listen: []string{"nonsense"}, Upstreams: []string{"192.0.2.1"}},           // bad listen
		{Experiment: "e1", Listen: []string{"127.0.0.1:0"}, Upstreams: []string{"resolver.example"}}, // bad upstream
		{Experiment: "e1", Listen: []string{"127.0.0.1:0"}, Upstreams: []string{"1.1.1.1"}, Names: []string{"a..b"}},
		{Experiment: "Bad_ID!", Listen: []string{"127.0.0.1:0"}, Upstreams: []string{"192.0.2.1"}},
	} {
		if p, err := New(cfg); err == nil {
			p.Close()
			t.Errorf("config %+v accepted", cfg)
		}
	}
}

func TestCollector(t *testing.T) {
	up := startUpstream(t, nil)
	p := startProxy(t, Config{Experiment: "m1", Names: []string{"example.org"}, Upstreams: []string{up.addr}})
	query(t, p, "udp", "example.org.", dns.TypeA, 0)
	query(t, p, "udp", "denied.test.", dns.TypeA, 0)
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(p.Collector()); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != 1 || m.GetLabel()[0].GetValue() != "m1" {
				t.Errorf("%s: labels %v", mf.GetName(), m.GetLabel())
			}
			got[mf.GetName()] = m.GetCounter().GetValue()
		}
	}
	if got["arkgw_dns_allowed_total"] != 1 || got["arkgw_dns_refused_total"] != 1 || got["arkgw_dns_queries_total"] != 2 {
		t.Errorf("metrics %v", got)
	}
}

func TestUpstreamsDefaultFromResolvConf(t *testing.T) {
	f := t.TempDir() + "/resolv.conf"
	writeFile(t, f, "nameserver 192.0.2.53\n")
	p, err := New(Config{Experiment: "e1", Listen: []string{"127.0.0.1:0"}, Any: true, ResolvConf: f})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if ups := p.pool.upstreamAddrs(); len(ups) != 1 || ups[0] != "192.0.2.53:53" {
		t.Errorf("upstreams %v", ups)
	}
}

// Run returns only after every goroutine it started has ended, even with a
// client TCP connection still open and queries in flight.
func TestRunStopsEverything(t *testing.T) {
	up := startUpstream(t, func(w dns.ResponseWriter, r *dns.Msg) *dns.Msg {
		if strings.HasPrefix(r.Question[0].Name, "hang.") {
			return nil // never answers
		}
		return defaultAnswer(r)
	})
	time.Sleep(50 * time.Millisecond)
	base := runtime.NumGoroutine()
	p, err := New(Config{Experiment: "e1", Listen: []string{"127.0.0.1:0"}, Any: true, Upstreams: []string{up.addr}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	query(t, p, "udp", "a.example.org.", dns.TypeA, 0)
	query(t, p, "tcp", "a.example.org.", dns.TypeA, 0)
	conn, err := net.Dial("tcp", p.Addrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	dc := &dns.Conn{Conn: conn}
	m := new(dns.Msg)
	m.SetQuestion("hang.example.org.", dns.TypeA)
	dc.WriteMsg(m)
	u, _ := net.Dial("udp", p.Addrs()[0].String())
	defer u.Close()
	(&dns.Conn{Conn: u}).WriteMsg(m)
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base {
		buf := make([]byte, 1<<16)
		t.Errorf("%d goroutines after Run, %d before:\n%s", n, base, buf[:runtime.Stack(buf, true)])
	}
}

// UDP sockets to an upstream are replaced after maxUses queries (new source
// port); the old socket's reader ends once its queries are done.
func TestUpstreamSocketRotation(t *testing.T) {
	up := startUpstream(t, nil)
	time.Sleep(50 * time.Millisecond)
	base := runtime.NumGoroutine()
	p, err := New(Config{Experiment: "e1", Listen: []string{"127.0.0.1:0"}, Any: true, Upstreams: []string{up.addr}, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	p.pool.maxUses = 3
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	for i := 0; i < 60; i++ {
		r := query(t, p, "udp", fmt.Sprintf("r%d.example.org.", i), dns.TypeA, 0)
		if len(r.Answer) != 1 {
			t.Fatalf("query %d: %v", i, r)
		}
	}
	up.mu.Lock()
	n := len(up.srcs)
	up.mu.Unlock()
	if n < 60/3 {
		t.Errorf("%d upstream source ports for 60 queries with 3 uses per socket", n)
	}
	// Retired sockets' readers end (after their read deadline).
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base+2*2+udpSockets+2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if g := runtime.NumGoroutine(); g > base+2*2+udpSockets+2 {
		t.Errorf("%d goroutines (base %d): retired upstream readers linger", g, base)
	}
	cancel()
	<-done
	if s := p.Stats(); s.UpstreamErrors != 0 || s.Mismatched != 0 {
		t.Errorf("stats %+v", s)
	}
}

// An upstream that closes its TCP connection after every answer: the proxy
// notices and dials again; every query is answered.
func TestUpstreamTCPClosedByServer(t *testing.T) {
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := bigAnswer(r, 100, 0)
		if w.RemoteAddr().Network() == "udp" {
			m.Truncate(512)
		}
		w.WriteMsg(m)
	})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		t.Skip("port taken on tcp:", err)
	}
	us := &dns.Server{PacketConn: pc, Handler: h}
	ts := &dns.Server{Listener: l, Handler: h, MaxTCPQueries: 1}
	go us.ActivateAndServe()
	go ts.ActivateAndServe()
	defer us.Shutdown()
	defer ts.Shutdown()
	p := startProxy(t, Config{Any: true, Upstreams: []string{pc.LocalAddr().String()}, CacheSize: -1})
	for i := 0; i < 10; i++ {
		r := query(t, p, "tcp", fmt.Sprintf("t%d.example.org.", i), dns.TypeA, 0)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 100 {
			t.Fatalf("query %d: rcode %s, %d answers", i, dns.RcodeToString[r.Rcode], len(r.Answer))
		}
	}
	if s := p.Stats(); s.UpstreamFailures != 0 || s.TCPFallbacks != 10 {
		t.Errorf("stats %+v", s)
	}
}
