package nflog

import (
	"fmt"
	"net/netip"
	"sort"
	"time"

	"github.com/arkgw/arkgw/alert"
)

// Event is one logged packet attributed to an experiment and a rule.
type Event struct {
	Time       time.Time
	Experiment string
	Rule       string
	Packet
}

// Rule names of the alerter's own records.
const (
	RuleOverflow = "overflow" // an experiment's summaries are full too: packets folded per experiment
	RuleLost     = "lost"     // the kernel or the alerter lost packets (seq gaps, ENOBUFS, full queue)
	RuleFlood    = "flood"    // an experiment's violations are being summarised
)

// Defaults of the Aggregator's bounds.
const (
	DefaultMaxOpen        = 64   // detailed aggregates open per experiment
	DefaultMaxSummaries   = 16   // summary aggregates open per experiment
	DefaultMaxKinds       = 256  // first-of-kind memory per experiment
	DefaultMaxExperiments = 4096 // experiments with aggregates open at once
)

// aggKey is what one aggregate groups: experiment, rule, destination,
// protocol and destination port (TCP/UDP) or ICMP type.
type aggKey struct {
	exp, rule string
	proto     uint8
	dst       netip.Addr
	port      uint16
}

// sumKey is what a summary groups when an experiment floods: rule,
// protocol and destination prefix (/24 for IPv4, /48 for IPv6).
type sumKey struct {
	rule  string
	proto uint8
	dst   netip.Prefix
}

// kindKey is what makes a violation new in kind: the rule, the protocol
// and the class of destination port (well-known, registered, dynamic) or
// the ICMP type. A violation of a new kind always gets its own line.
type kindKey struct {
	rule  string
	proto uint8
	class uint16
}

type aggregate struct {
	key        aggKey
	sum        *sumKey   // set for a summary
	dsts       int       // summary: distinct destination keys folded in
	start      time.Time // window start (the first packet)
	first      Event     // the packet that raised the immediate alert
	n, bytes   uint64    // packets after the first (summary: all packets)
	firstSeen  time.Time // of those
	lastSeen   time.Time
	src        netip.Addr
	sport      uint16
	mixedSrc   bool
	mixedSport bool
	overflow   bool
}

// expState is one experiment's share of the aggregator: its budgets are
// its own, so a flooding experiment cannot touch another's alerts.
type expState struct {
	open      map[aggKey]*aggregate
	sums      map[sumKey]*aggregate
	seen      map[sumKey]map[aggKey]struct{} // summary: distinct keys (bounded by maxSumKeys)
	overflow  *aggregate
	kinds     map[kindKey]struct{}
	floodTill time.Time // summarising since; a flood alert is raised again only after a quiet window
}

const maxSumKeys = 4096 // distinct keys remembered per summary (counting only)

func (e *expState) empty() bool {
	return len(e.open) == 0 && len(e.sums) == 0 && e.overflow == nil
}

// Aggregator turns events into alert records. It is pure (time comes from
// the events and the callers) and not safe for concurrent use.
//
// The first packet of a key raises an alert at once (Packets 1); later
// packets of the key within Window are counted and reported by one record
// when the window ends (Packets = the packets after the first, so the sum
// of Packets over all records is the exact number of packets seen).
//
// Every budget is per experiment. An experiment has at most MaxOpen keys
// open with their own lines; beyond that it is flooding: one flood record
// says so at once (kind flood, at most once per quiet window), and the
// packets of further keys are summarised per rule, protocol and
// destination prefix (MaxSummaries, one record each at the window's end,
// no immediate line); past those, one overflow record per experiment. A
// violation of a kind the experiment has not shown yet (a new rule, a new
// protocol, a new class of port or ICMP type) always gets its own line.
// So a flooding experiment writes at most about 2*MaxOpen + MaxSummaries +
// 2 lines per window, plus its new kinds, and other experiments' alerts
// keep every detail.
type Aggregator struct {
	Window         time.Duration
	MaxOpen        int // per experiment
	MaxSummaries   int // per experiment
	MaxKinds       int // per experiment
	MaxExperiments int

	exps   map[string]*expState
	nOpen  int // detailed aggregates, all experiments
	nOther int // summaries and overflows, all experiments
}

// NewAggregator returns an Aggregator (window default 60 s, maxOpen per
// experiment default 64).
func NewAggregator(window time.Duration, maxOpen int) *Aggregator {
	if window <= 0 {
		window = 60 * time.Second
	}
	if maxOpen <= 0 {
		maxOpen = DefaultMaxOpen
	}
	return &Aggregator{Window: window, MaxOpen: maxOpen, MaxSummaries: DefaultMaxSummaries,
		MaxKinds: DefaultMaxKinds, MaxExperiments: DefaultMaxExperiments, exps: map[string]*expState{}}
}

// Open is the number of open detailed aggregates, all experiments.
func (a *Aggregator) Open() int { return a.nOpen }

// OpenOverflow is the number of open summary and overflow aggregates.
func (a *Aggregator) OpenOverflow() int { return a.nOther }

func keyOf(ev Event) aggKey {
	k := aggKey{exp: ev.Experiment, rule: ev.Rule, proto: ev.ProtoNum, dst: ev.Dst}
	switch {
	case ev.HasICMP:
		k.port = uint16(ev.ICMPType)
	case ev.ProtoNum == 6 || ev.ProtoNum == 17:
		k.port = ev.DstPort
	}
	return k
}

func kindOf(ev Event) kindKey {
	k := kindKey{rule: ev.Rule, proto: ev.ProtoNum}
	switch {
	case ev.HasICMP:
		k.class = uint16(ev.ICMPType)
	case ev.ProtoNum == 6 || ev.ProtoNum == 17:
		switch {
		case ev.DstPort < 1024:
			k.class = 1
		case ev.DstPort < 49152:
			k.class = 2
		default:
			k.class = 3
		}
	}
	return k
}

func sumOf(ev Event) sumKey {
	k := sumKey{rule: ev.Rule, proto: ev.ProtoNum}
	if ev.Dst.IsValid() {
		bits := 24
		if ev.Dst.Is6() && !ev.Dst.Is4In6() {
			bits = 48
		}
		k.dst, _ = ev.Dst.Unmap().Prefix(bits)
	}
	return k
}

func (a *Aggregator) state(id string) *expState {
	if e := a.exps[id]; e != nil {
		return e
	}
	if len(a.exps) >= a.MaxExperiments {
		id = "" // even the experiments are too many: one shared state
		if e := a.exps[id]; e != nil {
			return e
		}
	}
	e := &expState{open: map[aggKey]*aggregate{}, sums: map[sumKey]*aggregate{}, seen: map[sumKey]map[aggKey]struct{}{}, kinds: map[kindKey]struct{}{}}
	a.exps[id] = e
	return e
}

// Add accounts ev and returns the record to emit now, if any: the first
// packet of a key, or the flood record of an experiment that starts being
// summarised.
func (a *Aggregator) Add(ev Event) (alert.Record, bool) {
	k := keyOf(ev)
	e := a.state(ev.Experiment)
	if g := e.open[k]; g != nil {
		g.add(ev)
		return alert.Record{}, false
	}
	kind := kindOf(ev)
	_, known := e.kinds[kind]
	newKind := !known && len(e.kinds) < a.MaxKinds
	if len(e.open) < a.MaxOpen || newKind {
		if newKind {
			e.kinds[kind] = struct{}{}
		}
		e.open[k] = &aggregate{key: k, start: ev.Time, first: ev}
		a.nOpen++
		return firstRecord(ev), true
	}
	// Flooding: summarise.
	var flood alert.Record
	raise := false
	if !ev.Time.Before(e.floodTill) {
		raise = true
		flood = firstRecord(ev)
		flood.Kind, flood.Rule, flood.Packets, flood.Bytes = alert.KindFlood, RuleFlood, 0, 0
		flood.Message = fmt.Sprintf("experiment %s is flooding violations: more than %d distinct ones within %s (this one: rule %s, %s); "+
			"further ones are summarised per rule and destination prefix, new kinds still alerted one by one; a candidate for [alerts] stop_after",
			ev.Experiment, a.MaxOpen, a.Window, ev.Rule, describe(ev.Packet))
	}
	e.floodTill = ev.Time.Add(a.Window)
	sk := sumOf(ev)
	if g := e.sums[sk]; g != nil {
		g.addSum(ev, e.seen[sk], k)
		return flood, raise
	}
	if len(e.sums) < a.MaxSummaries {
		g := &aggregate{key: aggKey{exp: ev.Experiment, rule: ev.Rule, proto: ev.ProtoNum}, sum: &sk, start: ev.Time, first: ev}
		e.sums[sk] = g
		e.seen[sk] = map[aggKey]struct{}{}
		g.addSum(ev, e.seen[sk], k)
		a.nOther++
		return flood, raise
	}
	if e.overflow == nil {
		e.overflow = &aggregate{key: aggKey{exp: ev.Experiment, rule: RuleOverflow}, start: ev.Time, first: ev, overflow: true}
		a.nOther++
	}
	e.overflow.add(ev)
	return flood, raise
}

// addSum counts ev (every packet, the first included: a summary has no
// immediate line) and its distinct key.
func (g *aggregate) addSum(ev Event, seen map[aggKey]struct{}, k aggKey) {
	if _, ok := seen[k]; !ok {
		g.dsts++
		if len(seen) < maxSumKeys {
			seen[k] = struct{}{}
		}
	}
	g.add(ev)
}

func (g *aggregate) add(ev Event) {
	if g.n == 0 {
		g.firstSeen, g.src, g.sport = ev.Time, ev.Src, ev.SrcPort
	} else {
		if ev.Src != g.src {
			g.mixedSrc = true
		}
		if ev.SrcPort != g.sport {
			g.mixedSport = true
		}
	}
	g.n++
	g.bytes += uint64(ev.Len)
	if ev.Time.After(g.lastSeen) {
		g.lastSeen = ev.Time
	}
	if ev.Time.Before(g.firstSeen) {
		g.firstSeen = ev.Time
	}
}

// Due closes the aggregates whose window ended at or before now and returns
// the records for those that counted packets after the first, oldest
// window first.
func (a *Aggregator) Due(now time.Time) []alert.Record {
	return a.flush(now, false)
}

// FlushAll closes every aggregate (at shutdown) and returns their records.
func (a *Aggregator) FlushAll(now time.Time) []alert.Record {
	return a.flush(now, true)
}

func (a *Aggregator) flush(now time.Time, all bool) []alert.Record {
	var done []*aggregate
	due := func(g *aggregate) bool { return all || !now.Before(g.start.Add(a.Window)) }
	for id, e := range a.exps {
		for k, g := range e.open {
			if due(g) {
				delete(e.open, k)
				a.nOpen--
				if g.n > 0 {
					done = append(done, g)
				}
			}
		}
		for k, g := range e.sums {
			if due(g) {
				delete(e.sums, k)
				delete(e.seen, k)
				a.nOther--
				done = append(done, g) // a summary always counted packets
			}
		}
		if g := e.overflow; g != nil && due(g) {
			e.overflow = nil
			a.nOther--
			done = append(done, g)
		}
		if e.empty() {
			delete(a.exps, id)
		}
	}
	sort.SliceStable(done, func(i, j int) bool { return done[i].start.Before(done[j].start) })
	out := make([]alert.Record, 0, len(done))
	for _, g := range done {
		out = append(out, g.record(now, a.Window))
	}
	return out
}

func (g *aggregate) record(now time.Time, window time.Duration) alert.Record {
	r := firstRecord(g.first)
	r.Time = now
	r.Packets, r.Bytes = g.n, g.bytes
	r.FirstSeen, r.LastSeen = g.firstSeen, g.lastSeen
	r.Src, r.SrcPort = g.src.String(), int(g.sport)
	if g.mixedSrc {
		r.Src = ""
	}
	if g.mixedSport || g.mixedSrc {
		r.SrcPort = 0
	}
	srcs := ""
	if g.mixedSrc {
		srcs = " from several sources"
	}
	switch {
	case g.overflow:
		r.Experiment, r.Kind, r.Rule = g.key.exp, alert.KindOverrun, RuleOverflow
		r.Proto, r.Dst, r.DstPort, r.ICMPType, r.ICMPCode, r.Src, r.SrcPort = "", "", 0, nil, nil, "", 0
		r.Message = fmt.Sprintf("%d more packets (%d bytes) of violations beyond the experiment's summaries in %s%s", g.n, g.bytes, window, srcs)
	case g.sum != nil:
		r.DstPort, r.ICMPType, r.ICMPCode, r.SrcPort = 0, nil, nil, 0
		r.Dst = ""
		if g.sum.dst.IsValid() {
			r.Dst = g.sum.dst.String()
		}
		r.Message = fmt.Sprintf("summary of a flood: %d packets (%d bytes) to %d distinct destinations in %s dropped by rule %s within %s%s", g.n, g.bytes, g.dsts, r.Dst, g.key.rule, window, srcs)
	default:
		r.Message = fmt.Sprintf("%d more packets (%d bytes) dropped by rule %s since the first alert, within %s%s", g.n, g.bytes, g.key.rule, window, srcs)
	}
	return r
}

// firstRecord is the immediate alert for one packet.
func firstRecord(ev Event) alert.Record {
	r := alert.Record{
		Time:       ev.Time,
		Experiment: ev.Experiment,
		Kind:       alert.KindPacket,
		Rule:       ev.Rule,
		Proto:      ev.Proto(),
		Packets:    1,
		Bytes:      uint64(ev.Len),
		FirstSeen:  ev.Time,
		LastSeen:   ev.Time,
	}
	if ev.Src.IsValid() {
		r.Src = ev.Src.String()
	}
	if ev.Dst.IsValid() {
		r.Dst = ev.Dst.String()
	}
	if ev.ProtoNum == 6 || ev.ProtoNum == 17 {
		r.SrcPort, r.DstPort = int(ev.SrcPort), int(ev.DstPort)
	}
	if ev.HasICMP {
		t, c := int(ev.ICMPType), int(ev.ICMPCode)
		r.ICMPType, r.ICMPCode = &t, &c
	}
	r.Message = fmt.Sprintf("experiment %s sent a packet its policy does not allow (rule %s): %s; dropped", ev.Experiment, ev.Rule, describe(ev.Packet))
	return r
}

// describe is "tcp 10.0.0.2:4000 -> 198.51.100.1:25".
func describe(p Packet) string {
	switch {
	case p.HasICMP:
		return fmt.Sprintf("%s %s -> %s type %d code %d", p.Proto(), p.Src, p.Dst, p.ICMPType, p.ICMPCode)
	case p.ProtoNum == 6 || p.ProtoNum == 17:
		return fmt.Sprintf("%s %s -> %s", p.Proto(), netip.AddrPortFrom(p.Src, p.SrcPort), netip.AddrPortFrom(p.Dst, p.DstPort))
	}
	return fmt.Sprintf("%s %s -> %s", p.Proto(), p.Src, p.Dst)
}
