package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// arkgw check against the commented default node policy: exit 0 admitted
// (the effective policy printed), 1 refused (one line per conflict, naming
// the field and the fix), 2 unreadable input.
func TestCheckExitCodes(t *testing.T) {
	t.Setenv("ARKGW_SOCKET", filepath.Join(t.TempDir(), "no-daemon.sock"))
	t.Setenv("ARKGW_CONFIG", "")
	// The examples send to documentation prefixes: the commented default
	// with [lab] documentation_prefixes turned on.
	def, err := os.ReadFile(filepath.Join("..", "..", "configs", "node.toml"))
	if err != nil {
		t.Fatal(err)
	}
	node := filepath.Join(t.TempDir(), "node.toml")
	lab := strings.Replace(string(def), "documentation_prefixes = false", "documentation_prefixes = true", 1)
	if err := os.WriteFile(node, []byte(lab), 0o644); err != nil {
		t.Fatal(err)
	}
	ex := func(name string) string { return filepath.Join("..", "..", "configs", "examples", name) }
	cases := []struct {
		name   string
		args   []string
		code   int
		stdout []string
		stderr []string
	}{
		{"admitted", []string{ex("ping-survey.toml"), "--node", node}, 0, []string{"icmp"}, nil},
		{"flag before manifest", []string{"--node", node, ex("syn-traceroute.toml")}, 0, []string{"syn"}, nil},
		{"refused", []string{ex("bcp38-spoof.toml"), "--node", node}, 1, nil, []string{"spoof.destinations[0]", "198.51.100.5"}},
		{"missing manifest", []string{ex("nope.toml"), "--node", node}, 2, nil, []string{"nope.toml"}},
		{"missing node policy", []string{ex("ping-survey.toml"), "--node", "/nonexistent/node.toml"}, 2, nil, []string{"/nonexistent/node.toml"}},
		{"usage", nil, 2, nil, []string{"usage"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := checkManifest(c.args, &out, &errb, "/nonexistent/default-node.toml")
			if code != c.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, c.code, out.String(), errb.String())
			}
			all := out.String() + errb.String()
			for _, want := range append(c.stdout, c.stderr...) {
				if !strings.Contains(strings.ToLower(all), strings.ToLower(want)) {
					t.Errorf("output lacks %q:\n%s", want, all)
				}
			}
		})
	}
}
