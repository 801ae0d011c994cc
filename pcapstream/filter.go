package pcapstream

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Filter selects packets with a small tcpdump-like expression. It is
// compiled to classic BPF (filterbpf.go) and attached to the reader's own
// capture socket, so the kernel drops what the reader does not want before
// it costs the daemon anything. Match is the reference evaluator in Go: the
// tests and FuzzFilterBPF check that the BPF program agrees with it.
//
// Grammar (keywords lowercase):
//
//	expr  := and { ("or" | "||") and }
//	and   := unary { ("and" | "&&") unary }
//	unary := ("not" | "!") unary | "(" expr ")" | prim
//	prim  := "ip" | "ip6" | "arp" | "tcp" | "udp" | "icmp" | "icmp6"
//	       | ["src" | "dst"] "host" ADDR
//	       | ["src" | "dst"] "net" PREFIX
//	       | ["tcp" | "udp"] ["src" | "dst"] "port" NUMBER
//
// "icmp" is ICMP over IPv4 and "icmp6" ICMPv6, as in tcpdump; "port" without
// a protocol matches TCP, UDP and SCTP. Up to two VLAN tags in the frame's
// data are skipped; IPv6 extension headers (hop-by-hop, routing, fragment,
// destination options) are walked, at most maxExtHeaders of them (classic
// BPF has only forward jumps, so the walk is unrolled to that depth).
// Non-first fragments have no ports.
type Filter struct {
	expr string
	root *fnode
}

// maxFilterTokens bounds the work a filter costs per packet.
const maxFilterTokens = 64

// maxExtHeaders is how many IPv6 extension headers a filter walks before it
// takes the next header value as the transport protocol.
const maxExtHeaders = 8

// String returns the expression f was parsed from.
func (f *Filter) String() string { return f.expr }

// ParseFilter compiles a filter expression. An empty expression is an error:
// callers use a nil *Filter for "every packet".
func ParseFilter(expr string) (*Filter, error) {
	toks := tokenize(expr)
	if len(toks) == 0 {
		return nil, fmt.Errorf("empty filter")
	}
	if len(toks) > maxFilterTokens {
		return nil, fmt.Errorf("filter %q: more than %d words", clip(expr), maxFilterTokens)
	}
	p := &filterParser{toks: toks}
	e, err := p.or(0)
	if err != nil {
		return nil, fmt.Errorf("filter %q: %w", clip(expr), err)
	}
	if p.i != len(p.toks) {
		return nil, fmt.Errorf("filter %q: unexpected %q", clip(expr), clip(p.toks[p.i]))
	}
	return &Filter{expr: expr, root: e}, nil
}

// Match reports whether an Ethernet frame passes f. A nil Filter passes all.
func (f *Filter) Match(frame []byte) bool {
	if f == nil {
		return true
	}
	var h headers
	h.decode(frame)
	return f.root.eval(&h)
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

func tokenize(s string) []string {
	var toks []string
	s = strings.NewReplacer("(", " ( ", ")", " ) ", "!", " ! ").Replace(s)
	for _, f := range strings.Fields(s) {
		toks = append(toks, strings.ToLower(f))
	}
	return toks
}

// fnode is a node of a parsed filter.
type fnode struct {
	op   int // opAnd, opOr, opNot, opPrim
	a, b *fnode
	p    prim
}

const (
	opPrim = iota
	opAnd
	opOr
	opNot
)

// prim is a primitive test.
type prim struct {
	kind   int    // primEther, primProto, primHost, primNet, primPort
	et     uint16 // primEther, primProto: the EtherType required (0: any, for tcp/udp)
	proto  int    // primProto, primPort: the IP protocol required (-1: any)
	dir    int    // dirAny, dirSrc, dirDst
	addr   netip.Addr
	prefix netip.Prefix
	port   uint16
}

const (
	primEther = iota
	primProto
	primHost
	primNet
	primPort
)

const (
	dirAny = iota
	dirSrc
	dirDst
)

func (n *fnode) eval(h *headers) bool {
	switch n.op {
	case opAnd:
		return n.a.eval(h) && n.b.eval(h)
	case opOr:
		return n.a.eval(h) || n.b.eval(h)
	case opNot:
		return !n.a.eval(h)
	}
	p := &n.p
	switch p.kind {
	case primEther:
		return h.ethType == p.et
	case primProto:
		return (p.et == 0 || h.ethType == p.et) && h.hasProto && int(h.proto) == p.proto
	case primHost:
		return h.hasAddrs && ((p.dir != dirDst && h.src == p.addr) || (p.dir != dirSrc && h.dst == p.addr))
	case primNet:
		return h.hasAddrs && ((p.dir != dirDst && p.prefix.Contains(h.src)) || (p.dir != dirSrc && p.prefix.Contains(h.dst)))
	case primPort:
		if !h.hasPorts || (p.proto >= 0 && int(h.proto) != p.proto) {
			return false
		}
		return (p.dir != dirDst && h.sport == p.port) || (p.dir != dirSrc && h.dport == p.port)
	}
	return false
}

type filterParser struct {
	toks []string
	i    int
}

func (p *filterParser) peek() string {
	if p.i < len(p.toks) {
		return p.toks[p.i]
	}
	return ""
}

func (p *filterParser) next() string {
	t := p.peek()
	if p.i < len(p.toks) {
		p.i++
	}
	return t
}

// maxDepth bounds nesting; the token limit bounds it too, this keeps the
// recursion obvious.
const maxDepth = 32

func (p *filterParser) or(depth int) (*fnode, error) {
	l, err := p.and(depth)
	if err != nil {
		return nil, err
	}
	for p.peek() == "or" || p.peek() == "||" {
		p.next()
		r, err := p.and(depth)
		if err != nil {
			return nil, err
		}
		l = &fnode{op: opOr, a: l, b: r}
	}
	return l, nil
}

func (p *filterParser) and(depth int) (*fnode, error) {
	l, err := p.unary(depth)
	if err != nil {
		return nil, err
	}
	for p.peek() == "and" || p.peek() == "&&" {
		p.next()
		r, err := p.unary(depth)
		if err != nil {
			return nil, err
		}
		l = &fnode{op: opAnd, a: l, b: r}
	}
	return l, nil
}

func (p *filterParser) unary(depth int) (*fnode, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("nested more than %d deep", maxDepth)
	}
	switch t := p.peek(); t {
	case "not", "!":
		p.next()
		e, err := p.unary(depth + 1)
		if err != nil {
			return nil, err
		}
		return &fnode{op: opNot, a: e}, nil
	case "(":
		p.next()
		e, err := p.or(depth + 1)
		if err != nil {
			return nil, err
		}
		if p.next() != ")" {
			return nil, fmt.Errorf("missing )")
		}
		return e, nil
	case "":
		return nil, fmt.Errorf("expression ends too early")
	}
	pr, err := p.prim()
	if err != nil {
		return nil, err
	}
	return &fnode{op: opPrim, p: pr}, nil
}

func (p *filterParser) prim() (prim, error) {
	proto := -1 // for "tcp port": restrict to a protocol
	switch t := p.peek(); t {
	case "ip":
		p.next()
		return prim{kind: primEther, et: etIPv4}, nil
	case "ip6":
		p.next()
		return prim{kind: primEther, et: etIPv6}, nil
	case "arp":
		p.next()
		return prim{kind: primEther, et: etARP}, nil
	case "icmp":
		p.next()
		return prim{kind: primProto, et: etIPv4, proto: 1}, nil
	case "icmp6":
		p.next()
		return prim{kind: primProto, et: etIPv6, proto: 58}, nil
	case "tcp", "udp":
		p.next()
		proto = 6
		if t == "udp" {
			proto = 17
		}
		switch p.peek() {
		case "port", "src", "dst":
		default:
			return prim{kind: primProto, proto: proto}, nil
		}
	}
	dir := dirAny
	switch p.peek() {
	case "src":
		p.next()
		dir = dirSrc
	case "dst":
		p.next()
		dir = dirDst
	}
	switch kw := p.next(); kw {
	case "host":
		a, err := netip.ParseAddr(p.next())
		if err != nil {
			return prim{}, fmt.Errorf("host: want an IPv4 or IPv6 address")
		}
		return prim{kind: primHost, dir: dir, addr: a.Unmap()}, nil
	case "net":
		n, err := netip.ParsePrefix(p.next())
		if err != nil {
			return prim{}, fmt.Errorf("net: want a prefix like 10.0.0.0/8")
		}
		return prim{kind: primNet, dir: dir, prefix: n.Masked()}, nil
	case "port":
		v, err := strconv.ParseUint(p.next(), 10, 16)
		if err != nil {
			return prim{}, fmt.Errorf("port: want a number 0-65535")
		}
		return prim{kind: primPort, dir: dir, proto: proto, port: uint16(v)}, nil
	case "":
		return prim{}, fmt.Errorf("expression ends too early")
	default:
		return prim{}, fmt.Errorf("unknown word %q (known: ip ip6 arp tcp udp icmp icmp6 host net port src dst and or not)", clip(kw))
	}
}

const (
	etIPv4 = 0x0800
	etIPv6 = 0x86dd
	etARP  = 0x0806
)

// headers are the fields filters look at.
type headers struct {
	ethType  uint16
	hasAddrs bool
	src, dst netip.Addr
	hasProto bool
	proto    uint8
	hasPorts bool
	sport    uint16
	dport    uint16
}

// decode fills h from an Ethernet frame; whatever is cut short stays unset.
// The BPF prologue (filterbpf.go) decodes the same fields the same way.
func (h *headers) decode(b []byte) {
	if len(b) < 14 {
		return
	}
	et := binary.BigEndian.Uint16(b[12:14])
	b = b[14:]
	for i := 0; i < 2 && (et == 0x8100 || et == 0x88a8) && len(b) >= 4; i++ {
		et = binary.BigEndian.Uint16(b[2:4])
		b = b[4:]
	}
	h.ethType = et
	var l4 []byte
	switch et {
	case etIPv4:
		if len(b) < 20 || b[0]>>4 != 4 {
			return
		}
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 || len(b) < ihl {
			return
		}
		h.src = netip.AddrFrom4([4]byte(b[12:16]))
		h.dst = netip.AddrFrom4([4]byte(b[16:20]))
		h.hasAddrs = true
		h.proto, h.hasProto = b[9], true
		if binary.BigEndian.Uint16(b[6:8])&0x1fff != 0 {
			return // not the first fragment: no transport header
		}
		l4 = b[ihl:]
	case etIPv6:
		if len(b) < 40 || b[0]>>4 != 6 {
			return
		}
		h.src = netip.AddrFrom16([16]byte(b[8:24]))
		h.dst = netip.AddrFrom16([16]byte(b[24:40]))
		h.hasAddrs = true
		next := b[6]
		b = b[40:]
	walk:
		for i := 0; i < maxExtHeaders; i++ {
			switch next {
			case 0, 43, 60: // hop-by-hop, routing, destination options
				if len(b) < 8 {
					return
				}
				n := (int(b[1]) + 1) * 8
				if len(b) < n {
					return
				}
				next, b = b[0], b[n:]
			case 44: // fragment
				if len(b) < 8 {
					return
				}
				off := binary.BigEndian.Uint16(b[2:4]) >> 3
				next, b = b[0], b[8:]
				if off != 0 {
					h.proto, h.hasProto = next, true
					return
				}
			default:
				break walk
			}
		}
		h.proto, h.hasProto = next, true
		l4 = b
	default:
		return
	}
	if (h.proto == 6 || h.proto == 17 || h.proto == 132) && len(l4) >= 4 {
		h.sport = binary.BigEndian.Uint16(l4[0:2])
		h.dport = binary.BigEndian.Uint16(l4[2:4])
		h.hasPorts = true
	}
}
