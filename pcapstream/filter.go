package pcapstream

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Filter selects packets with a small tcpdump-like expression, evaluated in
// Go on the frame's headers (no kernel BPF: each reader has its own filter
// while all share one socket).
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
// a protocol matches TCP and UDP. VLAN tags are skipped; IPv6 extension
// headers (hop-by-hop, routing, fragment, destination options) are walked.
// Non-first fragments have no ports.
type Filter struct {
	expr string
	eval func(*headers) bool
}

// maxFilterTokens bounds the work a filter costs per packet.
const maxFilterTokens = 64

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
	return &Filter{expr: expr, eval: e}, nil
}

// Match reports whether an Ethernet frame passes f. A nil Filter passes all.
func (f *Filter) Match(frame []byte) bool {
	if f == nil {
		return true
	}
	var h headers
	h.decode(frame)
	return f.eval(&h)
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

type pred = func(*headers) bool

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

func (p *filterParser) or(depth int) (pred, error) {
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
		a, b := l, r
		l = func(h *headers) bool { return a(h) || b(h) }
	}
	return l, nil
}

func (p *filterParser) and(depth int) (pred, error) {
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
		a, b := l, r
		l = func(h *headers) bool { return a(h) && b(h) }
	}
	return l, nil
}

func (p *filterParser) unary(depth int) (pred, error) {
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
		return func(h *headers) bool { return !e(h) }, nil
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
	return p.prim()
}

const (
	dirAny = iota
	dirSrc
	dirDst
)

func (p *filterParser) prim() (pred, error) {
	proto := -1 // for "tcp port": restrict to a protocol
	switch t := p.peek(); t {
	case "ip":
		p.next()
		return func(h *headers) bool { return h.ethType == etIPv4 }, nil
	case "ip6":
		p.next()
		return func(h *headers) bool { return h.ethType == etIPv6 }, nil
	case "arp":
		p.next()
		return func(h *headers) bool { return h.ethType == etARP }, nil
	case "icmp":
		p.next()
		return func(h *headers) bool { return h.ethType == etIPv4 && h.hasProto && h.proto == 1 }, nil
	case "icmp6":
		p.next()
		return func(h *headers) bool { return h.ethType == etIPv6 && h.hasProto && h.proto == 58 }, nil
	case "tcp", "udp":
		p.next()
		proto = 6
		if t == "udp" {
			proto = 17
		}
		switch p.peek() {
		case "port", "src", "dst":
		default:
			pr := uint8(proto)
			return func(h *headers) bool { return h.hasProto && h.proto == pr }, nil
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
			return nil, fmt.Errorf("host: want an IPv4 or IPv6 address")
		}
		a = a.Unmap()
		return func(h *headers) bool {
			return h.hasAddrs && ((dir != dirDst && h.src == a) || (dir != dirSrc && h.dst == a))
		}, nil
	case "net":
		n, err := netip.ParsePrefix(p.next())
		if err != nil {
			return nil, fmt.Errorf("net: want a prefix like 10.0.0.0/8")
		}
		n = n.Masked()
		return func(h *headers) bool {
			return h.hasAddrs && ((dir != dirDst && n.Contains(h.src)) || (dir != dirSrc && n.Contains(h.dst)))
		}, nil
	case "port":
		v, err := strconv.ParseUint(p.next(), 10, 16)
		if err != nil {
			return nil, fmt.Errorf("port: want a number 0-65535")
		}
		port := uint16(v)
		return func(h *headers) bool {
			if !h.hasPorts || (proto >= 0 && int(h.proto) != proto) {
				return false
			}
			return (dir != dirDst && h.sport == port) || (dir != dirSrc && h.dport == port)
		}, nil
	case "":
		return nil, fmt.Errorf("expression ends too early")
	default:
		return nil, fmt.Errorf("unknown word %q (known: ip ip6 arp tcp udp icmp icmp6 host net port src dst and or not)", clip(kw))
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
		for i := 0; i < 8; i++ {
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
				continue
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
				continue
			}
			break
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
