package gateway

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
)

// This file holds the plain description of the nftables table that Compile
// produces and apply.go turns into kernel objects. It imports nothing
// kernel-facing, so the compiler is testable without root, and Render gives
// a stable text form for golden files.

// Field is a packet or conntrack field a rule can match or look up.
type Field int

// Fields. Payload fields are at fixed offsets (no extension headers).
const (
	FIIFName  Field = iota + 1 // meta iifname (16 bytes)
	FOIFName                   // meta oifname
	FNFProto                   // meta nfproto (1 byte)
	FL4Proto                   // meta l4proto (1 byte)
	FIPSaddr                   // ip saddr
	FIPDaddr                   // ip daddr
	FIP6Saddr                  // ip6 saddr
	FIP6Daddr                  // ip6 daddr
	FIPVIHL                    // first byte of the IPv4 header (version + header length)
	FIPLen                     // ip length (total)
	FIP6Len                    // ip6 length (payload)
	FTHDport                   // th dport: destination port of TCP/UDP (after a l4proto match)
	FTCPFlags                  // tcp flags byte masked with fin|syn|rst|ack
	FTCPDoff                   // tcp data offset nibble, masked (byte & 0xf0)
	FICMPType                  // icmp type / icmpv6 type (first transport byte)
	FCtState                   // ct state bits
	FCtMark                    // ct mark
	FCtFlow                    // ct mark & (flags that decide admission | slot): 0x3ffff
)

var fieldNames = map[Field]string{
	FIIFName: "iifname", FOIFName: "oifname", FNFProto: "meta nfproto", FL4Proto: "meta l4proto",
	FIPSaddr: "ip saddr", FIPDaddr: "ip daddr", FIP6Saddr: "ip6 saddr", FIP6Daddr: "ip6 daddr",
	FIPVIHL: "@nh,0,8", FIPLen: "ip length", FIP6Len: "ip6 length", FTHDport: "th dport",
	FTCPFlags: "tcp flags & (fin|syn|rst|ack)", FTCPDoff: "tcp doff", FICMPType: "icmp type",
	FCtState: "ct state", FCtMark: "ct mark", FCtFlow: "ct mark & 0x3ffff",
}

func (f Field) String() string { return fieldNames[f] }

// Value is one key or comparison operand. Which member is used depends on
// the field: Addr for addresses, Str for interface names (Prefix: match the
// leading bytes only, "ark*"), Num for everything else.
type Value struct {
	Addr   netip.Addr
	Str    string
	Prefix bool
	Num    uint32
}

func (v Value) render(f Field) string {
	switch f {
	case FIPSaddr, FIPDaddr, FIP6Saddr, FIP6Daddr:
		return v.Addr.String()
	case FIIFName, FOIFName:
		if v.Prefix {
			return fmt.Sprintf("%q", v.Str+"*")
		}
		return fmt.Sprintf("%q", v.Str)
	case FNFProto:
		switch v.Num {
		case nfprotoIPv4:
			return "ipv4"
		case nfprotoIPv6:
			return "ipv6"
		}
	case FL4Proto:
		if n, ok := protoNames[uint8(v.Num)]; ok {
			return n
		}
	case FTCPFlags, FCtMark, FCtState, FIPVIHL, FTCPDoff, FCtFlow:
		return fmt.Sprintf("0x%x", v.Num)
	}
	return fmt.Sprint(v.Num)
}

const (
	nfprotoIPv4 = 2  // NFPROTO_IPV4
	nfprotoIPv6 = 10 // NFPROTO_IPV6
)

var protoNames = map[uint8]string{1: "icmp", 6: "tcp", 17: "udp", 47: "gre", 58: "ipv6-icmp"}

// Expr is one expression of a rule: a match or a statement.
type Expr interface{ render() string }

// Cmp matches Field (optionally masked with Mask first) against Value.
type Cmp struct {
	Field Field
	Mask  uint32 // 0 = no mask
	Neq   bool
	Value Value
}

// Lookup matches the concatenation of Fields against named set Set.
type Lookup struct {
	Fields []Field
	Set    string
	Neq    bool
}

// Vmap looks Field up in verdict map Map and takes the verdict found.
type Vmap struct {
	Field Field
	Map   string
}

// Counter counts in the named counter object.
type Counter struct{ Name string }

// Log sends the packet to NFLOG group Group with Prefix.
type Log struct {
	Group  uint16
	Prefix string
}

// SetCtMark sets the conntrack mark to Value.
type SetCtMark struct{ Value uint32 }

// DNAT rewrites the destination address to Addr (family from Addr).
type DNAT struct{ Addr netip.Addr }

// Masquerade source-NATs to the address of the outgoing interface.
type Masquerade struct{}

// CtCountOver matches when the rule's own list of tracked flows (every
// flow whose packet evaluated it and that conntrack still holds) has more
// than Count entries; evaluating adds the packet's flow to the list.
type CtCountOver struct{ Count uint32 }

// Verdict ends (accept, drop) or jumps.
type Verdict struct {
	Kind  string // "accept", "drop", "jump", "return"
	Chain string
}

func (c Cmp) render() string {
	op := ""
	if c.Neq {
		op = "!= "
	}
	if c.Mask != 0 {
		if op == "" {
			op = "== "
		}
		return fmt.Sprintf("%s & 0x%x %s%s", c.Field, c.Mask, op, c.Value.render(c.Field))
	}
	return fmt.Sprintf("%s %s%s", c.Field, op, c.Value.render(c.Field))
}

func (l Lookup) render() string {
	names := make([]string, len(l.Fields))
	for i, f := range l.Fields {
		names[i] = f.String()
	}
	op := ""
	if l.Neq {
		op = "!= "
	}
	return fmt.Sprintf("%s %s@%s", strings.Join(names, " . "), op, l.Set)
}

func (v Vmap) render() string      { return fmt.Sprintf("%s vmap @%s", v.Field, v.Map) }
func (c Counter) render() string   { return fmt.Sprintf("counter name %q", c.Name) }
func (l Log) render() string       { return fmt.Sprintf("log prefix %q group %d", l.Prefix, l.Group) }
func (s SetCtMark) render() string { return fmt.Sprintf("ct mark set 0x%08x", s.Value) }
func (Masquerade) render() string  { return "masquerade" }
func (c CtCountOver) render() string {
	return fmt.Sprintf("ct count over %d", c.Count)
}
func (d DNAT) render() string {
	if d.Addr.Is4() {
		return "dnat ip to " + d.Addr.String()
	}
	return "dnat ip6 to " + d.Addr.String()
}
func (v Verdict) render() string {
	if v.Chain != "" {
		return v.Kind + " " + v.Chain
	}
	return v.Kind
}

// Rule is a list of expressions evaluated in order. Name is the NFLOG rule
// name for drop rules ("" otherwise); the applier uses it in error messages.
type Rule struct {
	Exprs []Expr
	Name  string
}

// Render is the rule in nft-like syntax.
func (r Rule) Render() string {
	parts := make([]string, len(r.Exprs))
	for i, e := range r.Exprs {
		parts[i] = e.render()
	}
	return strings.Join(parts, " ")
}

// Chain is a base chain (Hook != "") or a regular chain.
type Chain struct {
	Name     string
	Type     string // "filter" or "nat" for base chains
	Hook     string // "prerouting", "input", "forward", "postrouting"; "" = regular chain
	Priority int
	Rules    []Rule
}

// Set is a named set or verdict map.
type Set struct {
	Name       string
	Fields     []Field // key fields (a concatenation when more than one)
	Interval   bool
	VerdictMap bool
	Elems      []Elem
}

// Elem is one set element. For interval sets End is the inclusive end of
// the range (same shape as Key). For verdict maps Verdict is set.
type Elem struct {
	Key     []Value
	End     []Value
	Verdict Verdict
}

// Ruleset is the whole table.
type Ruleset struct {
	Table    string
	Counters []string
	Sets     []*Set
	Chains   []*Chain
}

// SetByName returns the named set or nil.
func (r *Ruleset) SetByName(name string) *Set {
	for _, s := range r.Sets {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// ChainByName returns the named chain or nil.
func (r *Ruleset) ChainByName(name string) *Chain {
	for _, c := range r.Chains {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func (s *Set) typeName() string {
	names := make([]string, len(s.Fields))
	for i, f := range s.Fields {
		names[i] = fieldType(f).name
	}
	return strings.Join(names, " . ")
}

func (e Elem) render(s *Set) string {
	one := func(vs []Value) []string {
		out := make([]string, len(vs))
		for i, v := range vs {
			out[i] = v.render(s.Fields[i])
		}
		return out
	}
	k := one(e.Key)
	if e.End != nil {
		end := one(e.End)
		for i := range k {
			if k[i] != end[i] {
				k[i] = k[i] + "-" + end[i]
			}
		}
	}
	out := strings.Join(k, " . ")
	if s.VerdictMap {
		out += " : " + e.Verdict.render()
	}
	return out
}

// Render prints the ruleset as text: objects in a stable order, set
// elements sorted, chain rules in evaluation order.
func (r *Ruleset) Render() string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", r.Table)
	counters := append([]string(nil), r.Counters...)
	sort.Strings(counters)
	for _, c := range counters {
		fmt.Fprintf(&b, "\tcounter %s\n", c)
	}
	sets := append([]*Set(nil), r.Sets...)
	sort.Slice(sets, func(i, j int) bool { return sets[i].Name < sets[j].Name })
	for _, s := range sets {
		kind := "set"
		if s.VerdictMap {
			kind = "map"
		}
		flags := ""
		if s.Interval {
			flags = " flags interval"
		}
		typ := s.typeName()
		if s.VerdictMap {
			typ += " : verdict"
		}
		fmt.Fprintf(&b, "\t%s %s { type %s%s\n", kind, s.Name, typ, flags)
		elems := make([]string, len(s.Elems))
		for i, e := range s.Elems {
			elems[i] = e.render(s)
		}
		sort.Strings(elems)
		for _, e := range elems {
			fmt.Fprintf(&b, "\t\t%s\n", e)
		}
		b.WriteString("\t}\n")
	}
	chains := append([]*Chain(nil), r.Chains...)
	sort.SliceStable(chains, func(i, j int) bool {
		if (chains[i].Hook != "") != (chains[j].Hook != "") {
			return chains[i].Hook != ""
		}
		return chains[i].Name < chains[j].Name
	})
	for _, c := range chains {
		fmt.Fprintf(&b, "\tchain %s {\n", c.Name)
		if c.Hook != "" {
			fmt.Fprintf(&b, "\t\ttype %s hook %s priority %d; policy accept;\n", c.Type, c.Hook, c.Priority)
		}
		for _, rl := range c.Rules {
			fmt.Fprintf(&b, "\t\t%s\n", rl.Render())
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// fieldInfo says how a field is loaded and how its set type is named.
type fieldInfo struct {
	name  string // set type name
	bytes int    // length of the loaded value
}

func fieldType(f Field) fieldInfo {
	switch f {
	case FIIFName, FOIFName:
		return fieldInfo{"ifname", 16}
	case FNFProto:
		return fieldInfo{"nf_proto", 1}
	case FL4Proto:
		return fieldInfo{"inet_proto", 1}
	case FIPSaddr, FIPDaddr:
		return fieldInfo{"ipv4_addr", 4}
	case FIP6Saddr, FIP6Daddr:
		return fieldInfo{"ipv6_addr", 16}
	case FIPLen, FIP6Len:
		return fieldInfo{"integer(16)", 2}
	case FTHDport:
		return fieldInfo{"inet_service", 2}
	case FICMPType:
		return fieldInfo{"icmp_type", 1}
	case FTCPFlags:
		return fieldInfo{"tcp_flag", 1}
	case FIPVIHL, FTCPDoff:
		return fieldInfo{"integer(8)", 1}
	case FCtState:
		return fieldInfo{"ct_state", 4}
	case FCtMark, FCtFlow:
		return fieldInfo{"mark", 4}
	}
	return fieldInfo{"invalid", 0}
}
