package gateway

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/gateway/quota"
)

// TestPrivilegedForeignTableChange: a rule inserted into the arkgw table
// behind the gateway's back (nft by hand) does not survive the next
// policy update, although that update alone would be applied in place:
// the changed ruleset generation makes the gateway replace the table.
// Without a foreign change, updates stay in place (same table handle),
// also after commits of the accounting table through the shared ledger.
func TestPrivilegedForeignTableChange(t *testing.T) {
	l := newLab(t)
	eff := &configs.Effective{ID: "x" + randSuffix()[:4], IPv4: true, IPv6: true,
		TCP: []configs.Dest{dest("198.51.100.7/32", pr(7, 7))}}
	other := &configs.Effective{ID: "y" + randSuffix()[:4], IPv4: true, IPv6: true,
		TCP: []configs.Dest{dest("198.51.100.7/32", pr(7, 7))}}
	_, ns := l.add(t, eff, 0)
	l.add(t, other, 1)
	handle := func() string {
		out := l.w.Node.Run(t, "nft", "-a", "list", "table", "inet", TableName)
		m := regexp.MustCompile(`table inet ` + TableName + ` \{ # handle (\d+)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no table handle in:\n%s", out)
		}
		return m[1]
	}
	// Updates of the other experiment touch only its own objects.
	updateOther := func(port uint16) {
		e := *other
		e.TCP = []configs.Dest{dest("198.51.100.7/32", pr(port, port))}
		if err := l.g.Update(context.Background(), []*configs.Effective{&e}); err != nil {
			t.Fatal(err)
		}
	}
	h0 := handle()
	updateOther(8)
	if h := handle(); h != h0 {
		t.Errorf("an update without a foreign change replaced the table (handle %s -> %s)", h0, h)
	}
	// The accounting table commits through the same ledger: its commits
	// are this process's own and do not force a replace either.
	acct := quota.New(quota.Config{NS: l.w.Node.NS(), Ledger: l.g.ledger})
	t.Cleanup(func() {
		if err := acct.Delete(); err != nil {
			t.Error(err)
		}
	})
	if _, err := acct.Add(quota.Exp{ID: other.ID, HostIf: HostIfName(other.ID), BudgetBytes: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	updateOther(10)
	if h := handle(); h != h0 {
		t.Errorf("an update after a commit of the shared accounting table replaced the table (handle %s -> %s)", h0, h)
	}
	// Behind the gateway's back: accept everything of the experiment.
	l.w.Node.Run(t, "nft", "insert", "rule", "inet", TableName, "fwd_"+eff.ID, "accept")
	updateOther(9)
	chain := l.w.Node.Run(t, "nft", "list", "chain", "inet", TableName, "fwd_"+eff.ID)
	if got, want := strings.Count(chain, "\n\t\t"), len(l.g.Ruleset().ChainByName("fwd_"+eff.ID).Rules); got != want {
		t.Errorf("fwd chain has %d rules in the kernel, %d compiled: the foreign rule survived?\n%s", got, want, chain)
	}
	// And the policy holds again: a connection it does not allow is dropped.
	before := l.counter(t, eff.ID, RuleTCPDst)
	if _, err := dialIn(ns, "tcp", "198.51.100.8:7", 700*time.Millisecond); err == nil {
		t.Error("a connection the policy forbids succeeded")
	}
	l.waitCounter(t, eff.ID, RuleTCPDst, before)
}
