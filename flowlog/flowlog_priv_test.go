package flowlog

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ct "github.com/florianl/go-conntrack"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/netlab"
	"github.com/arkgw/arkgw/nsdo"
)

// flowWorld is the standard world plus two experiment hosts behind the node,
// whose flows the node marks (slot+1, as the gateway does) and masquerades.
func flowWorld(t *testing.T) (*netlab.Lab, *netlab.Internet) {
	return flowWorldAt(t, false)
}

// flowWorldAt is flowWorld; with current, the node is the namespace the
// test process runs in (inside netlab.InOwnNetNS's child).
func flowWorldAt(t *testing.T, current bool) (*netlab.Lab, *netlab.Internet) {
	t.Helper()
	topo := netlab.WorldTopology()
	topo.Hosts[0].Current = current
	for i := 1; i <= 2; i++ {
		name := fmt.Sprintf("exp%d", i)
		topo.Hosts = append(topo.Hosts, netlab.HostSpec{Name: name, Routes: []netlab.RouteSpec{{Dst: "default", Via: fmt.Sprintf("10.250.0.%d", 4*i-3)}}})
		topo.Links = append(topo.Links, netlab.LinkSpec{
			A: "node", AIf: fmt.Sprintf("arkf%d", i), AAddrs: []string{fmt.Sprintf("10.250.0.%d/30", 4*i-3)},
			B: name, BIf: "eth0", BAddrs: []string{fmt.Sprintf("10.250.0.%d/30", 4*i-2)},
		})
	}
	l := netlab.Build(t, topo)
	in, err := netlab.StartInternet(l.Host("inet"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close() })
	rules := `table inet flowtest {
  chain pre {
    type filter hook prerouting priority 0;
    iifname "arkf1" ct mark set 1
    iifname "arkf2" ct mark set 2
  }
  chain post {
    type nat hook postrouting priority 100;
    oifname "eth0" masquerade
  }
}
`
	cmd := l.Host("node").Command(context.Background(), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	return l, in
}

func attribute(mark uint32, _ netip.Addr) (string, bool) {
	switch mark {
	case 1:
		return "e1", true
	case 2:
		return "e2", true
	}
	return "", false
}

func startRecorder(t *testing.T, l *netlab.Lab, dir string) (*Recorder, *Store, func()) {
	return startRecorderIn(t, l.Host("node").NS(), dir)
}

func startRecorderIn(t *testing.T, ns nsdo.NS, dir string) (*Recorder, *Store, func()) {
	t.Helper()
	s, err := OpenStore(dir, 30)
	if err != nil {
		t.Fatal(err)
	}
	r := NewRecorder(Config{NS: ns, Store: s, Attribute: attribute, FlushEvery: 50 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	// Subscribed once the accounting sysctl is on and the socket joined.
	time.Sleep(200 * time.Millisecond)
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("recorder: %v", err)
		}
		s.Close()
	}
	return r, s, stop
}

// flushConntrack ends every tracked flow in the node, as the gateway does
// when an experiment stops: each becomes a DESTROY event.
func flushConntrack(t *testing.T, l *netlab.Lab) {
	t.Helper()
	nfct, err := ct.Open(&ct.Config{NetNS: l.Host("node").NS().NetlinkNetNS()})
	if err != nil {
		t.Fatal(err)
	}
	defer nfct.Close()
	for _, fam := range []ct.Family{ct.IPv4, ct.IPv6} {
		if err := nfct.Flush(ct.Conntrack, fam); err != nil {
			t.Fatal(err)
		}
	}
}

func httpGet(t *testing.T, h *netlab.Host, url string) (local netip.AddrPort, n int64) {
	t.Helper()
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := h.Dial(ctx, network, addr)
		if err == nil {
			local = c.LocalAddr().(*net.TCPAddr).AddrPort()
		}
		return c, err
	}, DisableKeepAlives: true}
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		t.Fatalf("GET %s from %s: %v", url, h.Name, err)
	}
	n, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return local, n
}

func waitFlows(t *testing.T, s *Store, q Query, n int) []Flow {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, err := s.Find(q)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The recorder and its live dump work in the namespace they are given,
// including the current one: a node's daemon runs in the node's namespace
// with no handle (on main, runner passed netns.None() and go-conntrack
// failed with "setns: bad file descriptor" every 100 ms).
func TestPrivilegedRecorderNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds network namespaces and reads conntrack")
	}
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
			l, _ := flowWorldAt(t, tc.current)
			ns := l.Host("node").NS()
			if tc.current {
				ns = nsdo.Current()
			}
			r, s, stop := startRecorderIn(t, ns, t.TempDir())
			defer stop()

			c, err := l.Host("exp1").Dial(context.Background(), "tcp", netlab.Echo4+":7")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write([]byte("hello"))
			io.ReadFull(c, make([]byte, 5))
			local := c.LocalAddr().(*net.TCPAddr).AddrPort()
			dst := netip.MustParsePrefix(netlab.Echo4 + "/32")

			open, err := r.Open(Query{Dst: dst, Port: 7})
			if err != nil {
				t.Fatalf("live dump: %v", err)
			}
			if len(open) != 1 || open[0].Experiment != "e1" || open[0].Src != local.Addr() || open[0].SPort != local.Port() {
				t.Fatalf("live dump of flows to %s:7 = %+v, want the open connection from e1 %v", netlab.Echo4, open, local)
			}
			c.Close()
			flushConntrack(t, l)
			got := waitFlows(t, s, Query{Dst: dst, Port: 7}, 1)
			if len(got) != 1 || got[0].Experiment != "e1" || got[0].SPort != local.Port() || got[0].BytesOut == 0 {
				t.Fatalf("recorded flows to %s:7 = %+v, want the closed connection from e1", netlab.Echo4, got)
			}
			if st := r.Stats(); st.Resubscribes != 0 || st.Lost != 0 {
				t.Errorf("recorder stats %+v: the event stream failed", st)
			}
		})
	}
}

func TestPrivilegedWhoSentThis(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds network namespaces and reads conntrack")
	}
	l, in := flowWorld(t)
	_, s, stop := startRecorder(t, l, t.TempDir())
	defer stop()

	_, n1 := httpGet(t, l.Host("exp1"), "http://"+netlab.WWW4+"/bytes?n=200000")
	_, n2 := httpGet(t, l.Host("exp2"), "http://"+netlab.WWW4+"/bytes?n=50000")
	// What the far end saw: both came from the node's public address.
	var public []netip.AddrPort
	for _, r := range in.Log() {
		if r.Service == "http" {
			public = append(public, r.Src)
		}
	}
	if len(public) != 2 || public[0].Addr().String() != netlab.NodeUplink4 {
		t.Fatalf("far end saw %v, want two connections from %s (masquerade)", public, netlab.NodeUplink4)
	}
	flushConntrack(t, l)
	dst := netip.MustParsePrefix(netlab.WWW4 + "/32")
	all := waitFlows(t, s, Query{Dst: dst, Port: 80}, 2)
	if len(all) != 2 {
		t.Fatalf("recorded %d flows to %s:80, want 2: %+v", len(all), netlab.WWW4, all)
	}
	// The complaint: "public source S:P talked to WWW4:80 at time T".
	for i, want := range []struct {
		id string
		n  int64
	}{{"e1", n1}, {"e2", n2}} {
		q := Query{Dst: dst, Port: 80, Src: public[i].Addr(), SPort: public[i].Port(), At: time.Now().Add(-500 * time.Millisecond)}
		q.At = time.Time{} // flows were short; match on the 5-tuple
		got, _ := s.Find(q)
		if len(got) != 1 || got[0].Experiment != want.id {
			t.Fatalf("who sent %v -> %s:80? got %+v, want exactly %s", public[i], netlab.WWW4, got, want.id)
		}
		f := got[0]
		// Bytes in: the body plus HTTP, TCP and IP headers (< 10% + 4 kB).
		if int64(f.BytesIn) < want.n || int64(f.BytesIn) > want.n+want.n/10+4096 {
			t.Errorf("%s: bytes in %d, body was %d", want.id, f.BytesIn, want.n)
		}
		if f.NATSrc.String() != netlab.NodeUplink4 || !strings.HasPrefix(f.Src.String(), "10.250.0.") {
			t.Errorf("%s: inside %v public %v", want.id, f.Src, f.NATSrc)
		}
		if f.Start.IsZero() || f.End.Before(f.Start) {
			t.Errorf("%s: start %v end %v", want.id, f.Start, f.End)
		}
	}
}

func TestPrivilegedFlowOpenAcrossRestart(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds network namespaces and reads conntrack")
	}
	l, _ := flowWorld(t)
	dir := t.TempDir()
	_, s1, stop1 := startRecorder(t, l, dir)
	httpGet(t, l.Host("exp1"), "http://"+netlab.WWW4+"/")
	flushConntrack(t, l)
	if got := waitFlows(t, s1, Query{}, 1); len(got) != 1 {
		t.Fatalf("before restart: %d flows", len(got))
	}
	// A connection opens while the first recorder runs...
	c, err := l.Host("exp1").Dial(context.Background(), "tcp", netlab.Echo4+":7")
	if err != nil {
		t.Fatal(err)
	}
	opened := time.Now()
	c.Write([]byte("hello"))
	buf := make([]byte, 5)
	io.ReadFull(c, buf)
	stop1() // the daemon "crashes"

	_, s2, stop2 := startRecorder(t, l, dir)
	defer stop2()
	c.Close()
	time.Sleep(100 * time.Millisecond)
	flushConntrack(t, l)
	got := waitFlows(t, s2, Query{}, 2)
	if len(got) != 2 {
		t.Fatalf("after restart: %d flows, want the old one and the one open across the restart", len(got))
	}
	f := got[1]
	if f.DPort != 7 || f.Experiment != "e1" || f.Start.After(opened.Add(time.Second)) || f.BytesOut == 0 {
		t.Fatalf("flow open across restart recorded as %+v (opened %v)", f, opened)
	}
}

func TestPrivilegedManyShortFlows(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds network namespaces and writes conntrack")
	}
	l, _ := flowWorld(t)
	r, s, stop := startRecorder(t, l, t.TempDir())
	defer stop()
	const n = 50000
	injectFlows(t, l, n)
	var m0 runtime.MemStats
	runtime.ReadMemStats(&m0)
	flushConntrack(t, l)
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := r.Stats()
		if st.Recorded+st.Lost >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	st := r.Stats()
	var m1 runtime.MemStats
	runtime.ReadMemStats(&m1)
	t.Logf("recorded %d, lost %d, resubscribes %d, heap %d MB", st.Recorded, st.Lost, st.Resubscribes, m1.HeapInuse>>20)
	if st.Recorded != n && st.Lost == 0 {
		t.Fatalf("recorded %d of %d flows and reported no loss", st.Recorded, n)
	}
	if st.Recorded < n/2 {
		t.Fatalf("recorded only %d of %d", st.Recorded, n)
	}
	if got, _ := s.Find(Query{Experiment: "e2", Limit: 100000}); len(got) != int(st.Recorded) {
		t.Fatalf("store holds %d flows, recorder says %d", len(got), st.Recorded)
	}
	if m1.HeapInuse > 512<<20 {
		t.Fatalf("heap %d MB after 50,000 flows", m1.HeapInuse>>20)
	}
}

// injectFlows creates n marked UDP conntrack entries in the node.
func injectFlows(t testing.TB, l *netlab.Lab, n int) {
	t.Helper()
	nfct, err := ct.Open(&ct.Config{NetNS: l.Host("node").NS().NetlinkNetNS()})
	if err != nil {
		t.Fatal(err)
	}
	defer nfct.Close()
	src := net.ParseIP("10.250.0.6").To4()
	natsrc := net.ParseIP(netlab.NodeUplink4).To4()
	udp := uint8(17)
	timeout := uint32(600)
	mark := uint32(2)
	for i := 0; i < n; i++ {
		dst := net.IPv4(198, 51, 100, byte(1+i%250)).To4()
		sport, dport := uint16(1024+i/250), uint16(33434+i%100)
		c := ct.Con{
			Origin:  &ct.IPTuple{Src: &src, Dst: &dst, Proto: &ct.ProtoTuple{Number: &udp, SrcPort: &sport, DstPort: &dport}},
			Reply:   &ct.IPTuple{Src: &dst, Dst: &natsrc, Proto: &ct.ProtoTuple{Number: &udp, SrcPort: &dport, DstPort: &sport}},
			Timeout: &timeout, Mark: &mark,
		}
		if err := nfct.Create(ct.Conntrack, ct.IPv4, c); err != nil {
			t.Fatalf("create flow %d: %v", i, err)
		}
	}
}

// A recorder that cannot subscribe retries with backoff, not every 100 ms,
// and raises one alert for it, with the count at the end (on main: an
// overrun alert every 100 ms, 460-560 a minute).
func TestPrivilegedRecorderFaultBackoff(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds a network namespace")
	}
	l := netlab.Build(t, netlab.Topology{Hosts: []netlab.HostSpec{{Name: "node"}}})
	s, err := OpenStore(t.TempDir(), 30)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var mu sync.Mutex
	var recs []alert.Record
	sink := alert.SinkFunc(func(r alert.Record) { mu.Lock(); recs = append(recs, r); mu.Unlock() })
	r := NewRecorder(Config{NS: l.Host("node").NS(), Store: s, Attribute: attribute, Alerts: sink, Node: "n1"})
	var calls atomic.Int64
	r.subscribeHook = func(context.Context) error {
		calls.Add(1)
		return fmt.Errorf("%w: open conntrack netlink: setns: bad file descriptor", errSubscribe)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := r.Run(ctx); err != nil {
		t.Fatal(err)
	}
	// 100+200+400+800 ms: 5 attempts in 2 s (20 at a fixed 100 ms).
	if n := calls.Load(); n < 4 || n > 6 {
		t.Errorf("%d subscribe attempts in 2 s, want 4-6 (exponential backoff)", n)
	}
	mu.Lock()
	defer mu.Unlock()
	var total uint64
	for _, a := range recs {
		if a.Kind != alert.KindFault || a.Rule != "flowlog" || !strings.Contains(a.Message, "bad file descriptor") {
			t.Errorf("alert %+v", a)
		}
		total += a.Occurrences
	}
	// One at once, the rest summed when the recorder stopped.
	if len(recs) != 2 || recs[0].Occurrences != 1 || total != uint64(calls.Load()) {
		t.Errorf("alerts %+v for %d failures, want the first and one summary", recs, calls.Load())
	}
	if st := r.Stats(); st.Resubscribes != uint64(calls.Load()) || st.Lost != 0 {
		t.Errorf("stats %+v", st)
	}
}
