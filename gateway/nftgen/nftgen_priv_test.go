package nftgen

import (
	"os"
	"testing"

	"github.com/google/nftables"

	"github.com/arkgw/arkgw/netlab"
)

// TestPrivilegedLedger: in a fresh netns, commits through the ledger keep
// it clean and move the generation by one each; a commit by another
// process (nft) makes it unclean and CommitIfClean declines until a
// Replace.
func TestPrivilegedLedger(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds a network namespace and nftables tables")
	}
	lab := netlab.Build(t, netlab.Topology{Hosts: []netlab.HostSpec{{Name: "n"}}})
	h := lab.Host("n")
	ns := h.NS()
	c, err := nftables.New(ns.NFTOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	addTable := func(name string) func() error {
		return func() error {
			c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: name})
			return c.Flush()
		}
	}
	l := NewLedger(ns)
	if l.Clean() {
		t.Fatal("a new ledger is clean")
	}
	g0, err := Read(ns)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Replace(addTable("a")); err != nil {
		t.Fatal(err)
	}
	if g1, _ := Read(ns); g1 != g0+1 || !l.Clean() {
		t.Fatalf("after Replace: generation %d -> %d, clean %v", g0, g1, l.Clean())
	}
	if err := l.Commit(addTable("b")); err != nil || !l.Clean() {
		t.Fatalf("own commit: err %v, clean %v", err, l.Clean())
	}
	ran := false
	if ok, err := l.CommitIfClean(func() error { ran = true; return addTable("c")() }); !ok || err != nil || !ran || !l.Clean() {
		t.Fatalf("CommitIfClean on a clean ledger: ok %v err %v ran %v clean %v", ok, err, ran, l.Clean())
	}
	h.Run(t, "nft", "add", "table", "inet", "foreign")
	if l.Clean() {
		t.Fatal("clean after a foreign commit")
	}
	ran = false
	if ok, _ := l.CommitIfClean(func() error { ran = true; return nil }); ok || ran {
		t.Fatal("CommitIfClean ran after a foreign commit")
	}
	// Our own commit after a foreign one does not make it clean again.
	if err := l.Commit(addTable("d")); err != nil || l.Clean() {
		t.Fatalf("own commit after a foreign one: err %v, clean %v", err, l.Clean())
	}
	if err := l.Replace(addTable("a")); err != nil || !l.Clean() {
		t.Fatalf("Replace: err %v, clean %v", err, l.Clean())
	}
}
