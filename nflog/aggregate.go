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

// Rule names of the alerter's own overrun records.
const (
	RuleOverflow = "overflow" // too many open aggregates: packets folded per experiment
	RuleLost     = "lost"     // the kernel or the alerter lost packets (seq gaps, ENOBUFS, full queue)
)

// aggKey is what one aggregate groups: experiment, rule, destination,
// protocol and destination port (TCP/UDP) or ICMP type.
type aggKey struct {
	exp, rule string
	proto     uint8
	dst       netip.Addr
	port      uint16
}

type aggregate struct {
	key        aggKey
	start      time.Time // window start (the first packet)
	first      Event     // the packet that raised the immediate alert
	n, bytes   uint64    // packets after the first
	firstSeen  time.Time // of those
	lastSeen   time.Time
	src        netip.Addr
	sport      uint16
	mixedSrc   bool
	mixedSport bool
	overflow   bool
}

// Aggregator turns events into alert records. It is pure (time comes from
// the events and the callers) and not safe for concurrent use.
//
// The first packet of a key raises an alert at once (Packets 1); later
// packets of the key within Window are counted and reported by one record
// when the window ends (Packets = the packets after the first, so the sum of
// Packets over all records is the exact number of packets seen). At most
// MaxOpen aggregates are open; packets of further keys are folded into one
// overflow aggregate per experiment, reported as alert.KindOverrun (rule
// "overflow") with exact counts, so memory stays bounded whatever the flood.
type Aggregator struct {
	Window  time.Duration
	MaxOpen int

	open     map[aggKey]*aggregate
	overflow map[string]*aggregate
}

// NewAggregator returns an Aggregator (window default 60 s, maxOpen default
// 4096).
func NewAggregator(window time.Duration, maxOpen int) *Aggregator {
	if window <= 0 {
		window = 60 * time.Second
	}
	if maxOpen <= 0 {
		maxOpen = 4096
	}
	return &Aggregator{Window: window, MaxOpen: maxOpen, open: map[aggKey]*aggregate{}, overflow: map[string]*aggregate{}}
}

// Open is the number of open aggregates (not counting overflow ones, of
// which there is at most one per experiment, and at most MaxOpen).
func (a *Aggregator) Open() int { return len(a.open) }

// OpenOverflow is the number of open overflow aggregates.
func (a *Aggregator) OpenOverflow() int { return len(a.overflow) }

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

// Add accounts ev and returns the record to emit now, if any: the first
// packet of a key, or the first packet folded into an experiment's overflow.
func (a *Aggregator) Add(ev Event) (alert.Record, bool) {
	k := keyOf(ev)
	if g := a.open[k]; g != nil {
		g.add(ev)
		return alert.Record{}, false
	}
	if len(a.open) < a.MaxOpen {
		a.open[k] = &aggregate{key: k, start: ev.Time, first: ev}
		return firstRecord(ev), true
	}
	ok := ev.Experiment
	if _, exists := a.overflow[ok]; !exists && len(a.overflow) >= a.MaxOpen {
		ok = "" // even the experiments are too many: one shared overflow
	}
	if g := a.overflow[ok]; g != nil {
		g.add(ev)
		return alert.Record{}, false
	}
	a.overflow[ok] = &aggregate{key: aggKey{exp: ok, rule: RuleOverflow}, start: ev.Time, first: ev, overflow: true}
	r := firstRecord(ev)
	r.Experiment = ok
	r.Kind = alert.KindOverrun
	r.Rule = RuleOverflow
	r.Message = fmt.Sprintf("more than %d distinct violations open in %s: packets of new ones are counted per experiment without details (this one: rule %s, %s)", a.MaxOpen, a.Window, ev.Rule, describe(ev.Packet))
	return r, true
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
	for k, g := range a.open {
		if all || !now.Before(g.start.Add(a.Window)) {
			delete(a.open, k)
			if g.n > 0 {
				done = append(done, g)
			}
		}
	}
	for k, g := range a.overflow {
		if all || !now.Before(g.start.Add(a.Window)) {
			delete(a.overflow, k)
			if g.n > 0 {
				done = append(done, g)
			}
		}
	}
	sort.Slice(done, func(i, j int) bool { return done[i].start.Before(done[j].start) })
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
	if g.overflow {
		r.Experiment, r.Kind, r.Rule = g.key.exp, alert.KindOverrun, RuleOverflow
		r.Proto, r.Dst, r.DstPort, r.ICMPType, r.ICMPCode, r.Src, r.SrcPort = "", "", 0, nil, nil, "", 0
		r.Message = fmt.Sprintf("%d more packets (%d bytes) of violations beyond the open-aggregate cap in %s%s", g.n, g.bytes, window, srcs)
		return r
	}
	r.Message = fmt.Sprintf("%d more packets (%d bytes) dropped by rule %s since the first alert, within %s%s", g.n, g.bytes, g.key.rule, window, srcs)
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
