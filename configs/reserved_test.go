package configs

import (
	"net/netip"
	"testing"
)

// One sample address of every block the registries mark as not globally
// reachable is reserved, globally reachable rows inside such blocks are
// not (except PCP anycast), and the documentation blocks need the lab
// setting.
func TestReservedPrefixes(t *testing.T) {
	strict := ReservedSet(LabPolicy{}, nil)
	lab := ReservedSet(LabPolicy{DocumentationPrefixes: true}, nil)
	tests := []struct {
		addr        string
		strict, lab bool // reserved without / with [lab] documentation_prefixes
	}{
		{"0.1.2.3", true, true},
		{"10.1.2.3", true, true},
		{"100.64.0.1", true, true},
		{"100.127.255.254", true, true},
		{"100.128.0.1", false, false},
		{"127.0.0.1", true, true},
		{"127.9.9.9", true, true},
		{"169.254.1.1", true, true},
		{"172.16.0.1", true, true},
		{"192.0.0.1", true, true},
		{"192.0.0.8", true, true},
		{"192.0.0.9", true, true}, // PCP anycast: the home router's port mappings
		{"192.0.0.10", false, false},
		{"192.0.0.170", true, true},
		{"192.0.2.1", true, false},
		{"192.31.196.1", false, false},
		{"192.168.1.1", true, true},
		{"198.18.0.1", true, true},
		{"198.19.255.254", true, true},
		{"198.51.100.7", true, false},
		{"203.0.113.5", true, false},
		{"224.0.0.1", true, true},
		{"240.0.0.1", true, true},
		{"255.255.255.255", true, true},
		{"8.8.8.8", false, false},
		{"::", true, true},
		{"::1", true, true},
		{"::ffff:8.8.8.8", true, true},
		{"64:ff9b::808:808", false, false},
		{"64:ff9b:1::1", true, true},
		{"100::1", true, true},
		{"2001:2::1", true, true},
		{"2001::1", true, true}, // TEREDO: N/A, the enclosing 2001::/23 decides
		{"2001:1::1", true, true},
		{"2001:1::2", false, false},
		{"2001:3::1", false, false},
		{"2001:20::1", false, false},
		{"2001:db8::1", true, false},
		{"2001:db8:100::7", true, false},
		{"3fff::1", true, false},
		{"5f00::1", true, true},
		{"fd00::1", true, true},
		{"fe80::1", true, true},
		{"ff02::1", true, true},
		{"2001:4860::8888", false, false},
		{"2a00::1", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			a := netip.MustParseAddr(tt.addr)
			if got := strict.Contains(a); got != tt.strict {
				t.Errorf("reserved = %v, want %v", got, tt.strict)
			}
			if got := lab.Contains(a); got != tt.lab {
				t.Errorf("with [lab] documentation_prefixes: reserved = %v, want %v", got, tt.lab)
			}
		})
	}
}

// Every registry row is well-formed, and every not-reachable row is at
// least partly reserved by default.
func TestSpecialPurposeRows(t *testing.T) {
	strict := ReservedSet(LabPolicy{}, nil)
	for _, r := range SpecialPurpose {
		if r.Prefix != r.Prefix.Masked() || r.Name == "" || r.RFC == "" {
			t.Errorf("malformed row %+v", r)
		}
		if r.Reachable == ReachNo && !strict.Contains(r.Prefix.Addr()) {
			t.Errorf("%s (%s) is not reachable but not reserved", r.Prefix, r.Name)
		}
	}
}

// The lab key is off by default and is what admits documentation
// destinations.
func TestLabDocumentationPrefixes(t *testing.T) {
	m := mustManifest(t, `tcp = ["198.51.100.1:443", "[2001:db8:100::7]:443"]`, "")
	if n := DefaultNode(); n.Lab.DocumentationPrefixes {
		t.Fatal("documentation_prefixes on by default")
	}
	_, conflicts := Admit(DefaultNode(), m, Env{})
	if len(conflicts) != 2 {
		t.Errorf("default node: conflicts %v, want both entries reserved", conflicts)
	}
	n, err := ParseNode("node.toml", []byte("[lab]\ndocumentation_prefixes = true\n"))
	if err != nil {
		t.Fatal(err)
	}
	eff, conflicts := Admit(n, m, Env{})
	if len(conflicts) != 0 || len(eff.TCP) != 2 || !eff.Lab.DocumentationPrefixes {
		t.Errorf("lab node: conflicts %v, tcp %v", conflicts, eff.TCP)
	}
}

// limits.max_flows reaches the effective policy; 0 leaves the choice to
// the gateway.
func TestMaxFlows(t *testing.T) {
	m := mustManifest(t, "", "")
	for _, tc := range []struct {
		node string
		want int64
	}{{"", 0}, {"[limits]\nmax_flows = 5000", 5000}} {
		eff, conflicts := Admit(mustNode(t, tc.node), m, Env{})
		if len(conflicts) != 0 || eff.Limits.MaxFlows != tc.want {
			t.Errorf("node %q: max flows %d (conflicts %v), want %d", tc.node, eff.Limits.MaxFlows, conflicts, tc.want)
		}
	}
}
