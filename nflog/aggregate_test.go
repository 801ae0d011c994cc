package nflog

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/arkgw/arkgw/alert"
)

var t0 = time.Date(2026, 11, 25, 18, 0, 0, 0, time.UTC)

func tcpEv(at time.Duration, exp, dst string, dport, sport uint16) Event {
	return Event{Time: t0.Add(at), Experiment: exp, Rule: "tcp-dst", Packet: Packet{
		ProtoNum: 6, Src: netip.MustParseAddr("10.250.0.2"), Dst: netip.MustParseAddr(dst), SrcPort: sport, DstPort: dport, Len: 60, TCPFlags: 2}}
}

func sumPackets(rs []alert.Record) (n uint64) {
	for _, r := range rs {
		n += r.Packets
	}
	return n
}

func TestAggregatorFirstPacketThenWindow(t *testing.T) {
	a := NewAggregator(time.Minute, 10)
	r, ok := a.Add(tcpEv(0, "e1", "198.51.100.1", 25, 40000))
	if !ok || r.Packets != 1 || r.Kind != alert.KindPacket || r.Dst != "198.51.100.1" || r.DstPort != 25 || r.SrcPort != 40000 || r.Proto != "tcp" || !r.Time.Equal(t0) {
		t.Fatalf("first packet: ok=%v %+v", ok, r)
	}
	var all []alert.Record
	all = append(all, r)
	for i := 1; i <= 99; i++ {
		if _, ok := a.Add(tcpEv(time.Duration(i)*100*time.Millisecond, "e1", "198.51.100.1", 25, 40000)); ok {
			t.Fatalf("packet %d of an open key raised an immediate alert", i)
		}
	}
	if got := a.Due(t0.Add(59 * time.Second)); len(got) != 0 {
		t.Fatalf("flushed before the window ended: %+v", got)
	}
	got := a.Due(t0.Add(60 * time.Second))
	if len(got) != 1 {
		t.Fatalf("want one aggregate at window end, got %d", len(got))
	}
	g := got[0]
	if g.Packets != 99 || g.Bytes != 99*60 || !g.FirstSeen.Equal(t0.Add(100*time.Millisecond)) || !g.LastSeen.Equal(t0.Add(9900*time.Millisecond)) || g.SrcPort != 40000 || g.Src != "10.250.0.2" {
		t.Fatalf("aggregate %+v", g)
	}
	all = append(all, got...)
	if sumPackets(all) != 100 {
		t.Fatalf("sum of packets %d, want 100", sumPackets(all))
	}
	if a.Open() != 0 {
		t.Fatalf("open after flush: %d", a.Open())
	}
	// After the window the same key alerts again at once.
	if _, ok := a.Add(tcpEv(61*time.Second, "e1", "198.51.100.1", 25, 40000)); !ok {
		t.Fatal("no immediate alert for a key whose window ended")
	}
}

func TestAggregatorKeys(t *testing.T) {
	icmp := func(typ uint8) Event {
		return Event{Time: t0, Experiment: "e1", Rule: "icmp", Packet: Packet{ProtoNum: 1, HasICMP: true, ICMPType: typ,
			Src: netip.MustParseAddr("10.250.0.2"), Dst: netip.MustParseAddr("198.51.100.1"), Len: 84}}
	}
	cases := []struct {
		name  string
		a, b  Event
		split bool
	}{
		{"same key", tcpEv(0, "e1", "198.51.100.1", 25, 1), tcpEv(1, "e1", "198.51.100.1", 25, 2), false},
		{"other port", tcpEv(0, "e1", "198.51.100.1", 25, 1), tcpEv(1, "e1", "198.51.100.1", 26, 1), true},
		{"other dst", tcpEv(0, "e1", "198.51.100.1", 25, 1), tcpEv(1, "e1", "198.51.100.2", 25, 1), true},
		{"other experiment", tcpEv(0, "e1", "198.51.100.1", 25, 1), tcpEv(1, "e2", "198.51.100.1", 25, 1), true},
		{"icmp same type", icmp(8), icmp(8), false},
		{"icmp other type", icmp(8), icmp(13), true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := NewAggregator(time.Minute, 10)
			a.Add(c.a)
			_, second := a.Add(c.b)
			if second != c.split {
				t.Fatalf("second packet alerted=%v, want %v", second, c.split)
			}
		})
	}
	a := NewAggregator(time.Minute, 10)
	r, _ := a.Add(icmp(8))
	if r.ICMPType == nil || *r.ICMPType != 8 || r.ICMPCode == nil || *r.ICMPCode != 0 || r.DstPort != 0 || r.Proto != "icmp" {
		t.Fatalf("icmp record %+v", r)
	}
}

func TestAggregatorMixedSources(t *testing.T) {
	a := NewAggregator(time.Minute, 10)
	a.Add(tcpEv(0, "e1", "198.51.100.1", 25, 1))
	a.Add(tcpEv(1, "e1", "198.51.100.1", 25, 2))
	ev := tcpEv(2, "e1", "198.51.100.1", 25, 2)
	ev.Src = netip.MustParseAddr("192.0.2.66") // spoofed
	a.Add(ev)
	got := a.FlushAll(t0.Add(time.Second))
	if len(got) != 1 || got[0].Src != "" || got[0].SrcPort != 0 || got[0].Packets != 2 {
		t.Fatalf("mixed-source aggregate %+v", got)
	}
}

func udpEv(at time.Duration, exp string, dst netip.Addr, dport uint16) Event {
	return Event{Time: t0.Add(at), Experiment: exp, Rule: "udp-dst", Packet: Packet{
		ProtoNum: 17, Src: netip.MustParseAddr("10.250.0.2"), Dst: dst, SrcPort: 40000, DstPort: dport, Len: 33}}
}

// One experiment floods distinct address:port pairs (the attack that once
// blinded the alerting of the whole node). Another experiment's
// violations keep their own lines with every detail, the flooder's new
// kind of violation (TCP to port 22) gets its own line, the flood is
// raised once, its lines per window are bounded, and every packet is
// still accounted exactly.
func TestAggregatorBoundedUnderFlood(t *testing.T) {
	const cap = 100
	a := NewAggregator(time.Minute, cap)
	var recs []alert.Record
	const n = 200000 // 1500 pps for 133 s
	var e2Keys int
	sawSSH := false
	for i := 0; i < n; i++ {
		at := time.Duration(i) * time.Second / 1500
		dst := netip.AddrFrom4([4]byte{198, 51, 100, byte(i % 256)})
		ev := udpEv(at, "e1", dst, uint16(1024+i%50000))
		if a2, ok := a.Add(ev); ok {
			recs = append(recs, a2)
		}
		if i%1500 == 0 {
			// e2: one new violation a second, to other ports.
			if r, ok := a.Add(tcpEv(at, "e2", "203.0.113.9", uint16(1000+i/1500), 1)); ok {
				recs = append(recs, r)
				e2Keys++
			} else {
				t.Fatalf("e2's violation %d raised no line during e1's flood", i/1500)
			}
		}
		if i == n/2 {
			r, ok := a.Add(tcpEv(at, "e1", "198.51.100.1", 22, 5555))
			if !ok || r.Kind != alert.KindPacket || r.Dst != "198.51.100.1" || r.DstPort != 22 || r.Rule != "tcp-dst" {
				t.Fatalf("e1's first TCP violation during its flood: %v %+v", ok, r)
			}
			recs = append(recs, r)
			sawSSH = true
		}
		if a.Open() > 2*(cap+a.MaxKinds) || a.OpenOverflow() > 2*(a.MaxSummaries+1) {
			t.Fatalf("open aggregates %d/%d exceed the per-experiment caps", a.Open(), a.OpenOverflow())
		}
		recs = append(recs, a.Due(ev.Time)...)
	}
	recs = append(recs, a.FlushAll(t0.Add(time.Hour))...)
	if !sawSSH {
		t.Fatal("no TCP probe sent")
	}
	perExp := map[string]uint64{}
	lines := map[string]int{}
	floods := 0
	for _, r := range recs {
		perExp[r.Experiment] += r.Packets
		lines[r.Experiment]++
		if r.Kind == alert.KindFlood {
			floods++
			if r.Experiment != "e1" || r.Packets != 0 {
				t.Fatalf("flood record %+v", r)
			}
		}
		if r.Experiment == "e2" && (r.Kind != alert.KindPacket || r.DstPort == 0 || r.Dst != "203.0.113.9" || strings.Contains(r.Message, "summary")) {
			t.Fatalf("e2 record without its details: %+v", r)
		}
	}
	if perExp["e1"] != n+1 || perExp["e2"] != uint64(e2Keys) {
		t.Fatalf("per experiment packets %v, want e1 %d, e2 %d", perExp, n+1, e2Keys)
	}
	if floods != 1 {
		t.Fatalf("%d flood records for one continuous flood, want 1", floods)
	}
	windows := int(time.Duration(n)*time.Second/1500/time.Minute) + 1
	if max := windows * (2*cap + a.MaxSummaries + 2 + 2); lines["e1"] > max {
		t.Fatalf("e1 wrote %d lines in %d windows, bound %d", lines["e1"], windows, max)
	}
	t.Logf("flood of %d packets: e1 %d lines in %d windows; e2 %d lines", n, lines["e1"], windows, lines["e2"])
}

// A day of the flood (1500 distinct violations a second, all day) writes
// what the alert files hold several times over: retention (alert.FileSink:
// 64 MiB, 5 rotated files) is not rotated out by one flooding experiment.
// The day is extrapolated from ten windows, with a fake clock.
func TestAggregatorDayOfFloodFitsRetention(t *testing.T) {
	a := NewAggregator(time.Minute, 0)
	const pps, windows = 1500, 10
	var bytes, lines int
	emit := func(r alert.Record) {
		// As the daemon writes it: with title and contacts.
		r.Node, r.Title, r.Contacts = "pi-node-17", "an experiment with a long enough title", []string{"A. Researcher <researcher@example.edu>"}
		b, _ := json.Marshal(r)
		bytes += len(b) + 1
		lines++
	}
	for i := 0; i < pps*60*windows; i++ {
		at := time.Duration(i) * time.Second / pps
		dst := netip.AddrFrom4([4]byte{198, 51, byte(i / 65536 % 256), byte(i % 256)})
		ev := udpEv(at, "e1", dst, uint16(1024+i%60000))
		if r, ok := a.Add(ev); ok {
			emit(r)
		}
		if i%pps == 0 {
			for _, r := range a.Due(ev.Time) {
				emit(r)
			}
		}
	}
	perDay := bytes * (24 * 60 / windows)
	retention := 64 << 20 * 6
	t.Logf("flood: %d lines, %d bytes in %d windows; a day: %d MB of %d MB retained", lines, bytes, windows, perDay>>20, retention>>20)
	if perDay > retention/4 {
		t.Fatalf("a day of flood writes %d MB: more than a quarter of the %d MB of alert files kept", perDay>>20, retention>>20)
	}
}

func TestEnforcer(t *testing.T) {
	rec := func(exp, kind string) alert.Record { return alert.Record{Experiment: exp, Kind: kind, Message: "m"} }
	cases := []struct {
		name      string
		stopAfter int
		times     []time.Duration
		kind      string
		stopAt    int // index of the observation that stops; -1 never
	}{
		{"off", 0, []time.Duration{0, 1, 2, 3}, alert.KindPacket, -1},
		{"third in window", 3, []time.Duration{0, time.Minute, 2 * time.Minute}, alert.KindPacket, 2},
		{"spread beyond window", 3, []time.Duration{0, 6 * time.Minute, 12 * time.Minute, 18 * time.Minute}, alert.KindPacket, -1},
		{"window slides", 3, []time.Duration{0, 6 * time.Minute, 12 * time.Minute, 13 * time.Minute}, alert.KindPacket, 3},
		{"dns counts", 2, []time.Duration{0, time.Second}, alert.KindDNS, 1},
		{"flood counts", 2, []time.Duration{0, time.Second}, alert.KindFlood, 1},
		{"overrun does not count", 2, []time.Duration{0, time.Second, 2 * time.Second}, alert.KindOverrun, -1},
		{"stops once", 1, []time.Duration{0, time.Second, 2 * time.Second}, alert.KindPacket, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := NewEnforcer(c.stopAfter, 10*time.Minute)
			for i, d := range c.times {
				reason, stop := e.Observe(rec("e1", c.kind), t0.Add(d))
				if stop != (i == c.stopAt) {
					t.Fatalf("observation %d: stop=%v, want stop at %d", i, stop, c.stopAt)
				}
				if stop && reason == "" {
					t.Fatal("stop without reason")
				}
				// Another experiment is independent.
				if _, s := e.Observe(rec("e2", alert.KindOverrun), t0.Add(d)); s {
					t.Fatal("e2 stopped")
				}
			}
		})
	}
	e := NewEnforcer(1, time.Minute)
	e.Observe(rec("e1", alert.KindPacket), t0)
	e.Forget("e1")
	if _, stop := e.Observe(rec("e1", alert.KindPacket), t0); !stop {
		t.Fatal("Forget did not re-arm")
	}
}
