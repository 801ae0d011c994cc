package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/arkgw/arkgw/container"
)

// arkgw check on a node with an installed image: a manifest pinning
// another container_sha256 is refused naming both hashes; the right pin,
// or none, is admitted; a version not installed is refused.
func TestCheckContainerPin(t *testing.T) {
	state := t.TempDir()
	dir := filepath.Join(state, "containers")
	os.MkdirAll(dir, 0o755)
	img := filepath.Join(dir, "ark-2026.1_"+container.HostArch()+".squashfs")
	os.WriteFile(img, []byte("image bytes"), 0o644)
	sum, size, err := container.FileSHA256(img)
	if err != nil {
		t.Fatal(err)
	}
	m := &container.Meta{Format: 1, Version: "ark-2026.1", Architecture: container.HostArch(), SHA256: sum, Size: size}
	os.WriteFile(container.MetaPath(img), m.Encode(), 0o644)
	node := filepath.Join(state, "node.toml")
	os.WriteFile(node, []byte("state_dir = \""+state+"\"\n"), 0o644)

	base, err := os.ReadFile(filepath.Join("..", "..", "configs", "examples", "ping-survey.toml"))
	if err != nil {
		t.Fatal(err)
	}
	other := strings.Repeat("0", 64)
	for _, c := range []struct {
		name, replace string
		code          int
		want          []string
	}{
		{"no pin", `container = "ark-2026.1"`, 0, nil},
		{"right pin", "container = \"ark-2026.1\"\ncontainer_sha256 = \"" + sum + "\"", 0, nil},
		{"wrong pin", "container = \"ark-2026.1\"\ncontainer_sha256 = \"" + other + "\"", 1, []string{"container_sha256", other, sum}},
		{"not installed", `container = "ark-2031.1"`, 1, []string{"not installed"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			exp := t.TempDir()
			os.MkdirAll(filepath.Join(exp, "payload"), 0o755)
			mf := filepath.Join(exp, "m.toml")
			os.WriteFile(mf, []byte(strings.Replace(string(base), `container = "ark-2026.1"`, c.replace, 1)), 0o644)
			var out, errb bytes.Buffer
			code := checkManifest([]string{mf, "--node", node}, &out, &errb, "/nonexistent/default-node.toml")
			all := out.String() + errb.String()
			if code != c.code {
				t.Fatalf("exit %d, want %d:\n%s", code, c.code, all)
			}
			for _, w := range c.want {
				if !strings.Contains(all, w) {
					t.Errorf("output lacks %q:\n%s", w, all)
				}
			}
		})
	}
}
