package gateway

import (
	"context"
	"strings"
	"testing"

	"github.com/arkgw/arkgw/gateway/nftgen"
)

// TestPrivilegedFlowtableProbe: the start-up probe agrees with the nft
// tool on whether this kernel can make a flowtable, and leaves no table
// behind. (This development kernel has no CONFIG_NF_FLOW_TABLE: here the
// answer is no, and offloading itself cannot be tested.)
func TestPrivilegedFlowtableProbe(t *testing.T) {
	l := newLab(t)
	ns := l.w.Node.NS()
	got, err := probeFlowtable(ns, nftgen.NewLedger(ns))
	if err != nil {
		t.Fatal(err)
	}
	_, nftErr := l.w.Node.RunE(context.Background(), "nft", "add table inet ftcheck; add flowtable inet ftcheck f { hook ingress priority 0; }")
	l.w.Node.RunE(context.Background(), "nft", "delete table inet ftcheck")
	if want := nftErr == nil; got != want {
		t.Errorf("probe says flowtables %v, nft says %v (%v)", got, want, nftErr)
	}
	if got != l.g.flowtable {
		t.Errorf("the gateway's start-up probe said %v, this one %v", l.g.flowtable, got)
	}
	if out := l.w.Node.Run(t, "nft", "list", "tables"); strings.Contains(out, "probe") || strings.Contains(out, "ftcheck") {
		t.Errorf("tables left: %s", out)
	}
	t.Logf("flowtables: %v", got)
}
