package configs

import (
	"strings"
	"testing"
)

func TestAdmitContainer(t *testing.T) {
	node := mustNode(t, "")
	sumA := strings.Repeat("a", 64)
	sumB := strings.Repeat("b", 64)
	installed := map[string]map[string]string{
		"ark-2026.1": {"dir": ""},
		"ark-2026.2": {"x86_64": sumA, "aarch64": sumB},
		"ark-arm":    {"aarch64": sumB},
	}
	look := func(v string) map[string]string { return installed[v] }
	// withContainer is the base manifest with its container line replaced.
	withContainer := func(t *testing.T, lines string) *Manifest {
		t.Helper()
		src := strings.Replace(manifest("", ""), `container = "ark-2026.1"`, lines, 1)
		m, err := ParseManifest("manifest.toml", []byte(src), "/srv/exp")
		if err != nil {
			t.Fatalf("manifest: %v", err)
		}
		return m
	}
	for _, tc := range []struct {
		name, top, arch string
		want            string // "" = no container conflict
	}{
		{"directory root", `container = "ark-2026.1"`, "x86_64", ""},
		{"image for this arch", `container = "ark-2026.2"`, "x86_64", ""},
		{"pinned, matching", `container = "ark-2026.2"` + "\ncontainer_sha256 = \"" + sumA + "\"", "x86_64", ""},
		{"pinned, upper case", `container = "ark-2026.2"` + "\ncontainer_sha256 = \"" + strings.ToUpper(sumB) + "\"", "aarch64", ""},
		{"pinned, mismatch names both", `container = "ark-2026.2"` + "\ncontainer_sha256 = \"" + sumB + "\"", "x86_64",
			"the manifest pins sha256 " + sumB + " but container ark-2026.2 installed here (x86_64) has sha256 " + sumA},
		{"pinned, directory", `container = "ark-2026.1"` + "\ncontainer_sha256 = \"" + sumA + "\"", "x86_64", "plain directory"},
		{"not installed", `container = "ark-2030.1"`, "x86_64", "container version not installed on this node"},
		{"other arch only", `container = "ark-arm"`, "x86_64", "installed for aarch64 only; this node is x86_64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := withContainer(t, tc.top)
			_, cs := Admit(node, m, Env{Arch: tc.arch, Containers: look})
			var got []string
			for _, c := range cs {
				if c.Field == "container" || c.Field == "container_sha256" {
					got = append(got, c.String())
				}
			}
			if tc.want == "" {
				if len(got) > 0 {
					t.Fatalf("unexpected conflicts %q", got)
				}
				return
			}
			if len(got) != 1 || !strings.Contains(got[0], tc.want) {
				t.Fatalf("got %q, want one conflict containing %q", got, tc.want)
			}
		})
	}
	// No containers directory: no container check.
	m := withContainer(t, `container = "ark-2030.1"`)
	if _, cs := Admit(node, m, Env{Arch: "x86_64"}); len(cs) != 0 {
		t.Fatalf("without a lookup: %v", conflictStrings(cs))
	}
	if _, err := ParseManifest("m.toml", []byte(strings.Replace(manifest("", ""), `container = "ark-2026.1"`, `container = "x"`+"\ncontainer_sha256 = \"abc\"", 1)), "/srv"); err == nil || !strings.Contains(err.Error(), "64 hex digits") {
		t.Fatalf("bad pin: %v", err)
	}
}
