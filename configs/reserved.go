package configs

import (
	"net/netip"

	"go4.org/netipx"
)

// Reachability is a registry row's "Globally Reachable" column.
type Reachability int8

const (
	ReachNA  Reachability = iota // "N/A": the row does not decide; the enclosing row does
	ReachNo                      // "False": dropped
	ReachYes                     // "True": reachable even inside a block that is not
)

// SpecialBlock is one row of the IANA special-purpose address registries
// (https://www.iana.org/assignments/iana-ipv4-special-registry and
// iana-ipv6-special-registry, RFC 6890 as updated by RFC 8190), or of the
// multicast address registries for the multicast rows.
type SpecialBlock struct {
	Prefix netip.Prefix
	Name   string
	RFC    string
	// Reachable is the registry's "Globally Reachable" column.
	Reachable Reachability
	// Documentation rows (RFC 5737, RFC 3849, RFC 9637) are reachable
	// only with the node policy's [lab] documentation_prefixes = true.
	Documentation bool
	// Local: the registry says globally reachable, but the service behind
	// the address is the node's own network (an anycast that the home
	// router answers), so arkgw drops it anyway.
	Local bool
}

func sb(p, name, rfc string, r Reachability) SpecialBlock {
	return SpecialBlock{Prefix: netip.MustParsePrefix(p), Name: name, RFC: rfc, Reachable: r}
}

func doc(p, name, rfc string) SpecialBlock {
	b := sb(p, name, rfc, ReachNo)
	b.Documentation = true
	return b
}

func local(p, name, rfc string) SpecialBlock {
	b := sb(p, name, rfc, ReachYes)
	b.Local = true
	return b
}

// SpecialPurpose is the data the reserved destinations are derived from:
// the rows of the IANA special-purpose registries (as of 2025) and the
// multicast blocks. See ReservedPrefixes for how they combine.
var SpecialPurpose = []SpecialBlock{
	// IPv4 special-purpose address registry.
	sb("0.0.0.0/8", "This network", "RFC 791", ReachNo),
	sb("0.0.0.0/32", "This host on this network", "RFC 1122", ReachNo),
	sb("10.0.0.0/8", "Private-Use", "RFC 1918", ReachNo),
	sb("100.64.0.0/10", "Shared Address Space (carrier-grade NAT)", "RFC 6598", ReachNo),
	sb("127.0.0.0/8", "Loopback", "RFC 1122", ReachNo),
	sb("169.254.0.0/16", "Link Local", "RFC 3927", ReachNo),
	sb("172.16.0.0/12", "Private-Use", "RFC 1918", ReachNo),
	sb("192.0.0.0/24", "IETF Protocol Assignments", "RFC 6890", ReachNo),
	sb("192.0.0.0/29", "IPv4 Service Continuity Prefix", "RFC 7335", ReachNo),
	sb("192.0.0.8/32", "IPv4 dummy address", "RFC 7600", ReachNo),
	local("192.0.0.9/32", "Port Control Protocol Anycast", "RFC 7723"),
	sb("192.0.0.10/32", "Traversal Using Relays around NAT Anycast", "RFC 8155", ReachYes),
	sb("192.0.0.170/31", "NAT64/DNS64 Discovery", "RFC 8880, RFC 7050", ReachNo),
	doc("192.0.2.0/24", "Documentation (TEST-NET-1)", "RFC 5737"),
	sb("192.31.196.0/24", "AS112-v4", "RFC 7535", ReachYes),
	sb("192.52.193.0/24", "AMT", "RFC 7450", ReachYes),
	sb("192.88.99.0/24", "Deprecated (6to4 Relay Anycast)", "RFC 7526", ReachNA),
	sb("192.168.0.0/16", "Private-Use", "RFC 1918", ReachNo),
	sb("192.175.48.0/24", "Direct Delegation AS112 Service", "RFC 7534", ReachYes),
	sb("198.18.0.0/15", "Benchmarking", "RFC 2544", ReachNo),
	doc("198.51.100.0/24", "Documentation (TEST-NET-2)", "RFC 5737"),
	doc("203.0.113.0/24", "Documentation (TEST-NET-3)", "RFC 5737"),
	sb("240.0.0.0/4", "Reserved", "RFC 1112", ReachNo),
	sb("255.255.255.255/32", "Limited Broadcast", "RFC 8190, RFC 919", ReachNo),
	// IPv4 multicast address space registry.
	sb("224.0.0.0/4", "Multicast", "RFC 5771", ReachNo),

	// IPv6 special-purpose address registry.
	sb("::1/128", "Loopback Address", "RFC 4291", ReachNo),
	sb("::/128", "Unspecified Address", "RFC 4291", ReachNo),
	sb("::ffff:0:0/96", "IPv4-mapped Address", "RFC 4291", ReachNo),
	sb("64:ff9b::/96", "IPv4-IPv6 Translat.", "RFC 6052", ReachYes),
	sb("64:ff9b:1::/48", "IPv4-IPv6 Translat. (local use)", "RFC 8215", ReachNo),
	sb("100::/64", "Discard-Only Address Block", "RFC 6666", ReachNo),
	sb("100:0:0:1::/64", "Dummy IPv6 Prefix", "RFC 9780", ReachNo),
	sb("2001::/23", "IETF Protocol Assignments", "RFC 2928", ReachNo),
	sb("2001::/32", "TEREDO", "RFC 4380, RFC 8190", ReachNA),
	local("2001:1::1/128", "Port Control Protocol Anycast", "RFC 7723"),
	sb("2001:1::2/128", "Traversal Using Relays around NAT Anycast", "RFC 8155", ReachYes),
	sb("2001:1::3/128", "DNS-SD Service Registration Protocol Anycast", "RFC 9665", ReachYes),
	sb("2001:2::/48", "Benchmarking", "RFC 5180", ReachNo),
	sb("2001:3::/32", "AMT", "RFC 7450", ReachYes),
	sb("2001:4:112::/48", "AS112-v6", "RFC 7535", ReachYes),
	sb("2001:10::/28", "Deprecated (previously ORCHID)", "RFC 4843", ReachNA),
	sb("2001:20::/28", "ORCHIDv2", "RFC 7343", ReachYes),
	sb("2001:30::/28", "Drone Remote ID Protocol Entity Tags (DETs) Prefix", "RFC 9374", ReachYes),
	doc("2001:db8::/32", "Documentation", "RFC 3849"),
	sb("2002::/16", "6to4", "RFC 3056", ReachNA),
	sb("2620:4f:8000::/48", "Direct Delegation AS112 Service", "RFC 7534", ReachYes),
	doc("3fff::/20", "Documentation", "RFC 9637"),
	sb("5f00::/16", "Segment Routing (SRv6) SIDs", "RFC 9602", ReachNo),
	sb("fc00::/7", "Unique-Local", "RFC 4193, RFC 8190", ReachNo),
	sb("fe80::/10", "Link-Local Unicast", "RFC 4291", ReachNo),
	// IPv6 multicast address space registry.
	sb("ff00::/8", "Multicast", "RFC 4291", ReachNo),
}

// LabPolicy is the node policy's [lab] section: settings for test labs
// and demos, never for a node on the Internet.
type LabPolicy struct {
	// DocumentationPrefixes makes the documentation blocks (192.0.2.0/24,
	// 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32, 3fff::/20)
	// reachable: netlab's fake Internet and the demo live there.
	DocumentationPrefixes bool
}

// ReservedPrefixes returns the destinations that are always dropped
// (except the node's default routers), derived from SpecialPurpose: an
// address is dropped when the most specific row containing it that decides
// (True or False) says it is not globally reachable, or is marked Local.
// Rows inside a dropped block that are globally reachable (AMT, AS112,
// TURN anycast, ...) stay reachable; N/A rows (TEREDO, 6to4) take the
// decision of the enclosing row. The result is sorted and merged.
func ReservedPrefixes(lab LabPolicy) []netip.Prefix {
	var b netipx.IPSetBuilder
	// Shorter prefixes first, so a more specific row overrides the
	// enclosing one.
	for bits := 0; bits <= 128; bits++ {
		for _, r := range SpecialPurpose {
			if r.Prefix.Bits() != bits {
				continue
			}
			switch {
			case r.Local:
				b.AddPrefix(r.Prefix)
			case r.Documentation && lab.DocumentationPrefixes:
				b.RemovePrefix(r.Prefix)
			case r.Reachable == ReachNo:
				b.AddPrefix(r.Prefix)
			case r.Reachable == ReachYes:
				b.RemovePrefix(r.Prefix)
			}
		}
	}
	s, _ := b.IPSet()
	return s.Prefixes()
}

// ReservedSet returns the reserved destinations minus the given default routers.
func ReservedSet(lab LabPolicy, routers []netip.Addr) *netipx.IPSet {
	var b netipx.IPSetBuilder
	for _, p := range ReservedPrefixes(lab) {
		b.AddPrefix(p)
	}
	for _, r := range routers {
		b.Remove(r.Unmap())
	}
	s, _ := b.IPSet()
	return s
}
