package gateway

import (
	"slices"
	"sort"
)

// Changing the table in place. Replacing the whole table costs time in
// proportion to everything in it (with 100 experiments about 200 ms per
// start or stop) and resets every counter in it; an experiment's start,
// stop or policy change touches only its own chains, sets and counters and
// a few elements of the shared verdict maps and sets. Diff decides what to
// send, as a plain value; applyPlan sends it as one atomic batch.

// Plan is the change from one Ruleset to the next, grouped in the order the
// kernel needs within the batch: what refers to an object goes before the
// object on the way out, and after it on the way in.
type Plan struct {
	DelElems    []*Set   // 1. elements leaving sets that stay (the set's type, those elements)
	FlushChains []string // 2. chains rewritten or removed: their rules go
	DelSets     []string // 3. sets removed or recreated (no rule refers to them any more)
	DelChains   []string // 4. chains removed (no rule or map element jumps to them any more)
	DelCounters []string // 5. counters removed
	AddCounters []string // 6. counters new
	AddChains   []*Chain // 7. chains new (rules come in 9)
	AddSets     []*Set   // 8. sets new or recreated, with their elements
	RuleChains  []*Chain // 9. chains whose rules are (re)added: new and rewritten
	AddElems    []*Set   // 10. elements joining sets that stay
}

// Empty reports whether the plan changes nothing.
func (p *Plan) Empty() bool {
	return len(p.DelElems) == 0 && len(p.FlushChains) == 0 && len(p.DelSets) == 0 && len(p.DelChains) == 0 &&
		len(p.DelCounters) == 0 && len(p.AddCounters) == 0 && len(p.AddChains) == 0 && len(p.AddSets) == 0 &&
		len(p.RuleChains) == 0 && len(p.AddElems) == 0
}

// Diff returns the plan that turns table old into next. ok is false when
// only a replacement of the whole table will do: no old table, another
// table name, or a base chain whose hook, type or priority changed.
func Diff(old, next *Ruleset) (p *Plan, ok bool) {
	if old == nil || next == nil || old.Table != next.Table {
		return nil, false
	}
	p = &Plan{}

	oldCounters, nextCounters := nameSet(old.Counters), nameSet(next.Counters)
	for _, c := range sorted(old.Counters) {
		if !nextCounters[c] {
			p.DelCounters = append(p.DelCounters, c)
		}
	}
	for _, c := range sorted(next.Counters) {
		if !oldCounters[c] {
			p.AddCounters = append(p.AddCounters, c)
		}
	}

	// Sets: new, removed, kept with an element diff (hash sets and maps),
	// or recreated (type or flags changed, or an interval set's ranges
	// changed: ranges are sent as start/end pairs the kernel matches
	// exactly, so they are not patched).
	oldSets := map[string]*Set{}
	for _, s := range old.Sets {
		oldSets[s.Name] = s
	}
	nextSets := map[string]*Set{}
	for _, s := range next.Sets {
		nextSets[s.Name] = s
	}
	gone := map[string]bool{} // sets deleted (removed or recreated)
	for _, s := range sortedSets(old.Sets) {
		if nextSets[s.Name] == nil {
			p.DelSets = append(p.DelSets, s.Name)
			gone[s.Name] = true
		}
	}
	for _, s := range sortedSets(next.Sets) {
		o := oldSets[s.Name]
		switch {
		case o == s: // reused by the compile cache: unchanged
		case o == nil:
			p.AddSets = append(p.AddSets, s)
		case !sameSetType(o, s) || (s.Interval && !sameElems(o, s)):
			p.DelSets = append(p.DelSets, s.Name)
			p.AddSets = append(p.AddSets, s)
			gone[s.Name] = true
		default:
			del, add := elemDiff(o, s)
			if len(del) > 0 {
				p.DelElems = append(p.DelElems, s.withElems(del))
			}
			if len(add) > 0 {
				p.AddElems = append(p.AddElems, s.withElems(add))
			}
		}
	}

	// Chains: new, removed, rewritten (rules changed, or a rule refers to
	// a set or counter that is deleted), or kept as they are.
	oldChains := map[string]*Chain{}
	for _, c := range old.Chains {
		oldChains[c.Name] = c
	}
	nextChains := map[string]bool{}
	for _, c := range next.Chains {
		nextChains[c.Name] = true
	}
	delCounter := nameSet(p.DelCounters)
	for _, c := range sortedChains(old.Chains) {
		if !nextChains[c.Name] {
			if c.Hook != "" {
				return nil, false
			}
			p.FlushChains = append(p.FlushChains, c.Name)
			p.DelChains = append(p.DelChains, c.Name)
		}
	}
	for _, c := range sortedChains(next.Chains) {
		o := oldChains[c.Name]
		switch {
		case o == nil:
			if c.Hook != "" {
				return nil, false
			}
			p.AddChains = append(p.AddChains, c)
			p.RuleChains = append(p.RuleChains, c)
		case o.Hook != c.Hook || o.Type != c.Type || o.Priority != c.Priority:
			return nil, false
		case (o != c && !sameRules(o, c)) || refersTo(o, gone, delCounter):
			p.FlushChains = append(p.FlushChains, c.Name)
			p.RuleChains = append(p.RuleChains, c)
		}
	}
	return p, true
}

// withElems is a copy of the set's definition holding elems.
func (s *Set) withElems(elems []Elem) *Set {
	c := *s
	c.Elems = elems
	return &c
}

func nameSet(names []string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

func sorted(names []string) []string {
	s := slices.Clone(names)
	sort.Strings(s)
	return s
}

func sortedSets(sets []*Set) []*Set {
	s := slices.Clone(sets)
	sort.Slice(s, func(i, j int) bool { return s[i].Name < s[j].Name })
	return s
}

func sortedChains(chains []*Chain) []*Chain {
	s := slices.Clone(chains)
	sort.Slice(s, func(i, j int) bool { return s[i].Name < s[j].Name })
	return s
}

func sameSetType(a, b *Set) bool {
	return a.Interval == b.Interval && a.VerdictMap == b.VerdictMap && slices.Equal(a.Fields, b.Fields)
}

// elemKeys maps each element's key (see elemKey) to the element.
func elemKeys(s *Set) map[string]Elem {
	m := make(map[string]Elem, len(s.Elems))
	for _, e := range s.Elems {
		m[elemKey(e)] = e
	}
	return m
}

// elemKey is an element as a comparable string: what identifies it, in
// binary (rendering every element of every set as text was most of the
// cost of a diff).
func elemKey(e Elem) string {
	b := make([]byte, 0, 64)
	val := func(v Value) {
		a := v.Addr.As16()
		if v.Addr.Is4() {
			b = append(b, 4)
		} else if v.Addr.Is6() {
			b = append(b, 6)
		} else {
			b = append(b, 0)
		}
		b = append(b, a[:]...)
		b = append(b, byte(v.Num>>24), byte(v.Num>>16), byte(v.Num>>8), byte(v.Num))
		if v.Prefix {
			b = append(b, 1)
		} else {
			b = append(b, 0)
		}
		b = append(b, byte(len(v.Str)))
		b = append(b, v.Str...)
	}
	for _, v := range e.Key {
		val(v)
	}
	b = append(b, '|')
	for _, v := range e.End {
		val(v)
	}
	b = append(b, '|')
	b = append(b, e.Verdict.Kind...)
	b = append(b, ':')
	b = append(b, e.Verdict.Chain...)
	return string(b)
}

// sameOrder reports whether both hold the same elements in the same order
// (what Compile produces for an unchanged set): the cheap check first.
func sameOrder(a, b *Set) bool {
	return slices.EqualFunc(a.Elems, b.Elems, func(x, y Elem) bool {
		return x.Verdict == y.Verdict && slices.Equal(x.Key, y.Key) && slices.Equal(x.End, y.End)
	})
}

func sameElems(a, b *Set) bool {
	if len(a.Elems) != len(b.Elems) {
		return false
	}
	if sameOrder(a, b) {
		return true
	}
	bk := elemKeys(b)
	for _, e := range a.Elems {
		if _, ok := bk[elemKey(e)]; !ok {
			return false
		}
	}
	return true
}

// elemDiff returns the elements of old missing from next and those of next
// missing from old, in a stable order (a map element whose verdict changed
// is in both).
func elemDiff(old, next *Set) (del, add []Elem) {
	if sameOrder(old, next) {
		return nil, nil
	}
	ot, nt := elemKeys(old), elemKeys(next)
	pick := func(from, other map[string]Elem) []Elem {
		var keys []string
		for t := range from {
			if _, ok := other[t]; !ok {
				keys = append(keys, t)
			}
		}
		sort.Strings(keys)
		out := make([]Elem, len(keys))
		for i, k := range keys {
			out[i] = from[k]
		}
		return out
	}
	return pick(ot, nt), pick(nt, ot)
}

func sameRules(a, b *Chain) bool {
	if len(a.Rules) != len(b.Rules) {
		return false
	}
	for i := range a.Rules {
		if !sameRule(a.Rules[i], b.Rules[i]) {
			return false
		}
	}
	return true
}

func sameRule(a, b Rule) bool {
	if a.Name != b.Name || len(a.Exprs) != len(b.Exprs) {
		return false
	}
	for i := range a.Exprs {
		if !sameExpr(a.Exprs[i], b.Exprs[i]) {
			return false
		}
	}
	return true
}

// sameExpr compares two expressions; all but Lookup are comparable
// values.
func sameExpr(a, b Expr) bool {
	la, ok := a.(Lookup)
	if !ok {
		return a == b
	}
	lb, ok := b.(Lookup)
	return ok && la.Set == lb.Set && la.Neq == lb.Neq && slices.Equal(la.Fields, lb.Fields)
}

// refersTo reports whether a rule of c looks up one of sets or counts in
// one of counters.
func refersTo(c *Chain, sets, counters map[string]bool) bool {
	for _, r := range c.Rules {
		for _, e := range r.Exprs {
			switch e := e.(type) {
			case Lookup:
				if sets[e.Set] {
					return true
				}
			case Vmap:
				if sets[e.Map] {
					return true
				}
			case Counter:
				if counters[e.Name] {
					return true
				}
			}
		}
	}
	return false
}
