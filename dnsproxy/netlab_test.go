package dnsproxy

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/netlab"
	"github.com/arkgw/arkgw/nsdo"
)

// Experiment link addresses, as the gateway assigns slot 0.
const (
	expGW4   = "10.250.0.1"
	expAddr4 = "10.250.0.2"
	expGW6   = "fd00:a4c::1"
	expAddr6 = "fd00:a4c::2"
)

// expWorld is netlab's standard world plus a plain experiment host "exp"
// linked to the node, standing in for what the gateway will build.
type expWorld struct {
	lab             *netlab.Lab
	node, inet, exp *netlab.Host
	nodeNS          nsdo.NS // what the proxy is given: node.NS() or Current()
	internet        *netlab.Internet
}

func newExpWorld(t *testing.T) *expWorld {
	return newExpWorldAt(t, false)
}

func skipUnprivileged(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 || os.Getenv("ARKGW_UNPRIVILEGED") != "" {
		t.Skip("needs root: builds network namespaces with netlab")
	}
}

// newExpWorldAt is newExpWorld; with current, the node is the namespace the
// test process runs in (inside netlab.InOwnNetNS's child) and the proxy is
// given nsdo.Current().
func newExpWorldAt(t *testing.T, current bool) *expWorld {
	t.Helper()
	skipUnprivileged(t)
	topo := netlab.WorldTopology()
	topo.Hosts[0].Current = current
	topo.Hosts = append(topo.Hosts, netlab.HostSpec{Name: "exp", Routes: []netlab.RouteSpec{
		{Dst: "default", Via: expGW4}, {Dst: "default6", Via: expGW6},
	}})
	topo.Links = append(topo.Links, netlab.LinkSpec{
		A: "node", AIf: "arkexp", AAddrs: []string{expGW4 + "/30", expGW6 + "/64"},
		B: "exp", BIf: "eth0", BAddrs: []string{expAddr4 + "/30", expAddr6 + "/64"},
	})
	lab := netlab.Build(t, topo)
	w := &expWorld{lab: lab, node: lab.Host("node"), inet: lab.Host("inet"), exp: lab.Host("exp"), nodeNS: lab.Host("node").NS()}
	if current {
		w.nodeNS = nsdo.Current()
	}
	in, err := netlab.StartInternet(w.inet)
	if err != nil {
		t.Fatalf("start fake internet: %v", err)
	}
	t.Cleanup(func() { in.Close() })
	w.internet = in
	return w
}

// startNodeProxy runs a proxy in the node namespace on the experiment's
// gateway addresses (port 53) forwarding to the fake Internet's server.
func (w *expWorld) startNodeProxy(t *testing.T, cfg Config) *Proxy {
	t.Helper()
	cfg.Upstreams = []string{netlab.DNS4, netlab.DNS6}
	return w.startNodeProxyOn(t, 53, cfg)
}

func (w *expWorld) startNodeProxyOn(t *testing.T, port int, cfg Config) *Proxy {
	t.Helper()
	cfg.Experiment = "lab1"
	cfg.NS = w.nodeNS
	cfg.Listen = []string{fmt.Sprintf("%s:%d", expGW4, port), fmt.Sprintf("[%s]:%d", expGW6, port)}
	if cfg.Upstreams == nil {
		cfg.Upstreams = []string{benchUpstream}
	}
	cfg.Clients = []netip.Prefix{netip.MustParsePrefix(expAddr4 + "/32"), netip.MustParsePrefix(expAddr6 + "/128")}
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
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("proxy did not stop")
		}
	})
	return p
}

// expQuery sends one query from inside the experiment namespace.
func (w *expWorld) expQuery(t *testing.T, network, server, name string, qtype uint16, edns int) *dns.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := w.exp.Dial(ctx, network, server)
	if err != nil {
		t.Fatalf("dial %s %s from exp: %v", network, server, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	if edns > 0 {
		m.SetEdns0(uint16(edns), false)
	}
	dc := &dns.Conn{Conn: c, UDPSize: 65535}
	if err := dc.WriteMsg(m); err != nil {
		t.Fatalf("send %s: %v", name, err)
	}
	r, err := dc.ReadMsg()
	if err != nil {
		t.Fatalf("%s %s over %s to %s: %v", name, dns.Type(qtype), network, server, err)
	}
	if r.Id != m.Id {
		t.Fatalf("answer id mismatch")
	}
	return r
}

// The proxy listens and forwards in the namespace it is given, including
// the current one (a node's daemon runs in the node's namespace, no handle).
func TestPrivilegedProxyNamespace(t *testing.T) {
	skipUnprivileged(t)
	for _, tc := range []struct {
		name    string
		current bool
	}{
		{"opened handle", false},
		{"current namespace", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.current && !netlab.InOwnNetNS(t) {
				return
			}
			w := newExpWorldAt(t, tc.current)
			w.startNodeProxy(t, Config{Names: []string{netlab.Zone}})
			for _, srv := range []string{expGW4 + ":53", "[" + expGW6 + "]:53"} {
				for _, network := range []string{"udp", "tcp"} {
					r := w.expQuery(t, network, srv, "www.arkgw.test.", dns.TypeA, 1232)
					if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != netlab.WWW4 {
						t.Fatalf("%s %s www.arkgw.test A: %v", network, srv, r)
					}
				}
				if r := w.expQuery(t, "udp", srv, "www.denied.test.", dns.TypeA, 1232); r.Rcode != dns.RcodeRefused {
					t.Errorf("denied name over %s: rcode %s", srv, dns.RcodeToString[r.Rcode])
				}
			}
			// Forwarded from the node to the fake Internet's server.
			if !w.internet.Seen(func(r netlab.Record) bool { return r.Service == "dns" && strings.Contains(r.Detail, "www.arkgw.test") }) {
				t.Errorf("the authoritative server never saw the query: %v", w.internet.Log())
			}
		})
	}
}

func TestPrivilegedResolveThroughGateway(t *testing.T) {
	w := newExpWorld(t)
	al := &alertLog{}
	p := w.startNodeProxy(t, Config{Names: []string{netlab.Zone}, Alerts: al})
	srv4 := expGW4 + ":53"
	srv6 := "[" + expGW6 + "]:53"

	for _, srv := range []string{srv4, srv6} {
		for _, network := range []string{"udp", "tcp"} {
			r := w.expQuery(t, network, srv, "www.arkgw.test.", dns.TypeA, 1232)
			if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != netlab.WWW4 {
				t.Fatalf("%s %s A: %v", network, srv, r)
			}
			r = w.expQuery(t, network, srv, "WWW.arkgw.test.", dns.TypeAAAA, 0)
			if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.AAAA).AAAA.String() != netlab.WWW6 {
				t.Fatalf("%s %s AAAA: %v", network, srv, r)
			}
		}
	}
	// The listed domain itself.
	r := w.expQuery(t, "udp", srv4, "arkgw.test.", dns.TypeTXT, 1232)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
		t.Fatalf("arkgw.test TXT: %v", r)
	}
	// A CNAME chain inside the allowlist is answered whole.
	r = w.expQuery(t, "udp", srv4, "a.arkgw.test.", dns.TypeA, 1232)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 3 {
		t.Errorf("a -> b -> www: %v", r)
	}
	// A CNAME out of the allowlist is refused like the name it leads to
	// (README: decisions), with no address of it.
	for _, network := range []string{"udp", "tcp"} {
		r = w.expQuery(t, network, srv4, "alias-out.arkgw.test.", dns.TypeA, 1232)
		if r.Rcode != dns.RcodeRefused || len(r.Answer) != 0 || len(r.Extra) != 1 {
			t.Errorf("alias-out over %s: %v", network, r)
		}
	}

	// Denied: REFUSED, an alert, and the authoritative server never asked.
	for _, srv := range []string{srv4, srv6} {
		r = w.expQuery(t, "udp", srv, "www.denied.test.", dns.TypeA, 1232)
		if r.Rcode != dns.RcodeRefused {
			t.Errorf("denied over %s: rcode %s", srv, dns.RcodeToString[r.Rcode])
		}
	}
	r = w.expQuery(t, "tcp", srv4, "arkgw.test.denied.test.", dns.TypeAAAA, 0)
	if r.Rcode != dns.RcodeRefused {
		t.Errorf("denied over tcp: rcode %s", dns.RcodeToString[r.Rcode])
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(al.records()) < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	recs := al.records()
	if len(recs) != 2 { // the second www.denied.test A is a repeat within AlertInterval
		t.Fatalf("alerts: %+v", recs)
	}
	// The first is the CNAME's: it names the denied target and the alias.
	if a := recs[0]; a.Kind != alert.KindDNS || a.Experiment != "lab1" || a.Name != "www.denied.test." || a.QType != "A" || !strings.Contains(a.Message, "alias-out.arkgw.test") {
		t.Errorf("alert %+v", a)
	}
	if w.internet.Seen(func(r netlab.Record) bool { return strings.Contains(r.Detail, "denied.test") }) {
		t.Errorf("the authoritative server was asked about a denied name: %v", w.internet.Log())
	}

	// Upstream sockets reused: 12 forwarded UDP queries, at most udpSockets
	// source ports per upstream address.
	ports := map[string]bool{}
	for _, rec := range w.internet.Log() {
		if rec.Service == "dns" && rec.Proto == "udp" {
			ports[rec.Src.String()] = true
		}
	}
	if len(ports) > 2*udpSockets {
		t.Errorf("%d upstream UDP sources: sockets not reused", len(ports))
	}
	s := p.Stats()
	if s.Refused != 5 || s.Allowed < 12 {
		t.Errorf("stats %+v", s)
	}
}

func TestPrivilegedTruncatedThenTCP(t *testing.T) {
	w := newExpWorld(t)
	p := w.startNodeProxy(t, Config{Names: []string{netlab.Zone}})
	srv := expGW4 + ":53"
	r := w.expQuery(t, "udp", srv, netlab.BigName, dns.TypeTXT, 1232)
	if !r.Truncated {
		t.Fatalf("big TXT over UDP not truncated: %d answers", len(r.Answer))
	}
	r = w.expQuery(t, "tcp", srv, netlab.BigName, dns.TypeTXT, 1232)
	if r.Truncated || len(r.Answer) != 1 {
		t.Fatalf("big TXT over TCP: tc=%v %d answers", r.Truncated, len(r.Answer))
	}
	if n := len(strings.Join(r.Answer[0].(*dns.TXT).Txt, "")); n != netlab.BigTXTSize {
		t.Errorf("TXT payload %d bytes, want %d", n, netlab.BigTXTSize)
	}
	if p.Stats().TCPFallbacks == 0 {
		t.Errorf("the proxy did not retry upstream over TCP: %+v", p.Stats())
	}
	if !w.internet.Seen(func(r netlab.Record) bool { return r.Proto == "tcp" && r.Detail == netlab.BigName+" TXT" }) {
		t.Errorf("no TCP query upstream: %v", w.internet.Log())
	}
}

func TestPrivilegedPipelinedTCP(t *testing.T) {
	w := newExpWorld(t)
	w.startNodeProxy(t, Config{Names: []string{netlab.Zone}, CacheSize: -1})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := w.exp.Dial(ctx, "tcp", expGW4+":53")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	dc := &dns.Conn{Conn: c}
	type q struct {
		name  string
		qtype uint16
		rcode int
	}
	var qs []q
	for i := 0; i < 30; i++ {
		switch i % 3 {
		case 0:
			qs = append(qs, q{"www.arkgw.test.", dns.TypeA, dns.RcodeSuccess})
		case 1:
			qs = append(qs, q{netlab.BigName, dns.TypeTXT, dns.RcodeSuccess})
		case 2:
			qs = append(qs, q{fmt.Sprintf("n%d.denied.test.", i), dns.TypeA, dns.RcodeRefused})
		}
	}
	// Write every query before reading any answer.
	for i, x := range qs {
		m := new(dns.Msg)
		m.SetQuestion(x.name, x.qtype)
		m.Id = uint16(1000 + i)
		if err := dc.WriteMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[uint16]bool{}
	for range qs {
		r, err := dc.ReadMsg()
		if err != nil {
			t.Fatalf("after %d answers: %v", len(seen), err)
		}
		i := int(r.Id) - 1000
		if i < 0 || i >= len(qs) || seen[r.Id] {
			t.Fatalf("unexpected answer id %d", r.Id)
		}
		seen[r.Id] = true
		if r.Question[0].Name != qs[i].name || r.Rcode != qs[i].rcode {
			t.Errorf("answer %d: %v", i, r)
		}
		if qs[i].qtype == dns.TypeTXT && (r.Truncated || len(r.Answer) != 1) {
			t.Errorf("big TXT over pipelined TCP truncated")
		}
	}
	// Upstream TCP connections were reused: the 10 big answers came over at
	// most tcpConns connections per upstream address.
	srcs := map[netip.AddrPort]bool{}
	for _, rec := range w.internet.Log() {
		if rec.Service == "dns" && rec.Proto == "tcp" {
			srcs[rec.Src] = true
		}
	}
	if len(srcs) == 0 || len(srcs) > 2*tcpConns {
		t.Errorf("%d upstream TCP connections for 10 truncated answers", len(srcs))
	}
}

// Every query type goes through: the answers are the authoritative server's.
func TestPrivilegedQueryTypes(t *testing.T) {
	w := newExpWorld(t)
	p := w.startNodeProxy(t, Config{Names: []string{netlab.Zone, "in-addr.arpa.", "ip6.arpa."}})
	rev4, _ := dns.ReverseAddr(netlab.WWW4)
	rev6, _ := dns.ReverseAddr(netlab.WWW6)
	tests := []struct {
		name    string
		qtype   uint16
		rcode   int
		answers int    // at least
		want    string // substring of the answer section
	}{
		{"arkgw.test.", dns.TypeMX, dns.RcodeSuccess, 1, "mail.arkgw.test."},
		{"arkgw.test.", dns.TypeNS, dns.RcodeSuccess, 1, "ns.arkgw.test."},
		{"arkgw.test.", dns.TypeSOA, dns.RcodeSuccess, 1, "hostmaster.arkgw.test."},
		{"_http._tcp.arkgw.test.", dns.TypeSRV, dns.RcodeSuccess, 1, "www.arkgw.test."},
		{"txt.arkgw.test.", dns.TypeTXT, dns.RcodeSuccess, 1, "hello from netlab"},
		{"a.arkgw.test.", dns.TypeA, dns.RcodeSuccess, 3, netlab.WWW4}, // CNAME chain a -> b -> www
		{"x.wild.arkgw.test.", dns.TypeA, dns.RcodeSuccess, 1, netlab.Wildcard4},
		{"many.arkgw.test.", dns.TypeA, dns.RcodeSuccess, 16, ""},
		{rev4, dns.TypePTR, dns.RcodeSuccess, 1, "www.arkgw.test."},
		{rev6, dns.TypePTR, dns.RcodeSuccess, 1, "www.arkgw.test."},
		{"nothing.arkgw.test.", dns.TypeA, dns.RcodeNameError, 0, ""},
		{"v4only.arkgw.test.", dns.TypeAAAA, dns.RcodeSuccess, 0, ""}, // NODATA
		{"www.arkgw.test.", dns.TypeANY, -1, 0, ""},                   // forwarded; the answer is the server's
		{"alias-in.denied.test.", dns.TypeA, dns.RcodeRefused, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name+"/"+dns.TypeToString[tt.qtype], func(t *testing.T) {
			for _, network := range []string{"udp", "tcp"} {
				r := w.expQuery(t, network, expGW4+":53", tt.name, tt.qtype, 1232)
				if tt.rcode >= 0 && r.Rcode != tt.rcode {
					t.Fatalf("%s: rcode %s, want %s", network, dns.RcodeToString[r.Rcode], dns.RcodeToString[tt.rcode])
				}
				if len(r.Answer) < tt.answers {
					t.Fatalf("%s: %d answers, want >= %d: %v", network, len(r.Answer), tt.answers, r)
				}
				var s strings.Builder
				for _, rr := range r.Answer {
					s.WriteString(rr.String() + "\n")
				}
				if !strings.Contains(s.String(), tt.want) {
					t.Errorf("%s: answer lacks %q:\n%s", network, tt.want, s.String())
				}
			}
		})
	}
	if w.internet.Seen(func(r netlab.Record) bool { return strings.Contains(r.Detail, "denied.test") }) {
		t.Errorf("the authoritative server was asked about a denied name")
	}
	if s := p.Stats(); s.UpstreamFailures != 0 || s.Mismatched != 0 {
		t.Errorf("stats %+v", s)
	}
}
