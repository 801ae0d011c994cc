package configs

import (
	"cmp"
	"net/netip"
	"slices"

	"go4.org/netipx"
)

var (
	all4 = netip.MustParsePrefix("0.0.0.0/0")
	all6 = netip.MustParsePrefix("::/0")
)

func prefixSet(ps ...netip.Prefix) *netipx.IPSet {
	var b netipx.IPSetBuilder
	for _, p := range ps {
		b.AddPrefix(p)
	}
	s, _ := b.IPSet()
	return s
}

// minus returns p minus the set drop.
func minus(p netip.Prefix, drop *netipx.IPSet) *netipx.IPSet {
	var b netipx.IPSetBuilder
	b.AddPrefix(p)
	if drop != nil {
		b.RemoveSet(drop)
	}
	s, _ := b.IPSet()
	return s
}

// setMinus returns a minus b.
func setMinus(a, b *netipx.IPSet) *netipx.IPSet {
	var sb netipx.IPSetBuilder
	sb.AddSet(a)
	sb.RemoveSet(b)
	s, _ := sb.IPSet()
	return s
}

func isEmpty(s *netipx.IPSet) bool { return s == nil || len(s.Ranges()) == 0 }

// cuts returns the elementary port intervals induced by the given range
// lists: within one elementary interval every input range either contains
// all ports or none. Only intervals inside at least one range are returned.
// It is a sweep over the sorted boundaries: O(n log n) for n ranges.
func cuts(lists ...[]PortRange) []PortRange {
	var pts []int
	for _, l := range lists {
		for _, r := range l {
			pts = append(pts, int(r.Lo), int(r.Hi)+1)
		}
	}
	slices.Sort(pts)
	pts = slices.Compact(pts)
	depth := make([]int, len(pts)+1)
	for _, l := range lists {
		for _, r := range l {
			i, _ := slices.BinarySearch(pts, int(r.Lo))
			j, _ := slices.BinarySearch(pts, int(r.Hi)+1)
			depth[i]++
			depth[j]--
		}
	}
	var out []PortRange
	d := 0
	for i := 0; i+1 < len(pts); i++ {
		d += depth[i]
		if d > 0 {
			out = append(out, PortRange{uint16(pts[i]), uint16(pts[i+1] - 1)})
		}
	}
	return out
}

func overlapsAny(r PortRange, rs []PortRange) bool {
	for _, x := range rs {
		if r.Lo <= x.Hi && x.Lo <= r.Hi {
			return true
		}
	}
	return false
}

func portsContain(rs []PortRange, p uint16) bool {
	for _, r := range rs {
		if r.Lo <= p && p <= r.Hi {
			return true
		}
	}
	return false
}

// uncovered returns a part of the request (set x ports) that is not
// covered by the union of allowed boxes and of anyDst ports (every
// destination): the addresses missing for the first port interval that has
// any, or ok=false when all is covered.
func uncovered(set *netipx.IPSet, ports []PortRange, allowed []Dest, anyDst []PortRange) (*netipx.IPSet, PortRange, bool) {
	// Only allowed boxes that meet the request matter, widest first (so
	// the fast path below finds a covering prefix early).
	var rel []PortRange
	for _, r := range anyDst {
		if overlapsAny(r, ports) {
			rel = append(rel, r)
		}
	}
	var meet []Dest
	for _, d := range allowed {
		if !set.OverlapsPrefix(d.Prefix) {
			continue
		}
		use := false
		for _, r := range d.Ports {
			if overlapsAny(r, ports) {
				rel = append(rel, r)
				use = true
			}
		}
		if use {
			meet = append(meet, d)
		}
	}
	slices.SortStableFunc(meet, func(a, b Dest) int { return cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits()) })
	want := set.Prefixes()
	for _, iv := range cuts(ports, rel) {
		if !portsContain(ports, iv.Lo) {
			continue
		}
		if portsContain(anyDst, iv.Lo) {
			continue
		}
		// Fast path: each prefix of the request lies in one allowed prefix.
		covered := true
		for _, p := range want {
			if !slices.ContainsFunc(meet, func(d Dest) bool {
				return d.Prefix.Bits() <= p.Bits() && d.Prefix.Contains(p.Addr()) && portsContain(d.Ports, iv.Lo)
			}) {
				covered = false
				break
			}
		}
		if covered {
			continue
		}
		var b netipx.IPSetBuilder
		b.AddSet(set)
		for _, d := range meet {
			if portsContain(d.Ports, iv.Lo) {
				b.RemovePrefix(d.Prefix)
			}
		}
		rest, _ := b.IPSet()
		if !isEmpty(rest) {
			return rest, iv, true
		}
	}
	return nil, PortRange{}, false
}

// MergeDests returns the union of the destinations minus drop as disjoint
// Dests: no two Dests share an (address, port) pair, so the boxes
// prefix x range can be loaded into a kernel interval set, which rejects
// overlapping elements. Within each elementary port interval the addresses
// are reduced to the fewest prefixes; a prefix's intervals are merged.
// The result is sorted (IPv4 first, then by address and length).
func MergeDests(in []Dest, drop *netipx.IPSet) []Dest {
	lists := make([][]PortRange, 0, len(in))
	for _, d := range in {
		lists = append(lists, d.Ports)
	}
	byPrefix := map[netip.Prefix][]PortRange{}
	for _, iv := range cuts(lists...) {
		var b netipx.IPSetBuilder
		for _, d := range in {
			if portsContain(d.Ports, iv.Lo) {
				b.AddPrefix(d.Prefix)
			}
		}
		if drop != nil {
			b.RemoveSet(drop)
		}
		s, _ := b.IPSet()
		for _, p := range s.Prefixes() {
			byPrefix[p] = append(byPrefix[p], iv)
		}
	}
	out := make([]Dest, 0, len(byPrefix))
	for p, rs := range byPrefix {
		out = append(out, Dest{Prefix: p, Ports: mergeRanges(rs)})
	}
	slices.SortFunc(out, func(a, b Dest) int { return comparePrefix(a.Prefix, b.Prefix) })
	return out
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}
