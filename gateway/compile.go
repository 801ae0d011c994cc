package gateway

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"go4.org/netipx"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/configs"
)

// Names of the objects arkgw owns in the host netns. Every per-experiment
// object carries the experiment id.
const (
	TableName  = "arkgw" // table inet arkgw; gateway/quota owns inet arkgw_acct
	LinkPrefix = "ark"   // host end of every experiment veth: "ark<id>"

	chainPrerouting  = "prerouting"
	chainInput       = "input"
	chainForward     = "forward"
	chainPostrouting = "postrouting"

	mapFrom = "from_exp" // iifname -> jump fwd_<id>
	mapTo   = "to_exp"   // oifname -> jump ret_<id>
	mapIn   = "in_exp"   // iifname -> jump in_<id>
	mapDNS  = "dns_exp"  // iifname -> jump dns_<id> (restricted DNS only)

	// Established fast path: one set of (iifname . oifname . flow mark)
	// of admitted flows between an experiment and the uplink, both ways.
	setEst = "est" // "ark<id>" . uplink . admitted|slot+1 (never SYN-only); uplink . "ark<id>" . admitted[|syn-only]|slot+1
	// Without a named uplink (masquerade out of any interface): one set
	// per direction, keyed by the experiment's interface.
	setEstOut = "est_out" // iifname "ark<id>" . admitted|slot+1 (never SYN-only)
	setEstIn  = "est_in"  // oifname "ark<id>" . admitted[|syn-only]|slot+1

	setReserved4   = "reserved4"
	setReserved6   = "reserved6"
	setRouters4    = "routers4"
	setRouters6    = "routers6"
	setExp4        = "exp4" // experiment addresses: masqueraded out of the uplink
	setExp6        = "exp6"
	setSynLen4     = "synlen4" // tcp doff . ip length of segments without payload
	setSynLen6     = "synlen6"
	setSynFlags    = "synonly_flags"
	setND6         = "nd6"
	counterUnknown = "unknown_link"
)

// Conntrack mark layout. The low 16 bits attribute a flow to an experiment
// slot (slot+1; 0 = not an experiment flow); the bits above are flags the
// gateway sets when it admits the first packet of a flow.
const (
	MarkSlotMask uint32 = 0x0000ffff
	MarkAdmitted uint32 = 0x00010000 // the policy admitted this flow
	MarkSynOnly  uint32 = 0x00020000 // admitted as a SYN-only probe: only bare SYN/RST may follow
	MarkSpoofed  uint32 = 0x00040000 // a declared spoofed source (never NATed)

	// markFlowMask selects what the established fast path compares.
	markFlowMask = MarkSlotMask | MarkAdmitted | MarkSynOnly
)

// MarkForSlot is the conntrack mark base of an experiment slot.
func MarkForSlot(slot int) uint32 { return uint32(slot+1) & MarkSlotMask }

// SlotFromMark returns the experiment slot a conntrack mark names.
func SlotFromMark(mark uint32) (slot int, ok bool) {
	s := mark & MarkSlotMask
	return int(s) - 1, s != 0
}

// Rule names: the last part of the NFLOG prefix "ark:<id>:<rule>".
const (
	RuleReserved   = "reserved"
	RuleTCPDst     = "tcp-dst"
	RuleUDPDst     = "udp-dst"
	RuleICMP       = "icmp"
	RuleProto      = "proto"
	RuleSynOnly    = "syn-only"
	RuleSpoof      = "spoof"
	RuleNode       = "node"
	RulePeer       = "peer"
	RuleAllPackets = "all-packets"
	RuleCtLimit    = "ct-limit"
)

// CounterName is the named nft counter that counts drops of experiment id
// by rule.
func CounterName(id, rule string) string {
	return "drop_" + id + "_" + strings.ReplaceAll(rule, "-", "_")
}

// InboundCounterName counts unsolicited packets towards an experiment
// (dropped without an alert: they are not the experiment's doing).
func InboundCounterName(id string) string { return "inbound_" + id }

// HostIfName is the host end of an experiment's veth.
func HostIfName(id string) string { return LinkPrefix + id }

// LinkAlias is the alias (IFLA_IFALIAS) of experiment id's host veth: it
// marks the link as arkgw's, and only links carrying it are swept.
func LinkAlias(id string) string { return "arkgw:" + id }

// CompileInput is everything the ruleset depends on.
type CompileInput struct {
	Uplink         string // "" = masquerade out of any non-experiment interface
	DefaultRouters []netip.Addr
	// Reserved destinations (nil = configs.ReservedPrefixes with no lab
	// setting): dropped as "reserved" unless a default router.
	Reserved   []netip.Prefix
	NFLOGGroup uint16
	// MaxFlows is the tracked-flow limit of experiments whose policy says
	// 0 (configs.Limits.MaxFlows); 0 here = DefaultMaxFlows.
	MaxFlows uint32
	Exps     []CompileExp
	// Cache, when set, keeps each experiment's objects from one Compile to
	// the next and reuses them while its policy and network (the same
	// pointers) and the node inputs above are unchanged: a start then
	// compiles one experiment, not all, and Diff passes over the reused
	// objects at a pointer comparison. The objects it hands out must not
	// be modified.
	Cache *CompileCache
}

// CompileCache holds compiled experiments between Compiles (see
// CompileInput.Cache). The zero value is ready to use; it is not safe for
// concurrent use.
type CompileCache struct {
	maxFlows uint32
	uplink   string
	routers  []netip.Addr
	group    uint16
	frags    map[string]*fragment
}

// fragment is one experiment's compiled objects.
type fragment struct {
	eff *configs.Effective
	net *Net
	rs  *Ruleset // its counters, sets and chains only
}

// fragments returns the cache's map for in, emptied when a node input
// changed.
func (c *CompileCache) fragments(in CompileInput) map[string]*fragment {
	if c.frags == nil || c.uplink != in.Uplink || c.group != in.NFLOGGroup || c.maxFlows != in.MaxFlows || !slices.Equal(c.routers, in.DefaultRouters) {
		c.frags = map[string]*fragment{}
		c.uplink, c.group, c.routers, c.maxFlows = in.Uplink, in.NFLOGGroup, slices.Clone(in.DefaultRouters), in.MaxFlows
	}
	return c.frags
}

// CompileExp is one experiment: its policy and its network.
type CompileExp struct {
	Eff *configs.Effective
	Net *Net
}

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
	// tcpFlagMask is the part of the flags byte that decides the segment
	// kind; ECN and PSH/URG bits are ignored.
	tcpFlagMask = tcpFIN | tcpSYN | tcpRST | tcpACK

	ctEstablished = 2
	ctRelated     = 4
	ctNew         = 8
)

// DefaultMaxFlows is the tracked-flow limit per experiment when neither
// the policy nor the node's conntrack table size say otherwise.
const DefaultMaxFlows = 8192

// maxFlows is the tracked-flow limit of one experiment.
func (c *expCompiler) maxFlows() uint32 {
	if m := c.eff.Limits.MaxFlows; m > 0 {
		return uint32(min(m, 1<<31-1))
	}
	if c.in.MaxFlows > 0 {
		return c.in.MaxFlows
	}
	return DefaultMaxFlows
}

// Compile turns the effective policies into the arkgw table. It is pure.
func Compile(in CompileInput) (*Ruleset, error) {
	rs := &Ruleset{Table: TableName, Counters: []string{counterUnknown}}
	exps := append([]CompileExp(nil), in.Exps...)
	slices.SortFunc(exps, func(a, b CompileExp) int { return cmp.Compare(a.Eff.ID, b.Eff.ID) })

	from := &Set{Name: mapFrom, Fields: []Field{FIIFName}, VerdictMap: true}
	to := &Set{Name: mapTo, Fields: []Field{FOIFName}, VerdictMap: true}
	inm := &Set{Name: mapIn, Fields: []Field{FIIFName}, VerdictMap: true}
	dnsm := &Set{Name: mapDNS, Fields: []Field{FIIFName}, VerdictMap: true}
	exp4 := &Set{Name: setExp4, Fields: []Field{FIPSaddr}}
	exp6 := &Set{Name: setExp6, Fields: []Field{FIP6Saddr}}
	rs.Sets = append(rs.Sets, from, to, inm, dnsm, exp4, exp6)

	// The established fast path: the first rule an experiment's packet
	// meets, one set lookup for both directions. The policy decided on the
	// flow's first packet (its ct mark says so: admitted, for this slot);
	// a decision that no longer holds is revoked by deleting the conntrack
	// entry (Update), after which the flow starts over with mark 0 and
	// goes through fwd_<id>. So the ct state need not be checked: an
	// admitted flow whose later packets conntrack still calls new (UDP
	// before any reply, SYN retransmits) is the same flow the policy
	// admitted, and packets without conntrack (invalid, untracked) have no
	// mark and miss. SYN-only flows carry the syn-only bit, which the
	// outbound elements never hold, so their packets from the experiment
	// always go through fwd_<id>'s syn-only check (KERNEL-NOTES).
	var est, estOut, estIn *Set
	var fast []Rule
	if in.Uplink != "" {
		// With the uplink named, one lookup covers both directions:
		// (experiment, uplink) outbound and (uplink, experiment) back.
		// Experiment traffic through any other interface takes the slow
		// path (fwd_<id>/ret_<id>), which checks the same.
		est = &Set{Name: setEst, Fields: []Field{FIIFName, FOIFName, FCtFlow}}
		rs.Sets = append(rs.Sets, est)
		fast = []Rule{{Exprs: []Expr{Lookup{Fields: est.Fields, Set: setEst}, Verdict{Kind: "accept"}}}}
	} else {
		estOut = &Set{Name: setEstOut, Fields: []Field{FIIFName, FCtFlow}}
		estIn = &Set{Name: setEstIn, Fields: []Field{FOIFName, FCtFlow}}
		rs.Sets = append(rs.Sets, estOut, estIn)
		fast = []Rule{
			{Exprs: []Expr{Lookup{Fields: estOut.Fields, Set: setEstOut}, Verdict{Kind: "accept"}}},
			{Exprs: []Expr{Lookup{Fields: estIn.Fields, Set: setEstIn}, Verdict{Kind: "accept"}}},
		}
	}
	rs.Sets = append(rs.Sets, globalSets(in.Reserved, in.DefaultRouters)...)

	unknown := []Expr{Counter{counterUnknown}, Verdict{Kind: "drop"}}
	arkIn := Cmp{Field: FIIFName, Value: Value{Str: LinkPrefix, Prefix: true}}
	arkOut := Cmp{Field: FOIFName, Value: Value{Str: LinkPrefix, Prefix: true}}
	rs.Chains = append(rs.Chains,
		&Chain{Name: chainPrerouting, Type: "nat", Hook: "prerouting", Priority: -100, Rules: []Rule{
			{Exprs: []Expr{Vmap{Field: FIIFName, Map: mapDNS}}},
		}},
		&Chain{Name: chainInput, Type: "filter", Hook: "input", Priority: 0, Rules: []Rule{
			{Exprs: []Expr{Vmap{Field: FIIFName, Map: mapIn}}},
			{Exprs: append([]Expr{arkIn}, unknown...)},
		}},
		&Chain{Name: chainForward, Type: "filter", Hook: "forward", Priority: 0, Rules: append(fast, []Rule{
			{Exprs: []Expr{Vmap{Field: FIIFName, Map: mapFrom}}},
			{Exprs: append([]Expr{arkIn}, unknown...)},
			{Exprs: []Expr{Vmap{Field: FOIFName, Map: mapTo}}},
			{Exprs: append([]Expr{arkOut}, unknown...)},
		}...)},
	)
	post := &Chain{Name: chainPostrouting, Type: "nat", Hook: "postrouting", Priority: 100}
	var up []Expr
	if in.Uplink != "" {
		up = []Expr{Cmp{Field: FOIFName, Value: Value{Str: in.Uplink}}}
	} else {
		up = []Expr{Cmp{Field: FOIFName, Neq: true, Value: Value{Str: LinkPrefix, Prefix: true}}}
	}
	post.Rules = []Rule{
		{Exprs: append(slices.Clone(up), nfproto(4), Lookup{Fields: []Field{FIPSaddr}, Set: setExp4}, Masquerade{})},
		{Exprs: append(slices.Clone(up), nfproto(6), Lookup{Fields: []Field{FIP6Saddr}, Set: setExp6}, Masquerade{})},
	}
	rs.Chains = append(rs.Chains, post)

	var cached map[string]*fragment
	keep := map[string]bool{}
	if in.Cache != nil {
		cached = in.Cache.fragments(in)
	}
	seenIf := map[string]string{}
	for _, x := range exps {
		if x.Eff == nil || x.Net == nil {
			return nil, fmt.Errorf("compile: experiment without policy or network")
		}
		id := x.Eff.ID
		if err := configs.ValidID(id); err != nil {
			return nil, fmt.Errorf("compile: %w", err)
		}
		if other, dup := seenIf[x.Net.HostIf]; dup {
			return nil, fmt.Errorf("compile: experiments %q and %q share interface %q", other, id, x.Net.HostIf)
		}
		seenIf[x.Net.HostIf] = id
		var frag *Ruleset
		if f := cached[id]; f != nil && f.eff == x.Eff && f.net == x.Net {
			frag = f.rs
		} else {
			frag = &Ruleset{}
			c := &expCompiler{rs: frag, globals: rs, in: in, eff: x.Eff, net: x.Net}
			if err := c.compile(); err != nil {
				return nil, fmt.Errorf("compile experiment %q: %w", id, err)
			}
		}
		if cached != nil {
			cached[id] = &fragment{eff: x.Eff, net: x.Net, rs: frag}
			keep[id] = true
		}
		rs.Counters = append(rs.Counters, frag.Counters...)
		rs.Sets = append(rs.Sets, frag.Sets...)
		rs.Chains = append(rs.Chains, frag.Chains...)
		ifv := Value{Str: x.Net.HostIf}
		from.Elems = append(from.Elems, Elem{Key: []Value{ifv}, Verdict: Verdict{Kind: "jump", Chain: "fwd_" + id}})
		to.Elems = append(to.Elems, Elem{Key: []Value{ifv}, Verdict: Verdict{Kind: "jump", Chain: "ret_" + id}})
		inm.Elems = append(inm.Elems, Elem{Key: []Value{ifv}, Verdict: Verdict{Kind: "jump", Chain: "in_" + id}})
		if x.Eff.DNSRestricted() {
			dnsm.Elems = append(dnsm.Elems, Elem{Key: []Value{ifv}, Verdict: Verdict{Kind: "jump", Chain: "dns_" + id}})
		}
		flow := MarkAdmitted | MarkForSlot(x.Net.Slot)
		if est != nil {
			upv := Value{Str: in.Uplink}
			est.Elems = append(est.Elems, Elem{Key: []Value{ifv, upv, {Num: flow}}},
				Elem{Key: []Value{upv, ifv, {Num: flow}}}, Elem{Key: []Value{upv, ifv, {Num: flow | MarkSynOnly}}})
		} else {
			estOut.Elems = append(estOut.Elems, Elem{Key: []Value{ifv, {Num: flow}}})
			estIn.Elems = append(estIn.Elems, Elem{Key: []Value{ifv, {Num: flow}}}, Elem{Key: []Value{ifv, {Num: flow | MarkSynOnly}}})
		}
		if x.Net.Addr4.IsValid() {
			exp4.Elems = append(exp4.Elems, Elem{Key: []Value{{Addr: x.Net.Addr4}}})
		}
		if x.Net.Addr6.IsValid() {
			exp6.Elems = append(exp6.Elems, Elem{Key: []Value{{Addr: x.Net.Addr6}}})
		}
	}
	for id := range cached {
		if !keep[id] {
			delete(cached, id)
		}
	}
	return rs, nil
}

func nfproto(v int) Cmp {
	if v == 4 {
		return Cmp{Field: FNFProto, Value: Value{Num: nfprotoIPv4}}
	}
	return Cmp{Field: FNFProto, Value: Value{Num: nfprotoIPv6}}
}

func l4(p uint8) Cmp { return Cmp{Field: FL4Proto, Value: Value{Num: uint32(p)}} }

func globalSets(reserved []netip.Prefix, routers []netip.Addr) []*Set {
	if reserved == nil {
		reserved = configs.ReservedPrefixes(configs.LabPolicy{})
	}
	var r4, r6 []netip.Prefix
	for _, p := range reserved {
		if p.Addr().Is4() {
			r4 = append(r4, p)
		} else {
			r6 = append(r6, p)
		}
	}
	sets := []*Set{
		{Name: setReserved4, Fields: []Field{FIPDaddr}, Interval: true, Elems: prefixElems(r4)},
		{Name: setReserved6, Fields: []Field{FIP6Daddr}, Interval: true, Elems: prefixElems(r6)},
	}
	rt4 := &Set{Name: setRouters4, Fields: []Field{FIPDaddr}}
	rt6 := &Set{Name: setRouters6, Fields: []Field{FIP6Daddr}}
	seen := map[netip.Addr]bool{}
	for _, a := range routers {
		a = a.Unmap()
		if !a.IsValid() || seen[a] {
			continue
		}
		seen[a] = true
		if a.Is4() {
			rt4.Elems = append(rt4.Elems, Elem{Key: []Value{{Addr: a}}})
		} else {
			rt6.Elems = append(rt6.Elems, Elem{Key: []Value{{Addr: a}}})
		}
	}
	sets = append(sets, rt4, rt6)
	// Segments without payload: TCP header length (doff*4) fills the IP
	// datagram exactly (IPv4 without options, IPv6 without extension
	// headers). A SYN-only probe must match one of these.
	l4s := &Set{Name: setSynLen4, Fields: []Field{FTCPDoff, FIPLen}}
	l6s := &Set{Name: setSynLen6, Fields: []Field{FTCPDoff, FIP6Len}}
	for doff := uint32(5); doff <= 15; doff++ {
		l4s.Elems = append(l4s.Elems, Elem{Key: []Value{{Num: doff << 4}, {Num: 20 + 4*doff}}})
		l6s.Elems = append(l6s.Elems, Elem{Key: []Value{{Num: doff << 4}, {Num: 4 * doff}}})
	}
	flags := &Set{Name: setSynFlags, Fields: []Field{FTCPFlags}, Elems: []Elem{
		{Key: []Value{{Num: tcpSYN}}}, {Key: []Value{{Num: tcpRST}}}, {Key: []Value{{Num: tcpRST | tcpACK}}},
	}}
	// Neighbour discovery and MLD between an experiment and its host end.
	nd := &Set{Name: setND6, Fields: []Field{FICMPType}}
	for _, t := range []uint32{130, 131, 132, 133, 134, 135, 136, 143} {
		nd.Elems = append(nd.Elems, Elem{Key: []Value{{Num: t}}})
	}
	return append(sets, l4s, l6s, flags, nd)
}

// prefixElems turns prefixes into merged interval elements.
func prefixElems(ps []netip.Prefix) []Elem {
	var b netipx.IPSetBuilder
	for _, p := range ps {
		b.AddPrefix(p.Masked())
	}
	s, _ := b.IPSet()
	var out []Elem
	for _, r := range s.Ranges() {
		out = append(out, Elem{Key: []Value{{Addr: r.From()}}, End: []Value{{Addr: r.To()}}})
	}
	return out
}

type expCompiler struct {
	rs      *Ruleset // the experiment's own objects go here
	globals *Ruleset // the node-wide sets (routers) are read here
	in      CompileInput
	eff     *configs.Effective
	net     *Net
	fwd     *Chain
	// counters this experiment registered (their names carry its id, so
	// the check need not scan every experiment's)
	counters map[string]bool
}

func (c *expCompiler) id() string { return c.eff.ID }

func (c *expCompiler) addSet(s *Set) string {
	c.rs.Sets = append(c.rs.Sets, s)
	return s.Name
}

// drop ends a rule with counter, NFLOG and drop, and registers the counter.
func (c *expCompiler) drop(rule string, match ...Expr) Rule {
	name := CounterName(c.id(), rule)
	if !c.counters[name] {
		if c.counters == nil {
			c.counters = map[string]bool{}
		}
		c.counters[name] = true
		c.rs.Counters = append(c.rs.Counters, name)
	}
	return Rule{Name: rule, Exprs: append(match,
		Counter{name},
		Log{Group: c.in.NFLOGGroup, Prefix: alert.LogPrefix(c.id(), rule)},
		Verdict{Kind: "drop"})}
}

func (c *expCompiler) accept(mark uint32, match ...Expr) Rule {
	return Rule{Exprs: append(match, SetCtMark{mark}, Verdict{Kind: "accept"})}
}

func (c *expCompiler) compile() error {
	eff, n, id := c.eff, c.net, c.id()
	if !n.Addr4.Is4() || !n.GW4.Is4() {
		return fmt.Errorf("network of %q lacks IPv4 addresses", id)
	}
	// A node without IPv6 gives experiments no IPv6 addresses.
	has6 := n.Addr6.Is6() && n.GW6.Is6()
	if n.Slot < 0 || n.Slot >= int(MarkSlotMask) {
		return fmt.Errorf("slot %d out of range 0..%d", n.Slot, MarkSlotMask-1)
	}
	base := MarkAdmitted | MarkForSlot(n.Slot)
	fwd := &Chain{Name: "fwd_" + id}
	c.fwd = fwd
	add := func(r ...Rule) { fwd.Rules = append(fwd.Rules, r...) }
	arkOut := Cmp{Field: FOIFName, Value: Value{Str: LinkPrefix, Prefix: true}}

	// 1. Never to another experiment.
	add(c.drop(RulePeer, arkOut))

	// 2. Reserved destinations, except the node's default routers.
	rt4 := c.globals.SetByName(setRouters4)
	rt6 := c.globals.SetByName(setRouters6)
	r4 := []Expr{nfproto(4), Lookup{Fields: []Field{FIPDaddr}, Set: setReserved4}}
	if len(rt4.Elems) > 0 {
		r4 = append(r4, Lookup{Fields: []Field{FIPDaddr}, Set: setRouters4, Neq: true})
	}
	r6 := []Expr{nfproto(6), Lookup{Fields: []Field{FIP6Daddr}, Set: setReserved6}}
	if len(rt6.Elems) > 0 {
		r6 = append(r6, Lookup{Fields: []Field{FIP6Daddr}, Set: setRouters6, Neq: true})
	}
	add(c.drop(RuleReserved, r4...), c.drop(RuleReserved, r6...))

	// 2b. Tracked flows: a new flow beyond the experiment's share of the
	// node's conntrack table is dropped, so one experiment cannot fill it.
	// A flow that a later rule drops is counted only until the kernel sees
	// it never entered the table (two jiffies). The count lives in the
	// rule: it restarts when an Update rebuilds this chain.
	add(c.drop(RuleCtLimit, Cmp{Field: FCtState, Mask: ctNew, Neq: true, Value: Value{Num: 0}}, CtCountOver{c.maxFlows()}))

	// 3. Anti-spoofing: the source is the experiment's own address, or a
	// declared spoof source going to a declared destination.
	sp4 := &Set{Name: "spoof4_" + id, Fields: []Field{FIPSaddr, FIPDaddr}}
	sp6 := &Set{Name: "spoof6_" + id, Fields: []Field{FIP6Saddr, FIP6Daddr}}
	for _, s := range uniqAddrs(eff.SpoofSources) {
		for _, d := range uniqAddrs(eff.SpoofDestinations) {
			if s.Is4() && d.Is4() {
				sp4.Elems = append(sp4.Elems, Elem{Key: []Value{{Addr: s}, {Addr: d}}})
			} else if s.Is6() && d.Is6() {
				sp6.Elems = append(sp6.Elems, Elem{Key: []Value{{Addr: s}, {Addr: d}}})
			}
		}
	}
	not4 := Cmp{Field: FIPSaddr, Neq: true, Value: Value{Addr: n.Addr4}}
	not6 := Cmp{Field: FIP6Saddr, Neq: true, Value: Value{Addr: n.Addr6}}
	if len(sp4.Elems) > 0 {
		add(c.accept(base|MarkSpoofed, nfproto(4), not4, Lookup{Fields: sp4.Fields, Set: c.addSet(sp4)}))
	}
	add(c.drop(RuleSpoof, nfproto(4), not4))
	switch {
	case !has6:
		add(c.drop(RuleAllPackets, nfproto(6)))
	case len(sp6.Elems) > 0:
		add(c.accept(base|MarkSpoofed, nfproto(6), not6, Lookup{Fields: sp6.Fields, Set: c.addSet(sp6)}))
		fallthrough
	default:
		add(c.drop(RuleSpoof, nfproto(6), not6))
	}

	// 4. SYN-only flows: nothing but bare SYN (retransmits) and RST, without
	// payload, before any established accept (KERNEL-NOTES: an established
	// accept ahead of this check leaked gigabytes).
	synOnly := Cmp{Field: FCtMark, Mask: MarkSynOnly, Value: Value{Num: MarkSynOnly}}
	bare4 := []Expr{nfproto(4), l4(6), Cmp{Field: FIPVIHL, Value: Value{Num: 0x45}}, Lookup{Fields: []Field{FTCPDoff, FIPLen}, Set: setSynLen4}}
	bare6 := []Expr{nfproto(6), l4(6), Lookup{Fields: []Field{FTCPDoff, FIP6Len}, Set: setSynLen6}}
	flags := Lookup{Fields: []Field{FTCPFlags}, Set: setSynFlags}
	if len(eff.SynOnlyPorts) > 0 {
		add(Rule{Exprs: append(append([]Expr{synOnly}, bare4...), flags, Verdict{Kind: "accept"})})
		add(Rule{Exprs: append(append([]Expr{synOnly}, bare6...), flags, Verdict{Kind: "accept"})})
	}
	// Always: a flow admitted as SYN-only under an older policy is never
	// let through by a later one.
	add(c.drop(RuleSynOnly, synOnly))

	// 5. Established flows this experiment's policy admitted.
	add(Rule{Exprs: []Expr{
		Cmp{Field: FCtState, Mask: ctEstablished | ctRelated, Neq: true, Value: Value{Num: 0}},
		Cmp{Field: FCtMark, Mask: MarkAdmitted | MarkSlotMask, Value: Value{Num: base}},
		Verdict{Kind: "accept"},
	}})

	// 6. Address families and the all-packets bound.
	if !eff.IPv4 {
		add(c.drop(RuleAllPackets, nfproto(4)))
	}
	if !eff.IPv6 {
		add(c.drop(RuleAllPackets, nfproto(6)))
	}
	if len(eff.AllPackets) > 0 {
		var a4, a6 []netip.Prefix
		for _, p := range eff.AllPackets {
			if p.Addr().Is4() {
				a4 = append(a4, p)
			} else {
				a6 = append(a6, p)
			}
		}
		if len(a4) > 0 {
			s := &Set{Name: "all4_" + id, Fields: []Field{FIPDaddr}, Interval: true, Elems: prefixElems(a4)}
			add(c.drop(RuleAllPackets, nfproto(4), Lookup{Fields: s.Fields, Set: c.addSet(s), Neq: true}))
		} else {
			add(c.drop(RuleAllPackets, nfproto(4)))
		}
		if len(a6) > 0 {
			s := &Set{Name: "all6_" + id, Fields: []Field{FIP6Daddr}, Interval: true, Elems: prefixElems(a6)}
			add(c.drop(RuleAllPackets, nfproto(6), Lookup{Fields: s.Fields, Set: c.addSet(s), Neq: true}))
		} else {
			add(c.drop(RuleAllPackets, nfproto(6)))
		}
	}

	// 7. TCP: new flows only from a SYN.
	syn := Cmp{Field: FTCPFlags, Value: Value{Num: tcpSYN}}
	tcp := append([]configs.Dest(nil), eff.TCP...)
	if bc := eff.BackChannel; bc.IsValid() && bc.Port() != 0 {
		a := bc.Addr().Unmap()
		tcp = append(tcp, configs.Dest{Prefix: netip.PrefixFrom(a, a.BitLen()), Ports: []configs.PortRange{{Lo: bc.Port(), Hi: bc.Port()}}})
	}
	if err := c.destRules("tcp", 6, tcp, base, syn); err != nil {
		return err
	}
	if !eff.DNSRestricted() {
		add(c.accept(base, l4(6), syn, Cmp{Field: FTHDport, Value: Value{Num: 53}}))
	}
	if len(eff.SynOnlyPorts) > 0 {
		ps := &Set{Name: "synports_" + id, Fields: []Field{FTHDport}, Interval: true}
		for _, r := range mergePorts(eff.SynOnlyPorts) {
			ps.Elems = append(ps.Elems, Elem{Key: []Value{{Num: uint32(r.Lo)}}, End: []Value{{Num: uint32(r.Hi)}}})
		}
		c.addSet(ps)
		port := Lookup{Fields: []Field{FTHDport}, Set: ps.Name}
		add(c.accept(base|MarkSynOnly, append(append([]Expr{}, bare4...), syn, port)...))
		add(c.accept(base|MarkSynOnly, append(append([]Expr{}, bare6...), syn, port)...))
	}
	add(c.drop(RuleTCPDst, l4(6)))

	// 8. UDP.
	if err := c.destRules("udp", 17, eff.UDP, base); err != nil {
		return err
	}
	if !eff.DNSRestricted() {
		add(c.accept(base, l4(17), Cmp{Field: FTHDport, Value: Value{Num: 53}}))
	}
	add(c.drop(RuleUDPDst, l4(17)))

	// 9. ICMP and ICMPv6 types.
	if eff.ICMPAny {
		add(c.accept(base, l4(1)), c.accept(base, l4(58)))
	} else {
		i4 := &Set{Name: "icmp4_" + id, Fields: []Field{FICMPType}}
		i6 := &Set{Name: "icmp6_" + id, Fields: []Field{FICMPType}}
		seen := map[configs.ICMPType]bool{}
		for _, t := range eff.ICMP {
			if seen[t] {
				continue
			}
			seen[t] = true
			e := Elem{Key: []Value{{Num: uint32(t.Type)}}}
			if t.V6 {
				i6.Elems = append(i6.Elems, e)
			} else {
				i4.Elems = append(i4.Elems, e)
			}
		}
		if len(i4.Elems) > 0 {
			add(c.accept(base, l4(1), Lookup{Fields: i4.Fields, Set: c.addSet(i4)}))
		}
		if len(i6.Elems) > 0 {
			add(c.accept(base, l4(58), Lookup{Fields: i6.Fields, Set: c.addSet(i6)}))
		}
	}
	add(c.drop(RuleICMP, l4(1)), c.drop(RuleICMP, l4(58)))

	// 10. Other IP protocols by number; everything else is dropped.
	pr := &Set{Name: "proto_" + id, Fields: []Field{FL4Proto}}
	seenP := map[uint8]bool{}
	for _, p := range eff.Protocols {
		if seenP[p] || p == 1 || p == 6 || p == 17 || p == 58 {
			continue
		}
		seenP[p] = true
		pr.Elems = append(pr.Elems, Elem{Key: []Value{{Num: uint32(p)}}})
	}
	if len(pr.Elems) > 0 {
		add(c.accept(base, Lookup{Fields: pr.Fields, Set: c.addSet(pr)}))
	}
	add(c.drop(RuleProto))

	// Return traffic: only flows this experiment's policy admitted.
	ret := &Chain{Name: "ret_" + id, Rules: []Rule{
		{Exprs: []Expr{
			Cmp{Field: FCtState, Mask: ctEstablished | ctRelated, Neq: true, Value: Value{Num: 0}},
			Cmp{Field: FCtMark, Mask: MarkAdmitted | MarkSlotMask, Value: Value{Num: base}},
			Verdict{Kind: "accept"},
		}},
		{Exprs: []Expr{Counter{InboundCounterName(id)}, Verdict{Kind: "drop"}}},
	}}
	c.rs.Counters = append(c.rs.Counters, InboundCounterName(id))

	// The node itself: only the DNS proxy on the gateway address, neighbour
	// discovery, and ICMP errors about the proxy's own replies.
	in := &Chain{Name: "in_" + id}
	dns := Cmp{Field: FTHDport, Value: Value{Num: 53}}
	gw4 := Cmp{Field: FIPDaddr, Value: Value{Addr: n.GW4}}
	gw6 := Cmp{Field: FIP6Daddr, Value: Value{Addr: n.GW6}}
	related := Cmp{Field: FCtState, Mask: ctRelated, Neq: true, Value: Value{Num: 0}}
	in.Rules = []Rule{
		{Exprs: []Expr{nfproto(4), gw4, l4(17), dns, Verdict{Kind: "accept"}}},
		{Exprs: []Expr{nfproto(4), gw4, l4(6), dns, Verdict{Kind: "accept"}}},
	}
	if has6 {
		in.Rules = append(in.Rules,
			Rule{Exprs: []Expr{nfproto(6), gw6, l4(17), dns, Verdict{Kind: "accept"}}},
			Rule{Exprs: []Expr{nfproto(6), gw6, l4(6), dns, Verdict{Kind: "accept"}}})
	}
	in.Rules = append(in.Rules, []Rule{
		{Exprs: []Expr{l4(58), Lookup{Fields: []Field{FICMPType}, Set: setND6}, Verdict{Kind: "accept"}}},
		{Exprs: []Expr{l4(1), related, Verdict{Kind: "accept"}}},
		{Exprs: []Expr{l4(58), related, Verdict{Kind: "accept"}}},
		c.drop(RuleNode),
	}...)
	c.rs.Chains = append(c.rs.Chains, fwd, ret, in)

	// Restricted DNS: port 53 to any resolver goes to the proxy instead.
	if eff.DNSRestricted() {
		dc := &Chain{Name: "dns_" + id, Rules: []Rule{
			{Exprs: []Expr{nfproto(4), l4(17), dns, DNAT{Addr: n.GW4}}},
			{Exprs: []Expr{nfproto(4), l4(6), dns, DNAT{Addr: n.GW4}}},
		}}
		if has6 {
			dc.Rules = append(dc.Rules,
				Rule{Exprs: []Expr{nfproto(6), l4(17), dns, DNAT{Addr: n.GW6}}},
				Rule{Exprs: []Expr{nfproto(6), l4(6), dns, DNAT{Addr: n.GW6}}})
		}
		c.rs.Chains = append(c.rs.Chains, dc)
	}
	return nil
}

// destRules adds the allowlist sets ("tcp4_<id>" ...) and accept rules for
// one transport protocol.
func (c *expCompiler) destRules(name string, proto uint8, dests []configs.Dest, mark uint32, extra ...Expr) error {
	id := c.id()
	d4, d6, err := boxes(dests)
	if err != nil {
		return fmt.Errorf("%s destinations: %w", name, err)
	}
	for _, fam := range []struct {
		v     int
		elems []Elem
		addr  Field
	}{{4, d4, FIPDaddr}, {6, d6, FIP6Daddr}} {
		if len(fam.elems) == 0 {
			continue
		}
		s := &Set{Name: fmt.Sprintf("%s%d_%s", name, fam.v, id), Fields: []Field{fam.addr, FTHDport}, Interval: true, Elems: fam.elems}
		c.addSet(s)
		m := append([]Expr{l4(proto)}, extra...)
		m = append(m, nfproto(fam.v), Lookup{Fields: s.Fields, Set: s.Name})
		c.fwd.Rules = append(c.fwd.Rules, c.accept(mark, m...))
	}
	return nil
}

// boxes turns destinations into address-range x port-range elements that
// do not overlap (the kernel rejects overlapping elements of a
// concatenated interval set). configs.MergeDests already returns disjoint
// destinations; boxes checks that cheaply and merges only when needed.
func boxes(dests []configs.Dest) (v4, v6 []Elem, err error) {
	clean := make([]configs.Dest, 0, len(dests))
	for _, d := range dests {
		if !d.Prefix.IsValid() {
			return nil, nil, fmt.Errorf("invalid prefix in destination list")
		}
		p := netip.PrefixFrom(d.Prefix.Addr().Unmap(), d.Prefix.Bits())
		if d.Prefix.Addr().Is4In6() {
			p = netip.PrefixFrom(d.Prefix.Addr().Unmap(), d.Prefix.Bits()-96)
		}
		ports := mergePorts(d.Ports)
		if len(ports) == 0 {
			continue
		}
		clean = append(clean, configs.Dest{Prefix: p.Masked(), Ports: ports})
	}
	if overlapping(clean) {
		clean = configs.MergeDests(clean, nil)
	}
	for _, d := range clean {
		from, to := d.Prefix.Addr(), netipx.PrefixLastIP(d.Prefix)
		for _, r := range d.Ports {
			e := Elem{
				Key: []Value{{Addr: from}, {Num: uint32(r.Lo)}},
				End: []Value{{Addr: to}, {Num: uint32(r.Hi)}},
			}
			if from.Is4() {
				v4 = append(v4, e)
			} else {
				v6 = append(v6, e)
			}
		}
	}
	return v4, v6, nil
}

// overlapping reports whether two destinations share an (address, port)
// pair. CIDR prefixes either nest or are disjoint, so after sorting by
// address (shorter first) a stack of enclosing prefixes finds every overlap.
func overlapping(ds []configs.Dest) bool {
	s := slices.Clone(ds)
	slices.SortFunc(s, func(a, b configs.Dest) int {
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits())
	})
	var stack []configs.Dest
	for _, d := range s {
		for len(stack) > 0 && !stack[len(stack)-1].Prefix.Contains(d.Prefix.Addr()) {
			stack = stack[:len(stack)-1]
		}
		for _, anc := range stack {
			if anc.Prefix.Addr().BitLen() == d.Prefix.Addr().BitLen() && portsOverlap(anc.Ports, d.Ports) {
				return true
			}
		}
		stack = append(stack, d)
	}
	return false
}

func portsOverlap(a, b []configs.PortRange) bool {
	for _, x := range a {
		for _, y := range b {
			if x.Lo <= y.Hi && y.Lo <= x.Hi {
				return true
			}
		}
	}
	return false
}

// mergePorts sorts and merges port ranges (adjacent ranges join); port 0
// and inverted ranges are dropped.
func mergePorts(in []configs.PortRange) []configs.PortRange {
	rs := make([]configs.PortRange, 0, len(in))
	for _, r := range in {
		if r.Lo == 0 {
			r.Lo = 1
		}
		if r.Hi >= r.Lo {
			rs = append(rs, r)
		}
	}
	slices.SortFunc(rs, func(a, b configs.PortRange) int { return cmp.Compare(a.Lo, b.Lo) })
	var out []configs.PortRange
	for _, r := range rs {
		if n := len(out); n > 0 && uint32(r.Lo) <= uint32(out[n-1].Hi)+1 {
			if r.Hi > out[n-1].Hi {
				out[n-1].Hi = r.Hi
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

func uniqAddrs(in []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range in {
		a = a.Unmap()
		if a.IsValid() && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}
