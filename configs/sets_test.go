package configs

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"go4.org/netipx"
)

func prefixSetOf(ds []Dest) *netipx.IPSet {
	var b netipx.IPSetBuilder
	for _, d := range ds {
		b.AddPrefix(d.Prefix)
	}
	s, _ := b.IPSet()
	return s
}

// checkDisjoint fails when two Dests share an (address, port) pair or a
// Dest is malformed: what the kernel's interval sets require.
func checkDisjoint(t *testing.T, what string, ds []Dest) {
	t.Helper()
	for i, a := range ds {
		if len(a.Ports) == 0 || a.Prefix != a.Prefix.Masked() {
			t.Errorf("%s: malformed %v", what, a)
		}
		for k := 1; k < len(a.Ports); k++ {
			if int(a.Ports[k].Lo) <= int(a.Ports[k-1].Hi)+1 {
				t.Errorf("%s: ports of %v not sorted and merged", what, a)
			}
		}
		for _, b := range ds[i+1:] {
			if !a.Prefix.Overlaps(b.Prefix) {
				continue
			}
			for _, ra := range a.Ports {
				for _, rb := range b.Ports {
					if ra.Lo <= rb.Hi && rb.Lo <= ra.Hi {
						t.Errorf("%s: %v and %v overlap", what, FormatDest(a), FormatDest(b))
					}
				}
			}
		}
	}
}

func destContains(ds []Dest, a netip.Addr, port uint16) bool {
	for _, d := range ds {
		if d.Prefix.Contains(a) && portsContain(d.Ports, port) {
			return true
		}
	}
	return false
}

func TestMergeDests(t *testing.T) {
	d := func(s string) Dest {
		ds, err := ParseDest(s, false)
		if err != nil {
			t.Fatal(err)
		}
		return ds[0]
	}
	tests := []struct {
		in   []string
		drop []netip.Prefix
		want string
	}{
		{[]string{"198.51.100.0/25:80", "198.51.100.128/25:80"}, nil, "198.51.100.0/24:80"},
		{[]string{"198.51.100.0/24:80", "198.51.100.0/24:443"}, nil, "198.51.100.0/24:80,443"},
		{[]string{"198.51.100.0/24:80-90", "198.51.100.0/24:85-100"}, nil, "198.51.100.0/24:80-100"},
		{[]string{"198.51.100.0/24:*", "198.51.100.7:80"}, nil, "198.51.100.0/24:*"},
		{[]string{"198.51.100.0/24:80", "198.51.100.7:1-100"}, nil, "198.51.100.0/24:80 198.51.100.7/32:1-79,81-100"},
		{[]string{"0.0.0.0/0:53"}, []netip.Prefix{netip.MustParsePrefix("0.0.0.0/1")}, "128.0.0.0/1:53"},
		{[]string{"[2001:db8::/32]:53", "[2001:db8::/33]:53", "198.51.100.0/24:53"}, nil, "198.51.100.0/24:53 [2001:db8::/32]:53"},
		{[]string{"10.0.0.0/8:80"}, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, ""},
		{nil, nil, ""},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.in, " "), func(t *testing.T) {
			var in []Dest
			for _, s := range tt.in {
				in = append(in, d(s))
			}
			got := MergeDests(in, prefixSet(tt.drop...))
			if s := dests(t, got); s != tt.want {
				t.Errorf("got %q, want %q", s, tt.want)
			}
			checkDisjoint(t, "merged", got)
		})
	}
}

// Random inputs: the merged form is disjoint and has exactly the same
// (address, port) pairs as the input minus the dropped set.
func TestMergeDestsRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	drop := ReservedSet(LabPolicy{DocumentationPrefixes: true}, []netip.Addr{netip.MustParseAddr("10.0.0.1")})
	randPrefix := func() netip.Prefix {
		var b [4]byte
		b[0] = []byte{10, 198, 203, 0, 192}[r.IntN(5)]
		b[1], b[2], b[3] = byte(r.IntN(4)), byte(r.IntN(256)), byte(r.IntN(256))
		p, _ := netip.AddrFrom4(b).Prefix(r.IntN(33))
		return p
	}
	randPorts := func() []PortRange {
		var rs []PortRange
		for range 1 + r.IntN(3) {
			lo := uint16(1 + r.IntN(100))
			rs = append(rs, PortRange{lo, lo + uint16(r.IntN(20))})
		}
		return mergeRanges(rs)
	}
	for iter := range 200 {
		var in []Dest
		for range 1 + r.IntN(6) {
			in = append(in, Dest{Prefix: randPrefix(), Ports: randPorts()})
		}
		got := MergeDests(in, drop)
		checkDisjoint(t, fmt.Sprint(iter), got)
		for range 300 {
			var b [4]byte
			b[0] = []byte{10, 198, 203, 0, 192}[r.IntN(5)]
			b[1], b[2], b[3] = byte(r.IntN(4)), byte(r.IntN(256)), byte(r.IntN(256))
			if r.IntN(4) == 0 { // an address of some input
				b = in[r.IntN(len(in))].Prefix.Addr().As4()
			}
			a := netip.AddrFrom4(b)
			port := uint16(1 + r.IntN(130))
			want := destContains(in, a, port) && !drop.Contains(a)
			if destContains(got, a, port) != want {
				t.Fatalf("iteration %d: %v port %d: merged %v, want %v\nin  %v\nout %v", iter, a, port, !want, want, in, got)
			}
		}
	}
}

func TestUncovered(t *testing.T) {
	allowed := []Dest{
		{Prefix: netip.MustParsePrefix("0.0.0.0/0"), Ports: []PortRange{pr(80, 80)}},
		{Prefix: netip.MustParsePrefix("198.51.100.0/24"), Ports: []PortRange{pr(1000, 2000)}},
		{Prefix: netip.MustParsePrefix("2001:db8::/32"), Ports: []PortRange{AllPorts}},
	}
	anyPorts := []PortRange{pr(443, 443)}
	tests := []struct {
		prefix string
		ports  []PortRange
		miss   string // "" = covered
	}{
		{"198.51.100.0/24", []PortRange{pr(80, 80), pr(443, 443)}, ""},
		{"198.51.100.0/24", []PortRange{pr(80, 443)}, "198.51.100.0/24 81-442"},
		{"198.51.100.0/25", []PortRange{pr(1000, 1500)}, ""},
		{"198.51.100.0/23", []PortRange{pr(1000, 1500)}, "198.51.101.0/24 1000-1500"},
		{"203.0.113.0/24", []PortRange{pr(999, 1000)}, "203.0.113.0/24 999-1000"},
		{"198.51.100.0/24", []PortRange{pr(999, 1000)}, "198.51.100.0/24 999-999"},
		{"2001:db8:1::/48", []PortRange{AllPorts}, ""},
		{"2001:db9::/32", []PortRange{pr(443, 443)}, ""},
		{"2001:db9::/32", []PortRange{pr(22, 22)}, "2001:db9::/32 22-22"},
		{"0.0.0.0/0", []PortRange{AllPorts}, "0.0.0.0/0 1-79"},
	}
	for _, tt := range tests {
		set := prefixSet(netip.MustParsePrefix(tt.prefix))
		rest, iv, bad := uncovered(set, tt.ports, allowed, anyPorts)
		got := ""
		if bad {
			got = fmt.Sprintf("%s %d-%d", rest.Prefixes()[0], iv.Lo, iv.Hi)
		}
		if got != tt.miss {
			t.Errorf("%s %v: got %q, want %q", tt.prefix, tt.ports, got, tt.miss)
		}
	}
}

func TestReservedSet(t *testing.T) {
	s := ReservedSet(LabPolicy{DocumentationPrefixes: true}, []netip.Addr{netip.MustParseAddr("192.168.77.1"), netip.MustParseAddr("fd77::1"), netip.MustParseAddr("::ffff:10.0.0.1")})
	for a, want := range map[string]bool{
		"0.1.2.3": true, "10.9.9.9": true, "10.0.0.1": false, "169.254.1.1": true, "172.16.0.1": true, "172.32.0.1": false,
		"192.168.77.1": false, "192.168.77.2": true, "224.0.0.1": true, "255.255.255.255": true, "198.51.100.1": false,
		"::": true, "::1": true, "::2": false, "fd77::1": false, "fd77::2": true, "fe80::1": true, "ff02::1": true, "2001:db8::1": false,
	} {
		if got := s.Contains(netip.MustParseAddr(a)); got != want {
			t.Errorf("%s reserved = %v, want %v", a, got, want)
		}
	}
}

// Random boxes: uncovered agrees with a brute-force membership check.
func TestUncoveredRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	randPrefix := func() netip.Prefix {
		b := [4]byte{198, 51, byte(r.IntN(4)), byte(r.IntN(256))}
		p, _ := netip.AddrFrom4(b).Prefix(16 + r.IntN(17))
		return p
	}
	randPorts := func() []PortRange {
		var rs []PortRange
		for range 1 + r.IntN(3) {
			lo := uint16(1 + r.IntN(40))
			rs = append(rs, PortRange{lo, lo + uint16(r.IntN(10))})
		}
		return mergeRanges(rs)
	}
	in := func(ds []Dest, a netip.Addr, port uint16) bool { return destContains(ds, a, port) }
	nBad, nOK := 0, 0
	defer func() {
		if nBad < 20 || nOK < 20 {
			t.Errorf("weak test: %d uncovered, %d covered cases", nBad, nOK)
		}
	}()
	for iter := range 2000 {
		var allowed []Dest
		for range r.IntN(8) {
			allowed = append(allowed, Dest{Prefix: randPrefix(), Ports: randPorts()})
		}
		var anyPorts []PortRange
		if r.IntN(3) == 0 {
			anyPorts = randPorts()
		}
		req := Dest{Prefix: randPrefix(), Ports: randPorts()}
		if r.IntN(4) == 0 {
			// A request covered only by the union of two halves with
			// different port sets.
			req = Dest{Prefix: randPrefix(), Ports: []PortRange{pr(10, 20)}}
			if req.Prefix.Bits() < 32 {
				lo, _ := req.Prefix.Addr().Prefix(req.Prefix.Bits() + 1)
				hiAddr := netipx.PrefixLastIP(req.Prefix)
				hi, _ := hiAddr.Prefix(req.Prefix.Bits() + 1)
				allowed = append(allowed, Dest{Prefix: lo, Ports: []PortRange{pr(5, 15), pr(16, 30)}}, Dest{Prefix: hi, Ports: []PortRange{pr(10, 12)}})
				anyPorts = []PortRange{pr(13, 20)}
			}
		} else if r.IntN(2) == 0 && len(allowed) > 0 {
			// Often ask for something inside the allowance.
			d := allowed[r.IntN(len(allowed))]
			p, _ := d.Prefix.Addr().Prefix(min(32, d.Prefix.Bits()+r.IntN(3)))
			req = Dest{Prefix: p, Ports: d.Ports[:1]}
		}
		rest, iv, bad := uncovered(prefixSet(req.Prefix), req.Ports, allowed, anyPorts)
		if bad {
			nBad++
			// The reported part is requested and not allowed.
			for _, p := range rest.Prefixes() {
				for _, port := range []uint16{iv.Lo, iv.Hi} {
					if !req.Prefix.Contains(p.Addr()) || !portsContain(req.Ports, port) {
						t.Fatalf("iteration %d: reported %v port %d is not requested", iter, p, port)
					}
					if in(allowed, p.Addr(), port) || portsContain(anyPorts, port) {
						t.Fatalf("iteration %d: reported %v port %d is allowed", iter, p, port)
					}
				}
			}
			continue
		}
		// Covered: every requested (address, port) is allowed.
		nOK++
		for range 200 {
			a := req.Prefix.Addr().As4()
			host := r.Uint32() & (1<<(32-req.Prefix.Bits()) - 1)
			if req.Prefix.Bits() == 32 {
				host = 0
			}
			v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) | host
			addr := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
			rg := req.Ports[r.IntN(len(req.Ports))]
			port := rg.Lo + uint16(r.IntN(int(rg.Hi-rg.Lo)+1))
			if !in(allowed, addr, port) && !portsContain(anyPorts, port) {
				t.Fatalf("iteration %d: %v port %d requested and not allowed, but reported covered\nreq %v\nallowed %v any %v", iter, addr, port, req, allowed, anyPorts)
			}
		}
	}
}
