package configs

import (
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"go4.org/netipx"
)

// FormatEffective writes the effective policy in the readable form that
// `arkgw check` prints: who, address families, protocol by protocol, DNS,
// spoofing, back channel, limits and sandbox inputs. Destination lists are
// shown compactly: a prefix the policy allows except for reserved ranges
// is written "PREFIX minus reserved ranges".
func FormatEffective(w io.Writer, eff *Effective) error {
	b := &strings.Builder{}
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }

	id := eff.ID
	if id == "" {
		id = "(not assigned)"
	}
	p("experiment:    %s %q\n", id, eff.Title)
	for _, c := range eff.Experimenters {
		p("experimenter:  %s <%s>\n", c.Name, c.Email)
	}
	var fams []string
	if eff.IPv4 {
		fams = append(fams, "IPv4")
	}
	if eff.IPv6 {
		fams = append(fams, "IPv6")
	}
	if len(fams) == 0 {
		fams = []string{"none"}
	}
	p("ip:            %s\n", strings.Join(fams, ", "))
	if len(eff.AllPackets) > 0 {
		ps := make([]string, len(eff.AllPackets))
		for i, x := range eff.AllPackets {
			ps[i] = x.String()
		}
		p("all packets:   only to %s (node policy)\n", strings.Join(ps, ", "))
	}
	p("tcp:           %s\n", formatDests(eff.TCP, eff.Lab))
	if len(eff.SynOnlyPorts) > 0 {
		p("tcp syn-only:  ports %s to any destination (SYN without data)\n", FormatPorts(eff.SynOnlyPorts))
	}
	p("udp:           %s\n", formatDests(eff.UDP, eff.Lab))
	switch {
	case eff.ICMPAny:
		p("icmp:          any type (ICMP and ICMPv6)\n")
	case len(eff.ICMP) == 0:
		p("icmp:          none\n")
	default:
		p("icmp:          %s\n", icmpList(eff.ICMP))
	}
	if len(eff.Protocols) > 0 {
		ps := make([]string, len(eff.Protocols))
		for i, n := range eff.Protocols {
			ps[i] = strconv.Itoa(int(n))
		}
		p("protocols:     %s\n", strings.Join(ps, ", "))
	} else {
		p("protocols:     none besides ICMP, TCP, UDP\n")
	}
	deny := "REFUSED"
	if eff.DNSDenyNXDomain {
		deny = "NXDOMAIN"
	}
	switch {
	case eff.DNSAny:
		p("dns:           any name (%d queries/s)\n", eff.DNSQPS)
	case len(eff.DNSNames) == 0:
		p("dns:           no names (every query answered %s)\n", deny)
	default:
		p("dns:           %s and names under them (%d queries/s; others answered %s)\n", strings.Join(eff.DNSNames, ", "), eff.DNSQPS, deny)
	}
	if len(eff.SpoofSources) > 0 || len(eff.SpoofDestinations) > 0 {
		p("spoofing:      sources %s only to %s (never NATed)\n", addrList(eff.SpoofSources), addrList(eff.SpoofDestinations))
	} else {
		p("spoofing:      none\n")
	}
	if eff.BackChannel.IsValid() {
		p("back channel:  tcp to %s\n", eff.BackChannel)
	}
	l := eff.Limits
	day := "no daily maximum"
	if l.MaxMBPerDay > 0 {
		day = fmt.Sprintf("%d MB/day", l.MaxMBPerDay)
	}
	tmpfs := "no tmpfs"
	if l.TmpfsMB > 0 {
		tmpfs = fmt.Sprintf("tmpfs %d MB", l.TmpfsMB)
	}
	p("limits:        %s Mbit/s, %s, %s h, cpu %s (%d%% of a core), ram %d MB, %s, output %d MB each for stdout and stderr\n",
		fmtFloat(l.MaxMbps), day, fmtFloat(l.MaxHours), l.CPUClass, l.CPUPercent, l.MaxRAMMB, tmpfs, l.OutputMB)
	p("container:     %s (%s)\n", eff.Container, strings.Join(eff.Architectures, ", "))
	p("command:       %s\n", quoteList(eff.Command))
	if eff.FilesDir != "" {
		p("files:         %s (at /experiment)\n", eff.FilesDir)
	}
	if !eff.Start.IsZero() {
		p("start:         %s\n", eff.Start.UTC().Format(time.RFC3339))
	} else {
		p("start:         as soon as submitted\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func addrList(as []netip.Addr) string {
	if len(as) == 0 {
		return "none"
	}
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

func quoteList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = strconv.Quote(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// formatDests groups destinations by port set and writes each group's
// addresses compactly (reserved ranges added back, then each resulting
// prefix written either as itself or as "PREFIX minus reserved ranges").
func formatDests(ds []Dest, lab LabPolicy) string {
	if len(ds) == 0 {
		return "none"
	}
	type group struct {
		ports string
		set   netipx.IPSetBuilder
	}
	var groups []*group
	byPorts := map[string]*group{}
	for _, d := range ds {
		k := FormatPorts(d.Ports)
		g := byPorts[k]
		if g == nil {
			g = &group{ports: k}
			byPorts[k] = g
			groups = append(groups, g)
		}
		g.set.AddPrefix(d.Prefix)
	}
	reserved := prefixSet(ReservedPrefixes(lab)...)
	var lines []string
	for _, g := range groups {
		have, _ := g.set.IPSet()
		var wb netipx.IPSetBuilder
		wb.AddSet(have)
		wb.AddSet(reserved)
		wide, _ := wb.IPSet()
		var parts []string
		for _, wp := range wide.Prefixes() {
			var ib netipx.IPSetBuilder
			ib.AddPrefix(wp)
			ib.Intersect(have)
			in, _ := ib.IPSet()
			ps := in.Prefixes()
			switch {
			case len(ps) == 0:
			case len(ps) == 1:
				parts = append(parts, ps[0].String())
			default:
				parts = append(parts, wp.String()+" minus reserved ranges")
			}
		}
		var kb netipx.IPSetBuilder
		kb.AddSet(have)
		kb.Intersect(reserved)
		kept, _ := kb.IPSet()
		line := fmt.Sprintf("%s ports %s", strings.Join(parts, ", "), g.ports)
		if ks := kept.Prefixes(); len(ks) > 0 && strings.Contains(line, "minus reserved ranges") {
			kp := make([]string, len(ks))
			for i, k := range ks {
				kp[i] = k.String()
			}
			line += " (reserved but kept: " + strings.Join(kp, ", ") + ")"
		}
		lines = append(lines, line)
	}
	return strings.Join(lines, "\n               ")
}
