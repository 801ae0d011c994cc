package configs

import (
	"net/netip"
	"time"
)

// PortRange is an inclusive range of ports within 1..65535.
type PortRange struct {
	Lo, Hi uint16
}

// AllPorts is the range that "*" stands for.
var AllPorts = PortRange{Lo: 1, Hi: 65535}

// Dest is one destination allowlist entry: a prefix and the ports allowed on it.
// Ports is sorted and merged; a Dest never has an empty Ports list.
type Dest struct {
	Prefix netip.Prefix
	Ports  []PortRange
}

// ICMPType is an ICMP (V6=false) or ICMPv6 (V6=true) message type.
type ICMPType struct {
	V6   bool
	Type uint8
}

// Contact is one experimenter.
type Contact struct {
	Name  string
	Email string
}

// Effective is what one admitted experiment may do on this node: the
// experiment's declaration (already checked to lie within the owner's
// allowance) with reserved destinations removed and limits taken as the
// minimum of both sides. It is a plain value: the gateway compiles it into
// rules, the DNS proxy takes its name list, the sandbox its limits.
type Effective struct {
	ID            string // experiment id (see ValidID)
	Title         string
	Experimenters []Contact

	IPv4, IPv6 bool

	// TCP and UDP destinations, merged (no overlaps), reserved ranges removed.
	TCP []Dest
	UDP []Dest
	// AllPackets, when non-empty, bounds every packet of every protocol:
	// the destination must lie in one of these prefixes.
	AllPackets []netip.Prefix
	// ICMPAny allows every ICMP and ICMPv6 type; otherwise only ICMP.
	ICMPAny bool
	ICMP    []ICMPType
	// SynOnlyPorts: TCP SYN (without data) to any destination on these ports.
	SynOnlyPorts []PortRange
	// Protocols: other IP protocol numbers allowed (not 1, 6, 17, 58).
	Protocols []uint8

	// Spoofing: packets with a source in SpoofSources may go only to
	// SpoofDestinations, and are never NATed.
	SpoofSources      []netip.Addr
	SpoofDestinations []netip.Addr

	// DNS: names the experiment may resolve through the proxy.
	DNSAny   bool
	DNSNames []string // lowercase, fully qualified (trailing dot), suffix match
	// DNSDenyNXDomain answers denied names with NXDOMAIN instead of REFUSED.
	DNSDenyNXDomain bool
	DNSQPS          int

	// BackChannel is an optional TCP endpoint the experiment may always reach.
	BackChannel netip.AddrPort

	Limits Limits

	// Lab is the node's [lab] section at admission: with
	// DocumentationPrefixes the documentation blocks are not reserved.
	Lab LabPolicy

	// Sandbox inputs.
	Container       string
	ContainerSHA256 string // the manifest's pin; "" = none
	Architectures   []string
	Command         []string
	FilesDir        string // absolute path on the node; "" = none
	Start           time.Time
}

// Limits are the minimum of the owner's and the experiment's values.
// Zero means "no limit" only where the field says so.
type Limits struct {
	MaxMbps     float64 // > 0
	MaxMBPerDay int64   // 0 = no daily maximum
	MaxHours    float64 // > 0
	CPUPercent  int     // percent of one core, from the CPU class
	CPUClass    string
	MaxRAMMB    int64
	TmpfsMB     int64 // 0 = no tmpfs
	OutputMB    int64 // cap for each of stdout and stderr
	// MaxFlows caps the experiment's tracked flows (conntrack entries it
	// opened); 0 = the gateway's default, a share of nf_conntrack_max.
	MaxFlows int64
}

// DNSRestricted reports whether the experiment's names are restricted, in
// which case port-53 traffic to other resolvers is redirected to the proxy.
func (e *Effective) DNSRestricted() bool { return !e.DNSAny }
