package dnsproxy

import (
	"context"
	"encoding/binary"
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
	Overload         uint64 // queries dropped: too many in flight
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

// job is a query to forward upstream.
type job struct {
	req      *dns.Msg
	opt      *dns.OPT // the client's OPT record, nil without EDNS
	tcp      bool
	key      string // cache key
	question []byte // lowercase wire question (name, type, class)
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
// forward. It never contacts an upstream.
func (p *Proxy) prepare(raw []byte, tcp bool) (resp []byte, j *job) {
	if len(raw) < 12 || raw[2]&0x80 != 0 {
		// Too short to carry an ID, or a response (never answer those:
		// that is how loops start).
		p.stats.malformed.Add(1)
		return nil, nil
	}
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
		return p.reply(req, opt, dns.RcodeRefused, &dns.EDNS0_EDE{
			InfoCode:  dns.ExtendedErrorCodeOther,
			ExtraText: fmt.Sprintf("query rate limit of %d/s for this experiment exceeded", p.cfg.QPS),
		}, tcp), nil
	}
	q := req.Question[0]
	var nb [256]byte
	n, err := dns.PackDomainName(q.Name, nb[:], 0, nil, false)
	if err != nil {
		p.stats.malformed.Add(1)
		return p.reply(req, opt, dns.RcodeFormatError, nil, tcp), nil
	}
	wire := lowerWire(nb[:n])
	if !p.match.allowedWire(wire) {
		p.stats.refused.Add(1)
		p.alertDenied(dns.CanonicalName(q.Name), q.Qtype)
		rcode := dns.RcodeRefused
		if p.cfg.DenyNXDomain {
			rcode = dns.RcodeNameError
		}
		return p.reply(req, opt, rcode, &dns.EDNS0_EDE{
			InfoCode:  dns.ExtendedErrorCodeBlocked,
			ExtraText: "name not in this experiment's dns allowlist",
		}, tcp), nil
	}
	if q.Qtype == dns.TypeAXFR || q.Qtype == dns.TypeIXFR {
		p.stats.notImpl.Add(1)
		return p.reply(req, opt, dns.RcodeRefused, &dns.EDNS0_EDE{
			InfoCode: dns.ExtendedErrorCodeNotSupported, ExtraText: "zone transfers are not proxied",
		}, tcp), nil
	}
	p.stats.allowed.Add(1)

	question := make([]byte, n+4)
	copy(question, wire)
	binary.BigEndian.PutUint16(question[n:], q.Qtype)
	binary.BigEndian.PutUint16(question[n+2:], q.Qclass)
	j = &job{req: req, opt: opt, tcp: tcp, question: question}
	j.key = cacheKey(question, req, opt)
	if m := p.cache.get(j.key); m != nil {
		p.stats.cacheHits.Add(1)
		return p.finish(j, m), nil
	}
	return nil, j
}

func cacheKey(question []byte, req *dns.Msg, opt *dns.OPT) string {
	var flags byte
	if req.RecursionDesired {
		flags |= 1
	}
	if req.CheckingDisabled {
		flags |= 2
	}
	if opt != nil {
		flags |= 4
		if opt.Do() {
			flags |= 8
		}
	}
	return string(append(question, flags))
}

// forward asks the upstreams and builds the client's answer.
func (p *Proxy) forward(ctx context.Context, j *job) []byte {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.QueryTimeout)
	defer cancel()
	q := new(dns.Msg)
	q.Opcode = dns.OpcodeQuery
	q.RecursionDesired = j.req.RecursionDesired
	q.CheckingDisabled = j.req.CheckingDisabled
	q.AuthenticatedData = j.req.AuthenticatedData
	q.Question = j.req.Question
	if j.opt != nil {
		// EDNS passes through with the DO bit; the client's options (cookies,
		// client subnet) are not forwarded.
		q.SetEdns0(upstreamUDPSize, j.opt.Do())
	}
	packed, err := q.Pack()
	if err != nil {
		p.stats.malformed.Add(1)
		return p.reply(j.req, j.opt, dns.RcodeFormatError, nil, j.tcp)
	}
	raw, err := p.ex.exchange(ctx, packed, j.question)
	var m *dns.Msg
	if err == nil {
		m = new(dns.Msg)
		if uerr := m.Unpack(raw); uerr != nil {
			err = fmt.Errorf("unpack upstream answer: %w", uerr)
		}
	}
	if err != nil {
		p.stats.upstreamFailures.Add(1)
		if ctx.Err() != nil && errorsIsCanceled(ctx) {
			return nil // shutting down
		}
		p.log.Debug("upstream failure", "name", j.req.Question[0].Name, "error", err)
		return p.reply(j.req, j.opt, dns.RcodeServerFailure, &dns.EDNS0_EDE{
			InfoCode: dns.ExtendedErrorCodeNoReachableAuthority, ExtraText: "no upstream resolver answered",
		}, j.tcp)
	}
	p.cache.put(j.key, m)
	return p.finish(j, m)
}

func errorsIsCanceled(ctx context.Context) bool { return ctx.Err() == context.Canceled }

// finish turns an upstream (or cached) answer into the client's answer: the
// client's ID and question (with its case), the proxy's EDNS record (or none
// if the client sent none), compressed and truncated to the client's size.
// m is modified.
func (p *Proxy) finish(j *job, m *dns.Msg) []byte {
	m.Id = j.req.Id
	m.Question = j.req.Question
	m.Response = true
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
	if j.opt != nil {
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
	size := dns.MaxMsgSize
	if !j.tcp {
		size = dns.MinMsgSize
		if j.opt != nil && int(j.opt.UDPSize()) > size {
			size = int(j.opt.UDPSize())
		}
		if size > serverUDPSize {
			size = serverUDPSize
		}
	}
	return p.pack(m, size)
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
