package configs

import (
	"bytes"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// goldenRouters are netlab's standard world default routers.
var goldenRouters = []netip.Addr{netip.MustParseAddr("192.168.77.1"), netip.MustParseAddr("fd77::1")}

func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run %s -update to create it)", err, t.Name())
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (go test -run %s -update rewrites it):\n--- got\n%s\n--- want\n%s", path, t.Name(), got, want)
	}
}

// formatAdmission renders what `arkgw check` shows: the effective policy
// and the conflicts.
func formatAdmission(t *testing.T, node *NodePolicy, m *Manifest) []byte {
	t.Helper()
	eff, conflicts := Admit(node, m, Env{ID: "ex1", DefaultRouters: goldenRouters})
	if eff.FilesDir != "" {
		// Machine-independent: the checkout's location does not matter.
		eff.FilesDir = "/srv/manifests/" + filepath.Base(eff.FilesDir)
	}
	var b bytes.Buffer
	if err := FormatEffective(&b, eff); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&b, "conflicts: %d\n", len(conflicts))
	for _, c := range conflicts {
		fmt.Fprintf(&b, "  %s\n", c)
	}
	return b.Bytes()
}

func TestFormatEffectiveExamplesGolden(t *testing.T) {
	node := labDefaultNode(t)
	files, _ := filepath.Glob("examples/*.toml")
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".toml")
		t.Run(name, func(t *testing.T) {
			m, err := LoadManifest(f)
			if err != nil {
				t.Fatal(err)
			}
			checkGolden(t, name, formatAdmission(t, node, m))
		})
	}
}

// A manifest and a node policy that use every option, including a refusal.
func TestFormatEffectiveEverythingGolden(t *testing.T) {
	node := mustNode(t, `node = "ark-test"
[permit]
tcp = ["198.51.100.0/24:*", "[2001:db8:100::/48]:80,443", "192.168.77.1:53"]
udp = ["0.0.0.0/0:33434-33534"]
all_packets = ["198.51.100.0/24", "203.0.113.0/24", "2001:db8:100::/48", "192.168.77.1"]
tcp_ports = [8080]
icmp = ["echo-request", "time-exceeded", "icmpv6:echo-request"]
protocols = [47]
spoof_destinations = ["198.51.100.0/24"]
[dns]
allow = ["arkgw.test", "example.org"]
deny_answer = "nxdomain"
qps = 20
[limits]
max_mb_per_day = 1000
cpu = { minimal = 10, moderate = 50 }
`)
	m, err := ParseManifest("everything.toml", []byte(`title = "Everything at once"
container = "ark-2026.1"
architectures = ["x86_64", "aarch64"]
command = ["/experiment/run.sh", "--all", "a b"]
files = "payload"
start = 2026-12-01T12:30:00+01:00
max_hours = 12.5
cpu = "substantial"
max_ram_mb = 256
max_mbps = 2.5
max_mb_per_day = 0
ip = "both"
dns = ["www.ARKGW.test", "Example.org", "münchen.de"]
icmp = ["echo-request", "icmpv6:echo-request", "destination-unreachable"]
tcp = ["198.51.100.0/25:80,443", "198.51.100.128/25:80,443", "198.51.100.7:22", "[2001:db8:100::/48]:443", "192.168.0.0/16:53", "203.0.113.0/24:8080"]
udp = ["0.0.0.0/0:33434-33534"]
syn_only_ports = [80, 443]
protocols = [47, 50]
back_channel = "203.0.113.7:9000"
tmpfs_mb = 16

[[experimenters]]
name = "A. Researcher"
email = "researcher@example.edu"

[spoof]
sources = ["192.0.2.1", "2001:db8:ffff::1"]
destinations = ["198.51.100.5", "2001:db8:100::5"]
`), "/srv/manifests")
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "everything", formatAdmission(t, node, m))
}
