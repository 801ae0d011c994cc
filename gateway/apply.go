package gateway

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/arkgw/arkgw/nsdo"
)

// The applier: turns a Ruleset into google/nftables objects and sends them
// as one batch. It holds no policy logic.

// nftConn opens an nftables connection to the netns:
// one socket per operation, made by a thread that enters the netns.
func nftConn(ns nsdo.NS) (*nftables.Conn, error) {
	return newNFTConn(ns)
}

// nftLasting is a connection that keeps one socket for all operations
// (close it with CloseLasting): making a socket inside a netns costs
// more than the transaction of an experiment's start.
func nftLasting(ns nsdo.NS) (*nftables.Conn, error) {
	return newNFTConn(ns, nftables.AsLasting())
}

func newNFTConn(ns nsdo.NS, extra ...nftables.ConnOption) (*nftables.Conn, error) {
	opts := append([]nftables.ConnOption{nftables.WithSockOptions(bigBuffers)}, extra...)
	return nftables.New(append(opts, ns.NFTOptions()...)...)
}

// bigBuffers lets one batch carry a whole table: the kernel refuses a
// netlink message larger than the socket's send buffer (EMSGSIZE), and a
// 10,000-element allowlist is about a megabyte. The FORCE options need
// CAP_NET_ADMIN, which the gateway has; without it the defaults stay.
func bigBuffers(c *netlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	rc.Control(func(fd uintptr) {
		unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 32<<20)
		unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	})
	return nil
}

// applyRuleset replaces table rs.Table atomically: add table, delete table
// (whatever it held), add table, then every object; one Flush. The other
// tables (inet arkgw_acct) are untouched.
func applyRuleset(ns nsdo.NS, rs *Ruleset) error {
	c, err := nftConn(ns)
	if err != nil {
		return fmt.Errorf("nftables connection: %w", err)
	}
	return applyRulesetWith(c, ns, rs)
}

// applyRulesetWith is applyRuleset on connection c (made in ns).
func applyRulesetWith(c *nftables.Conn, ns nsdo.NS, rs *Ruleset) error {
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: rs.Table}
	c.AddTable(t)
	c.DelTable(t)
	if err := build(c, t, rs, nil); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		ferr := fmt.Errorf("load table inet %s: %w", rs.Table, err)
		if d := diagnose(ns, rs); d != nil {
			ferr = fmt.Errorf("load table inet %s: %w (the kernel may lack a feature it needs: check its nftables modules; whole batch: %v)", rs.Table, d, err)
		}
		return ferr
	}
	return nil
}

// deleteTable removes table name if it exists.
func deleteTable(ns nsdo.NS, name string) error {
	c, err := nftConn(ns)
	if err != nil {
		return fmt.Errorf("nftables connection: %w", err)
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: name}
	c.AddTable(t) // create-if-missing makes the delete idempotent
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("delete table inet %s: %w", name, err)
	}
	return nil
}

// diagnose loads rs into a scratch table one object at a time to name the
// object the kernel refuses; the scratch table is removed again.
func diagnose(ns nsdo.NS, rs *Ruleset) error {
	c, err := nftConn(ns)
	if err != nil {
		return nil
	}
	name := rs.Table + "_probe"
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: name}
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	if c.Flush() != nil {
		return nil
	}
	defer deleteTable(ns, name)
	return build(c, t, rs, c.Flush)
}

// build queues every object of rs in table t. With step non-nil it is
// called after each object (diagnosis) and its error names the object.
func build(c *nftables.Conn, t *nftables.Table, rs *Ruleset, step func() error) error {
	stepErr := func(what string) error {
		if step == nil {
			return nil
		}
		if err := step(); err != nil {
			return fmt.Errorf("kernel refused %s: %w", what, err)
		}
		return nil
	}
	c.AddTable(t)
	for _, name := range rs.Counters {
		addCounter(c, t, name)
		if err := stepErr("counter " + name); err != nil {
			return err
		}
	}
	sets := map[string]*nftables.Set{}
	// Chains first: verdict map elements refer to them.
	chains := map[string]*nftables.Chain{}
	for _, ch := range rs.Chains {
		chains[ch.Name] = addChain(c, t, ch)
		if err := stepErr("chain " + ch.Name); err != nil {
			return err
		}
	}
	for _, s := range rs.Sets {
		ns, err := addSet(c, t, s)
		if err != nil {
			return err
		}
		sets[s.Name] = ns
		if err := stepErr("set " + s.Name); err != nil {
			return err
		}
	}
	for _, ch := range rs.Chains {
		if err := addRules(c, t, chains[ch.Name], ch, sets, stepErr); err != nil {
			return err
		}
	}
	return nil
}

func addCounter(c *nftables.Conn, t *nftables.Table, name string) {
	c.AddObj(&nftables.NamedObj{Table: t, Name: name, Type: nftables.ObjTypeCounter, Obj: &expr.Counter{}})
}

func addChain(c *nftables.Conn, t *nftables.Table, ch *Chain) *nftables.Chain {
	nc := &nftables.Chain{Table: t, Name: ch.Name}
	if ch.Hook != "" {
		nc.Type = nftables.ChainType(ch.Type)
		nc.Hooknum = hookOf(ch.Hook)
		nc.Priority = nftables.ChainPriorityRef(nftables.ChainPriority(ch.Priority))
		pol := nftables.ChainPolicyAccept
		nc.Policy = &pol
	}
	return c.AddChain(nc)
}

// addSet queues the set and its elements.
func addSet(c *nftables.Conn, t *nftables.Table, s *Set) (*nftables.Set, error) {
	ns, elems, err := nftSet(t, s)
	if err != nil {
		return nil, err
	}
	if err := c.AddSet(ns, nil); err != nil {
		return nil, fmt.Errorf("set %s: %w", s.Name, err)
	}
	return ns, addElems(c, ns, elems)
}

// addElems queues elements in chunks: one netlink message per chunk, all
// in the same batch.
func addElems(c *nftables.Conn, ns *nftables.Set, elems []nftables.SetElement) error {
	const chunk = 1024
	for i := 0; i < len(elems); i += chunk {
		j := min(i+chunk, len(elems))
		if err := c.SetAddElements(ns, elems[i:j]); err != nil {
			return fmt.Errorf("set %s: %w", ns.Name, err)
		}
	}
	return nil
}

// addRules queues ch's rules in chain nc; sets resolves the names rules
// look up. stepErr (may be nil) is called after each rule.
func addRules(c *nftables.Conn, t *nftables.Table, nc *nftables.Chain, ch *Chain, sets map[string]*nftables.Set, stepErr func(string) error) error {
	for i, r := range ch.Rules {
		exprs, err := ruleExprs(r, sets)
		if err != nil {
			return fmt.Errorf("chain %s rule %d (%s): %w", ch.Name, i, r.Render(), err)
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: nc, Exprs: exprs})
		if stepErr == nil {
			continue
		}
		what := fmt.Sprintf("chain %s rule %d %q", ch.Name, i, r.Render())
		if r.Name != "" {
			what = fmt.Sprintf("rule %s in chain %s (%q)", r.Name, ch.Name, r.Render())
		}
		if err := stepErr(what); err != nil {
			return err
		}
	}
	return nil
}

// applyPlan changes table next.Table in place as p says (Diff of the
// applied ruleset and next), in one batch: all of it or, if the kernel
// refuses any part, none.
func applyPlan(ns nsdo.NS, p *Plan, next *Ruleset) error {
	if p.Empty() {
		return nil
	}
	c, err := nftConn(ns)
	if err != nil {
		return fmt.Errorf("nftables connection: %w", err)
	}
	return applyPlanWith(c, p, next)
}

// applyPlanWith is applyPlan on connection c.
func applyPlanWith(c *nftables.Conn, p *Plan, next *Ruleset) error {
	if p.Empty() {
		return nil
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: next.Table}
	chainRef := func(name string) *nftables.Chain { return &nftables.Chain{Table: t, Name: name} }
	encode := func(s *Set) (*nftables.Set, []nftables.SetElement, error) {
		if s.Interval {
			return nil, nil, fmt.Errorf("set %s: interval elements are not patched", s.Name)
		}
		return nftSet(t, s)
	}
	for _, s := range p.DelElems {
		set, elems, err := encode(s)
		if err != nil {
			return err
		}
		for i := range elems {
			elems[i].VerdictData = nil // a delete names keys only
		}
		if err := c.SetDeleteElements(set, elems); err != nil {
			return fmt.Errorf("set %s: %w", s.Name, err)
		}
	}
	for _, name := range p.FlushChains {
		c.FlushChain(chainRef(name))
	}
	for _, name := range p.DelSets {
		c.DelSet(&nftables.Set{Table: t, Name: name})
	}
	for _, name := range p.DelChains {
		c.DelChain(chainRef(name))
	}
	for _, name := range p.DelCounters {
		c.DeleteObject(&nftables.NamedObj{Table: t, Name: name, Type: nftables.ObjTypeCounter})
	}
	for _, name := range p.AddCounters {
		addCounter(c, t, name)
	}
	chains := map[string]*nftables.Chain{}
	for _, ch := range p.AddChains {
		chains[ch.Name] = addChain(c, t, ch)
	}
	// Rules look sets up by name; the new ones also by their batch id.
	sets := map[string]*nftables.Set{}
	for _, s := range next.Sets {
		sets[s.Name] = &nftables.Set{Table: t, Name: s.Name}
	}
	for _, s := range p.AddSets {
		set, err := addSet(c, t, s)
		if err != nil {
			return err
		}
		sets[s.Name] = set
	}
	for _, ch := range p.RuleChains {
		nc := chains[ch.Name]
		if nc == nil {
			nc = chainRef(ch.Name)
		}
		if err := addRules(c, t, nc, ch, sets, nil); err != nil {
			return err
		}
	}
	for _, s := range p.AddElems {
		set, elems, err := encode(s)
		if err != nil {
			return err
		}
		if err := addElems(c, set, elems); err != nil {
			return err
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("change table inet %s: %w", next.Table, err)
	}
	return nil
}

func hookOf(h string) *nftables.ChainHook {
	switch h {
	case "prerouting":
		return nftables.ChainHookPrerouting
	case "input":
		return nftables.ChainHookInput
	case "forward":
		return nftables.ChainHookForward
	case "postrouting":
		return nftables.ChainHookPostrouting
	}
	return nftables.ChainHookOutput
}

func setType(f Field) nftables.SetDatatype {
	switch f {
	case FIIFName, FOIFName:
		return nftables.TypeIFName
	case FIPSaddr, FIPDaddr:
		return nftables.TypeIPAddr
	case FIP6Saddr, FIP6Daddr:
		return nftables.TypeIP6Addr
	case FTHDport:
		return nftables.TypeInetService
	case FICMPType:
		return nftables.TypeICMPType
	case FL4Proto:
		return nftables.TypeInetProto
	case FTCPFlags:
		return nftables.TypeTCPFlag
	case FTCPDoff, FIPVIHL:
		// nft cannot list concatenations of plain integers; a 1-byte
		// type without names for these values keeps the listing readable.
		return nftables.TypeICMPType
	case FIPLen, FIP6Len:
		return nftables.TypeInetService
	case FCtMark, FCtFlow:
		return nftables.TypeMark
	}
	t := nftables.TypeInteger
	t.Bytes = uint32(fieldType(f).bytes)
	return t
}

func nftSet(t *nftables.Table, s *Set) (*nftables.Set, []nftables.SetElement, error) {
	ns := &nftables.Set{Table: t, Name: s.Name, Interval: s.Interval}
	if len(s.Fields) == 1 {
		ns.KeyType = setType(s.Fields[0])
	} else {
		types := make([]nftables.SetDatatype, len(s.Fields))
		for i, f := range s.Fields {
			types[i] = setType(f)
		}
		kt, err := nftables.ConcatSetType(types...)
		if err != nil {
			return nil, nil, fmt.Errorf("set %s: %w", s.Name, err)
		}
		ns.KeyType = kt
		ns.Concatenation = s.Interval // pipapo needs the field lengths
	}
	if s.VerdictMap {
		ns.IsMap = true
		ns.DataType = nftables.TypeVerdict
	}
	var elems []nftables.SetElement
	switch {
	case s.Interval && len(s.Fields) > 1:
		for _, e := range s.Elems {
			elems = append(elems, nftables.SetElement{Key: keyBytes(s.Fields, e.Key), KeyEnd: keyBytes(s.Fields, e.End)})
		}
	case s.Interval:
		// rbtree: [start, end] is "start" plus an interval-end element at
		// end+1 (none when end is the largest value), and a leading
		// interval-end element at zero, as nft sends. Elements are merged
		// and sorted by the compiler.
		w := fieldType(s.Fields[0]).bytes
		zero := make([]byte, w)
		for i, e := range s.Elems {
			start := keyBytes(s.Fields, e.Key)[:w]
			if i == 0 && !isZero(start) {
				elems = append(elems, nftables.SetElement{Key: zero, IntervalEnd: true})
			}
			elems = append(elems, nftables.SetElement{Key: start})
			end := keyBytes(s.Fields, e.End)[:w]
			if next, ok := increment(end); ok {
				elems = append(elems, nftables.SetElement{Key: next, IntervalEnd: true})
			}
		}
	default:
		for _, e := range s.Elems {
			el := nftables.SetElement{Key: keyBytes(s.Fields, e.Key)}
			if s.VerdictMap {
				el.VerdictData = verdictOf(e.Verdict)
			}
			elems = append(elems, el)
		}
	}
	return ns, elems, nil
}

func isZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// increment returns b+1 (big endian), ok=false on overflow.
func increment(b []byte) ([]byte, bool) {
	out := append([]byte(nil), b...)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]++
		if out[i] != 0 {
			return out, true
		}
	}
	return nil, false
}

// keyBytes encodes a (possibly concatenated) key: each field padded to a
// multiple of 4 bytes when concatenated.
func keyBytes(fields []Field, vals []Value) []byte {
	var out []byte
	for i, f := range fields {
		b := valueBytes(f, vals[i])
		if len(fields) > 1 {
			for len(b)%4 != 0 {
				b = append(b, 0)
			}
		}
		out = append(out, b...)
	}
	return out
}

// valueBytes is the register content of a field value.
func valueBytes(f Field, v Value) []byte {
	switch f {
	case FIPSaddr, FIPDaddr:
		a := v.Addr.As4()
		return a[:]
	case FIP6Saddr, FIP6Daddr:
		a := v.Addr.As16()
		return a[:]
	case FIIFName, FOIFName:
		if v.Prefix {
			return []byte(v.Str)
		}
		b := make([]byte, 16)
		copy(b, v.Str)
		return b
	case FCtState, FCtMark, FCtFlow:
		return binaryutil.NativeEndian.PutUint32(v.Num)
	case FIPLen, FIP6Len, FTHDport:
		return binary.BigEndian.AppendUint16(nil, uint16(v.Num))
	}
	return []byte{byte(v.Num)}
}

func verdictOf(v Verdict) *expr.Verdict {
	switch v.Kind {
	case "accept":
		return &expr.Verdict{Kind: expr.VerdictAccept}
	case "drop":
		return &expr.Verdict{Kind: expr.VerdictDrop}
	case "jump":
		return &expr.Verdict{Kind: expr.VerdictJump, Chain: v.Chain}
	case "return":
		return &expr.Verdict{Kind: expr.VerdictReturn}
	}
	return &expr.Verdict{Kind: expr.VerdictDrop}
}

// load puts field f into register reg (with the field's implicit mask).
func load(f Field, reg uint32) []expr.Any {
	pl := func(base expr.PayloadBase, off, n uint32) []expr.Any {
		return []expr.Any{&expr.Payload{DestRegister: reg, Base: base, Offset: off, Len: n}}
	}
	nh, th := expr.PayloadBaseNetworkHeader, expr.PayloadBaseTransportHeader
	var out []expr.Any
	switch f {
	case FIIFName:
		return []expr.Any{&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg}}
	case FOIFName:
		return []expr.Any{&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: reg}}
	case FNFProto:
		return []expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg}}
	case FL4Proto:
		return []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg}}
	case FIPSaddr:
		return pl(nh, 12, 4)
	case FIPDaddr:
		return pl(nh, 16, 4)
	case FIP6Saddr:
		return pl(nh, 8, 16)
	case FIP6Daddr:
		return pl(nh, 24, 16)
	case FIPVIHL:
		return pl(nh, 0, 1)
	case FIPLen:
		return pl(nh, 2, 2)
	case FIP6Len:
		return pl(nh, 4, 2)
	case FTHDport:
		return pl(th, 2, 2)
	case FICMPType:
		return pl(th, 0, 1)
	case FTCPFlags:
		out = pl(th, 13, 1)
		return append(out, &expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 1, Mask: []byte{tcpFlagMask}, Xor: []byte{0}})
	case FTCPDoff:
		out = pl(th, 12, 1)
		return append(out, &expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 1, Mask: []byte{0xf0}, Xor: []byte{0}})
	case FCtState:
		return []expr.Any{&expr.Ct{Key: expr.CtKeySTATE, Register: reg}}
	case FCtMark:
		return []expr.Any{&expr.Ct{Key: expr.CtKeyMARK, Register: reg}}
	case FCtFlow:
		return []expr.Any{&expr.Ct{Key: expr.CtKeyMARK, Register: reg},
			&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(markFlowMask), Xor: make([]byte, 4)}}
	}
	return nil
}

func ruleExprs(r Rule, sets map[string]*nftables.Set) ([]expr.Any, error) {
	var out []expr.Any
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case Cmp:
			ld := load(e.Field, 1)
			if ld == nil {
				return nil, fmt.Errorf("unknown field %d", e.Field)
			}
			out = append(out, ld...)
			val := valueBytes(e.Field, e.Value)
			if e.Mask != 0 {
				mask := valueBytes(e.Field, Value{Num: e.Mask})
				out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(len(mask)), Mask: mask, Xor: make([]byte, len(mask))})
			}
			op := expr.CmpOpEq
			if e.Neq {
				op = expr.CmpOpNeq
			}
			out = append(out, &expr.Cmp{Op: op, Register: 1, Data: val})
		case Lookup:
			s := sets[e.Set]
			if s == nil {
				return nil, fmt.Errorf("unknown set %s", e.Set)
			}
			// Concatenations: field i goes to the 32-bit register after
			// the previous fields (NFT_REG32_00 = 8 aliases NFT_REG_1).
			off := uint32(0)
			for _, f := range e.Fields {
				reg := uint32(8) + off
				if off == 0 {
					reg = 1
				}
				out = append(out, load(f, reg)...)
				off += uint32((fieldType(f).bytes + 3) / 4)
			}
			out = append(out, &expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID, Invert: e.Neq})
		case Vmap:
			s := sets[e.Map]
			if s == nil {
				return nil, fmt.Errorf("unknown map %s", e.Map)
			}
			out = append(out, load(e.Field, 1)...)
			out = append(out, &expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: s.Name, SetID: s.ID})
		case Counter:
			out = append(out, &expr.Objref{Type: int(nftables.ObjTypeCounter), Name: e.Name})
		case Log:
			out = append(out, &expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX, Group: e.Group, Data: []byte(e.Prefix)})
		case SetCtMark:
			out = append(out,
				&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(e.Value)},
				&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true})
		case DNAT:
			fam := uint32(unix.NFPROTO_IPV4)
			data := e.Addr.AsSlice()
			if e.Addr.Is6() {
				fam = unix.NFPROTO_IPV6
			}
			out = append(out,
				&expr.Immediate{Register: 1, Data: data},
				&expr.NAT{Type: expr.NATTypeDestNAT, Family: fam, RegAddrMin: 1})
		case Masquerade:
			out = append(out, &expr.Masq{})
		case CtCountOver:
			out = append(out, &expr.Connlimit{Count: e.Count, Flags: expr.NFT_CONNLIMIT_F_INV})
		case Verdict:
			out = append(out, verdictOf(e))
		default:
			return nil, errors.New("unknown expression")
		}
	}
	return out, nil
}

// readCounter returns the packets and bytes of a named counter in table.
func readCounter(ns nsdo.NS, table, name string) (packets, bytes uint64, err error) {
	c, err := nftConn(ns)
	if err != nil {
		return 0, 0, err
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: table}
	o, err := c.GetObject(&nftables.NamedObj{Table: t, Name: name, Type: nftables.ObjTypeCounter})
	if err != nil {
		return 0, 0, fmt.Errorf("read counter %s: %w", name, err)
	}
	no, ok := o.(*nftables.NamedObj)
	if !ok {
		return 0, 0, fmt.Errorf("read counter %s: unexpected object %T", name, o)
	}
	ct, ok := no.Obj.(*expr.Counter)
	if !ok {
		return 0, 0, fmt.Errorf("read counter %s: unexpected object %T", name, no.Obj)
	}
	return ct.Packets, ct.Bytes, nil
}
