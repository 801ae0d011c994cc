package quota

import (
	"fmt"
	"strings"

	"github.com/arkgw/arkgw/alert"
	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Desired is an experiment's part of the table: pure values, built by
// Compile, written by Table.
type Desired struct {
	ExpChain, OverChain *nftables.Chain
	Base                []*nftables.Rule // jump rules in the forward chain (tagged with UserData)
	Exp                 []*nftables.Rule // quota check, counters, priority marks
	Over                []*nftables.Rule // log (rate limited) and drop
}

// Compile builds the chains and rules for e in table t (no kernel access).
func Compile(t *nftables.Table, e Exp, group uint16) Desired {
	d := Desired{
		ExpChain:  &nftables.Chain{Table: t, Name: expChain(e.ID)},
		OverChain: &nftables.Chain{Table: t, Name: overChain(e.ID)},
	}
	base := &nftables.Chain{Table: t, Name: ForwardChain}
	ifMatch := func(key expr.MetaKey) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: key, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(e.HostIf)},
		}
	}
	for _, k := range []expr.MetaKey{expr.MetaKeyIIFNAME, expr.MetaKeyOIFNAME} {
		d.Base = append(d.Base, &nftables.Rule{Table: t, Chain: base, UserData: tag(e.ID),
			Exprs: append(ifMatch(k), &expr.Verdict{Kind: expr.VerdictJump, Chain: d.ExpChain.Name})})
	}
	if e.BudgetBytes > 0 {
		d.Exp = append(d.Exp, &nftables.Rule{Table: t, Chain: d.ExpChain, Exprs: []expr.Any{
			&expr.Objref{Type: int(nftables.ObjTypeQuota), Name: objName(e.ID, "quota")},
			&expr.Verdict{Kind: expr.VerdictJump, Chain: d.OverChain.Name},
		}})
	}
	for _, dir := range []struct {
		key  expr.MetaKey
		name string
		prio uint32
	}{
		{expr.MetaKeyIIFNAME, "up", e.UpPriority},
		{expr.MetaKeyOIFNAME, "down", e.DownPriority},
	} {
		ex := append(ifMatch(dir.key), &expr.Objref{Type: int(nftables.ObjTypeCounter), Name: objName(e.ID, dir.name)})
		if dir.prio != 0 {
			ex = append(ex,
				&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(dir.prio)},
				&expr.Meta{Key: expr.MetaKeyPRIORITY, SourceRegister: true, Register: 1})
		}
		d.Exp = append(d.Exp, &nftables.Rule{Table: t, Chain: d.ExpChain, Exprs: ex})
	}
	d.Over = append(d.Over, &nftables.Rule{Table: t, Chain: d.OverChain, Exprs: []expr.Any{
		&expr.Limit{Type: expr.LimitTypePkts, Rate: LogRate, Unit: expr.LimitTimeSecond, Burst: 2 * LogRate},
		&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX, Group: group,
			Data: []byte(alert.LogPrefix(e.ID, RuleLog))},
	}})
	d.Over = append(d.Over, &nftables.Rule{Table: t, Chain: d.OverChain, Exprs: []expr.Any{
		&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: objName(e.ID, "drop")},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}})
	return d
}

// String renders the rules as text lines (for golden tests and debugging).
func (d Desired) String() string {
	var b strings.Builder
	for _, set := range []struct {
		chain string
		rules []*nftables.Rule
	}{{ForwardChain, d.Base}, {d.ExpChain.Name, d.Exp}, {d.OverChain.Name, d.Over}} {
		for _, r := range set.rules {
			fmt.Fprintf(&b, "%s:", set.chain)
			for _, e := range r.Exprs {
				b.WriteString(" " + describe(e))
			}
			if len(r.UserData) > 0 {
				fmt.Fprintf(&b, " userdata=%q", r.UserData)
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

func describe(e expr.Any) string {
	switch v := e.(type) {
	case *expr.Meta:
		if v.SourceRegister {
			return fmt.Sprintf("meta-set(key=%d,reg=%d)", v.Key, v.Register)
		}
		return fmt.Sprintf("meta(key=%d,reg=%d)", v.Key, v.Register)
	case *expr.Cmp:
		return fmt.Sprintf("cmp(op=%d,reg=%d,%q)", v.Op, v.Register, strings.TrimRight(string(v.Data), "\x00"))
	case *expr.Verdict:
		if v.Chain != "" {
			return fmt.Sprintf("verdict(%d,%s)", v.Kind, v.Chain)
		}
		return fmt.Sprintf("verdict(%d)", v.Kind)
	case *expr.Objref:
		return fmt.Sprintf("objref(type=%d,%s)", v.Type, v.Name)
	case *expr.Immediate:
		return fmt.Sprintf("imm(reg=%d,%x)", v.Register, v.Data)
	case *expr.Limit:
		return fmt.Sprintf("limit(%d/%d,burst=%d)", v.Rate, v.Unit, v.Burst)
	case *expr.Log:
		return fmt.Sprintf("log(group=%d,prefix=%q)", v.Group, v.Data)
	default:
		return fmt.Sprintf("%T", e)
	}
}
