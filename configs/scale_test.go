package configs

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// Large allowlists (the gateway benchmark uses 1,000 entries) must admit
// quickly: covering and merging are computed per elementary port interval.
func TestAdmitLargeAllowlists(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	var owner, req []string
	for i := range 1000 {
		a := netip.AddrFrom4([4]byte{11, byte(i / 256 % 2), byte(i % 256), 0})
		owner = append(owner, fmt.Sprintf("%s/24:%d-%d", a, 1000+i, 1100+i))
		req = append(req, fmt.Sprintf("%s/25:%d", a, 1000+i))
	}
	node := mustNode(t, "[permit]\ntcp = [\""+strings.Join(owner, "\", \"")+"\"]")
	m := mustManifest(t, "tcp = [\""+strings.Join(req, "\", \"")+"\", \"203.0.113.0/24:1-65535\"]", "")
	start := time.Now()
	eff, conflicts := Admit(node, m, Env{})
	took := time.Since(start)
	if len(conflicts) != 1 || conflicts[0].Field != "tcp[1000]" {
		t.Errorf("conflicts %v", conflicts[:min(3, len(conflicts))])
	}
	if len(eff.TCP) < 500 {
		t.Errorf("%d tcp dests", len(eff.TCP))
	}
	checkDisjoint(t, "tcp", eff.TCP)
	t.Logf("admit 1000-entry request against 1000-entry allowlist: %v, %d dests", took, len(eff.TCP))
	if took > 20*time.Second {
		t.Errorf("admission took %v", took)
	}
}

// Worst case for covering: a whole-space request against a large owner
// list that also allows the whole space.
func TestAdmitWideRequestLargeAllowlist(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	owner := []string{"0.0.0.0/0:*", "[::/0]:*"}
	for i := range 1000 {
		owner = append(owner, fmt.Sprintf("198.%d.%d.0/24:%d-%d", 18+i/256%2, i%256, 1000+i, 1100+2*i))
	}
	node := mustNode(t, "[permit]\ntcp = [\""+strings.Join(owner, "\", \"")+"\"]")
	m := mustManifest(t, `tcp = ["any"]`, "")
	start := time.Now()
	eff, conflicts := Admit(node, m, Env{})
	took := time.Since(start)
	if len(conflicts) != 0 || len(eff.TCP) == 0 {
		t.Errorf("conflicts %v", conflicts)
	}
	t.Logf("admit any against 1002-entry allowlist: %v", took)
	if took > 20*time.Second {
		t.Errorf("admission took %v", took)
	}
}
