package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/florianl/go-nflog/v2"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/hashicorp/go-hclog"
	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/netlab"
	"github.com/arkgw/arkgw/nsdo"
	"github.com/arkgw/arkgw/nsholder"
	"github.com/arkgw/arkgw/reexec"
)

func TestMain(m *testing.M) {
	if reexec.Init() {
		return
	}
	os.Exit(m.Run())
}

// lab is one world with a gateway in its node.
type lab struct {
	w      *netlab.World
	g      *Gateway
	group  uint16
	inetCp *netlab.Capture
	run    string
}

// labReserved are the reserved destinations of a node with [lab]
// documentation_prefixes = true: netlab's fake Internet lives in them.
var labReserved = configs.ReservedPrefixes(configs.LabPolicy{DocumentationPrefixes: true})

func newLab(t *testing.T) *lab {
	return newLabAt(t, false)
}

// newLabAt is newLab; with current, the node is the namespace the test
// process runs in (inside netlab.InOwnNetNS's child) and the gateway is
// given nsdo.Current().
func newLabAt(t *testing.T, current bool) *lab {
	t.Helper()
	return newLabReserved(t, current, labReserved)
}

// newLabReserved is newLabAt with the given reserved destinations.
func newLabReserved(t *testing.T, current bool, reserved []netip.Prefix) *lab {
	t.Helper()
	needRoot(t)
	var w *netlab.World
	hostNS := nsdo.Current()
	if current {
		w = netlab.NewCurrentWorld(t)
	} else {
		w = netlab.NewWorld(t)
		hostNS = w.Node.NS()
	}
	run := t.TempDir()
	group := uint16(30000 + time.Now().UnixNano()%20000)
	g, err := New(Config{HostNS: hostNS, Uplink: netlab.NodeUplinkIf, NFLOGGroup: group,
		Reserved: reserved, Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: os.Stderr})})
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(g.cfg.DefaultRouters); got != "[192.168.77.1 fd77::1]" {
		t.Fatalf("default routers from the node's routes = %s", got)
	}
	l := &lab{w: w, g: g, group: group, run: run}
	// The lab's gateway may have been replaced (a restart); both go.
	t.Cleanup(func() { l.assertClean(t); l.g.Close(); g.Close() })
	l.inetCp = w.Inet.Capture(t, netlab.InetIf)
	return l
}

// assertClean removes every experiment and checks nothing of arkgw is left.
func (l *lab) assertClean(t *testing.T) {
	ctx := context.Background()
	for _, n := range l.g.Nets() {
		if err := l.g.Remove(ctx, n.ID); err != nil {
			t.Errorf("remove %s: %v", n.ID, err)
		}
	}
	if err := l.g.Sweep(ctx, nil); err != nil {
		t.Errorf("sweep: %v", err)
	}
	// The table outlives the last experiment while the gateway is open.
	if out := l.w.Node.Run(t, "nft", "list", "tables"); !strings.Contains(out, "inet "+TableName+"\n") {
		t.Errorf("table gone with the gateway still open: %s", out)
	}
	if err := l.g.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	out := l.w.Node.Run(t, "nft", "list", "tables")
	if strings.Contains(out, "arkgw") {
		t.Errorf("tables left: %s", out)
	}
	if out := l.w.Node.Run(t, "ip", "-o", "link"); strings.Contains(out, " ark") {
		t.Errorf("links left: %s", out)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), l.run) {
		t.Errorf("namespace mounts left under %s", l.run)
	}
}

// expNS makes experiment id's namespaces as the runner does (an nsholder
// under the lab's run dir, removed at cleanup).
func (l *lab) expNS(t *testing.T, id string, slot int) (ExpNS, *nsholder.Holder) {
	t.Helper()
	uid := l.g.HostID(slot)
	h, err := nsholder.Create(nsholder.Config{Dir: filepath.Join(l.run, "ns", id), HostUID: uid, HostGID: uid})
	if err != nil {
		t.Fatalf("namespaces of %s: %v", id, err)
	}
	t.Cleanup(func() { h.Remove() })
	return ExpNS{NetNSPath: h.NetNSPath(), UserNSPath: h.UserNSPath()}, h
}

// addWith is Add with namespaces made for it.
func (l *lab) addWith(t *testing.T, eff *configs.Effective, slot int) (*Net, *nsholder.Holder, error) {
	t.Helper()
	ens, h := l.expNS(t, eff.ID, slot)
	n, err := l.g.Add(context.Background(), eff, slot, ens)
	return n, h, err
}

func (l *lab) add(t *testing.T, eff *configs.Effective, slot int) (*Net, nsdo.NS) {
	t.Helper()
	n, _, err := l.addWith(t, eff, slot)
	if err != nil {
		t.Fatalf("add %s: %v", eff.ID, err)
	}
	ns, err := nsdo.Open(n.NetNSPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return n, ns
}

// counter reads a drop counter.
func (l *lab) counter(t *testing.T, id, rule string) uint64 {
	t.Helper()
	p, _, err := l.g.DropCounter(id, rule)
	if err != nil {
		t.Fatalf("counter %s/%s: %v", id, rule, err)
	}
	return p
}

// waitCounter waits until counter id/rule exceeds before.
func (l *lab) waitCounter(t *testing.T, id, rule string, before uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if l.counter(t, id, rule) > before {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("counter %s did not count the drop (still %d)", CounterName(id, rule), before)
}

// arrived waits for a packet at inet matching cond.
func (l *lab) arrived(cond func(gopacket.Packet) bool, d time.Duration) bool {
	return l.inetCp.Wait(cond, d)
}

func ipOf(p gopacket.Packet) (src, dst netip.Addr, proto uint8, ok bool) {
	if ip, k := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4); k {
		s, _ := netip.AddrFromSlice(ip.SrcIP)
		d, _ := netip.AddrFromSlice(ip.DstIP)
		return s.Unmap(), d.Unmap(), uint8(ip.Protocol), true
	}
	if ip, k := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6); k {
		s, _ := netip.AddrFromSlice(ip.SrcIP)
		d, _ := netip.AddrFromSlice(ip.DstIP)
		return s, d, uint8(ip.NextHeader), true
	}
	return
}

// to matches packets to dst (and dport when non-zero) of protocol proto.
func to(dst string, proto uint8, dport uint16) func(gopacket.Packet) bool {
	want := netip.MustParseAddr(dst)
	return func(p gopacket.Packet) bool {
		_, d, pr, ok := ipOf(p)
		if !ok || d != want || pr != proto {
			return false
		}
		if dport == 0 {
			return true
		}
		if tcp, ok := p.Layer(layers.LayerTypeTCP).(*layers.TCP); ok {
			return uint16(tcp.DstPort) == dport
		}
		if udp, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP); ok {
			return uint16(udp.DstPort) == dport
		}
		return false
	}
}

func from(src string, cond func(gopacket.Packet) bool) func(gopacket.Packet) bool {
	want := netip.MustParseAddr(src)
	return func(p gopacket.Packet) bool {
		s, _, _, ok := ipOf(p)
		return ok && s == want && cond(p)
	}
}

func dialIn(ns nsdo.NS, network, addr string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return nsdo.Dial(ctx, ns, network, addr)
}

// udpSend sends one datagram from inside ns and returns the reply, if any.
func udpSend(ns nsdo.NS, addr string, payload []byte, wait time.Duration) ([]byte, error) {
	c, err := dialIn(ns, "udp", addr, time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if _, err := c.Write(payload); err != nil {
		return nil, err
	}
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	return buf[:n], err
}

// sendRaw sends a complete IP packet (header included) from inside ns.
func sendRaw(ns nsdo.NS, pkt []byte, dst netip.Addr) error {
	return nsdo.In(ns, func() error {
		fam := unix.AF_INET
		if dst.Is6() {
			fam = unix.AF_INET6
		}
		fd, err := unix.Socket(fam, unix.SOCK_RAW, unix.IPPROTO_RAW)
		if err != nil {
			return fmt.Errorf("raw socket: %w", err)
		}
		defer unix.Close(fd)
		var sa unix.Sockaddr
		if dst.Is4() {
			sa = &unix.SockaddrInet4{Addr: dst.As4()}
		} else {
			sa = &unix.SockaddrInet6{Addr: dst.As16()}
		}
		return unix.Sendto(fd, pkt, 0, sa)
	})
}

func serialize(t *testing.T, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func ip4(src, dst string, proto layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: proto,
		SrcIP: net.ParseIP(src).To4(), DstIP: net.ParseIP(dst).To4()}
}

func ip6(src, dst string, proto layers.IPProtocol) *layers.IPv6 {
	return &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: proto, SrcIP: net.ParseIP(src), DstIP: net.ParseIP(dst)}
}

// rawUDP4 is a UDP datagram with an arbitrary source.
func rawUDP4(t *testing.T, src, dst string, dport uint16) []byte {
	ip := ip4(src, dst, layers.IPProtocolUDP)
	udp := &layers.UDP{SrcPort: 40000, DstPort: layers.UDPPort(dport)}
	udp.SetNetworkLayerForChecksum(ip)
	return serialize(t, ip, udp, gopacket.Payload("spoofed"))
}

func rawTCP4(t *testing.T, src, dst string, sport, dport uint16, syn, ack bool, payload string) []byte {
	ip := ip4(src, dst, layers.IPProtocolTCP)
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: 1000, Ack: 1, SYN: syn, ACK: ack, PSH: payload != "", Window: 1024}
	tcp.SetNetworkLayerForChecksum(ip)
	return serialize(t, ip, tcp, gopacket.Payload(payload))
}

func rawTCP6(t *testing.T, src, dst string, sport, dport uint16, syn, ack bool, payload string) []byte {
	ip := ip6(src, dst, layers.IPProtocolTCP)
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: 1000, Ack: 1, SYN: syn, ACK: ack, PSH: payload != "", Window: 1024}
	tcp.SetNetworkLayerForChecksum(ip)
	return serialize(t, ip, tcp, gopacket.Payload(payload))
}

func rawICMP4(t *testing.T, src, dst string, typ uint8) []byte {
	return serialize(t, ip4(src, dst, layers.IPProtocolICMPv4),
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, 0), Id: 77, Seq: 1}, gopacket.Payload("probe"))
}

func rawICMP6(t *testing.T, src, dst string, typ uint8) []byte {
	ip := ip6(src, dst, layers.IPProtocolICMPv6)
	ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}
	ic.SetNetworkLayerForChecksum(ip)
	return serialize(t, ip, ic, &layers.ICMPv6Echo{Identifier: 77, SeqNumber: 1}, gopacket.Payload("probe"))
}

func rawProto4(t *testing.T, src, dst string, proto layers.IPProtocol) []byte {
	return serialize(t, ip4(src, dst, proto), gopacket.Payload("\x00\x00\x08\x00payload-of-some-protocol"))
}

func policyA() *configs.Effective {
	return &configs.Effective{
		ID: "a" + randSuffix()[:4], IPv4: true, IPv6: true,
		TCP: []configs.Dest{
			dest("198.51.100.0/24", pr(80, 80)),
			dest("198.51.100.7/32", pr(7, 7)),
			dest("2001:db8:100::/48", pr(7, 7), pr(80, 80)),
		},
		UDP: []configs.Dest{
			dest("198.51.100.7/32", pr(7, 7)),
			dest("2001:db8:100::7/128", pr(7, 7)),
		},
		ICMP:              []configs.ICMPType{{Type: 8}, {V6: true, Type: 128}},
		SynOnlyPorts:      []configs.PortRange{pr(2222, 2223)},
		Protocols:         []uint8{47},
		SpoofSources:      []netip.Addr{addr("192.0.2.9"), addr("2001:db8:feed::9")},
		SpoofDestinations: []netip.Addr{addr("198.51.100.9"), addr("2001:db8:100::9")},
	}
}

// The gateway wires links and rules in the namespace it is given,
// including the current one (a node's daemon runs in the node's namespace,
// no handle): allowed traffic is masqueraded out, denied traffic dropped
// and counted, and removal leaves nothing (lab cleanup checks).
func TestPrivilegedGatewayNamespace(t *testing.T) {
	needRoot(t)
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
			l := newLabAt(t, tc.current)
			n, ns := l.add(t, policyA(), 0)
			c, err := dialIn(ns, "tcp", netlab.Echo4+":7", 3*time.Second)
			if err != nil {
				t.Fatalf("allowed tcp: %v", err)
			}
			echo(t, c, "hello")
			c.Close()
			if !l.w.WaitSeen(func(r netlab.Record) bool {
				return r.Proto == "tcp" && r.Dst.Port() == 7 && r.Src.Addr().String() == netlab.NodeUplink4
			}, 3*time.Second) {
				t.Errorf("inet did not log a connection from the node's address: %v", l.w.Log())
			}
			before := l.counter(t, n.ID, RuleTCPDst)
			if c, err := dialIn(ns, "tcp", "198.51.100.80:81", 700*time.Millisecond); err == nil {
				c.Close()
				t.Fatal("tcp to a port the policy does not allow connected")
			}
			l.waitCounter(t, n.ID, RuleTCPDst, before)
			if l.inetCp.Count(to("198.51.100.80", 6, 81)) != 0 {
				t.Error("forbidden packet arrived at inet")
			}
		})
	}
}

// TestPrivilegedGateway sends real packets from an experiment through the
// gateway in a netlab world: every rule kind, allowed and denied.
func TestPrivilegedGateway(t *testing.T) {
	l := newLab(t)
	effA := policyA()
	a, nsA := l.add(t, effA, 0)
	effB := &configs.Effective{ID: "b" + randSuffix()[:4], IPv4: true, IPv6: true, ICMPAny: true, DNSAny: true,
		UDP: []configs.Dest{dest("0.0.0.0/0", pr(1, 65535))}}
	b, nsB := l.add(t, effB, 1)
	id := a.ID
	masq4, masq6 := netlab.NodeUplink4, netlab.NodeUplink6

	// denied sends something that the policy forbids and checks that the
	// drop was counted under rule and that nothing arrived at inet.
	denied := func(t *testing.T, rule string, send func() error, cond func(gopacket.Packet) bool) {
		t.Helper()
		before := l.counter(t, id, rule)
		seen := 0
		if cond != nil {
			seen = l.inetCp.Count(cond)
		}
		if err := send(); err != nil && !isTimeout(err) {
			t.Fatalf("send: %v", err)
		}
		l.waitCounter(t, id, rule, before)
		if cond != nil {
			time.Sleep(200 * time.Millisecond)
			if l.inetCp.Count(cond) > seen {
				t.Errorf("forbidden packet arrived at inet")
			}
		}
	}

	cases := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"experiment netns set up", func(t *testing.T) {
			v, err := readSysctl(nsA, "net.ipv4.ping_group_range")
			if want := fmt.Sprintf("%d\t%d", a.HostGID, a.HostGID+65535); err != nil || v != want {
				t.Errorf("ping_group_range = %q (%v), want %q", v, err, want)
			}
			if a.HostUID != DefaultUIDBase || b.HostUID != DefaultUIDBase+65536 {
				t.Errorf("host uids %d, %d", a.HostUID, b.HostUID)
			}
			for _, p := range []string{a.NetNSPath, a.UserNSPath} {
				if _, err := os.Stat(p); err != nil {
					t.Error(err)
				}
			}
		}},
		{"tcp allowed and masqueraded", func(t *testing.T) {
			c, err := dialIn(nsA, "tcp", "198.51.100.7:7", 3*time.Second)
			if err != nil {
				t.Fatalf("allowed tcp: %v", err)
			}
			defer c.Close()
			echo(t, c, "hello")
			if !l.w.WaitSeen(func(r netlab.Record) bool {
				return r.Proto == "tcp" && r.Dst.Port() == 7 && r.Src.Addr().String() == masq4
			}, 3*time.Second) {
				t.Errorf("inet did not log a connection from the node's address %s: %v", masq4, l.w.Log())
			}
		}},
		{"tcp http allowed by prefix", func(t *testing.T) {
			c, err := dialIn(nsA, "tcp", "198.51.100.80:80", 3*time.Second)
			if err != nil {
				t.Fatalf("allowed tcp: %v", err)
			}
			c.Close()
		}},
		{"tcp denied by port", func(t *testing.T) {
			denied(t, RuleTCPDst, func() error { _, err := dialIn(nsA, "tcp", "198.51.100.80:81", 700*time.Millisecond); return err },
				to("198.51.100.80", 6, 81))
		}},
		{"tcp denied by prefix", func(t *testing.T) {
			denied(t, RuleTCPDst, func() error { _, err := dialIn(nsA, "tcp", "203.0.113.10:80", 700*time.Millisecond); return err },
				to("203.0.113.10", 6, 80))
		}},
		{"tcp mid-stream segment not admitted", func(t *testing.T) {
			denied(t, RuleTCPDst, func() error {
				return sendRaw(nsA, rawTCP4(t, a.Addr4.String(), "198.51.100.7", 41000, 7, false, true, "mid-stream"), addr("198.51.100.7"))
			}, to("198.51.100.7", 6, 7))
		}},
		{"udp allowed", func(t *testing.T) {
			got, err := udpSend(nsA, "198.51.100.7:7", []byte("ping"), 3*time.Second)
			if err != nil || string(got) != "ping" {
				t.Fatalf("udp echo: %q %v", got, err)
			}
		}},
		{"udp denied", func(t *testing.T) {
			denied(t, RuleUDPDst, func() error { _, err := udpSend(nsA, "198.51.100.7:8", []byte("x"), 10*time.Millisecond); return err },
				to("198.51.100.7", 17, 8))
		}},
		{"icmp echo allowed", func(t *testing.T) {
			if err := sendRaw(nsA, rawICMP4(t, a.Addr4.String(), "198.51.100.1", 8), addr("198.51.100.1")); err != nil {
				t.Fatal(err)
			}
			if !l.arrived(from(masq4, to("198.51.100.1", 1, 0)), 3*time.Second) {
				t.Error("echo request did not arrive")
			}
		}},
		{"icmp timestamp denied", func(t *testing.T) {
			denied(t, RuleICMP, func() error {
				return sendRaw(nsA, rawICMP4(t, a.Addr4.String(), "198.51.100.2", 13), addr("198.51.100.2"))
			}, to("198.51.100.2", 1, 0))
		}},
		{"reserved destination denied", func(t *testing.T) {
			for _, dst := range []string{"10.1.2.3", "172.16.0.1", "192.168.77.5"} {
				denied(t, RuleReserved, func() error {
					return sendRaw(nsA, rawICMP4(t, a.Addr4.String(), dst, 8), addr(dst))
				}, to(dst, 1, 0))
			}
		}},
		{"default router reachable", func(t *testing.T) {
			if err := sendRaw(nsA, rawICMP4(t, a.Addr4.String(), netlab.DefaultRouter4, 8), addr(netlab.DefaultRouter4)); err != nil {
				t.Fatal(err)
			}
			if !l.arrived(to(netlab.DefaultRouter4, 1, 0), 3*time.Second) {
				t.Error("echo request to the default router did not arrive")
			}
			// fd77::1 lies in fc00::/7 but is the node's IPv6 router.
			if err := sendRaw(nsA, rawICMP6(t, a.Addr6.String(), netlab.DefaultRouter6, 128), addr(netlab.DefaultRouter6)); err != nil {
				t.Fatal(err)
			}
			if !l.arrived(to(netlab.DefaultRouter6, 58, 0), 3*time.Second) {
				t.Error("echo request to the IPv6 default router did not arrive")
			}
		}},
		{"gre allowed, other protocol denied", func(t *testing.T) {
			if err := sendRaw(nsA, rawProto4(t, a.Addr4.String(), "198.51.100.3", layers.IPProtocolGRE), addr("198.51.100.3")); err != nil {
				t.Fatal(err)
			}
			if !l.arrived(from(masq4, to("198.51.100.3", 47, 0)), 3*time.Second) {
				t.Error("gre packet did not arrive")
			}
			denied(t, RuleProto, func() error {
				return sendRaw(nsA, rawProto4(t, a.Addr4.String(), "198.51.100.4", 253), addr("198.51.100.4"))
			}, to("198.51.100.4", 253, 0))
			// b did not declare GRE.
			before := l.counter(t, b.ID, RuleProto)
			if err := sendRaw(nsB, rawProto4(t, b.Addr4.String(), "198.51.100.5", layers.IPProtocolGRE), addr("198.51.100.5")); err != nil {
				t.Fatal(err)
			}
			l.waitCounter(t, b.ID, RuleProto, before)
			if l.arrived(to("198.51.100.5", 47, 0), 200*time.Millisecond) {
				t.Error("undeclared gre packet arrived")
			}
		}},
		{"syn-only: syn arrives, data does not", func(t *testing.T) {
			src := a.Addr4.String()
			if err := sendRaw(nsA, rawTCP4(t, src, "203.0.113.10", 42000, 2222, true, false, ""), addr("203.0.113.10")); err != nil {
				t.Fatal(err)
			}
			if !l.arrived(from(masq4, to("203.0.113.10", 6, 2222)), 3*time.Second) {
				t.Fatal("syn to a syn-only port did not arrive")
			}
			// A real TCP stack: the SYN passes, the SYN-ACK comes back, the
			// handshake-completing ACK and every data segment are dropped.
			synOnlyHandshake(t, l, nsA, id, "203.0.113.12:2222", "[::]:2222")
			// A SYN carrying data is not a probe.
			denied(t, RuleTCPDst, func() error {
				return sendRaw(nsA, rawTCP4(t, src, "203.0.113.11", 42001, 2222, true, false, "syn-with-data"), addr("203.0.113.11"))
			}, to("203.0.113.11", 6, 2222))
		}},
		{"spoofed source allowed to its destination only", func(t *testing.T) {
			if err := sendRaw(nsA, rawUDP4(t, "192.0.2.9", "198.51.100.9", 9), addr("198.51.100.9")); err != nil {
				t.Fatal(err)
			}
			if !l.arrived(from("192.0.2.9", to("198.51.100.9", 17, 9)), 3*time.Second) {
				t.Error("declared spoofed packet did not arrive with its source unchanged")
			}
			denied(t, RuleSpoof, func() error {
				return sendRaw(nsA, rawUDP4(t, "192.0.2.9", "198.51.100.10", 9), addr("198.51.100.10"))
			}, to("198.51.100.10", 17, 9))
			denied(t, RuleSpoof, func() error {
				return sendRaw(nsA, rawUDP4(t, "192.0.2.10", "198.51.100.9", 9), addr("198.51.100.9"))
			}, from("192.0.2.10", to("198.51.100.9", 17, 9)))
		}},
		{"ipv6 tcp allowed and masqueraded", func(t *testing.T) {
			c, err := dialIn(nsA, "tcp", "[2001:db8:100::7]:7", 3*time.Second)
			if err != nil {
				t.Fatalf("allowed tcp6: %v", err)
			}
			defer c.Close()
			echo(t, c, "hello6")
			if !l.w.WaitSeen(func(r netlab.Record) bool {
				return r.Proto == "tcp" && r.Dst.Port() == 7 && r.Src.Addr().String() == masq6
			}, 3*time.Second) {
				t.Errorf("no connection from %s in the inet log", masq6)
			}
		}},
		{"ipv6 tcp denied", func(t *testing.T) {
			denied(t, RuleTCPDst, func() error { _, err := dialIn(nsA, "tcp", "[2001:db8:100::7]:8", 700*time.Millisecond); return err },
				to("2001:db8:100::7", 6, 8))
		}},
		{"ipv6 udp allowed and denied", func(t *testing.T) {
			got, err := udpSend(nsA, "[2001:db8:100::7]:7", []byte("ping6"), 3*time.Second)
			if err != nil || string(got) != "ping6" {
				t.Fatalf("udp6 echo: %q %v", got, err)
			}
			denied(t, RuleUDPDst, func() error {
				_, err := udpSend(nsA, "[2001:db8:100::8]:7", []byte("x"), 10*time.Millisecond)
				return err
			},
				to("2001:db8:100::8", 17, 7))
		}},
		{"ipv6 icmp types", func(t *testing.T) {
			if err := sendRaw(nsA, rawICMP6(t, a.Addr6.String(), "2001:db8:100::1", 128), addr("2001:db8:100::1")); err != nil {
				t.Fatal(err)
			}
			if !l.arrived(from(masq6, to("2001:db8:100::1", 58, 0)), 3*time.Second) {
				t.Error("echo request v6 did not arrive")
			}
			denied(t, RuleICMP, func() error {
				return sendRaw(nsA, rawICMP6(t, a.Addr6.String(), "2001:db8:100::2", 139), addr("2001:db8:100::2"))
			}, to("2001:db8:100::2", 58, 0))
		}},
		{"ipv6 reserved and spoofed", func(t *testing.T) {
			denied(t, RuleReserved, func() error {
				return sendRaw(nsA, rawICMP6(t, a.Addr6.String(), "fc00::1", 128), addr("fc00::1"))
			}, to("fc00::1", 58, 0))
			denied(t, RuleSpoof, func() error {
				return sendRaw(nsA, rawICMP6(t, "2001:db8:999::1", "2001:db8:100::3", 128), addr("2001:db8:100::3"))
			}, to("2001:db8:100::3", 58, 0))
			if err := sendRaw(nsA, rawICMP6(t, "2001:db8:feed::9", "2001:db8:100::9", 128), addr("2001:db8:100::9")); err != nil {
				t.Fatal(err)
			}
			if !l.arrived(from("2001:db8:feed::9", to("2001:db8:100::9", 58, 0)), 3*time.Second) {
				t.Error("declared spoofed v6 packet did not arrive with its source unchanged")
			}
		}},
		{"ipv6 syn-only", func(t *testing.T) {
			src := a.Addr6.String()
			if err := sendRaw(nsA, rawTCP6(t, src, "2001:db8:100::10", 43000, 2223, true, false, ""), addr("2001:db8:100::10")); err != nil {
				t.Fatal(err)
			}
			if !l.arrived(to("2001:db8:100::10", 6, 2223), 3*time.Second) {
				t.Fatal("v6 syn to a syn-only port did not arrive")
			}
			synOnlyHandshake(t, l, nsA, id, "[2001:db8:100::12]:2223", "[::]:2223")
		}},
		{"node services denied", func(t *testing.T) {
			ln, err := l.w.Node.Listen("tcp", ":2200")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			for _, dst := range []string{a.GW4.String(), masq4, "[" + a.GW6.String() + "]"} {
				denied(t, RuleNode, func() error { _, err := dialIn(nsA, "tcp", dst+":2200", 700*time.Millisecond); return err }, nil)
			}
			// b's gateway address is the node too.
			denied(t, RuleNode, func() error { _, err := dialIn(nsA, "tcp", b.GW4.String()+":2200", 700*time.Millisecond); return err }, nil)
		}},
		{"other experiment denied", func(t *testing.T) {
			pc, err := nsdo.ListenPacket(nsB, "udp", ":9999")
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			got := make(chan struct{}, 1)
			go func() {
				buf := make([]byte, 100)
				if _, _, err := pc.ReadFrom(buf); err == nil {
					got <- struct{}{}
				}
			}()
			for _, dst := range []string{b.Addr4.String(), "[" + b.Addr6.String() + "]"} {
				denied(t, RulePeer, func() error { _, err := udpSend(nsA, dst+":9999", []byte("hi peer"), 10*time.Millisecond); return err }, nil)
			}
			select {
			case <-got:
				t.Error("a datagram from a reached b")
			case <-time.After(200 * time.Millisecond):
			}
		}},
		{"dns redirected to the gateway address", func(t *testing.T) {
			// A test listener stands in for the DNS proxy on a's gateway address.
			pc, err := l.w.Node.ListenPacket("udp", net.JoinHostPort(a.GW4.String(), "53"))
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
				m := new(dns.Msg)
				m.SetReply(r)
				rr, _ := dns.NewRR(r.Question[0].Name + " 60 IN A 192.0.2.53")
				m.Answer = append(m.Answer, rr)
				w.WriteMsg(m)
			})}
			go srv.ActivateAndServe()
			defer srv.Shutdown()
			var resp *dns.Msg
			err = nsdo.In(nsA, func() error {
				m := new(dns.Msg)
				m.SetQuestion("www.arkgw.test.", dns.TypeA)
				var err error
				resp, _, err = (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, netlab.DNS4+":53")
				return err
			})
			if err != nil {
				t.Fatalf("query: %v", err)
			}
			if len(resp.Answer) != 1 || !strings.Contains(resp.Answer[0].String(), "192.0.2.53") {
				t.Errorf("answer did not come from the gateway listener: %v", resp)
			}
			if l.w.Seen(func(r netlab.Record) bool { return r.Service == "dns" }) {
				t.Error("the query reached the Internet resolver")
			}
		}},
		{"dns over ipv6 and tcp redirected too", func(t *testing.T) {
			ln, err := l.w.Node.Listen("tcp", net.JoinHostPort(a.GW6.String(), "53"))
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			srv := &dns.Server{Listener: ln, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
				m := new(dns.Msg)
				m.SetReply(r)
				rr, _ := dns.NewRR(r.Question[0].Name + " 60 IN AAAA 2001:db8::53")
				m.Answer = append(m.Answer, rr)
				w.WriteMsg(m)
			})}
			go srv.ActivateAndServe()
			defer srv.Shutdown()
			var resp *dns.Msg
			err = nsdo.In(nsA, func() error {
				m := new(dns.Msg)
				m.SetQuestion("www.arkgw.test.", dns.TypeAAAA)
				var err error
				resp, _, err = (&dns.Client{Net: "tcp", Timeout: 3 * time.Second}).Exchange(m, "["+netlab.DNS6+"]:53")
				return err
			})
			if err != nil {
				t.Fatalf("query: %v", err)
			}
			if len(resp.Answer) != 1 || !strings.Contains(resp.Answer[0].String(), "2001:db8::53") {
				t.Errorf("answer did not come from the gateway listener: %v", resp)
			}
		}},
		{"dns any allowed to every resolver", func(t *testing.T) {
			// b has DNSAny: its queries reach the real resolver.
			err := nsdo.In(nsB, func() error {
				m := new(dns.Msg)
				m.SetQuestion("www.arkgw.test.", dns.TypeA)
				_, _, err := (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, netlab.DNS4+":53")
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if !l.w.Seen(func(r netlab.Record) bool { return r.Service == "dns" && r.Src.Addr().String() == masq4 }) {
				t.Error("b's query did not reach the resolver")
			}
		}},
		{"nflog prefix names experiment and rule", func(t *testing.T) {
			prefixes := l.nflog(t)
			if _, err := dialIn(nsA, "tcp", "203.0.113.20:443", 500*time.Millisecond); err == nil {
				t.Fatal("denied connection succeeded")
			}
			want := "ark:" + id + ":tcp-dst"
			deadline := time.After(5 * time.Second)
			for {
				select {
				case p := <-prefixes:
					if p == want {
						return
					}
				case <-deadline:
					t.Fatalf("no NFLOG message with prefix %q", want)
				}
			}
		}},
	}
	cases = append(cases, struct {
		name string
		run  func(t *testing.T)
	}{"no spurious drops from the kernel's own traffic", func(t *testing.T) {
		// b only sent what the cases above made it send; its link-level
		// chatter (router solicitations, MLD) must not count as drops.
		for _, rule := range []string{RuleNode, RuleSpoof, RuleReserved, RuleICMP, RulePeer} {
			if c := l.counter(t, b.ID, rule); c != 0 {
				t.Errorf("%d drops of b counted as %s", c, rule)
			}
		}
	}})
	for _, tc := range cases {
		t.Run(tc.name, tc.run)
	}
}

// synOnlyHandshake connects with the kernel's TCP to a listener on inet
// through a SYN-only port: the connect may succeed on the experiment's side
// (the SYN-ACK is let back), but the listener never completes the handshake
// and no payload reaches inet; the drops are counted as syn-only.
func synOnlyHandshake(t *testing.T, l *lab, ns nsdo.NS, id, dst, listen string) {
	t.Helper()
	ln, err := l.w.Inet.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- struct{}{}
			c.Close()
		}
	}()
	_, portStr, _ := net.SplitHostPort(dst)
	var port uint16
	fmt.Sscan(portStr, &port)
	payload := func(p gopacket.Packet) bool {
		tcp, ok := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
		return ok && uint16(tcp.DstPort) == port && (len(tcp.Payload) > 0 || (tcp.ACK && !tcp.SYN))
	}
	before := l.counter(t, id, RuleSynOnly)
	c, err := dialIn(ns, "tcp", dst, 3*time.Second)
	if err != nil {
		t.Fatalf("connect through a syn-only port: %v (the SYN-ACK should come back)", err)
	}
	defer c.Close()
	c.Write([]byte("payload through a syn-only port"))
	l.waitCounter(t, id, RuleSynOnly, before)
	select {
	case <-accepted:
		t.Error("the handshake completed at the far end")
	case <-time.After(300 * time.Millisecond):
	}
	if n := l.inetCp.Count(payload); n > 0 {
		t.Errorf("%d ACK/data segments of a syn-only flow arrived", n)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded)
}

func echo(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo: %q %v", buf, err)
	}
}

// nflog binds the lab's NFLOG group in the node and returns the prefixes.
func (l *lab) nflog(t *testing.T) <-chan string {
	t.Helper()
	nf, err := nflog.Open(&nflog.Config{Group: l.group, Copymode: nflog.CopyPacket, NetNS: l.w.Node.NS().NetlinkNetNS()})
	if err != nil {
		t.Fatalf("nflog: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan string, 100)
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { cancel(); nf.Close() }) })
	err = nf.RegisterWithErrorFunc(ctx, func(a nflog.Attribute) int {
		if a.Prefix != nil {
			select {
			case out <- *a.Prefix:
			default:
			}
		}
		return 0
	}, func(err error) int { return 0 })
	if err != nil {
		t.Fatalf("nflog register: %v", err)
	}
	return out
}

// TestPrivilegedRevoke: an established TCP connection stops when Update
// removes the rule that admitted it; a connection still allowed survives.
func TestPrivilegedRevoke(t *testing.T) {
	l := newLab(t)
	eff := &configs.Effective{ID: "r" + randSuffix()[:4], IPv4: true, IPv6: true,
		TCP: []configs.Dest{dest("198.51.100.7/32", pr(7, 7)), dest("203.0.113.10/32", pr(7, 7))}}
	n, ns := l.add(t, eff, 5)
	cut, err := dialIn(ns, "tcp", "198.51.100.7:7", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer cut.Close()
	kept, err := dialIn(ns, "tcp", "203.0.113.10:7", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Close()
	echo(t, cut, "before")
	echo(t, kept, "before")

	eff2 := *eff
	eff2.TCP = []configs.Dest{dest("203.0.113.10/32", pr(7, 7))}
	if err := l.g.Update(context.Background(), []*configs.Effective{&eff2}); err != nil {
		t.Fatal(err)
	}
	before := l.counter(t, n.ID, RuleTCPDst)
	cut.SetDeadline(time.Now().Add(2 * time.Second))
	cut.Write([]byte("after"))
	buf := make([]byte, 5)
	if k, err := io.ReadFull(cut, buf); err == nil {
		t.Errorf("revoked connection still echoes: %q", buf[:k])
	}
	l.waitCounter(t, n.ID, RuleTCPDst, before)
	echo(t, kept, "still allowed")
	if _, err := dialIn(ns, "tcp", "198.51.100.7:7", 700*time.Millisecond); err == nil {
		t.Error("new connection to a revoked destination succeeded")
	}

	// Remove deletes the experiment's remaining conntrack entries.
	if flows := slotFlowCount(t, l, n.Slot); flows == 0 {
		t.Fatal("no conntrack entries of the experiment before Remove")
	}
	if err := l.g.Remove(context.Background(), n.ID); err != nil {
		t.Fatal(err)
	}
	if flows := slotFlowCount(t, l, n.Slot); flows != 0 {
		t.Errorf("%d conntrack entries of the removed experiment left", flows)
	}
	if err := l.g.Remove(context.Background(), n.ID); err != nil {
		t.Fatalf("second remove: %v", err)
	}
}

func slotFlowCount(t *testing.T, l *lab, slot int) int {
	t.Helper()
	c, err := openConntrack(l.w.Node.NS())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	flows, err := slotFlows(c, slot)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range flows {
		n += len(f)
	}
	return n
}

// TestPrivilegedAddFailureLeavesNothing: a slot clash and a ruleset the
// kernel refuses fail Add, name the rule, and leave no namespace, link or
// rules of the failed experiment; the running one keeps its rules.
func TestPrivilegedAddFailureLeavesNothing(t *testing.T) {
	l := newLab(t)
	ok := &configs.Effective{ID: "ok" + randSuffix()[:4], IPv4: true, IPv6: true}
	l.add(t, ok, 0)
	if _, _, err := l.addWith(t, &configs.Effective{ID: "dup" + randSuffix()[:4]}, 0); err == nil {
		t.Fatal("add on a used slot succeeded")
	}
	id := "bad" + randSuffix()[:4]
	// Stand-in for a feature the kernel lacks: a rule that jumps to a
	// chain that does not exist is refused by the kernel, not by us.
	l.g.mutate = func(rs *Ruleset) {
		if c := rs.ChainByName("fwd_" + id); c != nil {
			c.Rules = append([]Rule{{Name: RuleTCPDst, Exprs: []Expr{Verdict{Kind: "jump", Chain: "missing_chain"}}}}, c.Rules...)
		}
	}
	_, badH, err := l.addWith(t, &configs.Effective{ID: id, IPv4: true, IPv6: true}, 1)
	l.g.mutate = nil
	if err == nil {
		t.Fatal("add with a refused ruleset succeeded")
	}
	if !strings.Contains(err.Error(), "rule tcp-dst in chain fwd_"+id) {
		t.Errorf("error does not name the rule: %v", err)
	}
	// The namespaces are the caller's: still there, without the veth.
	if bad, err := nsdo.Open(badH.NetNSPath()); err != nil {
		t.Errorf("the caller's namespaces went with the failed add: %v", err)
	} else {
		hd, err := bad.NetlinkHandle()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := hd.LinkByName("eth0"); err == nil {
			t.Error("eth0 left in the experiment netns after the failed add")
		}
		hd.Close()
		bad.Close()
	}
	if out := l.w.Node.Run(t, "ip", "-o", "link"); strings.Contains(out, HostIfName(id)) {
		t.Errorf("link left: %s", out)
	}
	out := l.w.Node.Run(t, "nft", "list", "ruleset")
	if strings.Contains(out, id) || !strings.Contains(out, "fwd_"+ok.ID) || strings.Contains(out, "arkgw_probe") {
		t.Errorf("ruleset after the failed add:\n%s", out)
	}
	// An Update the kernel refuses keeps the old ruleset.
	l.g.mutate = func(rs *Ruleset) {
		if c := rs.ChainByName("fwd_" + ok.ID); c != nil {
			c.Rules = append([]Rule{{Name: RuleUDPDst, Exprs: []Expr{Verdict{Kind: "jump", Chain: "missing_chain"}}}}, c.Rules...)
		}
	}
	ok2 := *ok
	ok2.ICMPAny = true
	err = l.g.Update(context.Background(), []*configs.Effective{&ok2})
	l.g.mutate = nil
	if err == nil || !strings.Contains(err.Error(), "rule udp-dst in chain fwd_"+ok.ID) {
		t.Errorf("update error = %v", err)
	}
	if after := l.w.Node.Run(t, "nft", "list", "table", "inet", TableName); !strings.Contains(after, "fwd_"+ok.ID) || strings.Contains(after, "missing_chain") {
		t.Errorf("ruleset after a refused update:\n%s", after)
	}

	// Leftovers of an id (a stale link of arkgw's) do not stop a new Add.
	id2 := "old" + randSuffix()[:4]
	l.w.Node.Run(t, "ip", "link", "add", HostIfName(id2), "type", "veth", "peer", "name", "oldpeer"+randSuffix()[:4])
	l.w.Node.Run(t, "ip", "link", "set", HostIfName(id2), "alias", LinkAlias(id2))
	if _, _, err := l.addWith(t, &configs.Effective{ID: id2, IPv4: true}, 2); err != nil {
		t.Fatalf("add over a stale link: %v", err)
	}
	// A link of the same name that is not arkgw's is neither deleted nor
	// taken over: Add fails and says so.
	id3 := "for" + randSuffix()[:4]
	l.w.Node.Run(t, "ip", "link", "add", HostIfName(id3), "type", "veth", "peer", "name", "forpeer"+randSuffix()[:4])
	t.Cleanup(func() { l.w.Node.Run(t, "ip", "link", "del", HostIfName(id3)) })
	if _, _, err := l.addWith(t, &configs.Effective{ID: id3, IPv4: true}, 3); err == nil || !strings.Contains(err.Error(), "not arkgw's") {
		t.Errorf("add over a foreign link: %v", err)
	}
	if out := l.w.Node.Run(t, "ip", "-o", "link"); !strings.Contains(out, HostIfName(id3)+"@") {
		t.Errorf("foreign link %s removed: %s", HostIfName(id3), out)
	}
}

// TestPrivilegedSweep: stale links and rules of ids not kept are removed;
// kept ones stay (namespaces are the runner's to sweep).
func TestPrivilegedSweep(t *testing.T) {
	l := newLab(t)
	keep := &configs.Effective{ID: "k" + randSuffix()[:4], IPv4: true, IPv6: true, ICMPAny: true}
	gone := &configs.Effective{ID: "g" + randSuffix()[:4], IPv4: true, IPv6: true}
	kn, kns := l.add(t, keep, 0)
	l.add(t, gone, 1)
	stale := "s" + randSuffix()[:4]
	l.w.Node.Run(t, "ip", "link", "add", HostIfName(stale), "type", "veth", "peer", "name", "stalepeer"+randSuffix()[:3])
	l.w.Node.Run(t, "ip", "link", "set", HostIfName(stale), "alias", LinkAlias(stale))
	// Links named like arkgw's but without its alias are another
	// program's: the sweep leaves them.
	foreign := []string{"arkfoo", HostIfName("f" + randSuffix()[:4])}
	for i, name := range foreign {
		l.w.Node.Run(t, "ip", "link", "add", name, "type", "veth", "peer", "name", fmt.Sprintf("frpeer%d%s", i, randSuffix()[:3]))
		t.Cleanup(func() { l.w.Node.Run(t, "ip", "link", "del", name) })
	}
	if err := l.g.Sweep(context.Background(), map[string]bool{keep.ID: true}); err != nil {
		t.Fatal(err)
	}
	links := l.w.Node.Run(t, "ip", "-o", "link")
	if strings.Contains(links, HostIfName(stale)) || strings.Contains(links, HostIfName(gone.ID)) || !strings.Contains(links, kn.HostIf) {
		t.Errorf("links after sweep: %s", links)
	}
	for _, name := range foreign {
		if !strings.Contains(links, " "+name+"@") {
			t.Errorf("untagged link %s removed by the sweep: %s", name, links)
		}
	}
	if out := l.w.Node.Run(t, "ip", "-d", "link", "show", kn.HostIf); !strings.Contains(out, "alias "+LinkAlias(keep.ID)) {
		t.Errorf("experiment link without arkgw's alias: %s", out)
	}
	rules := l.w.Node.Run(t, "nft", "list", "table", "inet", TableName)
	if strings.Contains(rules, gone.ID) || !strings.Contains(rules, keep.ID) {
		t.Errorf("rules after sweep:\n%s", rules)
	}
	// The kept experiment still works.
	if err := sendRaw(kns, rawICMP4(t, kn.Addr4.String(), "198.51.100.1", 8), addr("198.51.100.1")); err != nil {
		t.Fatal(err)
	}
	if !l.arrived(to("198.51.100.1", 1, 0), 3*time.Second) {
		t.Error("kept experiment lost connectivity")
	}
	if err := l.g.Sweep(context.Background(), map[string]bool{keep.ID: true}); err != nil {
		t.Fatalf("second sweep: %v", err)
	}
}

// TestPrivilegedAdopt: a new Gateway (a restarted daemon) takes over a
// running experiment's network; its traffic is filtered again.
func TestPrivilegedAdopt(t *testing.T) {
	l := newLab(t)
	eff := &configs.Effective{ID: "ad" + randSuffix()[:4], IPv4: true, IPv6: true, ICMP: []configs.ICMPType{{Type: 8}}}
	ens, h := l.expNS(t, eff.ID, 3)
	n, err := l.g.Add(context.Background(), eff, 3, ens)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := nsdo.Open(n.NetNSPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	// The old daemon dies: its holder process ends, the namespaces stay.
	h.Release()
	g2, err := New(Config{HostNS: l.w.Node.NS(), Uplink: netlab.NodeUplinkIf, NFLOGGroup: l.group, Reserved: labReserved})
	if err != nil {
		t.Fatal(err)
	}
	// The new daemon sweeps first, keeping the running experiment: until
	// it is adopted its traffic is dropped, not let through unfiltered.
	if err := g2.Sweep(context.Background(), map[string]bool{eff.ID: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(n.NetNSPath); err != nil {
		t.Fatalf("sweep removed a kept namespace: %v", err)
	}
	if err := sendRaw(ns, rawICMP4(t, n.Addr4.String(), "198.51.100.44", 8), addr("198.51.100.44")); err != nil {
		t.Fatal(err)
	}
	if l.arrived(to("198.51.100.44", 1, 0), 500*time.Millisecond) {
		t.Error("traffic of a kept, not yet adopted experiment went through")
	}
	zz := "zz" + randSuffix()[:4]
	if _, err := g2.Adopt(context.Background(), &configs.Effective{ID: zz}, 4, ExpNS{NetNSPath: filepath.Join(l.run, "ns", zz, "net")}); err == nil {
		t.Error("adopting an experiment without a network succeeded")
	}
	n2, err := g2.Adopt(context.Background(), eff, 3, ExpNS{NetNSPath: h.NetNSPath(), UserNSPath: h.UserNSPath()})
	if err != nil {
		t.Fatal(err)
	}
	if n2.Addr4 != n.Addr4 || n2.NetNSPath != n.NetNSPath || n2.HostUID != n.HostUID {
		t.Errorf("adopted net %+v differs from %+v", n2, n)
	}
	l.g = g2 // the lab's cleanup removes through the new gateway
	if err := sendRaw(ns, rawICMP4(t, n.Addr4.String(), "198.51.100.1", 8), addr("198.51.100.1")); err != nil {
		t.Fatal(err)
	}
	if !l.arrived(to("198.51.100.1", 1, 0), 3*time.Second) {
		t.Error("adopted experiment lost connectivity")
	}
	before := l.counter(t, eff.ID, RuleICMP)
	sendRaw(ns, rawICMP4(t, n.Addr4.String(), "198.51.100.1", 13), addr("198.51.100.1"))
	l.waitCounter(t, eff.ID, RuleICMP, before)
}

// TestPrivilegedIPv4OnlyNode: on a node with IPv6 disabled, experiments get
// IPv4 only and work.
func TestPrivilegedIPv4OnlyNode(t *testing.T) {
	l := newLab(t)
	for _, k := range []string{"net/ipv6/conf/all/disable_ipv6", "net/ipv6/conf/default/disable_ipv6"} {
		if err := l.w.Node.SetSysctl(k, "1"); err != nil {
			t.Fatal(err)
		}
	}
	g, err := New(Config{HostNS: l.w.Node.NS(), Uplink: netlab.NodeUplinkIf, NFLOGGroup: l.group, Reserved: labReserved})
	if err != nil {
		t.Fatal(err)
	}
	l.g = g
	eff := &configs.Effective{ID: "v" + randSuffix()[:4], IPv4: true, IPv6: true,
		TCP: []configs.Dest{dest("198.51.100.7/32", pr(7, 7))}}
	n, ns := l.add(t, eff, 0)
	if n.Addr6.IsValid() {
		t.Errorf("experiment got IPv6 address %s on an IPv4-only node", n.Addr6)
	}
	c, err := dialIn(ns, "tcp", "198.51.100.7:7", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echo(t, c, "v4 only")
}
