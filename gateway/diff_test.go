package gateway

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/arkgw/arkgw/configs"
)

// diffSteps is a run of a node: experiments come, change policy and go.
func diffSteps(t testing.TB) [][]CompileExp {
	changed := fullEff("e2")
	changed.TCP = []configs.Dest{dest("198.51.100.0/25", pr(80, 81))}
	changed.Protocols = nil
	dnsAny := &configs.Effective{ID: "e3", IPv4: true, DNSAny: true, ICMPAny: true, AllPackets: []netip.Prefix{pfx("198.51.100.0/24")}}
	e1, e2, e3, e4 := CompileExp{Eff: fullEff("e1"), Net: testNet(t, "e1", 0)}, CompileExp{Eff: fullEff("e2"), Net: testNet(t, "e2", 1)},
		CompileExp{Eff: dnsAny, Net: testNet(t, "e3", 2)}, CompileExp{Eff: fullEff("e4"), Net: testNet(t, "e4", 3)}
	e2c := CompileExp{Eff: changed, Net: e2.Net}
	return [][]CompileExp{
		{e1},
		{e1, e2},
		{e1, e2, e3},
		{e1, e2c, e3}, // e2's allowlist changed
		{e2c, e3},     // e1 stopped
		{e2c, e3, e4},
		{e3},
		{e3, e1},
	}
}

func compileExps(t testing.TB, exps []CompileExp) *Ruleset {
	t.Helper()
	return compileCached(t, exps, nil)
}

func compileCached(t testing.TB, exps []CompileExp, cache *CompileCache) *Ruleset {
	t.Helper()
	rs, err := Compile(CompileInput{Uplink: "eth0", NFLOGGroup: 5, DefaultRouters: []netip.Addr{addr("192.168.77.1")}, Exps: exps, Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func TestDiff(t *testing.T) {
	steps := diffSteps(t)
	one, two := compileExps(t, steps[0]), compileExps(t, steps[1])
	if p, ok := Diff(one, one); !ok || !p.Empty() {
		t.Fatalf("same ruleset: ok=%v plan %+v", ok, p)
	}
	if _, ok := Diff(nil, one); ok {
		t.Fatal("no old table: want a replacement")
	}

	// Adding e2 creates e2's objects and touches e1's not at all.
	p, ok := Diff(one, two)
	if !ok {
		t.Fatal("add: no plan")
	}
	for _, name := range append(slices.Clone(p.FlushChains), p.DelChains...) {
		t.Errorf("add flushes or deletes chain %s", name)
	}
	if len(p.DelSets)+len(p.DelCounters) > 0 || len(p.DelElems) > 0 {
		t.Errorf("add deletes: sets %v counters %v elems %d", p.DelSets, p.DelCounters, len(p.DelElems))
	}
	for _, ch := range p.AddChains {
		if !strings.HasSuffix(ch.Name, "_e2") {
			t.Errorf("add creates chain %s", ch.Name)
		}
	}
	var joined []string
	for _, s := range p.AddElems {
		joined = append(joined, s.Name)
	}
	for _, want := range []string{"from_exp", "to_exp", "in_exp", "est", "exp4", "exp6"} {
		if !slices.Contains(joined, want) {
			t.Errorf("add puts no element into %s (into %v)", want, joined)
		}
	}

	// Removing it again is the mirror image.
	p, ok = Diff(two, one)
	if !ok {
		t.Fatal("remove: no plan")
	}
	for _, name := range p.DelChains {
		if !strings.HasSuffix(name, "_e2") {
			t.Errorf("remove deletes chain %s", name)
		}
	}
	if len(p.DelChains) == 0 || len(p.AddChains)+len(p.AddSets)+len(p.AddCounters)+len(p.AddElems) > 0 {
		t.Errorf("remove plan %+v", p)
	}

	// A changed allowlist recreates that experiment's interval set and
	// rewrites the chains that look it up, nobody else's.
	three, four := compileExps(t, steps[2]), compileExps(t, steps[3])
	p, ok = Diff(three, four)
	if !ok {
		t.Fatal("change: no plan")
	}
	if len(p.DelSets) == 0 || len(p.FlushChains) == 0 {
		t.Errorf("change recreates nothing: %+v", p)
	}
	for _, name := range append(slices.Clone(p.DelSets), p.FlushChains...) {
		if !strings.Contains(name, "e2") {
			t.Errorf("change touches %s", name)
		}
	}

	// A base chain that changes shape needs the whole table.
	moved := compileExps(t, steps[0])
	moved.ChainByName("forward").Priority = 10
	if _, ok := Diff(one, moved); ok {
		t.Error("base chain priority change: want a replacement")
	}
}

// In the kernel: every step applied in place leaves the same table as a
// replacement with that step's ruleset (compared as nft lists them).
func TestPrivilegedDiffMatchesReplace(t *testing.T) {
	inPlace, inPlaceName := scratchNS(t)
	fresh, freshName := scratchNS(t)
	list := func(name string) string {
		out, err := exec.Command("ip", "netns", "exec", name, "nft", "-j", "list", "table", "inet", TableName).CombinedOutput()
		if err != nil {
			t.Fatalf("nft list: %v: %s", err, out)
		}
		return normalizeListing(t, out)
	}
	var applied *Ruleset
	var cache CompileCache // as the gateway does
	for i, exps := range diffSteps(t) {
		rs := compileCached(t, exps, &cache)
		if applied == nil {
			if err := applyRuleset(inPlace, rs); err != nil {
				t.Fatal(err)
			}
		} else {
			p, ok := Diff(applied, rs)
			if !ok {
				t.Fatalf("step %d: no plan", i)
			}
			if err := applyPlan(inPlace, p, rs); err != nil {
				t.Fatalf("step %d: in place: %v", i, err)
			}
		}
		applied = rs
		if err := applyRuleset(fresh, rs); err != nil {
			t.Fatal(err)
		}
		if a, b := list(inPlaceName), list(freshName); a != b {
			t.Fatalf("step %d: in place\n%s\nreplaced\n%s", i, a, b)
		}
	}
	t.Cleanup(func() { deleteTable(inPlace, TableName); deleteTable(fresh, TableName) })
}

// normalizeListing turns `nft -j list table` output into one line per
// object, without handles, sorted: objects by kind and name, set elements
// sorted, rules in their order within their chain. Creation order (which
// differs between building in place and in one go) is all it hides.
func normalizeListing(t *testing.T, js []byte) string {
	t.Helper()
	var doc struct {
		Nftables []map[string]map[string]any `json:"nftables"`
	}
	if err := json.Unmarshal(js, &doc); err != nil {
		t.Fatalf("nft -j: %v: %s", err, js)
	}
	var lines []string
	ruleIndex := map[string]int{}
	for _, item := range doc.Nftables {
		for kind, obj := range item {
			if kind == "metainfo" {
				continue
			}
			delete(obj, "handle")
			if elems, ok := obj["elem"].([]any); ok {
				sort.Slice(elems, func(i, j int) bool {
					a, _ := json.Marshal(elems[i])
					b, _ := json.Marshal(elems[j])
					return string(a) < string(b)
				})
			}
			b, _ := json.Marshal(obj)
			key := fmt.Sprintf("%s %v", kind, obj["name"])
			if kind == "rule" {
				ch := fmt.Sprint(obj["chain"])
				key = fmt.Sprintf("rule %s %04d", ch, ruleIndex[ch])
				ruleIndex[ch]++
			}
			lines = append(lines, key+" "+string(b))
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// The cache reuses an unchanged experiment's objects, recompiles a changed
// one, forgets a removed one, and starts over when a node input changes;
// the result is always what a compile without it gives.
func TestCompileCache(t *testing.T) {
	var cache CompileCache
	for i, exps := range diffSteps(t) {
		with, without := compileCached(t, exps, &cache), compileExps(t, exps)
		if a, b := with.Render(), without.Render(); a != b {
			t.Fatalf("step %d: cached compile differs:\n%s\nwant\n%s", i, a, b)
		}
		if len(cache.frags) != len(exps) {
			t.Errorf("step %d: %d experiments cached, %d compiled", i, len(cache.frags), len(exps))
		}
	}
	steps := diffSteps(t)
	a := compileCached(t, steps[1], &cache)
	b := compileCached(t, steps[1], &cache)
	if a.ChainByName("fwd_e1") != b.ChainByName("fwd_e1") {
		t.Error("an unchanged experiment was compiled again")
	}
	c, err := Compile(CompileInput{Uplink: "eth1", NFLOGGroup: 5, Exps: steps[1], Cache: &cache})
	if err != nil {
		t.Fatal(err)
	}
	if c.ChainByName("fwd_e1") == b.ChainByName("fwd_e1") {
		t.Error("a node input changed but the cached objects were reused")
	}
}
