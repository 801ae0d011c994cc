package configs

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// The commented default node policy must say exactly what the built-in
// defaults are.
func TestNodeTomlMatchesDefaults(t *testing.T) {
	n, err := LoadNode("node.toml")
	if err != nil {
		t.Fatal(err)
	}
	d := DefaultNode()
	n.Source, d.Source = "", ""
	if !reflect.DeepEqual(n, d) {
		t.Errorf("configs/node.toml differs from DefaultNode():\nfile:     %+v\ndefaults: %+v", n, d)
	}
	// An empty file is the defaults too.
	e, err := ParseNode("empty.toml", nil)
	if err != nil {
		t.Fatal(err)
	}
	e.Source = ""
	if !reflect.DeepEqual(e, d) {
		t.Errorf("empty node policy differs from DefaultNode()")
	}
}

// labDefaultNode is configs/node.toml with [lab] documentation_prefixes
// turned on: the examples send to the documentation prefixes.
func labDefaultNode(t *testing.T) *NodePolicy {
	t.Helper()
	data, err := os.ReadFile("node.toml")
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(string(data), "documentation_prefixes = false", "documentation_prefixes = true", 1)
	n, err := ParseNode("node.toml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Every example is admitted by the default node policy (in a lab: the
// examples use documentation prefixes) unless its first comment says it is
// intentionally refused.
func TestExamplesAgainstDefaultNode(t *testing.T) {
	node := labDefaultNode(t)
	files, _ := filepath.Glob("examples/*.toml")
	if len(files) < 5 {
		t.Fatalf("want at least 5 examples, have %v", files)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			refused := strings.HasPrefix(string(data), "# INTENTIONALLY REFUSED")
			m, err := LoadManifest(f)
			if err != nil {
				t.Fatal(err)
			}
			eff, conflicts := Admit(node, m, Env{ID: "ex1"})
			if refused != (len(conflicts) > 0) {
				t.Errorf("refused = %v (documented), conflicts = %v", refused, conflicts)
			}
			var b strings.Builder
			if err := FormatEffective(&b, eff); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// The BCP38 example is refused only for spoofing, and admitted once the
// owner lists its destination.
func TestBCP38AdmittedWithSpoofDestinations(t *testing.T) {
	m, err := LoadManifest("examples/bcp38-spoof.toml")
	if err != nil {
		t.Fatal(err)
	}
	_, conflicts := Admit(labDefaultNode(t), m, Env{})
	if len(conflicts) != 1 || conflicts[0].Field != "spoof.destinations[0]" {
		t.Fatalf("conflicts = %v, want only spoof.destinations[0]", conflicts)
	}
	node, err := ParseNode("node.toml", []byte(`[permit]
spoof_destinations = ["198.51.100.5"]`+labNode))
	if err != nil {
		t.Fatal(err)
	}
	eff, conflicts := Admit(node, m, Env{})
	if len(conflicts) != 0 {
		t.Fatalf("conflicts = %v", conflicts)
	}
	if len(eff.SpoofSources) != 2 || len(eff.SpoofDestinations) != 1 {
		t.Errorf("spoof = %v -> %v", eff.SpoofSources, eff.SpoofDestinations)
	}
}
