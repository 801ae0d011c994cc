package configs

import (
	"errors"
	"fmt"
	"net/mail"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/net/idna"
)

// The parsers below return errors whose text is the "problem; fix" part of a
// FieldError: the caller adds the file, field and value.

// ParsePorts parses PORTS: "*", a port, a range "a-b", or a comma list of
// those. The result is sorted and merged.
func ParsePorts(s string) ([]PortRange, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New(`no ports; write "*" for all ports, a port, a range "a-b" or a comma list`)
	}
	var out []PortRange
	for item := range strings.SplitSeq(s, ",") {
		r, err := parsePortItem(strings.TrimSpace(item))
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return mergeRanges(out), nil
}

func parsePortItem(s string) (PortRange, error) {
	if s == "*" {
		return AllPorts, nil
	}
	if s == "" {
		return PortRange{}, errors.New("empty item in the port list; remove the extra comma")
	}
	lo, hi, isRange := strings.Cut(s, "-")
	a, err := parsePort(strings.TrimSpace(lo))
	if err != nil {
		return PortRange{}, err
	}
	if !isRange {
		return PortRange{a, a}, nil
	}
	b, err := parsePort(strings.TrimSpace(hi))
	if err != nil {
		return PortRange{}, err
	}
	if a > b {
		return PortRange{}, fmt.Errorf("range %d-%d is inverted; write %d-%d", a, b, b, a)
	}
	return PortRange{a, b}, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		if s != "" && strings.Trim(s, "0123456789") == "" {
			return 0, fmt.Errorf("port %s is out of range; use 1-65535", s)
		}
		return 0, fmt.Errorf("%q is not a port number; use 1-65535, a range a-b or *", s)
	}
	return checkPort(int64(min(n, 1<<62)), s)
}

func checkPort(n int64, text string) (uint16, error) {
	switch {
	case n == 0:
		return 0, errors.New("port 0 is not a port; use 1-65535")
	case n < 0 || n > 65535:
		return 0, fmt.Errorf("port %s is out of range; use 1-65535", text)
	}
	return uint16(n), nil
}

// portItem parses one element of a TOML port list (tcp_ports, udp_ports,
// syn_only_ports): an integer or a string "n" or "a-b".
func portItem(v any) (PortRange, error) {
	switch x := v.(type) {
	case int64:
		p, err := checkPort(x, strconv.FormatInt(x, 10))
		return PortRange{p, p}, err
	case string:
		if strings.Contains(x, ",") {
			return PortRange{}, errors.New("one port or range per item; split the comma list into items")
		}
		return parsePortItem(strings.TrimSpace(x))
	}
	return PortRange{}, fmt.Errorf("%v is not a port; use a number 1-65535 or a string \"a-b\"", v)
}

// mergeRanges sorts ranges and merges overlapping and adjacent ones.
func mergeRanges(in []PortRange) []PortRange {
	if len(in) == 0 {
		return nil
	}
	rs := slices.Clone(in)
	slices.SortFunc(rs, func(a, b PortRange) int { return int(a.Lo) - int(b.Lo) })
	out := rs[:1]
	for _, r := range rs[1:] {
		last := &out[len(out)-1]
		if int(r.Lo) <= int(last.Hi)+1 {
			last.Hi = max(last.Hi, r.Hi)
			continue
		}
		out = append(out, r)
	}
	return out
}

// FormatPorts writes ranges as in the file syntax: "*", "80,443", "33434-33534".
func FormatPorts(rs []PortRange) string {
	if len(rs) == 1 && rs[0] == AllPorts {
		return "*"
	}
	parts := make([]string, len(rs))
	for i, r := range rs {
		if r.Lo == r.Hi {
			parts[i] = strconv.Itoa(int(r.Lo))
		} else {
			parts[i] = fmt.Sprintf("%d-%d", r.Lo, r.Hi)
		}
	}
	return strings.Join(parts, ",")
}

// ParsePrefix parses a prefix or a bare address (/32 or /128). IPv6 may be
// given in brackets. Host bits must be zero.
func ParsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		s = s[1 : len(s)-1]
	}
	if s == "" {
		return netip.Prefix{}, errors.New("empty address; write an address or prefix such as 198.51.100.0/24")
	}
	if strings.Contains(s, "%") {
		return netip.Prefix{}, errors.New("zoned addresses are not destinations; remove the %zone")
	}
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		p, err = netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("not a prefix; write e.g. 198.51.100.0/24 or [2001:db8::/32]")
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("not an address or prefix; write e.g. 198.51.100.1 or 198.51.100.0/24")
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, errors.New("IPv4-mapped IPv6 address; write the IPv4 address")
	}
	if m := p.Masked(); m != p {
		return netip.Prefix{}, fmt.Errorf("host bits set; did you mean %s?", m)
	}
	return p, nil
}

// ParseAddr parses a single address (no prefix length; IPv6 optionally in brackets).
func ParseAddr(s string) (netip.Addr, error) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		s = s[1 : len(s)-1]
	}
	if strings.Contains(s, "/") {
		return netip.Addr{}, errors.New("a single address is needed here, not a prefix; drop the /length")
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, errors.New("not an IP address; write e.g. 192.0.2.1 or 2001:db8::1")
	}
	if a.Is4In6() {
		return netip.Addr{}, errors.New("IPv4-mapped IPv6 address; write the IPv4 address")
	}
	return a, nil
}

// ParseDest parses one destination entry PREFIX:PORTS ("198.51.100.0/24:80,443",
// "[2001:db8::/32]:53", "198.51.100.1:*"). The word "none" yields no
// destinations; "any" (when allowAny) yields 0.0.0.0/0:* and [::/0]:*.
func ParseDest(s string, allowAny bool) ([]Dest, error) {
	t := strings.TrimSpace(s)
	switch strings.ToLower(t) {
	case "none":
		return nil, nil
	case "any":
		if !allowAny {
			return nil, errors.New(`"any" is not allowed here; write prefixes with ports`)
		}
		return []Dest{
			{Prefix: netip.MustParsePrefix("0.0.0.0/0"), Ports: []PortRange{AllPorts}},
			{Prefix: netip.MustParsePrefix("::/0"), Ports: []PortRange{AllPorts}},
		}, nil
	}
	var addr, ports string
	if strings.HasPrefix(t, "[") {
		end := strings.Index(t, "]")
		if end < 0 {
			return nil, errors.New(`missing "]"; write IPv6 as [2001:db8::/32]:PORTS`)
		}
		addr, ports = t[1:end], t[end+1:]
		if !strings.HasPrefix(ports, ":") {
			return nil, errors.New(`missing ports; write [PREFIX]:PORTS, e.g. [2001:db8::/32]:53 or [::/0]:*`)
		}
		ports = ports[1:]
	} else {
		i := strings.LastIndex(t, ":")
		if i < 0 {
			return nil, errors.New(`missing ports; write PREFIX:PORTS, e.g. 198.51.100.0/24:80 or 0.0.0.0/0:*`)
		}
		addr, ports = t[:i], t[i+1:]
		if strings.Contains(addr, ":") {
			return nil, errors.New(`IPv6 needs brackets; write e.g. [2001:db8::/32]:53`)
		}
	}
	p, err := ParsePrefix(addr)
	if err != nil {
		return nil, err
	}
	rs, err := ParsePorts(ports)
	if err != nil {
		return nil, err
	}
	return []Dest{{Prefix: p, Ports: rs}}, nil
}

// FormatDest writes a Dest in the file syntax.
func FormatDest(d Dest) string {
	if d.Prefix.Addr().Is6() {
		return fmt.Sprintf("[%s]:%s", d.Prefix, FormatPorts(d.Ports))
	}
	return fmt.Sprintf("%s:%s", d.Prefix, FormatPorts(d.Ports))
}

var icmp4Names = map[string]uint8{
	"echo-reply": 0, "destination-unreachable": 3, "source-quench": 4,
	"redirect": 5, "echo-request": 8, "router-advertisement": 9,
	"router-solicitation": 10, "time-exceeded": 11, "parameter-problem": 12,
	"timestamp-request": 13, "timestamp-reply": 14, "info-request": 15,
	"info-reply": 16, "address-mask-request": 17, "address-mask-reply": 18,
}

var icmp6Names = map[string]uint8{
	"destination-unreachable": 1, "packet-too-big": 2, "time-exceeded": 3,
	"parameter-problem": 4, "echo-request": 128, "echo-reply": 129,
	"mld-listener-query": 130, "mld-listener-report": 131, "mld-listener-done": 132,
	"nd-router-solicit": 133, "nd-router-advert": 134, "nd-neighbor-solicit": 135,
	"nd-neighbor-advert": 136, "nd-redirect": 137, "router-renumbering": 138,
	"ind-neighbor-solicit": 141, "ind-neighbor-advert": 142, "mld2-listener-report": 143,
}

func icmpName(v6 bool, t uint8) string {
	names := icmp4Names
	if v6 {
		names = icmp6Names
	}
	for n, v := range names {
		if v == t {
			return n
		}
	}
	return ""
}

// String writes the type as in the file syntax: "echo-request",
// "icmpv6:echo-request", "42", "icmpv6:200".
func (t ICMPType) String() string {
	s := icmpName(t.V6, t.Type)
	if s == "" {
		s = strconv.Itoa(int(t.Type))
	}
	if t.V6 {
		return "icmpv6:" + s
	}
	return s
}

// ParseICMPType parses an ICMP type name or number, with an "icmpv6:"
// prefix for ICMPv6. It does not accept "any"; callers handle that word.
func ParseICMPType(s string) (ICMPType, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	v6 := false
	if rest, ok := strings.CutPrefix(t, "icmpv6:"); ok {
		v6, t = true, rest
	} else if rest, ok := strings.CutPrefix(t, "icmp:"); ok {
		t = rest
	}
	if t == "" {
		return ICMPType{}, errors.New(`empty ICMP type; write a name such as "echo-request" or a number 0-255`)
	}
	if n, err := strconv.ParseUint(t, 10, 64); err == nil {
		if n > 255 {
			return ICMPType{}, fmt.Errorf("ICMP type %d is out of range; use 0-255", n)
		}
		return ICMPType{V6: v6, Type: uint8(n)}, nil
	}
	names := icmp4Names
	if v6 {
		names = icmp6Names
	}
	if n, ok := names[t]; ok {
		return ICMPType{V6: v6, Type: n}, nil
	}
	known := make([]string, 0, len(names))
	for n := range names {
		known = append(known, n)
	}
	slices.Sort(known)
	fam := "ICMP"
	if v6 {
		fam = "ICMPv6"
	}
	return ICMPType{}, fmt.Errorf("unknown %s type name; use a number or one of %s", fam, strings.Join(known, ", "))
}

// icmpItem parses one element of a TOML icmp list: "any", a name, or a number.
func icmpItem(v any) (any bool, t ICMPType, text string, err error) {
	switch x := v.(type) {
	case int64:
		text = strconv.FormatInt(x, 10)
		if x < 0 || x > 255 {
			return false, t, text, fmt.Errorf("ICMP type %d is out of range; use 0-255", x)
		}
		return false, ICMPType{Type: uint8(x)}, text, nil
	case string:
		text = x
		if strings.EqualFold(strings.TrimSpace(x), "any") {
			return true, t, text, nil
		}
		t, err = ParseICMPType(x)
		return false, t, text, err
	}
	return false, t, fmt.Sprint(v), errors.New(`not an ICMP type; write a name such as "echo-request", a number, or "any"`)
}

// protocolItem parses one element of a protocols list: a number 0-255 that
// is not ICMP, TCP, UDP or ICMPv6.
func protocolItem(v any) (uint8, string, error) {
	var n int64
	var text string
	switch x := v.(type) {
	case int64:
		n, text = x, strconv.FormatInt(x, 10)
	case string:
		text = x
		var err error
		n, err = strconv.ParseInt(strings.TrimSpace(x), 10, 64)
		if err != nil {
			return 0, text, errors.New("not a protocol number; write the IP protocol number, e.g. 47 for GRE")
		}
	default:
		return 0, fmt.Sprint(v), errors.New("not a protocol number; write the IP protocol number, e.g. 47 for GRE")
	}
	switch {
	case n < 0 || n > 255:
		return 0, text, errors.New("protocol number out of range; use 0-255")
	case n == 1 || n == 58:
		return 0, text, errors.New("ICMP is not an other protocol; use the icmp field")
	case n == 6:
		return 0, text, errors.New("TCP is not an other protocol; use the tcp, tcp_ports or syn_only_ports fields")
	case n == 17:
		return 0, text, errors.New("UDP is not an other protocol; use the udp or udp_ports fields")
	}
	return uint8(n), text, nil
}

// NormalizeName makes a DNS name lowercase and fully qualified (trailing
// dot), converting Unicode labels to punycode (IDNA). It rejects names that
// are not valid DNS names.
func NormalizeName(s string) (string, error) {
	n := strings.TrimSpace(s)
	n = strings.TrimSuffix(n, ".")
	if n == "" {
		return "", errors.New(`empty name; write a domain such as "example.org", or "any"`)
	}
	if strings.Contains(n, "*") {
		return "", errors.New(`wildcards are not needed: names are suffixes already; write "example.org" for example.org and every name under it`)
	}
	labels := strings.Split(n, ".")
	for i, l := range labels {
		if l == "" {
			return "", errors.New("empty label (two dots in a row); remove the extra dot")
		}
		ascii := true
		for j := 0; j < len(l); j++ {
			if l[j] >= 0x80 {
				ascii = false
				break
			}
		}
		if !ascii {
			a, err := idna.Lookup.ToASCII(l)
			if err != nil {
				return "", fmt.Errorf("label %q is not a valid internationalized name; write it in punycode (xn--...)", l)
			}
			l = a
		}
		l = strings.ToLower(l)
		if len(l) > 63 {
			return "", fmt.Errorf("label %q is longer than 63 bytes; shorten it", l)
		}
		for j := 0; j < len(l); j++ {
			c := l[j]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("label %q has the character %q; use letters, digits, '-' and '_'", l, c)
			}
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return "", fmt.Errorf("label %q starts or ends with '-'; fix the name", l)
		}
		labels[i] = l
	}
	out := strings.Join(labels, ".") + "."
	if len(out) > 254 {
		return "", errors.New("name is longer than 253 bytes; shorten it")
	}
	return out, nil
}

// NameUnder reports whether the FQDN name equals suffix or lies under it,
// label-wise ("a.example.org." is under "example.org.", "badexample.org." is not).
func NameUnder(name, suffix string) bool {
	if name == suffix {
		return true
	}
	return strings.HasSuffix(name, "."+suffix)
}

// ValidEmail checks an experimenter's email address: local@domain, no
// display name.
func ValidEmail(s string) error {
	if strings.TrimSpace(s) == "" {
		return errors.New(`empty email; write the experimenter's address, e.g. "researcher@example.edu"`)
	}
	a, err := mail.ParseAddress(s)
	if err != nil || a.Address != s || a.Name != "" {
		return errors.New(`not an email address; write it as "name@example.edu"`)
	}
	local, domain, _ := strings.Cut(s, "@")
	if local == "" || !strings.Contains(domain, ".") || strings.HasPrefix(domain, "[") {
		return errors.New(`not an email address with a domain; write it as "name@example.edu"`)
	}
	return nil
}
