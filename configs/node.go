package configs

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// DefaultNodePath is where the daemon and `arkgw check` look for the owner's policy.
const DefaultNodePath = "/etc/arkgw/node.toml"

// CPUClasses are the CPU classes a manifest may ask for, in increasing order.
var CPUClasses = []string{"minimal", "moderate", "substantial"}

// Controllers are the cgroup controllers the sandbox uses; an owner may
// accept running without some of them ([limits] allow_missing_controllers).
var Controllers = []string{"cpu", "memory", "pids"}

// NodePolicy is the node owner's policy (/etc/arkgw/node.toml).
type NodePolicy struct {
	Source     string // file it was read from; "" for the built-in defaults
	Node       string // name used in alerts and metrics; "" = the host name
	StateDir   string // absolute
	Uplink     string // "" = interface of the default route
	Web        WebPolicy
	Permit     Permit
	DNS        NodeDNS
	Limits     NodeLimits
	Alerts     AlertPolicy
	Flows      FlowPolicy
	Lab        LabPolicy // [lab]: test labs and demos only
	Containers ContainerPolicy
	Outputs    OutputsPolicy
}

// ContainerPolicy is the [containers] section: which signed container
// images the node installs (`arkgw container import`).
type ContainerPolicy struct {
	// TrustedKeys are minisign public keys (the base64 "RW..." line of a
	// .pub file); an image must be signed by one of them.
	TrustedKeys []string
	// AllowUnsigned accepts images without a signature (development).
	AllowUnsigned bool
}

// OutputsPolicy is the [outputs] section: where experiments' results are
// shipped (an S3-compatible object store). Push "" = off, the default.
type OutputsPolicy struct {
	Push        string // "s3://BUCKET/PREFIX" as written; "" = results stay on the node
	Bucket      string
	Prefix      string // without leading or trailing "/"; may be ""
	Endpoint    string // host[:port] of the store
	Secure      bool   // https (endpoint scheme https://, the default)
	Region      string // "" = ask the store
	Credentials string // absolute path of the credentials file (checked when the daemon starts)
	Interval    time.Duration
	// DiskBudgetBytes bounds the local copies of results (stdout, stderr,
	// shipped summaries); past it the oldest shipped ones are removed.
	DiskBudgetBytes int64
	// BacklogAlertBytes: one alert when this much waits to be shipped.
	BacklogAlertBytes int64
	ChunkBytes        int64 // largest stdout/stderr object
}

// FlowPolicy is the [flows] section: the conntrack flow log that answers
// "which experiment sent this?" (an extension of POLICY.md).
type FlowPolicy struct {
	RetentionDays int // days of flows kept; experiments stopped long ago stay attributable this long
}

// WebPolicy is the owner page and API listener.
type WebPolicy struct {
	Listen       string // host:port
	PasswordHash string // bcrypt; "" = no login (serve on localhost only)
	// TLSCert and TLSKey are PEM files; both set = serve HTTPS (and mark the
	// session cookie Secure), both empty = plain HTTP.
	TLSCert, TLSKey string
}

// Permit is what experiments may do on this node.
type Permit struct {
	// ThirdParty false: only experimenters listed in Experimenters are
	// admitted. True: an empty Experimenters list admits everybody.
	ThirdParty    bool
	Experimenters []string // lowercase emails or "@domain"
	IPv4, IPv6    bool
	TCP, UDP      []DestEntry
	AllPackets    []netip.Prefix // non-empty: every packet must go to one of these
	TCPPorts      []PortRange    // TCP to any destination on these ports
	UDPPorts      []PortRange
	ICMPAny       bool
	ICMP          []ICMPType
	DNSServersAny bool // UDP+TCP port 53 to any destination
	SynOnly       bool
	Protocols     []uint8
	// SpoofDestinations: spoofed packets may go only here; empty forbids spoofing.
	SpoofDestinations []netip.Prefix
	// BackChannel: experiments may declare a back_channel endpoint (an
	// extension of POLICY.md; default true).
	BackChannel bool
}

// DestEntry is one written destination entry and what it stands for.
type DestEntry struct {
	Text  string // as written
	Any   bool   // the word "any"
	Dests []Dest // empty for "none"
}

// NodeDNS is the [dns] section.
type NodeDNS struct {
	AllowAny   bool
	Allow      []string         // lowercase FQDN suffixes
	Upstreams  []netip.AddrPort // empty = nameservers of the host's resolv.conf
	QPS        int              // per experiment
	DenyAnswer string           // "refused" (default) or "nxdomain"
}

// NodeLimits is the [limits] section.
type NodeLimits struct {
	MaxMbps     float64
	NodeMbps    float64 // 0 = no node-wide cap
	MaxMBPerDay int64   // 0 = no daily maximum
	MaxHours    float64
	MaxRAMMB    int64
	OutputMB    int64
	TmpfsMB     int64
	// MaxFlows caps each experiment's tracked flows (conntrack entries);
	// 0 = an eighth of the kernel's net.netfilter.nf_conntrack_max.
	MaxFlows int64
	CPU      map[string]int // class -> percent of one core
	// AllowMissingControllers lists cgroup controllers ("cpu", "memory",
	// "pids") the sandbox may run without when the host lacks them.
	AllowMissingControllers []string
}

// AlertPolicy is the [alerts] section.
type AlertPolicy struct {
	NFLOGGroup uint16
	File       string // absolute; default <state_dir>/alerts.jsonl
	Syslog     string // "" = off; udp://host:port, tcp://host:port or unix:///path
	StopAfter  int    // 0 = never
	Window     time.Duration
}

type rawNode struct {
	Node       string            `toml:"node"`
	StateDir   string            `toml:"state_dir"`
	Uplink     string            `toml:"uplink"`
	Web        rawWeb            `toml:"web"`
	Permit     rawPermit         `toml:"permit"`
	DNS        rawNodeDNS        `toml:"dns"`
	Limits     rawNodeLimits     `toml:"limits"`
	Alerts     rawNodeAlerts     `toml:"alerts"`
	Flows      rawNodeFlows      `toml:"flows"`
	Lab        rawNodeLab        `toml:"lab"`
	Containers rawNodeContainers `toml:"containers"`
	Outputs    rawNodeOutputs    `toml:"outputs"`
}

type rawNodeLab struct {
	DocumentationPrefixes bool `toml:"documentation_prefixes"`
}

type rawNodeContainers struct {
	TrustedKeys   []string `toml:"trusted_keys"`
	AllowUnsigned bool     `toml:"allow_unsigned"`
}

type rawNodeOutputs struct {
	Push           string `toml:"push"`
	Endpoint       string `toml:"endpoint"`
	Region         string `toml:"region"`
	Credentials    string `toml:"credentials"`
	Interval       string `toml:"interval"`
	DiskBudgetMB   int64  `toml:"disk_budget_mb"`
	BacklogAlertMB int64  `toml:"backlog_alert_mb"`
	ChunkMB        int64  `toml:"chunk_mb"`
}

type rawNodeFlows struct {
	RetentionDays int64 `toml:"retention_days"`
}

type rawWeb struct {
	Listen       string `toml:"listen"`
	PasswordHash string `toml:"password_hash"`
	TLSCert      string `toml:"tls_cert"`
	TLSKey       string `toml:"tls_key"`
}

type rawPermit struct {
	ThirdParty        bool     `toml:"third_party"`
	Experimenters     []string `toml:"experimenters"`
	IPv4              bool     `toml:"ipv4"`
	IPv6              bool     `toml:"ipv6"`
	TCP               []string `toml:"tcp"`
	UDP               []string `toml:"udp"`
	AllPackets        []string `toml:"all_packets"`
	TCPPorts          []any    `toml:"tcp_ports"`
	UDPPorts          []any    `toml:"udp_ports"`
	ICMP              []any    `toml:"icmp"`
	DNSServersAny     bool     `toml:"dns_servers_any"`
	SynOnly           bool     `toml:"syn_only"`
	Protocols         []any    `toml:"protocols"`
	SpoofDestinations []string `toml:"spoof_destinations"`
	BackChannel       bool     `toml:"back_channel"`
}

type rawNodeDNS struct {
	Allow      []string `toml:"allow"`
	Upstreams  []string `toml:"upstreams"`
	QPS        int64    `toml:"qps"`
	DenyAnswer string   `toml:"deny_answer"`
}

type rawNodeLimits struct {
	MaxMbps                 float64          `toml:"max_mbps"`
	NodeMbps                float64          `toml:"node_mbps"`
	MaxMBPerDay             int64            `toml:"max_mb_per_day"`
	MaxHours                float64          `toml:"max_hours"`
	MaxRAMMB                int64            `toml:"max_ram_mb"`
	OutputMB                int64            `toml:"output_mb"`
	TmpfsMB                 int64            `toml:"tmpfs_mb"`
	MaxFlows                int64            `toml:"max_flows"`
	CPU                     map[string]int64 `toml:"cpu"`
	AllowMissingControllers []string         `toml:"allow_missing_controllers"`
}

type rawNodeAlerts struct {
	NFLOGGroup int64  `toml:"nflog_group"`
	File       string `toml:"file"`
	Syslog     string `toml:"syslog"`
	StopAfter  int64  `toml:"stop_after"`
	Window     string `toml:"window"`
}

// defaultRawNode returns POLICY.md's defaults. IPv6 is on by default, so
// the default TCP/UDP allowlists cover ::/0 as well as 0.0.0.0/0.
func defaultRawNode() rawNode {
	return rawNode{
		StateDir: "/var/lib/arkgw",
		Web:      rawWeb{Listen: "127.0.0.1:8080"},
		Permit: rawPermit{
			ThirdParty:    true,
			IPv4:          true,
			IPv6:          true,
			TCP:           []string{"0.0.0.0/0:*", "[::/0]:*"},
			UDP:           []string{"0.0.0.0/0:*", "[::/0]:*"},
			ICMP:          []any{"any"},
			DNSServersAny: true,
			SynOnly:       true,
			BackChannel:   true,
		},
		DNS: rawNodeDNS{Allow: []string{"any"}, QPS: 100, DenyAnswer: "refused"},
		Limits: rawNodeLimits{
			MaxMbps: 10, MaxHours: 168, MaxRAMMB: 512, OutputMB: 100, TmpfsMB: 64,
			CPU: map[string]int64{"minimal": 10, "moderate": 50, "substantial": 100},
		},
		Alerts: rawNodeAlerts{NFLOGGroup: 100, Window: "10m"},
		Flows:  rawNodeFlows{RetentionDays: 30},
		Outputs: rawNodeOutputs{
			Credentials: "/etc/arkgw/outputs.credentials", Interval: "5m",
			DiskBudgetMB: 1024, BacklogAlertMB: 256, ChunkMB: 16,
		},
	}
}

// DefaultNode returns the built-in node policy: POLICY.md's defaults, the
// same values as configs/node.toml.
func DefaultNode() *NodePolicy {
	n, err := convertNode(defaultRawNode(), &errs{file: "built-in defaults"})
	if err != nil {
		panic("configs: built-in node defaults invalid: " + err.Error())
	}
	return n
}

// LoadNode reads and validates a node policy file.
func LoadNode(path string) (*NodePolicy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read node policy: %w", err)
	}
	return ParseNode(path, data)
}

// ParseNode parses and validates a node policy; name is the file name used
// in messages. Absent keys take the defaults. All problems are reported
// (joined), not just the first.
func ParseNode(name string, data []byte) (*NodePolicy, error) {
	raw := defaultRawNode()
	// The cpu table replaces the default classes as a whole: a class the
	// owner leaves out is not offered.
	defCPU := raw.Limits.CPU
	raw.Limits.CPU = nil
	md, err := toml.Decode(string(data), &raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if !md.IsDefined("limits", "cpu") {
		raw.Limits.CPU = defCPU
	}
	e := &errs{file: name}
	for _, k := range md.Undecoded() {
		e.add(k.String(), "", "unknown key; check the spelling against the commented configs/node.toml")
	}
	n, err := convertNode(raw, e)
	if err != nil {
		return nil, err
	}
	n.Source = name
	return n, nil
}

func convertNode(r rawNode, e *errs) (*NodePolicy, error) {
	n := &NodePolicy{Node: r.Node, StateDir: r.StateDir, Uplink: r.Uplink,
		Lab: LabPolicy{DocumentationPrefixes: r.Lab.DocumentationPrefixes}}
	if strings.ContainsAny(r.Node, " \t\n\"") {
		e.add("node", r.Node, "the node name must not contain spaces or quotes; use e.g. \"ark-ams3-nl\"")
	}
	if !filepath.IsAbs(r.StateDir) {
		e.add("state_dir", r.StateDir, "must be an absolute path, e.g. \"/var/lib/arkgw\"")
	} else {
		n.StateDir = filepath.Clean(r.StateDir)
	}
	if len(r.Uplink) > 15 || strings.ContainsAny(r.Uplink, " /") {
		e.add("uplink", r.Uplink, "not an interface name; use e.g. \"eth0\", or \"\" for the default route's interface")
	}

	// [web]
	n.Web = WebPolicy{Listen: r.Web.Listen, PasswordHash: r.Web.PasswordHash, TLSCert: r.Web.TLSCert, TLSKey: r.Web.TLSKey}
	if (r.Web.TLSCert == "") != (r.Web.TLSKey == "") {
		e.add("web.tls_cert", r.Web.TLSCert, "tls_cert and tls_key go together: set both (PEM certificate chain and its key) or neither")
	}
	if _, port, err := net.SplitHostPort(r.Web.Listen); err != nil {
		e.add("web.listen", r.Web.Listen, "not host:port; use e.g. \"127.0.0.1:8080\"")
	} else if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		e.add("web.listen", r.Web.Listen, "port out of range; use 1-65535")
	}
	if h := r.Web.PasswordHash; h != "" && !(strings.HasPrefix(h, "$2a$") || strings.HasPrefix(h, "$2b$") || strings.HasPrefix(h, "$2y$")) {
		e.add("web.password_hash", "", "not a bcrypt hash (it must start with $2a$, $2b$ or $2y$); generate one with htpasswd -nbBC 10 '' PASSWORD")
	}

	// [permit]
	p := &n.Permit
	rp := r.Permit
	p.ThirdParty, p.IPv4, p.IPv6 = rp.ThirdParty, rp.IPv4, rp.IPv6
	p.DNSServersAny, p.SynOnly, p.BackChannel = rp.DNSServersAny, rp.SynOnly, rp.BackChannel
	for i, s := range rp.Experimenters {
		f := idx("permit.experimenters", i)
		t := strings.ToLower(strings.TrimSpace(s))
		if dom, ok := strings.CutPrefix(t, "@"); ok {
			if !strings.Contains(dom, ".") || strings.ContainsAny(dom, "@ ") {
				e.add(f, s, "not a domain; write \"@example.edu\" or a full address")
				continue
			}
		} else if err := ValidEmail(t); err != nil {
			e.add(f, s, "not an email address or @domain; write \"name@example.edu\" or \"@example.edu\"")
			continue
		}
		p.Experimenters = append(p.Experimenters, t)
	}
	if !p.IPv4 && !p.IPv6 {
		e.add("permit.ipv4", "", "both ipv4 and ipv6 are false, so no experiment could send anything; set third_party = false and list experimenters to close the node instead")
	}
	p.TCP = destEntries(e, "permit.tcp", rp.TCP)
	p.UDP = destEntries(e, "permit.udp", rp.UDP)
	for i, s := range rp.AllPackets {
		pf, err := prefixOnly(s)
		if err != nil {
			e.addErr(idx("permit.all_packets", i), s, err)
			continue
		}
		p.AllPackets = append(p.AllPackets, pf)
	}
	p.TCPPorts = portList(e, "permit.tcp_ports", rp.TCPPorts)
	p.UDPPorts = portList(e, "permit.udp_ports", rp.UDPPorts)
	for i, v := range rp.ICMP {
		any, t, text, err := icmpItem(v)
		switch {
		case err != nil:
			e.addErr(idx("permit.icmp", i), text, err)
		case any:
			p.ICMPAny = true
		default:
			p.ICMP = append(p.ICMP, t)
		}
	}
	p.ICMP = sortICMP(p.ICMP)
	for i, v := range rp.Protocols {
		n, text, err := protocolItem(v)
		if err != nil {
			e.addErr(idx("permit.protocols", i), text, err)
			continue
		}
		p.Protocols = append(p.Protocols, n)
	}
	slices.Sort(p.Protocols)
	p.Protocols = slices.Compact(p.Protocols)
	for i, s := range rp.SpoofDestinations {
		pf, err := prefixOnly(s)
		if err != nil {
			e.addErr(idx("permit.spoof_destinations", i), s, err)
			continue
		}
		p.SpoofDestinations = append(p.SpoofDestinations, pf)
	}

	// [dns]
	d := &n.DNS
	for i, s := range r.DNS.Allow {
		if strings.EqualFold(strings.TrimSpace(s), "any") {
			d.AllowAny = true
			continue
		}
		nm, err := NormalizeName(s)
		if err != nil {
			e.addErr(idx("dns.allow", i), s, err)
			continue
		}
		d.Allow = append(d.Allow, nm)
	}
	if d.AllowAny {
		d.Allow = nil
	}
	slices.Sort(d.Allow)
	d.Allow = slices.Compact(d.Allow)
	for i, s := range r.DNS.Upstreams {
		ap, err := parseUpstream(s)
		if err != nil {
			e.addErr(idx("dns.upstreams", i), s, err)
			continue
		}
		d.Upstreams = append(d.Upstreams, ap)
	}
	if r.DNS.QPS < 1 || r.DNS.QPS > 1_000_000 {
		e.add("dns.qps", strconv.FormatInt(r.DNS.QPS, 10), "must be 1 to 1000000 queries per second per experiment")
	} else {
		d.QPS = int(r.DNS.QPS)
	}
	switch da := strings.ToLower(r.DNS.DenyAnswer); da {
	case "refused", "nxdomain":
		d.DenyAnswer = da
	default:
		e.add("dns.deny_answer", r.DNS.DenyAnswer, "use \"refused\" or \"nxdomain\"")
	}

	// [limits]
	l := &n.Limits
	rl := r.Limits
	l.MaxMbps, l.NodeMbps, l.MaxMBPerDay, l.MaxHours = rl.MaxMbps, rl.NodeMbps, rl.MaxMBPerDay, rl.MaxHours
	l.MaxRAMMB, l.OutputMB, l.TmpfsMB = rl.MaxRAMMB, rl.OutputMB, rl.TmpfsMB
	if !(rl.MaxMbps > 0) || rl.MaxMbps > 100_000 {
		e.add("limits.max_mbps", fmtFloat(rl.MaxMbps), "must be more than 0 (and at most 100000) Mbit/s per experiment")
	}
	if !(rl.NodeMbps >= 0) || rl.NodeMbps > 100_000 {
		e.add("limits.node_mbps", fmtFloat(rl.NodeMbps), "must be 0 (no node-wide cap) or a positive Mbit/s value up to 100000")
	}
	if rl.MaxMBPerDay < 0 {
		e.add("limits.max_mb_per_day", strconv.FormatInt(rl.MaxMBPerDay, 10), "must not be negative; 0 means no daily maximum")
	}
	if !(rl.MaxHours > 0) || rl.MaxHours > 24*366 {
		e.add("limits.max_hours", fmtFloat(rl.MaxHours), "must be more than 0 hours (at most 8784)")
	}
	if rl.MaxRAMMB <= 0 {
		e.add("limits.max_ram_mb", strconv.FormatInt(rl.MaxRAMMB, 10), "must be more than 0 MB")
	}
	if rl.OutputMB <= 0 {
		e.add("limits.output_mb", strconv.FormatInt(rl.OutputMB, 10), "must be more than 0 MB")
	}
	l.MaxFlows = rl.MaxFlows
	if rl.MaxFlows < 0 || rl.MaxFlows > 1<<31-1 {
		e.add("limits.max_flows", strconv.FormatInt(rl.MaxFlows, 10), "must be 0 (an eighth of nf_conntrack_max) or a number of flows up to 2147483647")
	}
	if rl.TmpfsMB < 0 {
		e.add("limits.tmpfs_mb", strconv.FormatInt(rl.TmpfsMB, 10), "must not be negative; 0 means no tmpfs")
	}
	l.CPU = map[string]int{}
	for k, v := range rl.CPU {
		if !slices.Contains(CPUClasses, k) {
			e.add("limits.cpu."+k, "", "unknown CPU class; use %s", strings.Join(CPUClasses, ", "))
			continue
		}
		if v < 1 || v > 6400 {
			e.add("limits.cpu."+k, strconv.FormatInt(v, 10), "must be 1 to 6400 percent of one core")
			continue
		}
		l.CPU[k] = int(v)
	}
	if len(rl.CPU) == 0 {
		e.add("limits.cpu", "", "no CPU class offered, so no experiment could run; offer at least one, e.g. { minimal = 10 }")
	}
	for i, c := range rl.AllowMissingControllers {
		if !slices.Contains(Controllers, c) {
			e.add(idx("limits.allow_missing_controllers", i), c, "unknown cgroup controller; use %s", strings.Join(Controllers, ", "))
			continue
		}
		l.AllowMissingControllers = append(l.AllowMissingControllers, c)
	}

	// [alerts]
	a := &n.Alerts
	if r.Alerts.NFLOGGroup < 0 || r.Alerts.NFLOGGroup > 65535 {
		e.add("alerts.nflog_group", strconv.FormatInt(r.Alerts.NFLOGGroup, 10), "must be 0-65535")
	} else {
		a.NFLOGGroup = uint16(r.Alerts.NFLOGGroup)
	}
	a.File = r.Alerts.File
	if a.File == "" {
		a.File = filepath.Join(n.StateDir, "alerts.jsonl")
	} else if !filepath.IsAbs(a.File) {
		e.add("alerts.file", a.File, "must be an absolute path, or \"\" for <state_dir>/alerts.jsonl")
	}
	a.Syslog = r.Alerts.Syslog
	if a.Syslog != "" {
		if err := checkSyslog(a.Syslog); err != nil {
			e.addErr("alerts.syslog", a.Syslog, err)
		}
	}
	if r.Alerts.StopAfter < 0 || r.Alerts.StopAfter > 1<<31-1 {
		e.add("alerts.stop_after", strconv.FormatInt(r.Alerts.StopAfter, 10), "must not be negative; 0 means never stop")
	} else {
		a.StopAfter = int(r.Alerts.StopAfter)
	}
	w, err := time.ParseDuration(r.Alerts.Window)
	if err != nil || w <= 0 {
		e.add("alerts.window", r.Alerts.Window, "not a positive duration; write e.g. \"10m\" or \"1h\"")
	} else {
		a.Window = w
	}
	if r.Flows.RetentionDays < 1 || r.Flows.RetentionDays > 3660 {
		e.add("flows.retention_days", strconv.FormatInt(r.Flows.RetentionDays, 10), "must be 1 to 3660 days")
	} else {
		n.Flows.RetentionDays = int(r.Flows.RetentionDays)
	}
	n.Containers.AllowUnsigned = r.Containers.AllowUnsigned
	for i, k := range r.Containers.TrustedKeys {
		k = strings.TrimSpace(k)
		if b, err := base64.StdEncoding.DecodeString(k); err != nil || len(b) != 42 || string(b[:2]) != "Ed" {
			e.add(fmt.Sprintf("containers.trusted_keys[%d]", i), k, "not a minisign public key; give the base64 line (RW...) of the signer's .pub file")
			continue
		}
		n.Containers.TrustedKeys = append(n.Containers.TrustedKeys, k)
	}

	n.Outputs = convertOutputs(r.Outputs, e)

	if len(e.list) > 0 {
		return nil, errors.Join(e.list...)
	}
	return n, nil
}

// convertOutputs checks the [outputs] section. The credentials file itself
// is read (and its owner and mode checked) when the daemon starts.
func convertOutputs(r rawNodeOutputs, e *errs) OutputsPolicy {
	o := OutputsPolicy{Push: r.Push, Region: r.Region, Credentials: r.Credentials, Secure: true}
	iv, err := time.ParseDuration(r.Interval)
	if err != nil || iv < time.Second {
		e.add("outputs.interval", r.Interval, "not a duration of at least 1s; write e.g. \"5m\"")
	} else {
		o.Interval = iv
	}
	if r.DiskBudgetMB < 1 {
		e.add("outputs.disk_budget_mb", strconv.FormatInt(r.DiskBudgetMB, 10), "must be at least 1 MB of local copies")
	}
	if r.BacklogAlertMB < 1 {
		e.add("outputs.backlog_alert_mb", strconv.FormatInt(r.BacklogAlertMB, 10), "must be at least 1 MB waiting to be shipped")
	}
	if r.ChunkMB < 1 || r.ChunkMB > 5000 {
		e.add("outputs.chunk_mb", strconv.FormatInt(r.ChunkMB, 10), "must be 1 to 5000 MB per stdout/stderr object")
	}
	o.DiskBudgetBytes, o.BacklogAlertBytes, o.ChunkBytes = r.DiskBudgetMB<<20, r.BacklogAlertMB<<20, r.ChunkMB<<20
	if r.Push == "" {
		return o
	}
	rest, ok := strings.CutPrefix(r.Push, "s3://")
	bucket, prefix, _ := strings.Cut(rest, "/")
	if !ok || !validBucket(bucket) {
		e.add("outputs.push", r.Push, "not s3://BUCKET/PREFIX with a bucket name of 3-63 lowercase letters, digits, dots and hyphens; write e.g. \"s3://arkgw-results/nodes\"")
	} else if strings.Contains(prefix, "//") || strings.ContainsAny(prefix, "\\\x00") {
		e.add("outputs.push", r.Push, "the prefix must not contain empty path segments or backslashes")
	}
	o.Bucket, o.Prefix = bucket, strings.Trim(prefix, "/")
	ep := r.Endpoint
	if ep == "" {
		e.add("outputs.endpoint", "", "push is set but endpoint is empty; write the store's URL, e.g. \"https://s3.eu-central-1.amazonaws.com\" or \"http://10.1.2.3:9000\"")
	} else if u, err := url.Parse(ep); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		e.add("outputs.endpoint", ep, "not an http:// or https:// URL without a path; write e.g. \"https://s3.example.net\" (the bucket goes in push)")
	} else {
		o.Endpoint, o.Secure = u.Host, u.Scheme == "https"
	}
	if !filepath.IsAbs(r.Credentials) {
		e.add("outputs.credentials", r.Credentials, "must be an absolute path to a file owned by root with mode 0600 or 0400")
	}
	return o
}

// validBucket: S3 bucket naming rules (the part arkgw depends on).
func validBucket(b string) bool {
	if len(b) < 3 || len(b) > 63 || strings.HasPrefix(b, ".") || strings.HasSuffix(b, ".") || strings.HasPrefix(b, "-") || strings.HasSuffix(b, "-") {
		return false
	}
	for _, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// prefixOnly parses a prefix list item and explains when ports were given.
func prefixOnly(s string) (netip.Prefix, error) {
	p, err := ParsePrefix(s)
	if err != nil {
		if ds, derr := ParseDest(s, false); derr == nil && len(ds) == 1 {
			return p, fmt.Errorf("this list takes prefixes without ports; write %s", ds[0].Prefix)
		}
	}
	return p, err
}

func destEntries(e *errs, field string, in []string) []DestEntry {
	var out []DestEntry
	for i, s := range in {
		ds, err := ParseDest(s, true)
		if err != nil {
			e.addErr(idx(field, i), s, err)
			continue
		}
		out = append(out, DestEntry{Text: s, Any: strings.EqualFold(strings.TrimSpace(s), "any"), Dests: ds})
	}
	return out
}

func portList(e *errs, field string, in []any) []PortRange {
	var out []PortRange
	for i, v := range in {
		r, err := portItem(v)
		if err != nil {
			e.addErr(idx(field, i), fmt.Sprint(v), err)
			continue
		}
		out = append(out, r)
	}
	return mergeRanges(out)
}

func sortICMP(ts []ICMPType) []ICMPType {
	slices.SortFunc(ts, func(a, b ICMPType) int {
		if a.V6 != b.V6 {
			if a.V6 {
				return 1
			}
			return -1
		}
		return int(a.Type) - int(b.Type)
	})
	return slices.Compact(ts)
}

func parseUpstream(s string) (netip.AddrPort, error) {
	t := strings.TrimSpace(s)
	if a, err := netip.ParseAddr(strings.Trim(t, "[]")); err == nil && a.Zone() == "" {
		return netip.AddrPortFrom(a.Unmap(), 53), nil
	}
	ap, err := netip.ParseAddrPort(t)
	if err != nil || ap.Addr().Zone() != "" {
		return netip.AddrPort{}, errors.New("not an address or address:port; write e.g. \"192.0.2.53\", \"192.0.2.53:53\" or \"[2001:db8::53]:53\"")
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, errors.New("port 0 is not a port; use 1-65535 (53 for DNS)")
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

func checkSyslog(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("not a URL; write e.g. \"udp://192.0.2.10:514\"")
	}
	switch u.Scheme {
	case "udp", "tcp":
		if _, port, err := net.SplitHostPort(u.Host); err != nil || port == "" {
			return errors.New("needs host:port; write e.g. \"udp://192.0.2.10:514\"")
		}
	case "unix", "unixgram":
		if u.Path == "" {
			return errors.New("needs a socket path; write e.g. \"unixgram:///dev/log\"")
		}
	default:
		return errors.New("unknown scheme; use udp://host:port, tcp://host:port or unixgram:///dev/log")
	}
	return nil
}

func fmtFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }
