package nflog

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/netlab"
	"github.com/arkgw/arkgw/nsdo"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

const (
	expAddr   = "10.250.0.2"
	nodeAddr  = "10.250.0.1"
	dstAddr   = "198.51.100.9"
	expAddr6  = "fd00:a4c::2"
	nodeAddr6 = "fd00:a4c::1"
	dstAddr6  = "2001:db8:100::9"
	spoofSrc  = "192.0.2.66"
	tcpPort   = 25    // forbidden TCP port
	udpPort   = 9999  // forbidden UDP port
	floodLo   = 20000 // forbidden UDP ports floodLo..floodHi
	floodHi   = 20999
	icmpType  = 13 // timestamp request: forbidden
	// e2Port: TCP to it is logged as another experiment's drop ("e2"), as
	// drops of every experiment reach the one NFLOG group.
	e2Port = 26
)

// capSink captures records for assertions.
type capSink struct {
	mu   sync.Mutex
	recs []alert.Record
}

func (c *capSink) Emit(r alert.Record) {
	c.mu.Lock()
	c.recs = append(c.recs, r)
	c.mu.Unlock()
}

func (c *capSink) all() []alert.Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]alert.Record(nil), c.recs...)
}

func (c *capSink) wait(t *testing.T, what string, timeout time.Duration, cond func(alert.Record) bool) alert.Record {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, r := range c.all() {
			if cond(r) {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no alert for %s within %s; got %d records: %+v", what, timeout, len(c.all()), c.all())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type testLab struct {
	node, exp *netlab.Host
	nodeNS    nsdo.NS // what the alerter is given: node.NS() or Current()
	group     uint16
	table     *nftables.Table
}

func requireRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, nftables rules and binds NFLOG")
	}
}

// newLab builds node + exp (and the world's inet) and installs in the node a
// table that logs to a random NFLOG group and drops, counting into the
// named counter "drops": TCP to port 25, UDP to 9999 and 20000-20999, ICMP
// type 13, and any source other than the experiment's address.
func newLab(t *testing.T) *testLab {
	return newLabAt(t, false)
}

// newLabAt is newLab; with current, the node is the namespace the test
// process runs in (inside netlab.InOwnNetNS's child) and the alerter is
// given nsdo.Current().
func newLabAt(t *testing.T, current bool) *testLab {
	requireRoot(t)
	topo := netlab.WorldTopology()
	topo.Hosts[0].Current = current
	topo.Hosts = append(topo.Hosts, netlab.HostSpec{Name: "exp", Routes: []netlab.RouteSpec{
		{Dst: "default", Via: nodeAddr}, {Dst: "default6", Via: nodeAddr6}}})
	topo.Links = append(topo.Links, netlab.LinkSpec{A: "node", B: "exp", AIf: "ark-e1", BIf: "eth0",
		AAddrs: []string{nodeAddr + "/30", nodeAddr6 + "/64"}, BAddrs: []string{expAddr + "/30", expAddr6 + "/64"}})
	l := netlab.Build(t, topo)
	tl := &testLab{node: l.Host("node"), exp: l.Host("exp"), nodeNS: l.Host("node").NS(), group: uint16(1000 + rand.IntN(60000))}
	if current {
		tl.nodeNS = nsdo.Current()
	}
	for _, k := range []string{"net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter", "net.ipv4.conf.ark-e1.rp_filter"} {
		if err := tl.node.SetSysctl(k, "0"); err != nil {
			t.Fatalf("sysctl %s: %v", k, err)
		}
	}
	tl.installRules(t)
	return tl
}

func (tl *testLab) conn(t *testing.T) *nftables.Conn {
	c, err := nftables.New(tl.node.NS().NFTOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (tl *testLab) installRules(t *testing.T) {
	c := tl.conn(t)
	tl.table = c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: fmt.Sprintf("nflogtest%d", rand.IntN(1e6))})
	c.AddObj(&nftables.CounterObj{Table: tl.table, Name: "drops"})
	pol := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{Name: "fwd", Table: tl.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &pol})
	l4 := func(p byte) []expr.Any {
		return []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}}}
	}
	dport := func(lo, hi uint16) []expr.Any {
		b := func(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
		return []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpGte, Register: 1, Data: b(lo)}, &expr.Cmp{Op: expr.CmpOpLte, Register: 1, Data: b(hi)}}
	}
	dropAs := func(exp, rule string) []expr.Any {
		return []expr.Any{
			&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX, Group: tl.group, Data: []byte(alert.LogPrefix(exp, rule))},
			&expr.Objref{Type: 1, Name: "drops"},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}
	}
	drop := func(rule string) []expr.Any { return dropAs("e1", rule) }
	cat := func(parts ...[]expr.Any) []expr.Any {
		var out []expr.Any
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	ipv4Only := []expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}}}
	spoof := cat(ipv4Only, []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: netip.MustParseAddr(expAddr).AsSlice()},
	}, drop("spoof"))
	for _, e := range [][]expr.Any{
		spoof,
		cat(l4(unix.IPPROTO_TCP), dport(tcpPort, tcpPort), drop("tcp-dst")),
		cat(l4(unix.IPPROTO_TCP), dport(e2Port, e2Port), dropAs("e2", "tcp-dst")),
		cat(l4(unix.IPPROTO_UDP), dport(udpPort, udpPort), drop("udp-dst")),
		cat(l4(unix.IPPROTO_UDP), dport(floodLo, floodHi), drop("udp-dst")),
		cat(l4(unix.IPPROTO_ICMP), []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{icmpType}}}, drop("icmp")),
	} {
		c.AddRule(&nftables.Rule{Table: tl.table, Chain: ch, Exprs: e})
	}
	if err := c.Flush(); err != nil {
		t.Fatalf("install test nftables table: %v", err)
	}
	t.Cleanup(func() {
		c := tl.conn(t)
		c.DelTable(tl.table)
		c.Flush()
	})
}

func (tl *testLab) drops(t *testing.T) uint64 {
	o, err := tl.conn(t).GetObject(&nftables.CounterObj{Table: tl.table, Name: "drops"})
	if err != nil {
		t.Fatalf("read counter: %v", err)
	}
	return o.(*nftables.CounterObj).Packets
}

type running struct {
	a    *Alerter
	cap  *capSink
	stop func() error
}

func (tl *testLab) start(t *testing.T, cfg Config, extra ...alert.Sink) *running {
	t.Helper()
	c := &capSink{}
	cfg.Group, cfg.NS = tl.group, tl.nodeNS
	cfg.Sink = alert.Tee(append([]alert.Sink{c}, extra...)...)
	if cfg.Node == "" {
		cfg.Node = "testnode"
	}
	if cfg.Lookup == nil {
		cfg.Lookup = func(id string) (string, []string, bool) {
			return "Title of " + id, []string{"Ann <ann@example.org>"}, id == "e1"
		}
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	// Bound when the kernel answers: wait until the instance exists.
	deadline := time.Now().Add(5 * time.Second)
	for !groupBound(tl, tl.group) {
		select {
		case err := <-done:
			cancel()
			t.Fatalf("alerter stopped: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatal("nflog group not bound within 5 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(10 * time.Second):
				runErr = errors.New("alerter did not stop within 10 s")
			}
		})
		return runErr
	}
	t.Cleanup(func() { stop() })
	return &running{a: a, cap: c, stop: stop}
}

// groupBound reads /proc/net/netfilter/nfnetlink_log in the node's netns.
func groupBound(tl *testLab, group uint16) bool {
	var found bool
	tl.node.Do(func() error {
		// /proc/net follows the reading thread's netns.
		b, err := os.ReadFile("/proc/thread-self/net/netfilter/nfnetlink_log")
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) > 0 && f[0] == fmt.Sprint(group) {
				found = true
			}
		}
		return nil
	})
	return found
}

// rawSend sends a hand-built IPv4 packet from the exp netns.
func rawSend(t *testing.T, h *netlab.Host, ls ...gopacket.SerializableLayer) {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	ip := ls[0].(*layers.IPv4)
	err := h.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		var sa unix.SockaddrInet4
		copy(sa.Addr[:], ip.DstIP.To4())
		return unix.Sendto(fd, buf.Bytes(), 0, &sa)
	})
	if err != nil {
		t.Fatalf("raw send: %v", err)
	}
}

// The alerter reads the NFLOG group of the namespace it is given, including
// the current one (a node's daemon runs in the node's namespace, no handle).
func TestPrivilegedAlerterNamespace(t *testing.T) {
	requireRoot(t)
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
			tl := newLabAt(t, tc.current)
			r := tl.start(t, Config{Window: time.Minute})
			if err := tl.exp.Do(func() error {
				c, err := net.Dial("udp4", net.JoinHostPort(dstAddr, fmt.Sprint(udpPort)))
				if err != nil {
					return err
				}
				defer c.Close()
				_, err = c.Write([]byte("forbidden"))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			a := r.cap.wait(t, "udp to a forbidden port", 3*time.Second, func(a alert.Record) bool { return a.Rule == "udp-dst" })
			if a.Experiment != "e1" || a.Proto != "udp" || a.Dst != dstAddr || a.DstPort != udpPort || a.Src != expAddr {
				t.Fatalf("alert %+v, want e1 udp %s -> %s:%d", a, expAddr, dstAddr, udpPort)
			}
			if n := tl.drops(t); n != 1 {
				t.Errorf("drop counter %d, want 1", n)
			}
		})
	}
}

func TestPrivilegedAlerts(t *testing.T) {
	tl := newLab(t)
	file := filepath.Join(t.TempDir(), "alerts.jsonl")
	fs, err := alert.NewFileSink(file, alert.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	r := tl.start(t, Config{
		Window:    time.Minute,
		NetNSPath: func(id string) (string, bool) { return tl.exp.Path(), id == "e1" },
		// Generous on a loaded CI box: the /proc scan usually takes ~10 ms.
		AttributeBudget: time.Second,
	}, fs)

	// TCP SYN to a forbidden port, from a socket the test process holds
	// (attribution must find this process).
	dialDone := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		c, err := tl.exp.Dial(ctx, "tcp4", net.JoinHostPort(dstAddr, fmt.Sprint(tcpPort)))
		if err == nil {
			c.Close()
			err = errors.New("forbidden connection succeeded")
		}
		dialDone <- err
	}()
	t0 := time.Now()
	tcp := r.cap.wait(t, "tcp syn", 2*time.Second, func(a alert.Record) bool { return a.Rule == "tcp-dst" })
	t.Logf("tcp alert after %s: %s", time.Since(t0), alert.FormatLine(tcp))
	want := alert.Record{Node: "testnode", Experiment: "e1", Title: "Title of e1", Kind: alert.KindPacket, Rule: "tcp-dst",
		Proto: "tcp", Src: expAddr, Dst: dstAddr, DstPort: tcpPort, Packets: 1}
	if tcp.Node != want.Node || tcp.Experiment != want.Experiment || tcp.Title != want.Title || len(tcp.Contacts) != 1 ||
		tcp.Kind != want.Kind || tcp.Proto != want.Proto || tcp.Src != want.Src || tcp.Dst != want.Dst ||
		tcp.DstPort != want.DstPort || tcp.SrcPort == 0 || tcp.Packets != 1 || tcp.Bytes < 40 || tcp.Time.IsZero() {
		t.Fatalf("tcp alert %+v\nwant fields of %+v", tcp, want)
	}
	if tcp.PID != os.Getpid() || tcp.Command == "" {
		t.Errorf("tcp alert not attributed to this process (pid %d): pid=%d command=%q", os.Getpid(), tcp.PID, tcp.Command)
	}

	// The same over IPv6 (the rule matches both families).
	dial6Done := make(chan struct{})
	defer func() { <-dial6Done }()
	go func() {
		defer close(dial6Done)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		if c, err := tl.exp.Dial(ctx, "tcp6", net.JoinHostPort(dstAddr6, fmt.Sprint(tcpPort))); err == nil {
			c.Close()
		}
	}()
	t0 = time.Now()
	tcp6 := r.cap.wait(t, "tcp6 syn", 2*time.Second, func(a alert.Record) bool { return a.Rule == "tcp-dst" && a.Dst == dstAddr6 })
	t.Logf("tcp6 alert after %s: %s", time.Since(t0), alert.FormatLine(tcp6))
	if tcp6.Src != expAddr6 || tcp6.Proto != "tcp" || tcp6.DstPort != tcpPort || tcp6.Bytes < 60 || tcp6.PID != os.Getpid() {
		t.Fatalf("tcp6 alert %+v", tcp6)
	}

	// UDP datagram.
	uc, err := tl.exp.Dial(context.Background(), "udp4", net.JoinHostPort(dstAddr, fmt.Sprint(udpPort)))
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	t0 = time.Now()
	uc.Write([]byte("forbidden"))
	udp := r.cap.wait(t, "udp datagram", 2*time.Second, func(a alert.Record) bool { return a.Rule == "udp-dst" })
	t.Logf("udp alert after %s: %s", time.Since(t0), alert.FormatLine(udp))
	if udp.Proto != "udp" || udp.Src != expAddr || udp.Dst != dstAddr || udp.DstPort != udpPort ||
		udp.SrcPort != uc.LocalAddr().(*net.UDPAddr).Port || udp.Bytes != 28+9 || udp.PID != os.Getpid() {
		t.Fatalf("udp alert %+v", udp)
	}

	// ICMP timestamp request (a forbidden type).
	t0 = time.Now()
	rawSend(t, tl.exp, &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolICMPv4,
		SrcIP: net.ParseIP(expAddr), DstIP: net.ParseIP(dstAddr)},
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(icmpType, 0), Id: 1, Seq: 1}, gopacket.Payload(make([]byte, 12)))
	icmp := r.cap.wait(t, "icmp", 2*time.Second, func(a alert.Record) bool { return a.Rule == "icmp" })
	t.Logf("icmp alert after %s: %s", time.Since(t0), alert.FormatLine(icmp))
	if icmp.Proto != "icmp" || icmp.ICMPType == nil || *icmp.ICMPType != icmpType || icmp.ICMPCode == nil || *icmp.ICMPCode != 0 ||
		icmp.Dst != dstAddr || icmp.Src != expAddr || icmp.DstPort != 0 {
		t.Fatalf("icmp alert %+v", icmp)
	}

	// Spoofed source (to an allowed port).
	t0 = time.Now()
	ipl := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: net.ParseIP(spoofSrc), DstIP: net.ParseIP(dstAddr)}
	ul := &layers.UDP{SrcPort: 1234, DstPort: 7}
	ul.SetNetworkLayerForChecksum(ipl)
	rawSend(t, tl.exp, ipl, ul, gopacket.Payload("spoof"))
	sp := r.cap.wait(t, "spoofed packet", 2*time.Second, func(a alert.Record) bool { return a.Rule == "spoof" })
	t.Logf("spoof alert after %s: %s", time.Since(t0), alert.FormatLine(sp))
	if sp.Src != spoofSrc || sp.Dst != dstAddr || sp.Proto != "udp" || sp.DstPort != 7 || sp.SrcPort != 1234 || sp.PID != 0 {
		t.Fatalf("spoof alert %+v", sp)
	}

	// DNS refusals through the alerter's sink join the same stream.
	r.a.Sink().Emit(alert.Record{Time: time.Now(), Experiment: "e1", Kind: alert.KindDNS, Rule: "dns", Name: "evil.test.", QType: "A", Message: "refused"})
	r.cap.wait(t, "dns refusal", 2*time.Second, func(a alert.Record) bool { return a.Kind == alert.KindDNS && a.Title == "Title of e1" })

	if err := <-dialDone; err == nil || strings.Contains(err.Error(), "succeeded") {
		t.Fatalf("tcp dial: %v", err)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if err := fs.Sync(); err != nil {
		t.Fatal(err)
	}
	// Every captured record is in the file, in order.
	var inFile []alert.Record
	alert.ReadFile(file, time.Time{}, func(rec alert.Record, _ []byte) error { inFile = append(inFile, rec); return nil })
	got := r.cap.all()
	if len(inFile) != len(got) {
		t.Fatalf("file has %d records, sink saw %d", len(inFile), len(got))
	}
	for i := range got {
		if inFile[i].Rule != got[i].Rule || inFile[i].Packets != got[i].Packets || inFile[i].Src != got[i].Src {
			t.Fatalf("file record %d = %+v, sink saw %+v", i, inFile[i], got[i])
		}
	}
	// Packets accounted == kernel counter (SYN retransmits included).
	var sum uint64
	for _, rec := range got {
		if rec.Kind == alert.KindPacket || rec.Kind == alert.KindOverrun {
			sum += rec.Packets
		}
	}
	if k := tl.drops(t); sum != k {
		t.Fatalf("alerts account for %d packets, kernel counter says %d dropped", sum, k)
	}
}

func TestPrivilegedGroupTaken(t *testing.T) {
	tl := newLab(t)
	tl.start(t, Config{})
	a, err := New(Config{Group: tl.group, NS: tl.node.NS(), Sink: alert.Discard})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = a.Run(ctx)
	if !errors.Is(err, ErrGroupTaken) || !strings.Contains(err.Error(), fmt.Sprintf("nflog group %d is taken", tl.group)) || !strings.Contains(err.Error(), "nflog_group") {
		t.Fatalf("second reader of the group: %v", err)
	}
}

// floodUDP sends n UDP datagrams from the exp netns to dstAddr, cycling the
// destination port over [lo, hi], in batches (sendmmsg).
func floodUDP(t *testing.T, h *netlab.Host, n, lo, hi int) time.Duration {
	t.Helper()
	pc, err := h.ListenPacket("udp4", expAddr+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	p := ipv4.NewPacketConn(pc)
	const batch = 64
	msgs := make([]ipv4.Message, batch)
	payload := []byte("flood")
	dst := net.ParseIP(dstAddr)
	start := time.Now()
	port := lo
	for sent := 0; sent < n; {
		k := min(batch, n-sent)
		for i := 0; i < k; i++ {
			msgs[i] = ipv4.Message{Buffers: [][]byte{payload}, Addr: &net.UDPAddr{IP: dst, Port: port}}
			port++
			if port > hi {
				port = lo
			}
		}
		w, err := p.WriteBatch(msgs[:k], 0)
		if err != nil {
			if errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EAGAIN) {
				continue
			}
			t.Fatalf("flood send: %v", err)
		}
		sent += w
	}
	return time.Since(start)
}

func TestPrivilegedFlood(t *testing.T) {
	tl := newLab(t)
	file := filepath.Join(t.TempDir(), "alerts.jsonl")
	fs1, err := alert.NewFileSink(file, alert.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	const maxOpen = 200
	r := tl.start(t, Config{Window: 2 * time.Second, MaxOpen: maxOpen}, fs1)
	const n = 100000
	took := floodUDP(t, tl.exp, n, floodLo, floodHi)
	t.Logf("sent %d packets in %s (%.0f pps)", n, took, n/took.Seconds())

	// Wait until the alerter has received what the kernel logged. A probe
	// packet after the flood makes its sequence number reveal losses at
	// the very end of the flood (if the socket overran on a loaded box).
	waitCaughtUp := func() {
		deadline := time.Now().Add(15 * time.Second)
		for {
			st := r.a.Stats()
			if st.Received+st.SeqLost >= tl.drops(t) || time.Now().After(deadline) {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitCaughtUp()
	probe, err := tl.exp.Dial(context.Background(), "udp4", net.JoinHostPort(dstAddr, fmt.Sprint(udpPort)))
	if err != nil {
		t.Fatal(err)
	}
	probe.Write([]byte("probe"))
	probe.Close()
	waitCaughtUp()
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	kernel := tl.drops(t)
	st := r.a.Stats()
	var counted, lost, overflow uint64
	var packetRecs, floods int
	for _, rec := range r.cap.all() {
		switch {
		case rec.Kind == alert.KindFlood:
			floods++
		case rec.Kind == alert.KindPacket:
			counted += rec.Packets
			packetRecs++
		case rec.Kind == alert.KindOverrun && rec.Rule == RuleOverflow:
			overflow += rec.Packets
		case rec.Kind == alert.KindOverrun && rec.Rule == RuleLost:
			lost += rec.Packets
		}
	}
	t.Logf("kernel dropped %d; alerts: %d packets in %d packet records, %d in overflow, %d reported lost; stats %+v; max open aggregates %d",
		kernel, counted, packetRecs, overflow, lost, st, r.a.MaxOpenSeen())
	if kernel < n {
		t.Fatalf("kernel counted only %d of %d drops: flood did not arrive", kernel, n)
	}
	if counted+overflow+lost != kernel {
		t.Fatalf("alerts account for %d+%d packets and report %d lost, kernel counter says %d", counted, overflow, lost, kernel)
	}
	if floods == 0 {
		t.Fatalf("1000 destinations with a cap of %d open aggregates: no flood record", maxOpen)
	}
	// The flood is one kind of violation to one /24: one summary.
	if m := r.a.MaxOpenSeen(); m > maxOpen+2 {
		t.Fatalf("open aggregates reached %d, cap %d (+1 summary, +1 overflow)", m, maxOpen)
	}
	if packetRecs > 4*maxOpen*(int(took/(2*time.Second))+3) {
		t.Fatalf("%d packet records for a flood: not aggregated", packetRecs)
	}

	// "Crash": abandon fs1 once it has written everything, as a killed
	// daemon would; a new daemon appends with a new FileSink.
	deadline := time.Now().Add(10 * time.Second)
	for fs1.Written() < uint64(len(r.cap.all())) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	before := len(r.cap.all())
	fs2, err := alert.NewFileSink(file, alert.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r2 := tl.start(t, Config{Window: time.Minute}, fs2)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var followed []alert.Record
	var fmu sync.Mutex
	go alert.Follow(ctx, file, time.Time{}, func(rec alert.Record, _ []byte) error {
		fmu.Lock()
		followed = append(followed, rec)
		fmu.Unlock()
		return nil
	})
	uc, err := tl.exp.Dial(context.Background(), "udp4", net.JoinHostPort(dstAddr, fmt.Sprint(udpPort)))
	if err != nil {
		t.Fatal(err)
	}
	uc.Write([]byte("after restart"))
	uc.Close()
	r2.cap.wait(t, "udp after restart", 2*time.Second, func(a alert.Record) bool { return a.Rule == "udp-dst" })
	r2.stop()
	fs2.Close()
	want := before + len(r2.cap.all())
	for {
		fmu.Lock()
		n := len(followed)
		fmu.Unlock()
		if n >= want {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("follow saw %d records, want %d (all written before the crash and after the restart)", n, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var inFile int
	alert.ReadFile(file, time.Time{}, func(alert.Record, []byte) error { inFile++; return nil })
	if inFile != want {
		t.Fatalf("file has %d records after restart, want %d", inFile, want)
	}
}

// TestPrivilegedLossIsCounted makes the reader too slow for a flood with a
// small socket buffer: the kernel overruns the socket, and the loss must
// show as ENOBUFS, sequence gaps and a "lost" overrun alert whose count
// closes the books against the kernel counter.
func TestPrivilegedLossIsCounted(t *testing.T) {
	tl := newLab(t)
	c := &capSink{}
	a, err := New(Config{Group: tl.group, NS: tl.node.NS(), Sink: c, ReadBuffer: 64 << 10, MaxOpen: 50})
	if err != nil {
		t.Fatal(err)
	}
	var slow sync.Mutex
	slowOn := true
	a.testHookHandle = func() {
		slow.Lock()
		on := slowOn
		slow.Unlock()
		if on {
			time.Sleep(200 * time.Microsecond)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for deadline := time.Now().Add(5 * time.Second); !groupBound(tl, tl.group); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("group not bound")
		}
	}
	floodUDP(t, tl.exp, 20000, floodLo, floodHi)
	// Let the reader drain, then send one more packet: its sequence number
	// reveals packets lost at the end of the flood.
	for prev := uint64(0); ; time.Sleep(300 * time.Millisecond) {
		n := a.Stats().Received
		if n == prev {
			break
		}
		prev = n
	}
	slow.Lock()
	slowOn = false
	slow.Unlock()
	uc, err := tl.exp.Dial(context.Background(), "udp4", net.JoinHostPort(dstAddr, fmt.Sprint(udpPort)))
	if err != nil {
		t.Fatal(err)
	}
	uc.Write([]byte("probe"))
	uc.Close()
	kernel := tl.drops(t)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		st := a.Stats()
		if st.Received+st.SeqLost >= kernel {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("received %d + lost %d < kernel %d", st.Received, st.SeqLost, kernel)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	done <- nil
	st := a.Stats()
	var counted, lost uint64
	var lostMsg string
	for _, r := range c.all() {
		if r.Kind == alert.KindOverrun && r.Rule == RuleLost {
			lost += r.Packets
			lostMsg = r.Message
		} else if r.Kind == alert.KindPacket || r.Kind == alert.KindOverrun { // summaries are packet records
			counted += r.Packets
		}
	}
	t.Logf("kernel %d, counted %d, reported lost %d, stats %+v; %s", kernel, counted, lost, st, lostMsg)
	if st.NoBufs == 0 || st.SeqLost == 0 || lost == 0 {
		t.Fatalf("no loss detected although the reader was too slow: %+v", st)
	}
	if counted+lost != kernel {
		t.Fatalf("counted %d + lost %d != kernel %d", counted, lost, kernel)
	}
}

// TestPrivilegedFloodDoesNotBlindOthers: e1 floods 1000 forbidden UDP ports
// with real packets, far past its budget of open aggregates. While it
// does, another experiment's drop (e2) and e1's own first TCP violation
// still get their own alerts with every detail, and e1's flood is raised
// as one flood record with the rest summarised.
func TestPrivilegedFloodDoesNotBlindOthers(t *testing.T) {
	tl := newLab(t)
	r := tl.start(t, Config{Window: 30 * time.Second, MaxOpen: 50})
	floodUDP(t, tl.exp, 20000, floodLo, floodHi)
	syn := func(port int) {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		if c, err := tl.exp.Dial(ctx, "tcp4", net.JoinHostPort(dstAddr, fmt.Sprint(port))); err == nil {
			c.Close()
			t.Fatalf("forbidden TCP to port %d connected", port)
		}
	}
	syn(e2Port)
	syn(tcpPort)
	e2 := r.cap.wait(t, "e2's alert", 5*time.Second, func(a alert.Record) bool { return a.Experiment == "e2" })
	if e2.Kind != alert.KindPacket || e2.Rule != "tcp-dst" || e2.Dst != dstAddr || e2.DstPort != e2Port || e2.Proto != "tcp" {
		t.Fatalf("e2's alert during e1's flood lost its details: %s", alert.FormatLine(e2))
	}
	tcp := r.cap.wait(t, "e1's tcp alert", 5*time.Second, func(a alert.Record) bool { return a.Experiment == "e1" && a.Rule == "tcp-dst" })
	if tcp.Kind != alert.KindPacket || tcp.Dst != dstAddr || tcp.DstPort != tcpPort {
		t.Fatalf("e1's first TCP violation during its flood: %s", alert.FormatLine(tcp))
	}
	flood := r.cap.wait(t, "flood record", 5*time.Second, func(a alert.Record) bool { return a.Kind == alert.KindFlood })
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	var floods, summaries, lines int
	for _, rec := range r.cap.all() {
		if rec.Experiment == "e1" {
			lines++
		}
		switch {
		case rec.Kind == alert.KindFlood:
			floods++
		case rec.Experiment == "e1" && rec.Rule == "udp-dst" && strings.HasPrefix(rec.Message, "summary of a flood"):
			summaries++
		}
	}
	t.Logf("flood: %s; e1 wrote %d lines, %d summaries", alert.FormatLine(flood), lines, summaries)
	if floods != 1 || flood.Experiment != "e1" || summaries == 0 {
		t.Fatalf("%d flood records, %d summaries; want one flood record for e1 and its summary", floods, summaries)
	}
	if lines > 2*50+DefaultMaxSummaries+4 {
		t.Fatalf("e1 wrote %d lines for one window of flood", lines)
	}
}
