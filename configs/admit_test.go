package configs

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// labNode is appended to test node policies whose manifests use the
// documentation prefixes (198.51.100.0/24, 2001:db8::/32, ...).
const labNode = "\n[lab]\ndocumentation_prefixes = true\n"

func mustNode(t *testing.T, text string) *NodePolicy {
	t.Helper()
	n, err := ParseNode("node.toml", []byte(text+labNode))
	if err != nil {
		t.Fatalf("node policy: %v", err)
	}
	return n
}

func mustManifest(t *testing.T, top, tables string) *Manifest {
	t.Helper()
	m, err := ParseManifest("manifest.toml", []byte(manifest(top, tables)), "/srv/exp")
	if err != nil {
		t.Fatalf("manifest: %v", err)
	}
	return m
}

func dests(t *testing.T, ds []Dest) string {
	t.Helper()
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = FormatDest(d)
	}
	return strings.Join(s, " ")
}

func conflictStrings(cs []Conflict) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.String()
	}
	return out
}

func TestAdmit(t *testing.T) {
	routers := []netip.Addr{netip.MustParseAddr("192.168.77.1"), netip.MustParseAddr("fd77::1")}
	tests := []struct {
		name   string
		node   string // node.toml text ("" = defaults)
		top    string // manifest top-level keys
		tables string // manifest tables
		env    Env
		want   []string // conflicts, each a substring of one conflict line, in order
		check  func(t *testing.T, eff *Effective)
	}{
		{name: "default node admits everything open",
			top: `tcp = ["0.0.0.0/0:*", "[::/0]:*"]
udp = ["any"]
icmp = ["any"]
dns = ["any"]
syn_only_ports = [22]`,
			check: func(t *testing.T, eff *Effective) {
				if !eff.ICMPAny || !eff.DNSAny || !eff.IPv4 || !eff.IPv6 || FormatPorts(eff.SynOnlyPorts) != "22" {
					t.Errorf("eff %+v", eff)
				}
				for _, d := range append(slices.Clone(eff.TCP), eff.UDP...) {
					if ReservedSet(eff.Lab, nil).OverlapsPrefix(d.Prefix) {
						t.Errorf("reserved destination %v kept", d)
					}
				}
			}},
		{name: "port union covers a port list",
			node: "[permit]\ntcp = [\"0.0.0.0/0:80\"]\ntcp_ports = [443]",
			top:  `tcp = ["198.51.100.0/24:80,443"]`,
			check: func(t *testing.T, eff *Effective) {
				if got := dests(t, eff.TCP); got != "198.51.100.0/24:80,443" {
					t.Errorf("tcp %s", got)
				}
			}},
		{name: "port union does not cover the range between",
			node: "[permit]\ntcp = [\"0.0.0.0/0:80\"]\ntcp_ports = [443]",
			top:  `tcp = ["198.51.100.0/24:80-443"]`,
			want: []string{`tcp[0] "198.51.100.0/24:80-443": exceeds the node's tcp allowlist (ports 81-442 to 198.51.100.0/24 are not allowed); ask the node owner or narrow it`}},
		{name: "whole space exceeds a vetted list",
			node: "[permit]\ntcp = [\"198.51.100.0/24:*\", \"203.0.113.0/24:80\"]",
			top:  `tcp = ["198.51.100.0/25:22", "203.0.113.0/24:80", "0.0.0.0/0:*"]`,
			want: []string{`tcp[2] "0.0.0.0/0:*": exceeds the node's tcp allowlist (`}},
		{name: "prefix split across owner entries is covered",
			node: "[permit]\nudp = [\"198.51.100.0/25:1-100\", \"198.51.100.128/25:*\", \"198.51.100.0/24:100-200\"]",
			top:  `udp = ["198.51.100.0/24:50-150"]`},
		{name: "udp none forbids",
			node: "[permit]\nudp = [\"none\"]\ndns_servers_any = false",
			top:  `udp = ["198.51.100.1:53"]`,
			want: []string{`udp[0] "198.51.100.1:53": exceeds the node's udp allowlist (port 53 to 198.51.100.1/32 is not allowed)`}},
		{name: "dns_servers_any covers port 53 only",
			node: "[permit]\ntcp = [\"none\"]\nudp = [\"none\"]",
			top: `udp = ["0.0.0.0/0:53", "[::/0]:53", "0.0.0.0/0:53-54"]
tcp = ["[2001:db8::/32]:53"]`,
			want: []string{`udp[2] "0.0.0.0/0:53-54": exceeds the node's udp allowlist (port 54 to 0.0.0.0/0 minus reserved ranges is not allowed)`}},
		{name: "ipv6 allowlist",
			node: "[permit]\ntcp = [\"[2001:db8::/32]:*\"]",
			top:  `tcp = ["[2001:db8:100::/48]:80", "[2001:db9::/32]:80"]`,
			want: []string{`tcp[1] "[2001:db9::/32]:80": exceeds the node's tcp allowlist (port 80 to 2001:db9::/32 is not allowed)`}},
		{name: "tcp_ports allow any destination",
			node: "[permit]\ntcp = [\"none\"]\ntcp_ports = [80, \"443\"]\nudp = [\"none\"]\nudp_ports = [\"33434-33534\"]",
			top: `tcp = ["any"]
udp = ["0.0.0.0/0:33434-33534", "[::/0]:33434-33535"]`,
			want: []string{`tcp[0] "any": exceeds the node's tcp allowlist (ports 1-52 to 0.0.0.0/0 minus reserved ranges are not allowed)`,
				`udp[1] "[::/0]:33434-33535": exceeds the node's udp allowlist (port 33535 to ::/0 minus reserved ranges is not allowed)`}},
		{name: "all_packets bounds tcp, udp, spoofing and the back channel",
			node: "[permit]\nall_packets = [\"198.51.100.0/24\", \"2001:db8:100::/48\"]\nspoof_destinations = [\"0.0.0.0/0\"]",
			top: `tcp = ["198.51.100.0/24:80", "203.0.113.0/24:80"]
udp = ["[2001:db8::/32]:53"]
back_channel = "203.0.113.7:9000"`,
			tables: "[spoof]\nsources = [\"192.0.2.1\"]\ndestinations = [\"198.51.100.5\", \"203.0.113.5\"]",
			want: []string{`tcp[1] "203.0.113.0/24:80": outside the node's all_packets allowlist (203.0.113.0/24 is not in it)`,
				`udp[0] "[2001:db8::/32]:53": outside the node's all_packets allowlist (2001:db8::/40 is not in it)`,
				`spoof.destinations[1] "203.0.113.5": outside the node's all_packets allowlist`,
				`back_channel "203.0.113.7:9000": outside the node's all_packets allowlist`},
			check: func(t *testing.T, eff *Effective) {
				if len(eff.AllPackets) != 2 {
					t.Errorf("all packets %v", eff.AllPackets)
				}
			}},
		{name: "entry entirely reserved",
			top:  `tcp = ["10.0.0.0/8:80", "[fe80::/64]:22", "192.168.0.0/16:*"]`,
			want: []string{`tcp[0] "10.0.0.0/8:80": lies entirely in reserved ranges, which are always dropped; remove it`, `tcp[1]`, `tcp[2]`}},
		{name: "default router stays reachable",
			env:  Env{DefaultRouters: routers},
			top:  `tcp = ["192.168.0.0/16:*", "[fd77::1]:53", "172.16.0.0/12:80"]`,
			want: []string{`tcp[2] "172.16.0.0/12:80": lies entirely in reserved ranges`},
			check: func(t *testing.T, eff *Effective) {
				if got := dests(t, eff.TCP); got != "192.168.77.1/32:* [fd77::1/128]:53" {
					t.Errorf("tcp %s", got)
				}
			}},
		{name: "reserved ranges removed from wide entries",
			env: Env{DefaultRouters: routers[:1]},
			top: `udp = ["0.0.0.0/0:53"]`,
			check: func(t *testing.T, eff *Effective) {
				var b = prefixSetOf(eff.UDP)
				for _, r := range ReservedPrefixes(LabPolicy{})[:6] {
					if b.OverlapsPrefix(r) && !r.Contains(routers[0]) {
						t.Errorf("reserved %v in effective udp", r)
					}
				}
				if !b.Contains(routers[0]) || b.Contains(netip.MustParseAddr("192.168.77.2")) || !b.Contains(netip.MustParseAddr("198.51.100.1")) || !b.Contains(netip.MustParseAddr("223.255.255.255")) || b.Contains(netip.MustParseAddr("224.0.0.1")) {
					t.Errorf("udp %s", dests(t, eff.UDP))
				}
			}},
		{name: "icmp types by name and number, v4 and v6",
			node: "[permit]\nicmp = [\"echo-request\", 11, \"icmpv6:echo-request\"]",
			top:  `icmp = ["echo-request", "time-exceeded", "icmpv6:echo-request", "destination-unreachable", "icmpv6:time-exceeded", "any"]`,
			want: []string{`icmp[3] "destination-unreachable": ICMP type not permitted by the node (permitted: echo-request, time-exceeded, icmpv6:echo-request); ask the node owner or drop it`,
				`icmp[4] "icmpv6:time-exceeded": ICMP type not permitted`,
				`icmp[5] "any": the node permits only some ICMP types`}},
		{name: "icmp of a family the experiment does not get",
			top:  `ip = "ipv4"` + "\n" + `icmp = ["icmpv6:echo-request", "echo-request"]`,
			want: []string{`icmp[0] "icmpv6:echo-request": ICMP type of a family the experiment does not get (ip = "ipv4")`},
			check: func(t *testing.T, eff *Effective) {
				if len(eff.ICMP) != 1 || eff.ICMP[0] != (ICMPType{Type: 8}) || eff.IPv6 {
					t.Errorf("icmp %v v6 %v", eff.ICMP, eff.IPv6)
				}
			}},
		{name: "other protocols",
			node: "[permit]\nprotocols = [47]",
			top:  `protocols = [47, 50, 47]`,
			want: []string{`protocols[1] "50": IP protocol not permitted by the node (permit.protocols); ask the node owner or drop it`},
			check: func(t *testing.T, eff *Effective) {
				if !slices.Equal(eff.Protocols, []uint8{47, 50}) {
					t.Errorf("protocols %v", eff.Protocols)
				}
			}},
		{name: "protocols forbidden by default",
			top:  `protocols = [47]`,
			want: []string{`protocols[0] "47": IP protocol not permitted`}},
		{name: "syn only needs the owner's permission",
			node: "[permit]\nsyn_only = false",
			top:  `syn_only_ports = [80, "1000-2000"]`,
			want: []string{`syn_only_ports[0] "80": the node does not permit TCP SYN-only probing (permit.syn_only = false); drop syn_only_ports or ask the node owner`,
				`syn_only_ports[1] "1000-2000": the node does not permit`}},
		{name: "spoofing forbidden by default",
			tables: "[spoof]\nsources = [\"192.0.2.1\"]\ndestinations = [\"198.51.100.5\", \"[2001:db8::5]\"]",
			want: []string{`spoof.destinations[0] "198.51.100.5": the node does not permit spoofing (permit.spoof_destinations is empty); remove [spoof] or ask the node owner`,
				`spoof.destinations[1] "2001:db8::5": the node does not permit spoofing`}},
		{name: "spoofing to listed destinations",
			node:   "[permit]\nspoof_destinations = [\"198.51.100.0/24\", \"2001:db8::5\"]",
			tables: "[spoof]\nsources = [\"192.0.2.1\", \"2001:db8:ffff::1\"]\ndestinations = [\"198.51.100.5\", \"2001:db8::5\", \"203.0.113.5\", \"10.0.0.1\"]",
			want: []string{`spoof.destinations[2] "203.0.113.5": not in the node's spoof_destinations; ask the node owner or use a permitted destination`,
				`spoof.destinations[3] "10.0.0.1": not in the node's spoof_destinations`,
				`spoof.destinations[3] "10.0.0.1": reserved address, always dropped; use a public destination`},
			check: func(t *testing.T, eff *Effective) {
				if len(eff.SpoofSources) != 2 || len(eff.SpoofDestinations) != 4 {
					t.Errorf("spoof %v %v", eff.SpoofSources, eff.SpoofDestinations)
				}
			}},
		{name: "dns names under the allowlist",
			node: "[dns]\nallow = [\"example.org\", \"arkgw.test\"]\ndeny_answer = \"nxdomain\"\nqps = 7",
			top:  `dns = ["www.Example.org", "example.org.", "badexample.org", "org"]`,
			want: []string{`dns[2] "badexample.org.": not under the names the node allows (dns.allow: arkgw.test., example.org.); ask the node owner or drop it`,
				`dns[3] "org.": not under the names`},
			check: func(t *testing.T, eff *Effective) {
				if eff.DNSAny || !eff.DNSDenyNXDomain || eff.DNSQPS != 7 || !slices.Equal(eff.DNSNames, []string{"org."}) {
					t.Errorf("dns %+v", eff)
				}
			}},
		{name: "dns any needs an open node",
			node: "[dns]\nallow = [\"example.org\", \"arkgw.test\"]",
			top:  `dns = ["www.example.org", "any"]`,
			want: []string{`dns "any": the node lets experiments resolve only names under arkgw.test., example.org.; list the names you resolve`},
			check: func(t *testing.T, eff *Effective) {
				if !eff.DNSAny {
					t.Errorf("dns %+v", eff)
				}
			}},
		{name: "dns names normalized and reduced",
			node: "[dns]\nallow = [\"münchen.de\", \"example.org\"]",
			top:  `dns = ["WWW.MÜNCHEN.de", "xn--mnchen-3ya.de", "a.example.org", "b.a.example.org", "example.org"]`,
			check: func(t *testing.T, eff *Effective) {
				if eff.DNSAny || !slices.Equal(eff.DNSNames, []string{"example.org.", "xn--mnchen-3ya.de."}) || eff.DNSDenyNXDomain || eff.DNSQPS != 100 {
					t.Errorf("dns %v any %v", eff.DNSNames, eff.DNSAny)
				}
			}},
		{name: "limits within the node's",
			node: "[limits]\nmax_mb_per_day = 1000",
			top:  "max_mbps = 2.5\nmax_mb_per_day = 500\nmax_hours = 3\nmax_ram_mb = 100\ntmpfs_mb = 0\ncpu = \"substantial\"",
			check: func(t *testing.T, eff *Effective) {
				want := Limits{MaxMbps: 2.5, MaxMBPerDay: 500, MaxHours: 3, CPUPercent: 100, CPUClass: "substantial", MaxRAMMB: 100, TmpfsMB: 0, OutputMB: 100}
				if eff.Limits != want {
					t.Errorf("limits %+v, want %+v", eff.Limits, want)
				}
			}},
		{name: "absent limits take the node's",
			node: "[limits]\nmax_mb_per_day = 1000\nmax_mbps = 4",
			check: func(t *testing.T, eff *Effective) {
				want := Limits{MaxMbps: 4, MaxMBPerDay: 1000, MaxHours: 168, CPUPercent: 10, CPUClass: "minimal", MaxRAMMB: 512, TmpfsMB: 64, OutputMB: 100}
				if eff.Limits != want {
					t.Errorf("limits %+v, want %+v", eff.Limits, want)
				}
			}},
		{name: "limits exceeding the node's",
			node: "[limits]\nmax_mb_per_day = 1000",
			top:  "max_mbps = 20\nmax_mb_per_day = 2000\nmax_hours = 200\nmax_ram_mb = 1024\ntmpfs_mb = 128",
			want: []string{`max_mbps "20": more than the node's maximum of 10 Mbit/s; ask for at most that`,
				`max_mb_per_day "2000": more than the node's maximum of 1000 MB per day`,
				`max_hours "200": longer than the node's maximum of 168 hours`,
				`max_ram_mb "1024": more than the node's maximum of 512 MB`,
				`tmpfs_mb "128": more than the node's maximum of 64 MB`},
			check: func(t *testing.T, eff *Effective) {
				l := eff.Limits
				if l.MaxMbps != 10 || l.MaxMBPerDay != 1000 || l.MaxHours != 168 || l.MaxRAMMB != 512 || l.TmpfsMB != 64 {
					t.Errorf("limits not capped: %+v", l)
				}
			}},
		{name: "no daily maximum conflicts with an owner maximum",
			node: "[limits]\nmax_mb_per_day = 1000",
			top:  "max_mb_per_day = 0",
			want: []string{`max_mb_per_day "0": asks for no daily maximum, but the node allows at most 1000 MB per day; ask for at most that`}},
		{name: "no daily maximum on an unlimited node",
			top: "max_mb_per_day = 0",
			check: func(t *testing.T, eff *Effective) {
				if eff.Limits.MaxMBPerDay != 0 {
					t.Errorf("max_mb_per_day %d", eff.Limits.MaxMBPerDay)
				}
			}},
		{name: "cpu class not offered",
			node: "[limits]\ncpu = { minimal = 20, moderate = 40 }",
			top:  `cpu = "substantial"`,
			want: []string{`cpu "substantial": the node does not offer this CPU class (it offers minimal, moderate); ask for one of those`}},
		{name: "cpu percent from the node",
			node: "[limits]\ncpu = { minimal = 20, moderate = 40 }",
			top:  `cpu = "moderate"`,
			check: func(t *testing.T, eff *Effective) {
				if eff.Limits.CPUPercent != 40 || eff.Limits.CPUClass != "moderate" {
					t.Errorf("cpu %+v", eff.Limits)
				}
			}},
		{name: "third party off and nobody listed",
			node: "[permit]\nthird_party = false",
			want: []string{`experimenters[0].email "researcher@example.edu": the node accepts no third-party experiments (permit.third_party = false) and lists no experimenters; ask the node owner`}},
		{name: "third party off, experimenter listed",
			node: "[permit]\nthird_party = false\nexperimenters = [\"Researcher@Example.edu\"]"},
		{name: "experimenter list by domain",
			node: "[permit]\nexperimenters = [\"@example.edu\"]",
			tables: `[[experimenters]]
name = "Other"
email = "x@other.org"
[[experimenters]]
name = "Sub"
email = "y@cs.example.edu"`,
			want: []string{`experimenters[1].email "x@other.org": not among the node's permitted experimenters (permit.experimenters); ask the node owner to add you`,
				`experimenters[2].email "y@cs.example.edu": not among`}},
		{name: "ipv6 not permitted",
			node: "[permit]\nipv6 = false",
			top: `ip = "both"
tcp = ["198.51.100.0/24:80", "[2001:db8::/32]:80", "any"]`,
			want: []string{`ip "both": the node does not permit IPv6 (permit.ipv6 = false); use ip = "ipv4"`,
				`tcp[1] "[2001:db8::/32]:80": IPv6 destination, but the experiment does not get IPv6`},
			check: func(t *testing.T, eff *Effective) {
				if !eff.IPv4 || eff.IPv6 {
					t.Errorf("families %v %v", eff.IPv4, eff.IPv6)
				}
				for _, d := range eff.TCP {
					if d.Prefix.Addr().Is6() {
						t.Errorf("v6 dest %v", d)
					}
				}
			}},
		{name: "ip absent follows the node",
			node: "[permit]\nipv6 = false",
			top:  `tcp = ["any"]`,
			check: func(t *testing.T, eff *Effective) {
				if !eff.IPv4 || eff.IPv6 || len(eff.TCP) == 0 {
					t.Errorf("families %v %v tcp %v", eff.IPv4, eff.IPv6, eff.TCP)
				}
			}},
		{name: "ipv4 not permitted",
			node: "[permit]\nipv4 = false",
			top: `ip = "ipv4"
udp = ["198.51.100.0/24:53"]`,
			want: []string{`ip "ipv4": the node does not permit IPv4 (permit.ipv4 = false); use ip = "ipv6"`,
				`udp[0] "198.51.100.0/24:53": IPv4 destination, but the experiment does not get IPv4`}},
		{name: "ipv6-only experiment",
			top: `ip = "ipv6"
tcp = ["[2001:db8::/32]:443", "198.51.100.1:443"]`,
			want: []string{`tcp[1] "198.51.100.1:443": IPv4 destination, but the experiment does not get IPv4 (ip = "ipv6"`}},
		{name: "back channel always allowed",
			node: "[permit]\ntcp = [\"none\"]",
			top:  `back_channel = "[2001:db8::7]:9000"`,
			check: func(t *testing.T, eff *Effective) {
				if eff.BackChannel.String() != "[2001:db8::7]:9000" || len(eff.TCP) != 0 {
					t.Errorf("back channel %v tcp %v", eff.BackChannel, eff.TCP)
				}
			}},
		{name: "back channel forbidden by the node",
			node: "[permit]\nback_channel = false",
			top:  `back_channel = "203.0.113.7:9000"`,
			want: []string{`back_channel "203.0.113.7:9000": the node does not permit back channels (permit.back_channel = false); drop back_channel or ask the node owner`}},
		{name: "back channel reserved or wrong family",
			top:  `ip = "ipv6"` + "\n" + `back_channel = "10.1.2.3:9000"`,
			want: []string{`back_channel "10.1.2.3:9000": address of a family the experiment does not get`}},
		{name: "back channel reserved",
			top:  `back_channel = "192.168.1.10:9000"`,
			want: []string{`back_channel "192.168.1.10:9000": reserved address, always dropped; use a public address`}},
		{name: "architecture not the node's",
			env:  Env{Arch: "armv7l"},
			top:  `architectures = ["x86_64", "aarch64"]`,
			want: []string{`architectures "x86_64,aarch64": this node is armv7l; build the experiment for it (or for "any") or choose another node`}},
		{name: "architecture matches",
			env: Env{Arch: MachineArch("arm64")},
			top: `architectures = ["x86_64", "aarch64"]`},
		{name: "architecture any",
			env: Env{Arch: "armv7l"}},
		{name: "invalid id",
			env:  Env{ID: "Bad_ID"},
			want: []string{`id: experiment id "Bad_ID"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			node := mustNode(t, tt.node)
			m := mustManifest(t, tt.top, tt.tables)
			eff, conflicts := Admit(node, m, tt.env)
			got := conflictStrings(conflicts)
			if len(got) != len(tt.want) {
				t.Fatalf("conflicts:\n  %s\nwant %d:\n  %s", strings.Join(got, "\n  "), len(tt.want), strings.Join(tt.want, "\n  "))
			}
			for i, w := range tt.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("conflict %d:\n  %s\nwant it to contain\n  %s", i, got[i], w)
				}
			}
			if eff == nil {
				t.Fatal("nil effective policy")
			}
			checkDisjoint(t, "tcp", eff.TCP)
			checkDisjoint(t, "udp", eff.UDP)
			if eff.ID != tt.env.ID || eff.Title != "t" || eff.Container != "ark-2026.1" || len(eff.Command) != 1 {
				t.Errorf("identity %+v", eff)
			}
			if tt.check != nil {
				tt.check(t, eff)
			}
		})
	}
}
