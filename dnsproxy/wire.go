package dnsproxy

import (
	"encoding/binary"
	"slices"
)

// Fast paths on wire bytes. The common query — one question, an optional
// OPT record without surprises — is parsed here without allocating, and
// refusals, cache hits and plain upstream answers are produced by patching
// bytes. Everything else (and anything these parsers are unsure of) takes
// the general path through miekg/dns's Msg, which is the reference: the fast
// paths only ever produce what it would.

const (
	hdrLen   = 12
	flagQR   = 0x8000
	flagAA   = 0x0400
	flagTC   = 0x0200
	flagRD   = 0x0100
	flagRA   = 0x0080
	flagAD   = 0x0020
	flagCD   = 0x0010
	typeOPT  = 41
	typeSOA  = 6
	optionED = 15 // extended DNS error
)

// fastQuery is a query parsed by parseQuery. question aliases the raw buffer.
type fastQuery struct {
	id       uint16
	flags    uint16
	question []byte // name (wire), type, class exactly as the client sent them
	nameLen  int
	qtype    uint16
	qclass   uint16
	hasOPT   bool
	udpSize  uint16
	do       bool
}

// parseQuery accepts only a plain QUERY with one uncompressed question, no
// answer or authority records and at most an EDNS version 0 OPT record, with
// nothing after it. ok false means: use the general path.
func parseQuery(raw []byte) (q fastQuery, ok bool) {
	if len(raw) < hdrLen+5 {
		return q, false
	}
	q.id = binary.BigEndian.Uint16(raw)
	q.flags = binary.BigEndian.Uint16(raw[2:])
	if q.flags&(flagQR|0x7800) != 0 || // a response, or opcode != QUERY
		binary.BigEndian.Uint16(raw[4:]) != 1 || binary.BigEndian.Uint16(raw[6:]) != 0 ||
		binary.BigEndian.Uint16(raw[8:]) != 0 {
		return q, false
	}
	ar := binary.BigEndian.Uint16(raw[10:])
	if ar > 1 {
		return q, false
	}
	off := hdrLen
	for {
		if off >= len(raw) {
			return q, false
		}
		l := int(raw[off])
		if l == 0 {
			off++
			break
		}
		if l > 63 { // compression pointer or reserved label type
			return q, false
		}
		off += 1 + l
	}
	q.nameLen = off - hdrLen
	if q.nameLen > 255 || off+4 > len(raw) {
		return q, false
	}
	q.qtype = binary.BigEndian.Uint16(raw[off:])
	q.qclass = binary.BigEndian.Uint16(raw[off+2:])
	off += 4
	q.question = raw[hdrLen:off]
	if ar == 1 {
		// OPT: root name, type 41, class = UDP size, TTL = ext-rcode,
		// version, flags; rdata = options (not forwarded, not inspected).
		if off+11 > len(raw) || raw[off] != 0 || binary.BigEndian.Uint16(raw[off+1:]) != typeOPT {
			return q, false
		}
		q.hasOPT = true
		q.udpSize = binary.BigEndian.Uint16(raw[off+3:])
		if raw[off+5] != 0 || raw[off+6] != 0 { // ext-rcode, version
			return q, false
		}
		q.do = raw[off+7]&0x80 != 0
		rdlen := int(binary.BigEndian.Uint16(raw[off+9:]))
		off += 11 + rdlen
	}
	if off != len(raw) {
		return q, false
	}
	return q, true
}

// clientSize is the largest answer the client takes.
func (q *fastQuery) clientSize(tcp bool) int {
	if tcp {
		return 65535
	}
	size := 512
	if q.hasOPT && int(q.udpSize) > size {
		size = int(q.udpSize)
	}
	if size > serverUDPSize {
		size = serverUDPSize
	}
	return size
}

// keyFlags are the request bits that change the answer (see cacheKey).
func (q *fastQuery) keyFlags() byte {
	var f byte
	if q.flags&flagRD != 0 {
		f |= 1
	}
	if q.flags&flagCD != 0 {
		f |= 2
	}
	if q.hasOPT {
		f |= 4
		if q.do {
			f |= 8
		}
	}
	return f
}

// appendRefusal appends to b (normally empty, for its memory) an answer
// without records: the client's ID and question, rcode, and (if the client
// used EDNS) an OPT record carrying an extended error.
func appendRefusal(b []byte, q *fastQuery, rcode int, edeCode uint16, edeText string) []byte {
	n := hdrLen + len(q.question)
	if q.hasOPT {
		n += 11 + 4 + 2 + len(edeText)
	}
	b = slices.Grow(b[:0], n)[:hdrLen]
	clear(b)
	binary.BigEndian.PutUint16(b, q.id)
	binary.BigEndian.PutUint16(b[2:], flagQR|flagRA|q.flags&(flagRD|flagCD)|uint16(rcode&0xf))
	binary.BigEndian.PutUint16(b[4:], 1)
	b = append(b, q.question...)
	if q.hasOPT {
		binary.BigEndian.PutUint16(b[10:], 1)
		var doBit byte
		if q.do {
			doBit = 0x80
		}
		b = append(b, 0, 0, typeOPT, byte(serverUDPSize>>8), byte(serverUDPSize&0xff), 0, 0, doBit, 0)
		optLen := 4 + 2 + len(edeText)
		b = append(b, byte(optLen>>8), byte(optLen), 0, optionED, byte((2+len(edeText))>>8), byte(2+len(edeText)), byte(edeCode>>8), byte(edeCode))
		b = append(b, edeText...)
	}
	return b
}

// skipName returns the offset after the (possibly compressed) name at off.
func skipName(b []byte, off int) (int, bool) {
	for n := 0; n < 128; n++ {
		if off >= len(b) {
			return 0, false
		}
		l := int(b[off])
		switch {
		case l == 0:
			return off + 1, true
		case l&0xc0 == 0xc0:
			if off+2 > len(b) {
				return 0, false
			}
			if int(binary.BigEndian.Uint16(b[off:])&0x3fff) >= off {
				return 0, false // pointers point backwards
			}
			return off + 2, true
		case l > 63:
			return 0, false
		}
		off += 1 + l
	}
	return 0, false
}

// answerInfo describes an answer walked by walkAnswer.
type answerInfo struct {
	ttlOffs []int // offsets of the TTL fields of every record but OPT
	optOff  int   // offset of the OPT record's class field, 0 if none
	optRd   int   // OPT rdata length
	minTTL  uint32
	hasTTL  bool // minTTL is set (some answer or authority record)
	hasSOA  bool // an SOA in the authority section (negative caching)
}

// walkAnswer checks the framing of a whole message (header, one question,
// records whose rdata lengths add up exactly to the end) and collects what
// patching and caching need. ok false means: use the general path.
// TTL offsets are collected only when offs is set.
func walkAnswer(b []byte, offs bool) (info answerInfo, ok bool) {
	if len(b) < hdrLen || binary.BigEndian.Uint16(b[4:]) != 1 {
		return info, false
	}
	an := int(binary.BigEndian.Uint16(b[6:]))
	ns := int(binary.BigEndian.Uint16(b[8:]))
	ar := int(binary.BigEndian.Uint16(b[10:]))
	off, ok := skipName(b, hdrLen)
	if !ok || off+4 > len(b) {
		return info, false
	}
	off += 4
	if offs {
		info.ttlOffs = make([]int, 0, an+ns+ar)
	}
	for i := 0; i < an+ns+ar; i++ {
		start := off
		off, ok = skipName(b, off)
		if !ok || off+10 > len(b) {
			return info, false
		}
		typ := binary.BigEndian.Uint16(b[off:])
		ttl := binary.BigEndian.Uint32(b[off+4:])
		rdlen := int(binary.BigEndian.Uint16(b[off+8:]))
		if off+10+rdlen > len(b) {
			return info, false
		}
		if typ == typeOPT {
			if i < an+ns || info.optOff != 0 || b[start] != 0 {
				return info, false // OPT only once, in the additional section, at the root
			}
			info.optOff = off + 2
			info.optRd = rdlen
		} else {
			if offs {
				info.ttlOffs = append(info.ttlOffs, off+4)
			}
			if i < an+ns {
				if !info.hasTTL || ttl < info.minTTL {
					info.minTTL, info.hasTTL = ttl, true
				}
				if typ == typeSOA && i >= an && rdlen >= 20 {
					info.hasSOA = true
					if m := binary.BigEndian.Uint32(b[off+10+rdlen-4:]); m < info.minTTL {
						info.minTTL = m
					}
				}
			}
		}
		off += 10 + rdlen
	}
	if off != len(b) {
		return info, false
	}
	return info, true
}
