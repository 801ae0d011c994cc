package configs

import (
	"io"
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

// FuzzParseManifest: arbitrary bytes never panic; a manifest that parses
// can be admitted against the default node policy and formatted.
func FuzzParseManifest(f *testing.F) {
	files, _ := filepath.Glob("examples/*.toml")
	for _, file := range files {
		if data, err := os.ReadFile(file); err == nil {
			f.Add(stripComments(data))
		}
	}
	f.Add([]byte(manifest(`tcp = ["198.51.100.0/24:80-443,8080", "[2001:db8::/32]:*", "any", "none"]
icmp = ["any", 3, "icmpv6:128"]
syn_only_ports = ["1-65535"]
dns = ["münchen.de", "any"]
start = 2026-01-01`, "[spoof]\nsources = [\"::1\"]\ndestinations = [\"10.0.0.1\"]")))
	f.Add([]byte("title = 1\n[[experimenters]]\n"))
	node := DefaultNode()
	open := mustNodeF(f, `[permit]
tcp = ["198.51.100.0/24:80"]
tcp_ports = [443]
all_packets = ["198.51.100.0/24", "2001:db8::/32"]
spoof_destinations = ["198.51.100.0/24"]
[dns]
allow = ["example.org"]`)
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseManifest("fuzz.toml", data, "/srv/exp")
		if err != nil {
			if m != nil {
				t.Fatal("manifest and error")
			}
			return
		}
		for _, n := range []*NodePolicy{node, open} {
			eff, _ := Admit(n, m, Env{ID: "fz1", DefaultRouters: goldenRouters})
			if eff == nil {
				t.Fatal("nil effective policy")
			}
			checkDisjoint(t, "tcp", eff.TCP)
			checkDisjoint(t, "udp", eff.UDP)
			if err := FormatEffective(io.Discard, eff); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// FuzzParseNode: arbitrary bytes never panic; a node policy that parses
// can admit a manifest.
func FuzzParseNode(f *testing.F) {
	if data, err := os.ReadFile("node.toml"); err == nil {
		f.Add(stripComments(data))
	}
	f.Add([]byte("[permit]\ntcp = [\"any\", \"none\", \"[::/0]:1-2,3\"]\nicmp = [1, \"icmpv6:nd-router-advert\"]\n[limits]\ncpu = {}\n"))
	f.Add([]byte("[alerts]\nwindow = \"-1s\"\n[dns]\nupstreams = [\"[::1]:0\"]"))
	m, err := ParseManifest("m.toml", []byte(manifest(`tcp = ["any"]
udp = ["198.51.100.0/24:53"]
icmp = ["echo-request"]
dns = ["example.org"]
back_channel = "203.0.113.7:9000"`, "[spoof]\nsources = [\"192.0.2.1\"]\ndestinations = [\"198.51.100.5\"]")), "/srv")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := ParseNode("fuzz.toml", data)
		if err != nil {
			if n != nil {
				t.Fatal("node and error")
			}
			return
		}
		eff, _ := Admit(n, m, Env{})
		if err := FormatEffective(io.Discard, eff); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzParseDest: entry syntax never panics, and what parses formats back
// to the same value.
func FuzzParseDest(f *testing.F) {
	for _, s := range []string{"198.51.100.0/24:80,443", "[2001:db8::/32]:53", "any", "none", "1.2.3.4:1-65535", "[::]:*"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ds, err := ParseDest(s, true)
		if err != nil {
			return
		}
		for _, d := range ds {
			again, err := ParseDest(FormatDest(d), false)
			if err != nil || len(again) != 1 || again[0].Prefix != d.Prefix || FormatPorts(again[0].Ports) != FormatPorts(d.Ports) {
				t.Fatalf("%q -> %v -> %q -> %v, %v", s, d, FormatDest(d), again, err)
			}
		}
	})
}

func mustNodeF(f *testing.F, text string) *NodePolicy {
	n, err := ParseNode("node.toml", []byte(text))
	if err != nil {
		f.Fatal(err)
	}
	return n
}

var comment = regexp.MustCompile(`(?m)(^|\s+)#.*$`)

// stripComments keeps fuzz seeds small (minimizing a 4 kB input takes the
// fuzzer long); the files have no '#' inside strings.
func stripComments(b []byte) []byte {
	return regexp.MustCompile(`\n+`).ReplaceAll(comment.ReplaceAll(b, nil), []byte("\n"))
}
