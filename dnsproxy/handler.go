package dnsproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/miekg/dns"
)

// counters are the proxy's statistics, updated atomically.
type counters struct {
	queries, allowed, refused, rateLimited, upstreamFailures atomic.Uint64
	cacheHits, malformed, notImpl, mismatched, overload      atomic.Uint64
	upstreamErrors, tcpFallbacks, truncated                  atomic.Uint64
	alerts, alertsSuppressed, alertsDropped, clientsRejected atomic.Uint64
}

// Stats is a snapshot of a proxy's counters.
type Stats struct {
	Queries          uint64 // well-formed queries received
	Allowed          uint64 // queries for allowed names (answered from cache or upstream)
	Refused          uint64 // queries for names outside the allowlist
	RateLimited      uint64 // queries refused by the QPS limit
	UpstreamFailures uint64 // allowed queries answered SERVFAIL: no upstream answered
	CacheHits        uint64
	Malformed        uint64 // unparseable messages (answered FORMERR or dropped)
	NotImplemented   uint64 // opcodes other than QUERY, zone transfers
	Mismatched       uint64 // upstream answers dropped: unknown ID or wrong question
	Overload         uint64 // queries dropped: too many in flight, or answers the send buffer had no room for
	UpstreamErrors   uint64 // failed upstream attempts (timeouts, closed connections)
	TCPFallbacks     uint64 // truncated UDP answers retried over TCP
	Truncated        uint64 // answers truncated to the client's size
	Alerts           uint64 // alerts handed to the sink
	AlertsSuppressed uint64 // repeats within AlertInterval
	AlertsDropped    uint64 // alerts lost because the sink fell behind
	ClientsRejected  uint64 // packets from sources outside Config.Clients
}

// Stats returns a snapshot of the counters.
func (p *Proxy) Stats() Stats {
	s := &p.stats
	return Stats{
		Queries: s.queries.Load(), Allowed: s.allowed.Load(), Refused: s.refused.Load(),
		RateLimited: s.rateLimited.Load(), UpstreamFailures: s.upstreamFailures.Load(),
		CacheHits: s.cacheHits.Load(), Malformed: s.malformed.Load(), NotImplemented: s.notImpl.Load(),
		Mismatched: s.mismatched.Load(), Overload: s.overload.Load(), UpstreamErrors: s.upstreamErrors.Load(),
		TCPFallbacks: s.tcpFallbacks.Load(), Truncated: s.truncated.Load(), Alerts: s.alerts.Load(),
		AlertsSuppressed: s.alertsSuppressed.Load(), AlertsDropped: s.alertsDropped.Load(),
		ClientsRejected: s.clientsRejected.Load(),
	}
}

// job is one allowed query: what the answer path needs, parsed once.
type job struct {
	id       uint16
	flags    uint16 // client header flags
	rawQ     []byte // the client's question (wire, its letter case, type, class); owned
	question []byte // lowercase question, for matching upstream answers
	qtype    uint16
	hasOPT   bool
	do       bool
	size     int    // largest answer the client takes
	key      string // cache key: lowercase question + keyFlags
	tcp      bool

	req *dns.Msg // general path only: the parsed request
}

// handle answers one raw client message: nil means no answer is sent.
func (p *Proxy) handle(ctx context.Context, raw []byte, tcp bool) []byte {
	resp, j := p.prepare(raw, tcp)
	if j != nil {
		resp = p.forward(ctx, j)
	}
	return resp
}

// prepare parses a client message and decides: an immediate answer (resp),
// nothing (both nil: not a query, or too broken to answer) or a job to
// forward. It never contacts an upstream. raw is not retained.
func (p *Proxy) prepare(raw []byte, tcp bool) (resp []byte, j *job) {
	return p.prepareInto(raw, tcp, nil)
}

// prepareInto is prepare writing the common immediate answers (refusals,
// cache hits that fit) into dst's memory when they fit its capacity, so
// the UDP loop answers them without allocating; resp may alias dst.
func (p *Proxy) prepareInto(raw []byte, tcp bool, dst []byte) (resp []byte, j *job) {
	if len(raw) < 12 || raw[2]&0x80 != 0 {
		// Too short to carry an ID, or a response (never answer those:
		// that is how loops start).
		p.stats.malformed.Add(1)
		return nil, nil
	}
	fq, ok := parseQuery(raw)
	if !ok || fq.qtype == dns.TypeAXFR || fq.qtype == dns.TypeIXFR {
		return p.prepareMsg(raw, tcp)
	}
	p.stats.queries.Add(1)
	if p.limiter != nil && !p.limiter.Allow() {
		p.stats.rateLimited.Add(1)
		return appendRefusal(dst[:0], &fq, dns.RcodeRefused, dns.ExtendedErrorCodeOther, p.rateText), nil
	}
	var nb [256]byte
	wire := nb[:fq.nameLen]
	copy(wire, fq.question)
	lowerWire(wire)
	if !p.match.allowedWire(wire) {
		p.stats.refused.Add(1)
		p.alertDenied(wire, fq.qtype)
		return appendRefusal(dst[:0], &fq, p.denyRcode(), dns.ExtendedErrorCodeBlocked, blockedText), nil
	}
	p.stats.allowed.Add(1)
	// Cache key on the stack: a hit allocates only the answer.
	var kb [256 + 5]byte
	key := append(append(append(kb[:0], wire...), fq.question[fq.nameLen:]...), fq.keyFlags())
	size := fq.clientSize(tcp)
	if out := p.cache.getInto(key, dst[:0]); out != nil {
		p.stats.cacheHits.Add(1)
		binary.BigEndian.PutUint16(out, fq.id)
		copy(out[hdrLen:], fq.question) // same length: the names differ at most in case
		return p.fit(out, size), nil
	}
	j = &job{
		id: fq.id, flags: fq.flags, qtype: fq.qtype, hasOPT: fq.hasOPT, do: fq.do,
		size: size, tcp: tcp,
		rawQ: append([]byte(nil), fq.question...),
		key:  string(key),
	}
	j.question = []byte(j.key[:len(key)-1])
	return nil, j
}

const blockedText = "name not in this experiment's dns allowlist"

func (p *Proxy) denyRcode() int {
	if p.cfg.DenyNXDomain {
		return dns.RcodeNameError
	}
	return dns.RcodeRefused
}

// prepareMsg is the general path, through miekg/dns's parser, for messages
// parseQuery does not take: malformed ones, other opcodes, several
// questions, compressed or extra records, EDNS versions, zone transfers.
func (p *Proxy) prepareMsg(raw []byte, tcp bool) (resp []byte, j *job) {
	req := new(dns.Msg)
	if err := req.Unpack(raw); err != nil {
		p.stats.malformed.Add(1)
		return headerReply(raw, dns.RcodeFormatError), nil
	}
	p.stats.queries.Add(1)
	opt := req.IsEdns0()
	if req.Opcode != dns.OpcodeQuery {
		p.stats.notImpl.Add(1)
		return p.reply(req, opt, dns.RcodeNotImplemented, nil, tcp), nil
	}
	if len(req.Question) != 1 {
		p.stats.malformed.Add(1)
		return p.reply(req, opt, dns.RcodeFormatError, nil, tcp), nil
	}
	if opt != nil && opt.Version() != 0 {
		return p.reply(req, opt, dns.RcodeBadVers, nil, tcp), nil
	}
	if p.limiter != nil && !p.limiter.Allow() {
		p.stats.rateLimited.Add(1)
		return p.reply(req, opt, dns.RcodeRefused, &dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeOther, ExtraText: p.rateText}, tcp), nil
	}
	q := req.Question[0]
	var nb [256]byte
	n, err := dns.PackDomainName(q.Name, nb[:], 0, nil, false)
	if err != nil {
		p.stats.malformed.Add(1)
		return p.reply(req, opt, dns.RcodeFormatError, nil, tcp), nil
	}
	rawQ := make([]byte, n+4)
	copy(rawQ, nb[:n])
	binary.BigEndian.PutUint16(rawQ[n:], q.Qtype)
	binary.BigEndian.PutUint16(rawQ[n+2:], q.Qclass)
	wire := lowerWire(nb[:n])
	if !p.match.allowedWire(wire) {
		p.stats.refused.Add(1)
		p.alertDenied(wire, q.Qtype)
		return p.reply(req, opt, p.denyRcode(), &dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeBlocked, ExtraText: blockedText}, tcp), nil
	}
	if q.Qtype == dns.TypeAXFR || q.Qtype == dns.TypeIXFR {
		p.stats.notImpl.Add(1)
		return p.reply(req, opt, dns.RcodeRefused, &dns.EDNS0_EDE{
			InfoCode: dns.ExtendedErrorCodeNotSupported, ExtraText: "zone transfers are not proxied",
		}, tcp), nil
	}
	p.stats.allowed.Add(1)
	fq := fastQuery{flags: uint16(raw[2])<<8 | uint16(raw[3]), hasOPT: opt != nil}
	if opt != nil {
		fq.udpSize, fq.do = opt.UDPSize(), opt.Do()
	}
	j = &job{
		id: req.Id, flags: fq.flags, qtype: q.Qtype, hasOPT: fq.hasOPT, do: fq.do,
		size: fq.clientSize(tcp), tcp: tcp, rawQ: rawQ, req: req,
	}
	j.question = append(append([]byte(nil), wire...), rawQ[n:]...)
	j.key = string(append(append(make([]byte, 0, len(j.question)+1), j.question...), fq.keyFlags()))
	if out := p.fromCache(j); out != nil {
		return out, nil
	}
	return nil, j
}

// fromCache answers j from the cache, or returns nil.
func (p *Proxy) fromCache(j *job) []byte {
	out := p.cache.getInto([]byte(j.key), nil)
	if out == nil {
		return nil
	}
	p.stats.cacheHits.Add(1)
	binary.BigEndian.PutUint16(out, j.id)
	copy(out[hdrLen:], j.rawQ) // same length: the names differ at most in case
	return p.fit(out, j.size)
}

// upstreamQuery is the query sent upstream (ID to be filled in): the
// question, RD/CD/AD, and, if the client used EDNS, an OPT record with our
// buffer size and the client's DO bit. The client's EDNS options (cookies,
// client subnet) are not forwarded.
func upstreamQuery(j *job) []byte {
	n := hdrLen + len(j.rawQ)
	if j.hasOPT {
		n += 11
	}
	b := make([]byte, hdrLen, n)
	binary.BigEndian.PutUint16(b[2:], j.flags&(flagRD|flagCD|flagAD))
	binary.BigEndian.PutUint16(b[4:], 1)
	b = append(b, j.rawQ...)
	if j.hasOPT {
		binary.BigEndian.PutUint16(b[10:], 1)
		var doBit byte
		if j.do {
			doBit = 0x80
		}
		b = append(b, 0, 0, typeOPT, byte(upstreamUDPSize>>8), byte(upstreamUDPSize&0xff), 0, 0, doBit, 0, 0, 0)
	}
	return b
}

// forward asks the upstreams and builds the client's answer.
func (p *Proxy) forward(ctx context.Context, j *job) []byte {
	raw, err := p.ex.exchange(ctx, upstreamQuery(j), j.question)
	if err == nil {
		m := new(dns.Msg)
		if uerr := m.Unpack(raw); uerr != nil {
			err = fmt.Errorf("unpack upstream answer: %w", uerr)
		} else {
			repack := false
			if !p.match.Any() {
				// Every name the answer names must be allowed too: a
				// CNAME chain from an allowed name into a denied one is
				// refused like a query for the denied name; records of
				// denied names in the additional section are stripped.
				if name, bad := p.deniedInAnswer(m); bad {
					return p.refuseAnswer(j, name)
				}
				repack = p.stripExtra(m)
			}
			if !repack {
				if out, ok := patchAnswer(j, raw); ok {
					return p.deliver(j, out)
				}
			}
			if full := p.finish(j, m); full != nil {
				return p.deliver(j, full)
			}
			err = errors.New("repack upstream answer")
		}
	}
	p.stats.upstreamFailures.Add(1)
	if errors.Is(ctx.Err(), context.Canceled) {
		return nil // shutting down
	}
	p.log.Debug("upstream failure", "question", fmt.Sprintf("%q", j.rawQ), "error", err)
	return p.reply(j.msg(), j.opt(), dns.RcodeServerFailure, &dns.EDNS0_EDE{
		InfoCode: dns.ExtendedErrorCodeNoReachableAuthority, ExtraText: "no upstream resolver answered",
	}, j.tcp)
}

// msg returns the request as a dns.Msg (rebuilt for fast-path jobs).
func (j *job) msg() *dns.Msg {
	if j.req != nil {
		return j.req
	}
	m := new(dns.Msg)
	m.Id = j.id
	m.RecursionDesired = j.flags&flagRD != 0
	m.CheckingDisabled = j.flags&flagCD != 0
	name, _, err := dns.UnpackDomainName(j.rawQ, 0)
	if err == nil {
		n := len(j.rawQ) - 4
		m.Question = []dns.Question{{Name: name, Qtype: binary.BigEndian.Uint16(j.rawQ[n:]), Qclass: binary.BigEndian.Uint16(j.rawQ[n+2:])}}
	}
	return m
}

func (j *job) opt() *dns.OPT {
	if !j.hasOPT {
		return nil
	}
	o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
	o.SetUDPSize(serverUDPSize)
	o.SetDo(j.do)
	return o
}

// patchAnswer turns an upstream answer into the client's by patching bytes:
// the client's ID and question (its letter case), our EDNS buffer size.
// It declines (ok false) when the answer's EDNS does not line up with the
// client's or carries options, or the framing is odd; finish handles those.
// walkAnswer checks only the framing, so the records' contents must have
// been parsed (dns.Msg.Unpack) by the caller: a malformed answer from
// upstream (an A record of 3 bytes) must reach the general path, which
// answers SERVFAIL, not the client or the cache.
func patchAnswer(j *job, raw []byte) ([]byte, bool) {
	info, ok := walkAnswer(raw, false)
	if !ok || (info.optOff != 0) != j.hasOPT || info.optRd != 0 || len(raw) < hdrLen+len(j.rawQ) {
		return nil, false
	}
	// The client's question is spliced over the answer's: only where the
	// answer's is the same question (the exchanger checks this too; the
	// splice must not depend on it).
	if !sameQuestion(raw[hdrLen:], j.question) {
		return nil, false
	}
	binary.BigEndian.PutUint16(raw, j.id)
	raw[2] = (raw[2] | 0x80) &^ 0x78 // QR, opcode QUERY (the mux checks QR; be exact)
	copy(raw[hdrLen:], j.rawQ)
	if info.optOff != 0 {
		binary.BigEndian.PutUint16(raw[info.optOff:], serverUDPSize)
	}
	return raw, true
}

// deniedInAnswer returns the first name in the answer section that the
// allowlist denies: an owner name or a CNAME or DNAME target. The
// question's own name is allowed (it was checked before forwarding).
func (p *Proxy) deniedInAnswer(m *dns.Msg) (string, bool) {
	for _, rr := range m.Answer {
		if !p.match.Allowed(rr.Header().Name) {
			return rr.Header().Name, true
		}
		switch rr := rr.(type) {
		case *dns.CNAME:
			if !p.match.Allowed(rr.Target) {
				return rr.Target, true
			}
		case *dns.DNAME:
			if !p.match.Allowed(rr.Target) {
				return rr.Target, true
			}
		}
	}
	return "", false
}

// stripExtra removes additional-section records (glue addresses for MX,
// SRV or NS targets) whose owner is denied; it reports whether it removed
// any. Authority records (SOA, NS of parent zones) are kept: they name
// zones, not answers.
func (p *Proxy) stripExtra(m *dns.Msg) bool {
	kept := m.Extra[:0]
	for _, rr := range m.Extra {
		if _, opt := rr.(*dns.OPT); opt || p.match.Allowed(rr.Header().Name) {
			kept = append(kept, rr)
		}
	}
	stripped := len(kept) != len(m.Extra)
	m.Extra = kept
	return stripped
}

// refuseAnswer answers j like a query for the denied name the upstream's
// answer led to, and raises the alert. Not cached: the refusal is cheap
// and the next answer may differ.
func (p *Proxy) refuseAnswer(j *job, denied string) []byte {
	p.stats.refused.Add(1)
	var nb [256]byte
	via := ""
	if req := j.msg(); len(req.Question) == 1 {
		via = req.Question[0].Name
	}
	if n, err := dns.PackDomainName(dns.Fqdn(denied), nb[:], 0, nil, false); err == nil {
		p.alertDeniedVia(lowerWire(nb[:n]), j.qtype, via)
	}
	return p.reply(j.msg(), j.opt(), p.denyRcode(), &dns.EDNS0_EDE{
		InfoCode: dns.ExtendedErrorCodeBlocked, ExtraText: "answer leads to a name not in this experiment's dns allowlist",
	}, j.tcp)
}

// deliver caches a complete client answer (when cacheable) and fits it to
// the client's size.
func (p *Proxy) deliver(j *job, full []byte) []byte {
	if p.cache != nil && len(full) >= hdrLen {
		rcode := full[3] & 0x0f
		if full[2]&0x02 == 0 && (rcode == dns.RcodeSuccess || rcode == dns.RcodeNameError) {
			info, ok := walkAnswer(full, false)
			if ok && info.hasTTL && info.minTTL > 0 && (binary.BigEndian.Uint16(full[6:]) > 0 || info.hasSOA) {
				if info, ok = walkAnswer(full, true); ok {
					p.cache.put(j.key, full, info.minTTL, info.ttlOffs)
				}
			}
		}
	}
	return p.fit(full, j.size)
}

// fit truncates an answer to size (setting TC), compressed.
func (p *Proxy) fit(full []byte, size int) []byte {
	if len(full) <= size {
		return full
	}
	m := new(dns.Msg)
	if err := m.Unpack(full); err != nil {
		return nil
	}
	return p.pack(m, size)
}

// finish is the general path for upstream answers: the client's ID and
// question (with its case), the proxy's EDNS record (or none if the client
// sent none), compressed and not yet truncated. m is modified.
func (p *Proxy) finish(j *job, m *dns.Msg) []byte {
	m.Id = j.id
	name, _, err := dns.UnpackDomainName(j.rawQ, 0)
	if err != nil || len(m.Question) != 1 {
		return nil
	}
	n := len(j.rawQ) - 4
	m.Question[0] = dns.Question{Name: name, Qtype: binary.BigEndian.Uint16(j.rawQ[n:]), Qclass: binary.BigEndian.Uint16(j.rawQ[n+2:])}
	m.Response = true
	m.Opcode = dns.OpcodeQuery
	var upOpt *dns.OPT
	extra := m.Extra[:0]
	for _, rr := range m.Extra {
		if o, ok := rr.(*dns.OPT); ok {
			upOpt = o
			continue
		}
		extra = append(extra, rr)
	}
	m.Extra = extra
	if j.hasOPT {
		o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
		o.SetUDPSize(serverUDPSize)
		if upOpt != nil {
			o.SetDo(upOpt.Do())
			for _, e := range upOpt.Option {
				if _, ok := e.(*dns.EDNS0_EDE); ok {
					o.Option = append(o.Option, e)
				}
			}
		}
		m.Extra = append(m.Extra, o)
	} else if m.Rcode > 0xf {
		m.Rcode = dns.RcodeServerFailure
	}
	m.Compress = true
	b, err := m.Pack()
	if err != nil {
		return nil
	}
	return b
}

func (p *Proxy) pack(m *dns.Msg, size int) []byte {
	tc := m.Truncated
	m.Truncate(size)
	if m.Truncated && !tc {
		p.stats.truncated.Add(1)
	}
	m.Compress = true
	b, err := m.Pack()
	if err != nil {
		p.log.Debug("pack answer", "error", err)
		return nil
	}
	return b
}

// reply builds an answer with no records: rcode, optional extended error.
func (p *Proxy) reply(req *dns.Msg, opt *dns.OPT, rcode int, ede *dns.EDNS0_EDE, tcp bool) []byte {
	m := new(dns.Msg)
	m.Id = req.Id
	m.Response = true
	m.Opcode = req.Opcode
	m.RecursionDesired = req.RecursionDesired
	m.RecursionAvailable = true
	m.CheckingDisabled = req.CheckingDisabled
	if len(req.Question) == 1 {
		m.Question = req.Question
	}
	m.Rcode = rcode
	if opt != nil {
		o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
		o.SetUDPSize(serverUDPSize)
		o.SetDo(opt.Do())
		if ede != nil {
			o.Option = append(o.Option, ede)
		}
		m.Extra = append(m.Extra, o)
	} else if rcode > 0xf {
		m.Rcode = dns.RcodeFormatError // BADVERS needs EDNS; cannot happen without
	}
	size := dns.MinMsgSize
	if tcp {
		size = dns.MaxMsgSize
	}
	return p.pack(m, size)
}

// headerReply answers a message that did not parse: its ID and opcode, no
// question.
func headerReply(raw []byte, rcode int) []byte {
	b := make([]byte, 12)
	copy(b, raw[:2])
	b[2] = 0x80 | raw[2]&0x79 // QR, opcode, RD
	b[3] = byte(rcode) & 0x0f
	return b
}
