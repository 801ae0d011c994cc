package configs

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"go4.org/netipx"
)

// Env is what admission needs to know about the node and the experiment
// beyond the two files.
type Env struct {
	// DefaultRouters stay reachable although they lie in reserved ranges.
	DefaultRouters []netip.Addr
	// ID is the experiment id given to the admitted experiment ("" when
	// only checking).
	ID string
	// Arch is the node's machine architecture as uname -m says it
	// ("x86_64", "aarch64", "armv7l"; see MachineArch); "" skips the check.
	Arch string
	// Containers reports the installed images of a container version:
	// architecture -> sha256 of the image ("dir" -> "" for a plain
	// directory root). nil skips the container checks (no containers
	// directory, e.g. when checking off the node).
	Containers func(version string) map[string]string
}

// MachineArch maps a GOARCH to the architecture names manifests use
// ("" for architectures arkgw does not name).
func MachineArch(goarch string) string {
	switch goarch {
	case "amd64":
		return "x86_64"
	case "arm64":
		return "aarch64"
	case "arm":
		return "armv7l"
	}
	return ""
}

// Admit checks the manifest m against the node policy and computes the
// effective policy. It returns one Conflict per request that exceeds the
// node's allowance; any conflict refuses the experiment. The Effective is
// returned even when there are conflicts, so that `arkgw check` can show
// it; never run an experiment with conflicts.
//
// Both arguments must come from ParseNode/DefaultNode and ParseManifest
// (validated values); Admit does not modify them.
func Admit(node *NodePolicy, m *Manifest, env Env) (*Effective, []Conflict) {
	a := &admission{node: node, m: m, p: &node.Permit}
	eff := &Effective{
		ID:              env.ID,
		Title:           m.Title,
		Experimenters:   slices.Clone(m.Experimenters),
		Container:       m.Container,
		ContainerSHA256: m.ContainerSHA256,
		Architectures:   slices.Clone(m.Architectures),
		Command:         slices.Clone(m.Command),
		FilesDir:        m.Files,
		Start:           m.Start,
	}
	if env.ID != "" {
		if err := ValidID(env.ID); err != nil {
			a.conflict("id", "", "%v", err)
		}
	}
	a.experimenters()
	if env.Arch != "" && !slices.Contains(m.Architectures, "any") && !slices.Contains(m.Architectures, env.Arch) {
		a.conflict("architectures", strings.Join(m.Architectures, ","), "this node is %s; build the experiment for it (or for \"any\") or choose another node", env.Arch)
	}
	a.container(env)
	eff.IPv4, eff.IPv6 = a.families()

	// What is always dropped: reserved ranges (minus the default routers)
	// and families the experiment may not use.
	eff.Lab = node.Lab
	a.reserved = ReservedSet(node.Lab, env.DefaultRouters)
	var db netipx.IPSetBuilder
	db.AddSet(a.reserved)
	if !eff.IPv4 {
		db.AddPrefix(all4)
	}
	if !eff.IPv6 {
		db.AddPrefix(all6)
	}
	a.drop, _ = db.IPSet()
	a.eff = eff
	if len(a.p.AllPackets) > 0 {
		a.allPackets = prefixSet(a.p.AllPackets...)
		eff.AllPackets = slices.Clone(a.p.AllPackets)
	}

	eff.TCP = a.dests("tcp", m.TCP, a.p.TCP, a.p.TCPPorts)
	eff.UDP = a.dests("udp", m.UDP, a.p.UDP, a.p.UDPPorts)
	a.icmp()
	a.synOnly()
	a.protocols()
	a.spoof()
	a.dns()
	a.backChannel()
	a.limits()
	return eff, a.conflicts
}

type admission struct {
	node       *NodePolicy
	p          *Permit
	m          *Manifest
	eff        *Effective
	reserved   *netipx.IPSet // reserved minus default routers
	drop       *netipx.IPSet // reserved plus families not in use
	allPackets *netipx.IPSet // nil = no bound
	conflicts  []Conflict
}

func (a *admission) conflict(field, value, format string, args ...any) {
	a.conflicts = append(a.conflicts, Conflict{Field: field, Value: value, Msg: fmt.Sprintf(format, args...)})
}

// container refuses a version that is not installed for the node's
// architecture, and a pinned sha256 that the installed image does not have.
func (a *admission) container(env Env) {
	if env.Containers == nil || a.m.Container == "" {
		return
	}
	imgs := env.Containers(a.m.Container)
	if len(imgs) == 0 {
		a.conflict("container", a.m.Container, "container version not installed on this node (arkgw container list); the owner installs it with arkgw container import IMAGE")
		return
	}
	sum, ok := imgs[env.Arch]
	if !ok {
		sum, ok = imgs["dir"]
	}
	if !ok {
		var archs []string
		for k := range imgs {
			archs = append(archs, k)
		}
		slices.Sort(archs)
		a.conflict("container", a.m.Container, "container version installed for %s only; this node is %s: the owner must import the %s image", strings.Join(archs, ", "), env.Arch, env.Arch)
		return
	}
	if a.m.ContainerSHA256 == "" {
		return
	}
	if sum == "" {
		a.conflict("container_sha256", a.m.ContainerSHA256, "container %s is a plain directory on this node, not an image with a sha256: remove the pin or ask the owner to import the image", a.m.Container)
	} else if sum != a.m.ContainerSHA256 {
		a.conflict("container_sha256", a.m.ContainerSHA256, "the manifest pins sha256 %s but container %s installed here (%s) has sha256 %s: build against the node's image or ask the owner to import yours", a.m.ContainerSHA256, a.m.Container, env.Arch, sum)
	}
}

func (a *admission) experimenters() {
	allowed := a.p.Experimenters
	for i, c := range a.m.Experimenters {
		email := strings.ToLower(c.Email)
		if len(allowed) == 0 {
			if !a.p.ThirdParty {
				a.conflict(idx("experimenters", i)+".email", c.Email, "the node accepts no third-party experiments (permit.third_party = false) and lists no experimenters; ask the node owner")
			}
			continue
		}
		_, domain, _ := strings.Cut(email, "@")
		if !slices.Contains(allowed, email) && !slices.Contains(allowed, "@"+domain) {
			a.conflict(idx("experimenters", i)+".email", c.Email, "not among the node's permitted experimenters (permit.experimenters); ask the node owner to add you")
		}
	}
}

// families returns the address families the experiment gets.
func (a *admission) families() (v4, v6 bool) {
	switch a.m.IP {
	case "":
		return a.p.IPv4, a.p.IPv6
	case "ipv4":
		v4 = true
	case "ipv6":
		v6 = true
	case "both":
		v4, v6 = true, true
	}
	if v4 && !a.p.IPv4 {
		a.conflict("ip", a.m.IP, "the node does not permit IPv4 (permit.ipv4 = false); use ip = \"ipv6\"")
	}
	if v6 && !a.p.IPv6 {
		a.conflict("ip", a.m.IP, "the node does not permit IPv6 (permit.ipv6 = false); use ip = \"ipv4\"")
	}
	return v4 && a.p.IPv4, v6 && a.p.IPv6
}

func famName(p netip.Prefix) string {
	if p.Addr().Is4() {
		return "IPv4"
	}
	return "IPv6"
}

func (a *admission) famOK(addr netip.Addr) bool {
	if addr.Is4() {
		return a.eff.IPv4
	}
	return a.eff.IPv6
}

// dests checks the requested entries of one protocol against the owner's
// allowance and returns the merged effective destinations.
func (a *admission) dests(proto string, req, owner []DestEntry, ownerPorts []PortRange) []Dest {
	var allowed []Dest
	for _, e := range owner {
		allowed = append(allowed, e.Dests...)
	}
	anyPorts := slices.Clone(ownerPorts)
	if a.p.DNSServersAny {
		anyPorts = mergeRanges(append(anyPorts, PortRange{53, 53}))
	}
	var all []Dest
	for i, e := range req {
		f := idx(proto, i)
		usable, exceeded, outside := false, false, false
		for _, d := range e.Dests {
			if !e.Any && !a.famOK(d.Prefix.Addr()) {
				a.conflict(f, e.Text, "%s destination, but the experiment does not get %s (ip = %q, node ipv4 = %v, ipv6 = %v); fix ip or drop the entry",
					famName(d.Prefix), famName(d.Prefix), a.m.IP, a.p.IPv4, a.p.IPv6)
				continue
			}
			if !a.famOK(d.Prefix.Addr()) {
				continue
			}
			set := minus(d.Prefix, a.reserved)
			if isEmpty(set) {
				continue
			}
			usable = true
			all = append(all, d)
			if exceeded {
				// One conflict per entry is enough.
			} else if rest, iv, bad := uncovered(set, d.Ports, allowed, anyPorts); bad {
				exceeded = true
				what := fmt.Sprintf("ports %d-%d to %s are", iv.Lo, iv.Hi, a.describe(rest, d.Prefix))
				if iv.Lo == iv.Hi {
					what = fmt.Sprintf("port %d to %s is", iv.Lo, a.describe(rest, d.Prefix))
				}
				a.conflict(f, e.Text, "exceeds the node's %s allowlist (%s not allowed); ask the node owner or narrow it", proto, what)
			}
			if a.allPackets != nil && !outside {
				if rest := setMinus(set, a.allPackets); !isEmpty(rest) {
					outside = true
					a.conflict(f, e.Text, "outside the node's all_packets allowlist (%s is not in it); narrow it to the permitted prefixes", a.describe(rest, d.Prefix))
				}
			}
		}
		if !usable && len(e.Dests) > 0 && allFamOK(a, e) {
			a.conflict(f, e.Text, "lies entirely in reserved ranges, which are always dropped; remove it")
		}
	}
	return MergeDests(all, a.drop)
}

// describe names a part of rest (a subset of within) readably: the widest
// prefix of within that rest fills except for reserved ranges, e.g.
// "0.0.0.0/0 minus reserved ranges" rather than "1.0.0.0/8".
func (a *admission) describe(rest *netipx.IPSet, within netip.Prefix) string {
	var b netipx.IPSetBuilder
	b.AddSet(rest)
	b.AddSet(a.reserved)
	b.Intersect(prefixSet(within))
	wide, _ := b.IPSet()
	first := rest.Prefixes()[0]
	for _, p := range wide.Prefixes() {
		if p.Overlaps(first) {
			if a.reserved.OverlapsPrefix(p) {
				return p.String() + " minus reserved ranges"
			}
			return p.String()
		}
	}
	return first.String()
}

func allFamOK(a *admission, e DestEntry) bool {
	for _, d := range e.Dests {
		if !a.famOK(d.Prefix.Addr()) {
			return false
		}
	}
	return true
}

func (a *admission) icmp() {
	var types []ICMPType
	for i, e := range a.m.ICMP {
		f := idx("icmp", i)
		if e.Any {
			if !a.p.ICMPAny {
				a.conflict(f, e.Text, "the node permits only some ICMP types (%s); list the types you send", icmpList(a.p.ICMP))
			}
			a.eff.ICMPAny = true
			continue
		}
		if e.Type.V6 && !a.eff.IPv6 || !e.Type.V6 && !a.eff.IPv4 {
			a.conflict(f, e.Text, "ICMP type of a family the experiment does not get (ip = %q); fix ip or drop it", a.m.IP)
			continue
		}
		if !a.p.ICMPAny && !slices.Contains(a.p.ICMP, e.Type) {
			a.conflict(f, e.Text, "ICMP type not permitted by the node (permitted: %s); ask the node owner or drop it", icmpList(a.p.ICMP))
		}
		types = append(types, e.Type)
	}
	if !a.eff.ICMPAny {
		a.eff.ICMP = sortICMP(types)
	}
}

func icmpList(ts []ICMPType) string {
	if len(ts) == 0 {
		return "none"
	}
	s := make([]string, len(ts))
	for i, t := range ts {
		s[i] = t.String()
	}
	return strings.Join(s, ", ")
}

func (a *admission) synOnly() {
	for i, r := range a.m.SynOnlyPorts {
		if !a.p.SynOnly {
			a.conflict(idx("syn_only_ports", i), FormatPorts([]PortRange{r}), "the node does not permit TCP SYN-only probing (permit.syn_only = false); drop syn_only_ports or ask the node owner")
		}
	}
	a.eff.SynOnlyPorts = mergeRanges(a.m.SynOnlyPorts)
}

func (a *admission) protocols() {
	var ps []uint8
	for i, n := range a.m.Protocols {
		if !slices.Contains(a.p.Protocols, n) {
			a.conflict(idx("protocols", i), strconv.Itoa(int(n)), "IP protocol not permitted by the node (permit.protocols); ask the node owner or drop it")
		}
		ps = append(ps, n)
	}
	slices.Sort(ps)
	a.eff.Protocols = slices.Compact(ps)
}

func (a *admission) spoof() {
	owner := prefixSet(a.p.SpoofDestinations...)
	for i, d := range a.m.SpoofDestinations {
		f, v := idx("spoof.destinations", i), d.String()
		switch {
		case len(a.p.SpoofDestinations) == 0:
			a.conflict(f, v, "the node does not permit spoofing (permit.spoof_destinations is empty); remove [spoof] or ask the node owner")
		case !owner.Contains(d):
			a.conflict(f, v, "not in the node's spoof_destinations; ask the node owner or use a permitted destination")
		}
		if !a.famOK(d) {
			a.conflict(f, v, "address of a family the experiment does not get (ip = %q); fix ip or drop it", a.m.IP)
		} else if a.reserved.Contains(d) {
			a.conflict(f, v, "reserved address, always dropped; use a public destination")
		}
		if a.allPackets != nil && !a.allPackets.Contains(d) {
			a.conflict(f, v, "outside the node's all_packets allowlist; use a permitted destination")
		}
	}
	if len(a.m.SpoofDestinations) > 0 {
		a.eff.SpoofSources = slices.Clone(a.m.SpoofSources)
		a.eff.SpoofDestinations = slices.Clone(a.m.SpoofDestinations)
	}
}

func (a *admission) dns() {
	d := &a.node.DNS
	a.eff.DNSQPS = d.QPS
	a.eff.DNSDenyNXDomain = d.DenyAnswer == "nxdomain"
	if a.m.DNSAny {
		if !d.AllowAny {
			a.conflict("dns", "any", "the node lets experiments resolve only names under %s; list the names you resolve", strings.Join(d.Allow, ", "))
		}
		a.eff.DNSAny = true
		return
	}
	var names []string
	for i, n := range a.m.DNS {
		if !d.AllowAny && !slices.ContainsFunc(d.Allow, func(s string) bool { return NameUnder(n, s) }) {
			allow := strings.Join(d.Allow, ", ")
			if allow == "" {
				allow = "nothing"
			}
			a.conflict(idx("dns", i), n, "not under the names the node allows (dns.allow: %s); ask the node owner or drop it", allow)
		}
		names = append(names, n)
	}
	slices.Sort(names)
	names = slices.Compact(names)
	// A name under another listed name adds nothing.
	var out []string
	for _, n := range names {
		if !slices.ContainsFunc(names, func(s string) bool { return s != n && NameUnder(n, s) }) {
			out = append(out, n)
		}
	}
	a.eff.DNSNames = out
}

func (a *admission) backChannel() {
	bc := a.m.BackChannel
	if !bc.IsValid() {
		return
	}
	v := bc.String()
	if !a.p.BackChannel {
		a.conflict("back_channel", v, "the node does not permit back channels (permit.back_channel = false); drop back_channel or ask the node owner")
	}
	switch {
	case !a.famOK(bc.Addr()):
		a.conflict("back_channel", v, "address of a family the experiment does not get (ip = %q); fix ip or use another address", a.m.IP)
	case a.reserved.Contains(bc.Addr()):
		a.conflict("back_channel", v, "reserved address, always dropped; use a public address")
	case a.allPackets != nil && !a.allPackets.Contains(bc.Addr()):
		a.conflict("back_channel", v, "outside the node's all_packets allowlist; use a permitted address")
	}
	a.eff.BackChannel = bc
}

func (a *admission) limits() {
	nl := &a.node.Limits
	l := &a.eff.Limits
	m := a.m

	l.MaxMbps = nl.MaxMbps
	if m.MaxMbps != nil {
		if *m.MaxMbps > nl.MaxMbps {
			a.conflict("max_mbps", fmtFloat(*m.MaxMbps), "more than the node's maximum of %s Mbit/s; ask for at most that", fmtFloat(nl.MaxMbps))
		}
		l.MaxMbps = min(*m.MaxMbps, nl.MaxMbps)
	}

	l.MaxMBPerDay = nl.MaxMBPerDay
	if m.MaxMBPerDay != nil {
		req := *m.MaxMBPerDay
		switch {
		case nl.MaxMBPerDay > 0 && req == 0:
			a.conflict("max_mb_per_day", "0", "asks for no daily maximum, but the node allows at most %d MB per day; ask for at most that", nl.MaxMBPerDay)
		case nl.MaxMBPerDay > 0 && req > nl.MaxMBPerDay:
			a.conflict("max_mb_per_day", strconv.FormatInt(req, 10), "more than the node's maximum of %d MB per day; ask for at most that", nl.MaxMBPerDay)
		}
		switch {
		case nl.MaxMBPerDay == 0:
			l.MaxMBPerDay = req
		case req > 0:
			l.MaxMBPerDay = min(req, nl.MaxMBPerDay)
		}
	}

	l.MaxHours = nl.MaxHours
	if m.MaxHours != nil {
		if *m.MaxHours > nl.MaxHours {
			a.conflict("max_hours", fmtFloat(*m.MaxHours), "longer than the node's maximum of %s hours; ask for at most that", fmtFloat(nl.MaxHours))
		}
		l.MaxHours = min(*m.MaxHours, nl.MaxHours)
	}

	l.MaxRAMMB = nl.MaxRAMMB
	if m.MaxRAMMB != nil {
		if *m.MaxRAMMB > nl.MaxRAMMB {
			a.conflict("max_ram_mb", strconv.FormatInt(*m.MaxRAMMB, 10), "more than the node's maximum of %d MB; ask for at most that", nl.MaxRAMMB)
		}
		l.MaxRAMMB = min(*m.MaxRAMMB, nl.MaxRAMMB)
	}

	l.TmpfsMB = nl.TmpfsMB
	if m.TmpfsMB != nil {
		if *m.TmpfsMB > nl.TmpfsMB {
			a.conflict("tmpfs_mb", strconv.FormatInt(*m.TmpfsMB, 10), "more than the node's maximum of %d MB; ask for at most that", nl.TmpfsMB)
		}
		l.TmpfsMB = min(*m.TmpfsMB, nl.TmpfsMB)
	}

	l.OutputMB = nl.OutputMB
	l.MaxFlows = nl.MaxFlows
	l.CPUClass = m.CPU
	pct, ok := nl.CPU[m.CPU]
	if !ok {
		var offered []string
		for _, c := range CPUClasses {
			if _, ok := nl.CPU[c]; ok {
				offered = append(offered, c)
			}
		}
		a.conflict("cpu", m.CPU, "the node does not offer this CPU class (it offers %s); ask for one of those", strings.Join(offered, ", "))
	}
	l.CPUPercent = pct
}
