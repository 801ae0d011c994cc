package configs

import (
	"strings"
	"testing"
	"time"
)

const baseTop = `title = "t"
container = "ark-2026.1"
command = ["/experiment/run.sh"]
`

const baseExp = `
[[experimenters]]
name = "A. Researcher"
email = "researcher@example.edu"
`

// manifest builds a manifest text: top-level keys, then the base, then tables.
func manifest(top, tables string) string {
	return top + "\n" + baseTop + baseExp + tables
}

func TestParseManifestValid(t *testing.T) {
	src := `title = "IPv4 prefix traceroute survey"
container = "ark-2026.1"
architectures = ["any"]
command = ["/experiment/run.sh", "--rate", "100"]
files = "payload"
start = 2026-12-01T00:00:00Z
max_hours = 24
cpu = "moderate"
max_ram_mb = 256
max_mbps = 5
max_mb_per_day = 500
ip = "both"
dns = ["Example.org"]
icmp = ["echo-request", 11, "icmpv6:echo-request", "any"]
udp = ["198.51.100.0/24:33434-33534"]
tcp = ["198.51.100.1/32:80,443", "none", "any"]
syn_only_ports = [22, 80, "8000-8080"]
protocols = [47]
back_channel = "203.0.113.7:9000"
tmpfs_mb = 32

[[experimenters]]
name = "A. Researcher"
email = "researcher@example.edu"

[spoof]
sources = ["192.0.2.1"]
destinations = ["198.51.100.5"]
`
	m, err := ParseManifest("manifest.toml", []byte(src), "/srv/exp")
	if err != nil {
		t.Fatal(err)
	}
	if m.Files != "/srv/exp/payload" || m.Dir != "/srv/exp" {
		t.Errorf("files %q dir %q", m.Files, m.Dir)
	}
	if !m.Start.Equal(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("start %v", m.Start)
	}
	if *m.MaxHours != 24 || m.CPU != "moderate" || *m.MaxRAMMB != 256 || *m.MaxMbps != 5 || *m.MaxMBPerDay != 500 || *m.TmpfsMB != 32 || m.IP != "both" {
		t.Errorf("limits %+v", m)
	}
	if len(m.DNS) != 1 || m.DNS[0] != "example.org." {
		t.Errorf("dns %v", m.DNS)
	}
	if len(m.ICMP) != 4 || m.ICMP[1].Type != (ICMPType{Type: 11}) || !m.ICMP[2].Type.V6 || !m.ICMP[3].Any {
		t.Errorf("icmp %+v", m.ICMP)
	}
	if len(m.TCP) != 3 || len(m.TCP[1].Dests) != 0 || !m.TCP[2].Any || len(m.TCP[2].Dests) != 2 {
		t.Errorf("tcp %+v", m.TCP)
	}
	if len(m.SynOnlyPorts) != 3 || m.SynOnlyPorts[2] != pr(8000, 8080) {
		t.Errorf("syn_only_ports %v", m.SynOnlyPorts)
	}
	if m.BackChannel.String() != "203.0.113.7:9000" || len(m.SpoofSources) != 1 || len(m.SpoofDestinations) != 1 {
		t.Errorf("back channel %v spoof %v %v", m.BackChannel, m.SpoofSources, m.SpoofDestinations)
	}

	// Defaults of absent optional keys.
	m, err = ParseManifest("m.toml", []byte(manifest("", "")), ".")
	if err != nil {
		t.Fatal(err)
	}
	if m.MaxHours != nil || m.MaxRAMMB != nil || m.MaxMbps != nil || m.MaxMBPerDay != nil || m.TmpfsMB != nil || m.IP != "" || m.CPU != "minimal" || m.Files != "" || !m.Start.IsZero() {
		t.Errorf("defaults %+v", m)
	}
	if len(m.Architectures) != 1 || m.Architectures[0] != "any" {
		t.Errorf("architectures %v", m.Architectures)
	}
}

// Every validation message names the file, the field (with index), the
// value where there is one, and a fix.
func TestManifestValidationMessages(t *testing.T) {
	tests := []struct {
		name string
		text string // whole manifest
		want []string
	}{
		{"port 0", manifest(`tcp = ["198.51.100.0/24:80", "203.0.113.0/24:*", "10.0.0.0/8:0"]`, ""),
			[]string{`manifest.toml: tcp[2] "10.0.0.0/8:0": port 0 is not a port; use 1-65535`}},
		{"port too big", manifest(`udp = ["198.51.100.0/24:65536"]`, ""),
			[]string{`manifest.toml: udp[0] "198.51.100.0/24:65536": port 65536 is out of range; use 1-65535`}},
		{"inverted range", manifest(`udp = ["198.51.100.0/24:33534-33434"]`, ""),
			[]string{`manifest.toml: udp[0] "198.51.100.0/24:33534-33434": range 33534-33434 is inverted; write 33434-33534`}},
		{"bad prefix", manifest(`tcp = ["198.51.100.0/40:80"]`, ""),
			[]string{`manifest.toml: tcp[0] "198.51.100.0/40:80": not a prefix`}},
		{"host bits", manifest(`tcp = ["none", "198.51.100.7/24:80"]`, ""),
			[]string{`manifest.toml: tcp[1] "198.51.100.7/24:80": host bits set; did you mean 198.51.100.0/24?`}},
		{"too many spoofed sources", manifest("", `[spoof]
sources = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4", "192.0.2.5"]
destinations = ["198.51.100.5"]`),
			[]string{`manifest.toml: spoof.sources: 5 entries, at most 4 allowed; drop some`}},
		{"too many spoof destinations", manifest("", `[spoof]
sources = ["192.0.2.1"]
destinations = ["198.51.100.1", "198.51.100.2", "198.51.100.3", "198.51.100.4", "198.51.100.5", "198.51.100.6"]`),
			[]string{`manifest.toml: spoof.destinations: 6 entries, at most 4 allowed; drop some`}},
		{"spoof source not an address", manifest("", `[spoof]
sources = ["192.0.2.0/24"]
destinations = ["198.51.100.5"]`),
			[]string{`manifest.toml: spoof.sources[0] "192.0.2.0/24": a single address is needed here`}},
		{"spoof source family without destination", manifest("", `[spoof]
sources = ["192.0.2.1", "2001:db8::1"]
destinations = ["198.51.100.5"]`),
			[]string{`manifest.toml: spoof.sources[1] "2001:db8::1": no spoof destination of the same address family; add one or drop this source`}},
		{"spoof sources without destinations", manifest("", `[spoof]
sources = ["192.0.2.1"]`),
			[]string{`manifest.toml: spoof.destinations: empty, but spoof.sources is set`}},
		{"spoof destinations without sources", manifest("", `[spoof]
destinations = ["198.51.100.5"]`),
			[]string{`manifest.toml: spoof.sources: empty, but spoof.destinations is set`}},
		{"unknown cpu class", manifest(`cpu = "huge"`, ""),
			[]string{`manifest.toml: cpu "huge": unknown CPU class; use minimal, moderate, substantial`}},
		{"unknown icmp name", manifest(`icmp = ["echo-request", "ping"]`, ""),
			[]string{`manifest.toml: icmp[1] "ping": unknown ICMP type name; use a number or one of`}},
		{"icmp number out of range", manifest(`icmp = [300]`, ""),
			[]string{`manifest.toml: icmp[0] "300": ICMP type 300 is out of range; use 0-255`}},
		{"empty email", baseTop + `
[[experimenters]]
name = "A. Researcher"
email = ""
`, []string{`manifest.toml: experimenters[0].email: empty email; write the experimenter's address`}},
		{"invalid email", baseTop + `
[[experimenters]]
name = "A. Researcher"
email = "researcher@example.edu"
[[experimenters]]
name = "B"
email = "b at example.edu"
`, []string{`manifest.toml: experimenters[1].email "b at example.edu": not an email address`}},
		{"empty experimenter name", baseTop + `
[[experimenters]]
name = ""
email = "a@example.edu"
`, []string{`manifest.toml: experimenters[0].name: empty; give the experimenter's name`}},
		{"no experimenters", baseTop,
			[]string{`manifest.toml: experimenters: none given; add an [[experimenters]] table with name and email`}},
		{"duration zero", manifest(`max_hours = 0`, ""),
			[]string{`manifest.toml: max_hours "0": the duration must be more than 0 hours`}},
		{"duration negative", manifest(`max_hours = -2.5`, ""),
			[]string{`manifest.toml: max_hours "-2.5": the duration must be more than 0 hours`}},
		{"empty command", `title = "t"
container = "c"
command = []
` + baseExp, []string{`manifest.toml: command: empty; give the program and its arguments`}},
		{"empty program", `title = "t"
container = "c"
command = [""]
` + baseExp, []string{`manifest.toml: command[0]: empty program name`}},
		{"missing title and container", `command = ["/x"]` + baseExp,
			[]string{`manifest.toml: title: missing;`, `manifest.toml: container: missing; name the container version`}},
		{"negative limits", manifest(`max_ram_mb = -1
max_mb_per_day = -5
tmpfs_mb = -3
max_mbps = -1`, ""), []string{
			`manifest.toml: max_ram_mb "-1": must be more than 0 MB`,
			`manifest.toml: max_mb_per_day "-5": must not be negative; 0 means no daily maximum`,
			`manifest.toml: tmpfs_mb "-3": must not be negative; 0 means no tmpfs`,
			`manifest.toml: max_mbps "-1": must be more than 0 Mbit/s`}},
		{"bad ip", manifest(`ip = "v4"`, ""),
			[]string{`manifest.toml: ip "v4": use "ipv4", "ipv6" or "both"`}},
		{"bad back channel", manifest(`back_channel = "collector.example.edu:9000"`, ""),
			[]string{`manifest.toml: back_channel "collector.example.edu:9000": not ADDRESS:PORT`}},
		{"back channel port 0", manifest(`back_channel = "203.0.113.7:0"`, ""),
			[]string{`manifest.toml: back_channel "203.0.113.7:0": port 0 is not a port`}},
		{"back channel multicast", manifest(`back_channel = "224.0.0.1:9000"`, ""),
			[]string{`manifest.toml: back_channel "224.0.0.1:9000": not a unicast address`}},
		{"protocol tcp", manifest(`protocols = [47, 6]`, ""),
			[]string{`manifest.toml: protocols[1] "6": TCP is not an other protocol; use the tcp, tcp_ports or syn_only_ports fields`}},
		{"protocol icmp", manifest(`protocols = [1]`, ""),
			[]string{`manifest.toml: protocols[0] "1": ICMP is not an other protocol; use the icmp field`}},
		{"syn only port 0", manifest(`syn_only_ports = [80, 0]`, ""),
			[]string{`manifest.toml: syn_only_ports[1] "0": port 0 is not a port; use 1-65535`}},
		{"syn only comma list", manifest(`syn_only_ports = ["80,443"]`, ""),
			[]string{`manifest.toml: syn_only_ports[0] "80,443": one port or range per item`}},
		{"dns wildcard", manifest(`dns = ["example.org", "*.example.com"]`, ""),
			[]string{`manifest.toml: dns[1] "*.example.com": wildcards are not needed`}},
		{"unknown architecture", manifest(`architectures = ["mips"]`, ""),
			[]string{`manifest.toml: architectures[0] "mips": unknown architecture; use any, x86_64, aarch64, armv7l`}},
		{"files absolute", manifest(`files = "/etc"`, ""),
			[]string{`manifest.toml: files "/etc": must be relative to the manifest's directory`}},
		{"files escapes", manifest(`files = "../secret"`, ""),
			[]string{`manifest.toml: files "../secret": leaves the manifest's directory`}},
		{"local start time", manifest(`start = 2026-12-01T00:00:00`, ""),
			[]string{`manifest.toml: start "`, `needs a date, a time and a time zone`}},
		{"start not a time", manifest(`start = "tomorrow"`, ""),
			[]string{`manifest.toml: start "tomorrow": not a date and time`}},
		{"unknown key", manifest(`max_mpbs = 5`, ""),
			[]string{`manifest.toml: max_mpbs: unknown key`}},
		{"unknown key in table", manifest("", `[spoof]
source = ["192.0.2.1"]`), []string{`manifest.toml: spoof.source: unknown key`}},
		{"several errors collected", manifest(`cpu = "x"
ip = "y"
tcp = ["1.2.3.4:0"]`, ""), []string{`cpu "x"`, `ip "y"`, `tcp[0] "1.2.3.4:0"`}},
		{"toml syntax", "title = ", []string{"manifest.toml: toml:"}},
		{"wrong type", manifest(`max_ram_mb = "lots"`, ""), []string{"manifest.toml: toml:", "max_ram_mb"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseManifest("manifest.toml", []byte(tt.text), "/srv/exp")
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n%v\ndoes not contain\n%s", err, w)
				}
			}
		})
	}
}

func TestParseNodeValid(t *testing.T) {
	n, err := ParseNode("node.toml", []byte(`node = "ark-ams3-nl"
[permit]
third_party = false
experimenters = ["Staff@Example.org", "@example.edu"]
ipv6 = false
tcp = ["198.51.100.0/24:80,443", "[2001:db8::/32]:*"]
udp = ["none"]
all_packets = ["198.51.100.0/24", "203.0.113.0/24"]
tcp_ports = [80, "8000-8080"]
udp_ports = [123]
icmp = ["echo-request", "icmpv6:echo-request", 11]
dns_servers_any = false
syn_only = false
protocols = [47, 50]
spoof_destinations = ["198.51.100.5", "203.0.113.0/24"]
back_channel = false
[dns]
allow = ["example.org", "arkgw.test."]
upstreams = ["192.0.2.53", "[2001:db8::53]:5353"]
qps = 20
deny_answer = "nxdomain"
[limits]
max_mbps = 2.5
node_mbps = 20
max_mb_per_day = 1000
max_hours = 48
cpu = { minimal = 5 }
allow_missing_controllers = ["memory"]
[alerts]
syslog = "udp://192.0.2.10:514"
stop_after = 50
window = "1h"
`))
	if err != nil {
		t.Fatal(err)
	}
	p := n.Permit
	if n.Node != "ark-ams3-nl" || p.ThirdParty || p.IPv6 || !p.IPv4 || p.DNSServersAny || p.SynOnly || p.BackChannel {
		t.Errorf("flags %+v", p)
	}
	if len(p.Experimenters) != 2 || p.Experimenters[0] != "staff@example.org" || p.Experimenters[1] != "@example.edu" {
		t.Errorf("experimenters %v", p.Experimenters)
	}
	if len(p.TCP) != 2 || len(p.UDP) != 1 || len(p.UDP[0].Dests) != 0 || len(p.AllPackets) != 2 {
		t.Errorf("dests %+v %+v %v", p.TCP, p.UDP, p.AllPackets)
	}
	if FormatPorts(p.TCPPorts) != "80,8000-8080" || FormatPorts(p.UDPPorts) != "123" {
		t.Errorf("ports %v %v", p.TCPPorts, p.UDPPorts)
	}
	if p.ICMPAny || len(p.ICMP) != 3 || len(p.Protocols) != 2 || len(p.SpoofDestinations) != 2 {
		t.Errorf("icmp %v protocols %v spoof %v", p.ICMP, p.Protocols, p.SpoofDestinations)
	}
	d := n.DNS
	if d.AllowAny || len(d.Allow) != 2 || d.Allow[0] != "arkgw.test." || d.QPS != 20 || d.DenyAnswer != "nxdomain" ||
		d.Upstreams[0].String() != "192.0.2.53:53" || d.Upstreams[1].String() != "[2001:db8::53]:5353" {
		t.Errorf("dns %+v", d)
	}
	l := n.Limits
	if l.MaxMbps != 2.5 || l.NodeMbps != 20 || l.MaxMBPerDay != 1000 || l.MaxHours != 48 || l.MaxRAMMB != 512 {
		t.Errorf("limits %+v", l)
	}
	// cpu replaces the default classes: the owner offers only minimal.
	if l.CPU["minimal"] != 5 || len(l.CPU) != 1 {
		t.Errorf("cpu %v", l.CPU)
	}
	if len(l.AllowMissingControllers) != 1 || l.AllowMissingControllers[0] != "memory" {
		t.Errorf("allow_missing_controllers %v", l.AllowMissingControllers)
	}
	if n.Alerts.File != "/var/lib/arkgw/alerts.jsonl" || n.Alerts.Window != time.Hour || n.Alerts.StopAfter != 50 || n.Alerts.NFLOGGroup != 100 {
		t.Errorf("alerts %+v", n.Alerts)
	}
}

func TestNodeValidationMessages(t *testing.T) {
	tests := []struct {
		name string
		text string
		want []string
	}{
		{"bad tcp prefix", "[permit]\ntcp = [\"0.0.0.0/0:*\", \"10.1.0.0/8:*\"]", []string{`node.toml: permit.tcp[1] "10.1.0.0/8:*": host bits set; did you mean 10.0.0.0/8?`}},
		{"bad udp port", "[permit]\nudp = [\"[::/0]:0\"]", []string{`node.toml: permit.udp[0] "[::/0]:0": port 0 is not a port; use 1-65535`}},
		{"bad tcp_ports", "[permit]\ntcp_ports = [80, 70000]", []string{`node.toml: permit.tcp_ports[1] "70000": port 70000 is out of range; use 1-65535`}},
		{"bad udp_ports range", "[permit]\nudp_ports = [\"200-100\"]", []string{`node.toml: permit.udp_ports[0] "200-100": range 200-100 is inverted; write 100-200`}},
		{"bad all_packets", "[permit]\nall_packets = [\"198.51.100.0/24:80\"]", []string{`node.toml: permit.all_packets[0] "198.51.100.0/24:80": this list takes prefixes without ports; write 198.51.100.0/24`}},
		{"bad icmp", "[permit]\nicmp = [\"echo-request\", \"icmpv6:nope\"]", []string{`node.toml: permit.icmp[1] "icmpv6:nope": unknown ICMPv6 type name`}},
		{"negative max_flows", "[limits]\nmax_flows = -1", []string{`node.toml: limits.max_flows "-1": must be 0`}},
		{"bad protocol", "[permit]\nprotocols = [17]", []string{`node.toml: permit.protocols[0] "17": UDP is not an other protocol; use the udp or udp_ports fields`}},
		{"bad spoof destination", "[permit]\nspoof_destinations = [\"x\"]", []string{`node.toml: permit.spoof_destinations[0] "x": not an address or prefix`}},
		{"bad experimenter", "[permit]\nexperimenters = [\"example.edu\"]", []string{`node.toml: permit.experimenters[0] "example.edu": not an email address or @domain`}},
		{"no family", "[permit]\nipv4 = false\nipv6 = false", []string{`node.toml: permit.ipv4: both ipv4 and ipv6 are false`}},
		{"bad dns allow", "[dns]\nallow = [\"a..b\"]", []string{`node.toml: dns.allow[0] "a..b": empty label`}},
		{"bad upstream", "[dns]\nupstreams = [\"dns.example\"]", []string{`node.toml: dns.upstreams[0] "dns.example": not an address`}},
		{"bad qps", "[dns]\nqps = 0", []string{`node.toml: dns.qps "0": must be 1 to 1000000`}},
		{"bad deny answer", "[dns]\ndeny_answer = \"drop\"", []string{`node.toml: dns.deny_answer "drop": use "refused" or "nxdomain"`}},
		{"negative limits", "[limits]\nmax_mbps = -1\nnode_mbps = -1\nmax_mb_per_day = -1\nmax_hours = 0\nmax_ram_mb = -1\noutput_mb = 0\ntmpfs_mb = -1", []string{
			`node.toml: limits.max_mbps "-1": must be more than 0`,
			`node.toml: limits.node_mbps "-1": must be 0 (no node-wide cap)`,
			`node.toml: limits.max_mb_per_day "-1": must not be negative`,
			`node.toml: limits.max_hours "0": must be more than 0 hours`,
			`node.toml: limits.max_ram_mb "-1": must be more than 0 MB`,
			`node.toml: limits.output_mb "0": must be more than 0 MB`,
			`node.toml: limits.tmpfs_mb "-1": must not be negative`}},
		{"unknown cpu class", "[limits]\ncpu = { huge = 400 }", []string{`node.toml: limits.cpu.huge: unknown CPU class; use minimal, moderate, substantial`}},
		{"no cpu class", "[limits]\ncpu = {}", []string{`node.toml: limits.cpu: no CPU class offered`}},
		{"bad cpu percent", "[limits]\ncpu = { minimal = 0 }", []string{`node.toml: limits.cpu.minimal "0": must be 1 to 6400 percent`}},
		{"bad controller", "[limits]\nallow_missing_controllers = [\"io\"]", []string{`node.toml: limits.allow_missing_controllers[0] "io": unknown cgroup controller; use cpu, memory, pids`}},
		{"bad nflog group", "[alerts]\nnflog_group = 70000", []string{`node.toml: alerts.nflog_group "70000": must be 0-65535`}},
		{"bad alerts file", "[alerts]\nfile = \"alerts.jsonl\"", []string{`node.toml: alerts.file "alerts.jsonl": must be an absolute path`}},
		{"bad syslog", "[alerts]\nsyslog = \"192.0.2.10:514\"", []string{`node.toml: alerts.syslog "192.0.2.10:514":`}},
		{"bad window", "[alerts]\nwindow = \"soon\"", []string{`node.toml: alerts.window "soon": not a positive duration`}},
		{"bad stop_after", "[alerts]\nstop_after = -1", []string{`node.toml: alerts.stop_after "-1": must not be negative`}},
		{"bad state dir", "state_dir = \"var/lib\"", []string{`node.toml: state_dir "var/lib": must be an absolute path`}},
		{"bad listen", "[web]\nlisten = \"8080\"", []string{`node.toml: web.listen "8080": not host:port`}},
		{"bad password hash", "[web]\npassword_hash = \"secret\"", []string{`node.toml: web.password_hash: not a bcrypt hash`}},
		{"unknown key", "[permit]\nspoofing = true", []string{`node.toml: permit.spoofing: unknown key`}},
		{"unknown table", "[limit]\nmax_mbps = 1", []string{`node.toml: limit: unknown key`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseNode("node.toml", []byte(tt.text))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n%v\ndoes not contain\n%s", err, w)
				}
			}
		})
	}
}
