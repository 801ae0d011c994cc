package gateway

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/nftables"

	"github.com/arkgw/arkgw/configs"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

func dest(p string, rs ...configs.PortRange) configs.Dest {
	return configs.Dest{Prefix: pfx(p), Ports: rs}
}

func pr(lo, hi uint16) configs.PortRange { return configs.PortRange{Lo: lo, Hi: hi} }

func testNet(t testing.TB, id string, slot int) *Net {
	g := &Gateway{cfg: Config{Pool4: DefaultPool4, Pool6: DefaultPool6}}
	a4, g4, a6, g6, err := g.Addresses(slot)
	if err != nil {
		t.Fatal(err)
	}
	return &Net{ID: id, Slot: slot, HostIf: HostIfName(id), Addr4: a4, GW4: g4, Addr6: a6, GW6: g6}
}

func fullEff(id string) *configs.Effective {
	return &configs.Effective{
		ID: id, IPv4: true, IPv6: true,
		TCP:          []configs.Dest{dest("198.51.100.0/24", pr(80, 80), pr(443, 443)), dest("2001:db8:100::/48", pr(1, 1024))},
		UDP:          []configs.Dest{dest("203.0.113.7/32", pr(7, 7))},
		ICMP:         []configs.ICMPType{{Type: 8}, {V6: true, Type: 128}},
		SynOnlyPorts: []configs.PortRange{pr(22, 22), pr(8000, 8100)},
		Protocols:    []uint8{47},
		SpoofSources: []netip.Addr{addr("192.0.2.9")}, SpoofDestinations: []netip.Addr{addr("198.51.100.9")},
		BackChannel: netip.MustParseAddrPort("203.0.113.5:9000"),
	}
}

func TestCompileGolden(t *testing.T) {
	cases := []struct {
		name string
		in   CompileInput
	}{
		{"empty", CompileInput{Uplink: "eth0", NFLOGGroup: 5}},
		{"full", CompileInput{Uplink: "eth0", NFLOGGroup: 5, DefaultRouters: []netip.Addr{addr("192.168.77.1"), addr("fd77::1")},
			Exps: []CompileExp{{Eff: fullEff("e1"), Net: testNet(t, "e1", 0)}}}},
		{"ipv4-only-node", CompileInput{Uplink: "eth0", NFLOGGroup: 5, Exps: []CompileExp{{Eff: fullEff("e4"), Net: func() *Net {
			n := testNet(t, "e4", 2)
			n.Addr6, n.GW6 = netip.Addr{}, netip.Addr{}
			return n
		}()}}}},
		{"two-dnsany-allpackets", CompileInput{NFLOGGroup: 9, Exps: []CompileExp{
			{Eff: &configs.Effective{ID: "b", IPv4: true, DNSAny: true, ICMPAny: true, AllPackets: []netip.Prefix{pfx("198.51.100.0/24")}}, Net: testNet(t, "b", 3)},
			{Eff: &configs.Effective{ID: "a", IPv4: true, IPv6: true}, Net: testNet(t, "a", 1)},
		}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rs, err := Compile(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			got := rs.Render()
			path := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update)", err)
			}
			if got != string(want) {
				t.Errorf("ruleset differs from %s (go test -run TestCompileGolden -update to accept):\n%s", path, got)
			}
		})
	}
}

func TestCompileRejects(t *testing.T) {
	n := testNet(t, "e1", 0)
	cases := []struct {
		name string
		in   CompileInput
		want string
	}{
		{"bad id", CompileInput{Exps: []CompileExp{{Eff: &configs.Effective{ID: "Bad"}, Net: n}}}, "experiment id"},
		{"no net", CompileInput{Exps: []CompileExp{{Eff: &configs.Effective{ID: "e1"}}}}, "without"},
		{"same if", CompileInput{Exps: []CompileExp{{Eff: &configs.Effective{ID: "e1"}, Net: n}, {Eff: &configs.Effective{ID: "e2"}, Net: n}}}, "share interface"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Compile(tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want containing %q", err, tc.want)
			}
		})
	}
}

func TestBoxesDisjoint(t *testing.T) {
	cases := []struct {
		name  string
		in    []configs.Dest
		want4 int
	}{
		{"disjoint", []configs.Dest{dest("198.51.100.0/24", pr(80, 80)), dest("203.0.113.0/24", pr(80, 80))}, 2},
		{"nested other ports", []configs.Dest{dest("198.51.100.0/24", pr(80, 80)), dest("198.51.100.7/32", pr(22, 22))}, 2},
		{"nested overlap", []configs.Dest{dest("198.51.100.0/24", pr(1, 100)), dest("198.51.100.7/32", pr(50, 200))}, -1},
		{"adjacent ports merge", []configs.Dest{dest("198.51.100.0/24", pr(1, 10), pr(11, 20))}, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v4, _, err := boxes(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if tc.want4 >= 0 && len(v4) != tc.want4 {
				t.Errorf("got %d elements, want %d", len(v4), tc.want4)
			}
			// No two boxes overlap.
			for i := range v4 {
				for j := i + 1; j < len(v4); j++ {
					a, b := v4[i], v4[j]
					addrOv := a.Key[0].Addr.Compare(b.End[0].Addr) <= 0 && b.Key[0].Addr.Compare(a.End[0].Addr) <= 0
					portOv := a.Key[1].Num <= b.End[1].Num && b.Key[1].Num <= a.End[1].Num
					if addrOv && portOv {
						t.Errorf("elements %d and %d overlap: %v %v", i, j, a, b)
					}
				}
			}
		})
	}
}

func TestAddresses(t *testing.T) {
	g := &Gateway{cfg: Config{Pool4: DefaultPool4, Pool6: DefaultPool6}}
	cases := []struct {
		slot           int
		a4, g4, a6, g6 string
	}{
		{0, "10.250.0.2", "10.250.0.1", "fd00:a4c::2", "fd00:a4c::1"},
		{1, "10.250.0.6", "10.250.0.5", "fd00:a4c:0:1::2", "fd00:a4c:0:1::1"},
		{300, "10.250.4.178", "10.250.4.177", "fd00:a4c:0:12c::2", "fd00:a4c:0:12c::1"},
	}
	for _, tc := range cases {
		a4, g4, a6, g6, err := g.Addresses(tc.slot)
		if err != nil {
			t.Fatal(err)
		}
		if a4.String() != tc.a4 || g4.String() != tc.g4 || a6.String() != tc.a6 || g6.String() != tc.g6 {
			t.Errorf("slot %d: %s %s %s %s", tc.slot, a4, g4, a6, g6)
		}
	}
	if _, _, _, _, err := g.Addresses(16384); err == nil {
		t.Error("slot beyond the /16 pool accepted")
	}
}

func TestAdmits(t *testing.T) {
	eff := fullEff("e1")
	n := testNet(t, "e1", 0)
	routers := []netip.Addr{addr("192.168.77.1")}
	cases := []struct {
		name string
		k    FlowKey
		want bool
	}{
		{"tcp allowed", FlowKey{Proto: 6, Src: n.Addr4, Dst: addr("198.51.100.80"), DstPort: 80}, true},
		{"tcp other port", FlowKey{Proto: 6, Src: n.Addr4, Dst: addr("198.51.100.80"), DstPort: 81}, false},
		{"tcp v6", FlowKey{Proto: 6, Src: n.Addr6, Dst: addr("2001:db8:100::80"), DstPort: 80}, true},
		{"backchannel", FlowKey{Proto: 6, Src: n.Addr4, Dst: addr("203.0.113.5"), DstPort: 9000}, true},
		{"syn-only flow on syn port", FlowKey{Proto: 6, Src: n.Addr4, Dst: addr("203.0.113.1"), DstPort: 22, Mark: MarkSynOnly}, true},
		{"udp", FlowKey{Proto: 17, Src: n.Addr4, Dst: addr("203.0.113.7"), DstPort: 7}, true},
		{"udp dns restricted", FlowKey{Proto: 17, Src: n.Addr4, Dst: addr("203.0.113.53"), DstPort: 53}, false},
		{"icmp echo", FlowKey{Proto: 1, Src: n.Addr4, Dst: addr("203.0.113.1"), ICMPType: 8}, true},
		{"icmp timestamp", FlowKey{Proto: 1, Src: n.Addr4, Dst: addr("203.0.113.1"), ICMPType: 13}, false},
		{"gre", FlowKey{Proto: 47, Src: n.Addr4, Dst: addr("203.0.113.1")}, true},
		{"reserved", FlowKey{Proto: 1, Src: n.Addr4, Dst: addr("10.1.1.1"), ICMPType: 8}, false},
		{"carrier-grade nat reserved", FlowKey{Proto: 1, Src: n.Addr4, Dst: addr("100.64.0.1"), ICMPType: 8}, false},
		{"ipv4-mapped reserved", FlowKey{Proto: 58, Src: n.Addr6, Dst: addr("::ffff:198.51.100.80"), ICMPType: 128}, false},
		{"router", FlowKey{Proto: 1, Src: n.Addr4, Dst: addr("192.168.77.1"), ICMPType: 8}, true},
		{"spoof ok", FlowKey{Proto: 17, Src: addr("192.0.2.9"), Dst: addr("198.51.100.9"), DstPort: 9, Mark: MarkSpoofed}, true},
		{"spoof elsewhere", FlowKey{Proto: 17, Src: addr("192.0.2.9"), Dst: addr("198.51.100.10"), DstPort: 9}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := Admits(eff, n, labReserved, routers, tc.k); got != tc.want {
				t.Errorf("Admits = %v, want %v", got, tc.want)
			}
		})
	}
}

// The reserved sets hold what configs derives from the registries: by
// default the documentation blocks too, with the lab setting not.
func TestCompileReservedFromRegistry(t *testing.T) {
	in4 := func(s *Set, a netip.Addr) bool {
		for _, e := range s.Elems {
			if e.Key[0].Addr.Compare(a) <= 0 && a.Compare(e.End[0].Addr) <= 0 {
				return true
			}
		}
		return false
	}
	for _, tc := range []struct {
		name     string
		reserved []netip.Prefix
		in, out  []string
	}{
		{"default", nil,
			[]string{"127.0.0.1", "100.64.0.1", "192.0.0.1", "198.18.0.1", "198.51.100.7", "203.0.113.1", "255.255.255.255", "::ffff:8.8.8.8", "64:ff9b:1::1", "2001:db8::1"},
			[]string{"8.8.8.8", "192.0.0.10", "64:ff9b::1", "2001:4860::1"}},
		{"lab", labReserved,
			[]string{"127.0.0.1", "100.64.0.1", "198.18.0.1", "::ffff:8.8.8.8"},
			[]string{"198.51.100.7", "203.0.113.1", "192.0.2.1", "2001:db8:100::7"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs, err := Compile(CompileInput{Reserved: tc.reserved})
			if err != nil {
				t.Fatal(err)
			}
			set := func(a netip.Addr) *Set {
				if a.Is4() {
					return rs.SetByName(setReserved4)
				}
				return rs.SetByName(setReserved6)
			}
			for _, s := range tc.in {
				if a := addr(s); !in4(set(a), a) {
					t.Errorf("%s not in the reserved set", s)
				}
			}
			for _, s := range tc.out {
				if a := addr(s); in4(set(a), a) {
					t.Errorf("%s in the reserved set", s)
				}
			}
		})
	}
}

func TestMarks(t *testing.T) {
	for _, slot := range []int{0, 1, 65533} {
		s, ok := SlotFromMark(MarkForSlot(slot) | MarkAdmitted | MarkSynOnly)
		if !ok || s != slot {
			t.Errorf("slot %d -> %d %v", slot, s, ok)
		}
	}
	if _, ok := SlotFromMark(MarkAdmitted); ok {
		t.Error("mark without slot attributed")
	}
}

func TestIntervalElements(t *testing.T) {
	tb := &nftables.Table{Family: nftables.TableFamilyINet, Name: "x"}
	set := &Set{Name: "r", Fields: []Field{FIPDaddr}, Interval: true,
		Elems: prefixElems([]netip.Prefix{pfx("10.0.0.0/8"), pfx("224.0.0.0/3")})}
	_, elems, err := nftSet(tb, set)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range elems {
		got = append(got, fmt.Sprintf("%v/%v", netip.AddrFrom4([4]byte(e.Key)), e.IntervalEnd))
	}
	// nft's encoding: a leading interval end at 0, start, end+1 (flagged),
	// and no end element for a range that reaches the top.
	want := "0.0.0.0/true 10.0.0.0/false 11.0.0.0/true 224.0.0.0/false"
	if strings.Join(got, " ") != want {
		t.Errorf("elements %s, want %s", strings.Join(got, " "), want)
	}
	// Concatenated interval elements: each field padded to 4 bytes.
	cset := &Set{Name: "c", Fields: []Field{FIPDaddr, FTHDport}, Interval: true,
		Elems: []Elem{{Key: []Value{{Addr: addr("198.51.100.0")}, {Num: 80}}, End: []Value{{Addr: addr("198.51.100.255")}, {Num: 81}}}}}
	_, celems, err := nftSet(tb, cset)
	if err != nil {
		t.Fatal(err)
	}
	if k, e := fmt.Sprintf("%x", celems[0].Key), fmt.Sprintf("%x", celems[0].KeyEnd); k != "c633640000500000" || e != "c63364ff00510000" {
		t.Errorf("concat key %s end %s", k, e)
	}
}

// Compiling is deterministic: the order experiments arrive in (adds and
// removes in any order) does not change the ruleset.
func TestCompileOrderIndependent(t *testing.T) {
	var exps []CompileExp
	for i, id := range []string{"c", "a", "d", "b"} {
		exps = append(exps, CompileExp{Eff: fullEff(id), Net: testNet(t, id, i)})
	}
	first := ""
	for _, perm := range [][]int{{0, 1, 2, 3}, {3, 2, 1, 0}, {1, 3, 0, 2}} {
		in := CompileInput{Uplink: "eth0", NFLOGGroup: 1}
		for _, i := range perm {
			in.Exps = append(in.Exps, exps[i])
		}
		rs, err := Compile(in)
		if err != nil {
			t.Fatal(err)
		}
		if first == "" {
			first = rs.Render()
		} else if rs.Render() != first {
			t.Fatalf("order %v renders differently", perm)
		}
	}
}
