package gateway

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/nftables"

	"github.com/arkgw/arkgw/nsdo"
)

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and nftables tables")
	}
}

func randSuffix() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// scratchNS makes an empty named netns for tests that need no topology.
func scratchNS(t testing.TB) (nsdo.NS, string) {
	t.Helper()
	needRoot(t)
	name := "arkgwt" + randSuffix()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	h, err := nsdo.Open("/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h, name
}

func TestPrivilegedApplyRuleset(t *testing.T) {
	ns, name := scratchNS(t)
	// A quota table of gateway/quota's shape must survive our reloads.
	c, err := nftConn(ns)
	if err != nil {
		t.Fatal(err)
	}
	acct := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "arkgw_acct"})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	_ = acct
	in := CompileInput{Uplink: "eth0", NFLOGGroup: 5, Exps: []CompileExp{
		{Eff: fullEff("e1"), Net: testNet(t, "e1", 0)},
		{Eff: fullEff("e2"), Net: testNet(t, "e2", 1)},
	}}
	rs, err := Compile(in)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ { // twice: replacing an existing table
		if err := applyRuleset(ns, rs); err != nil {
			t.Fatalf("apply %d: %v", i, err)
		}
	}
	out, err := exec.Command("ip", "netns", "exec", name, "nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list: %v: %s", err, out)
	}
	for _, want := range []string{"table inet arkgw_acct", "chain fwd_e2", `"ark:e1:tcp-dst"`, "198.51.100.0/24 . 80", "ct mark set"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("ruleset lacks %q:\n%s", want, out)
		}
	}
	if testing.Verbose() {
		t.Logf("%s", out)
	}
	if _, _, err := readCounter(ns, TableName, CounterName("e1", RuleTCPDst)); err != nil {
		t.Error(err)
	}
	if err := deleteTable(ns, TableName); err != nil {
		t.Fatal(err)
	}
	if err := deleteTable(ns, TableName); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	out, _ = exec.Command("ip", "netns", "exec", name, "nft", "list", "tables").CombinedOutput()
	if strings.Contains(string(out), "arkgw\n") || !strings.Contains(string(out), "arkgw_acct") {
		t.Errorf("tables after delete: %s", out)
	}
}
