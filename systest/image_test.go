package systest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/arkgw/arkgw/container"
	"github.com/arkgw/arkgw/netlab"
)

// imagePayload is the experiment's own files (mounted at /experiment): the
// platform's measurement tools, unmodified, as the experiment's uid.
var imagePayload = map[string]string{
	"run.sh": `#!/bin/bash
echo "uid=$(id -u)"
scamper -c "trace -P icmp-paris" -i 198.51.100.1 2>&1 | sed 's/^/trace: /'
scamper -c "ping -c 2" -i 198.51.100.1 2>&1 | sed 's/^/sping: /'
ping -n -c1 -W2 198.51.100.1 >/dev/null && echo ping-ok
python3 /experiment/raw.py
curl -s -o /dev/null -w 'curl-%{http_code}\n' http://www.arkgw.test/
dig +short www.arkgw.test | sed 's/^/dig: /'
echo done
`,
	// An ICMP echo over a raw socket, as probing code does it.
	"raw.py": `import os, socket, struct
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(3)
p = struct.pack("!BBHHH", 8, 0, 0, os.getpid() & 0xffff, 1) + b"arkgw"
p = p[:2] + struct.pack("!H", csum(p)) + p[4:]
s.sendto(p, ("198.51.100.1", 0))
d, a = s.recvfrom(1500)
print("raw-icmp-reply from %s type %d" % (a[0], d[20]))
`,
}

const imageManifest = `
title = "Traceroute survey in the standard image"
container = %q
container_sha256 = %q
command = ["/bin/bash", "/experiment/run.sh"]
files = "payload"
max_hours = 1
cpu = "minimal"
max_ram_mb = 256
max_mbps = 5
ip = "ipv4"
dns = ["arkgw.test"]
icmp = ["echo-request"]
tcp = ["198.51.100.80/32:80"]
[[experimenters]]
name = "Grace Hopper"
email = "grace@example.edu"
`

// TestPrivilegedSystemImage: the standard container image, signed, imported
// and pinned with the installed CLI, runs the platform's tools unmodified
// as the experiment's uid on a node run as nodes run.
func TestPrivilegedSystemImage(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the system test runs the daemon with network namespaces, nftables, loop devices and cgroups; run make test-system as root")
	}
	netlab.LockNode(t) // before anything whose cleanup must run under it
	for _, tool := range []string{"mmdebstrap", "mksquashfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s missing: apt-get install mmdebstrap squashfs-tools (scripts/deps.sh installs them)", tool)
		}
	}
	bin := install(t)
	image := standardImage(t)
	w := netlab.NewWorld(t)
	state := t.TempDir()
	dir := t.TempDir()

	// The platform signs the image; the owner trusts its key.
	key := filepath.Join(dir, "platform.key")
	n0 := &node{t: t, w: w, bin: bin}
	out := n0.must("container", "keygen", "--key", key)
	pub := ""
	for _, l := range strings.Split(out, "\n") {
		if f := strings.SplitN(l, "trusted_keys = [", 2); len(f) == 2 {
			pub = strings.Trim(strings.TrimSuffix(strings.TrimSpace(f[1]), "]"), `"`)
		}
	}
	if pub == "" {
		t.Fatalf("container keygen printed no public key:\n%s", out)
	}
	signed := copyImage(t, image, filepath.Join(dir, "signed"))
	n0.must("container", "sign", signed, "--key", key)

	policy := nodePolicy(state, freePort(t, w)) + fmt.Sprintf("[containers]\ntrusted_keys = [%q]\n", pub)
	config := filepath.Join(dir, "node.toml")
	if err := os.WriteFile(config, []byte(policy), 0o640); err != nil {
		t.Fatal(err)
	}
	n0.config = config

	// A one-byte change is refused, naming the mismatch.
	tampered := copyImage(t, signed, filepath.Join(dir, "tampered"))
	flipByte(t, tampered, 4096)
	if out, errs, code := n0.cli("container", "import", tampered, "--config", config); code == 0 || !strings.Contains(out+errs, "sha256 mismatch") {
		t.Fatalf("import of a modified image: exit %d\n%s%s", code, out, errs)
	}
	out = n0.must("container", "import", signed, "--config", config)
	if !strings.Contains(out, "signature verified") {
		t.Fatalf("container import: %s", out)
	}
	meta, _, err := container.ReadMeta(signed)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { container.Unmount(filepath.Join(state, "containers", meta.Version)) })

	n := startNode(t, w, bin, policy, state)
	manifest := fmt.Sprintf(imageManifest, meta.Version, meta.SHA256)

	t.Run("a wrong pin is refused naming both hashes", func(t *testing.T) {
		wrong := strings.Repeat("ab", 32)
		m := writeExperiment(t, strings.Replace(manifest, meta.SHA256, wrong, 1), imagePayload)
		out, errs, code := n.cli("check", m)
		if code != 1 || !strings.Contains(out+errs, wrong) || !strings.Contains(out+errs, meta.SHA256) {
			t.Errorf("arkgw check with a wrong container_sha256: exit %d\n%s%s", code, out, errs)
		}
	})

	id := strings.TrimSpace(n.must("submit", writeExperiment(t, manifest, imagePayload)))
	x := n.waitState(id, "completed", 3*time.Minute)
	stdout, _, _ := n.cli("logs", id)
	stderr, _, _ := n.cli("logs", id, "--stderr")
	if x.ExitCode != 0 {
		t.Errorf("experiment exited %d (%s: %s)\nstdout:\n%s\nstderr:\n%s", x.ExitCode, x.Reason, x.Detail, stdout, stderr)
	}
	for _, want := range []string{
		"uid=1000",
		"trace: traceroute from",
		"sping: 2 packets transmitted, 2 packets received",
		"ping-ok",
		"raw-icmp-reply from 198.51.100.1 type 0",
		"curl-200",
		"dig: " + netlab.WWW4,
		"done",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("experiment output lacks %q\nstdout:\n%s\nstderr:\n%s", want, stdout, stderr)
		}
	}
	// The trace reaches its destination: a hop line (not the header)
	// naming it.
	reached := false
	for _, l := range strings.Split(stdout, "\n") {
		if strings.HasPrefix(l, "trace: ") && !strings.Contains(l, "traceroute from") && strings.Contains(l, "198.51.100.1 ") {
			reached = true
		}
	}
	if !reached {
		t.Errorf("scamper trace did not reach 198.51.100.1:\n%s", stdout)
	}
	if strings.Contains(stdout+stderr, "could not chroot") {
		t.Errorf("scamper's privilege separation failed:\n%s%s", stdout, stderr)
	}
	n.term()
	checkLog(t, n.logf)
}

// standardImage is the standard image (cached by its build inputs, shared
// with the container and try tests: pcap built as they build it).
func standardImage(t *testing.T) string {
	t.Helper()
	pcap := filepath.Join(t.TempDir(), "pcap")
	cmd := exec.Command("go", "build", "-trimpath", "-o", pcap, "./cmd/pcap")
	cmd.Dir = repoTop()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "PATH="+os.Getenv("PATH")+":/usr/local/go/bin")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build pcap: %v\n%s", err, out)
	}
	cache := os.Getenv("ARKGW_TEST_CACHE")
	if cache == "" {
		cache = "/var/cache/arkgw-test"
	}
	var log strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	img, _, err := container.Cached(ctx, cache, container.BuildOptions{Version: "ark-test", PcapBinary: pcap, Stderr: &log})
	if err != nil {
		t.Fatalf("standard image: %v\n%s", err, log.String())
	}
	return img
}

// copyImage copies an image and its metadata (not its signature) into dir.
func copyImage(t *testing.T, image, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, filepath.Base(image))
	for _, p := range []struct{ src, dst string }{{image, dst}, {container.MetaPath(image), container.MetaPath(dst)}, {container.SigPath(image), container.SigPath(dst)}} {
		b, err := os.ReadFile(p.src)
		if err != nil {
			if os.IsNotExist(err) && p.src == container.SigPath(image) {
				continue
			}
			t.Fatal(err)
		}
		if err := os.WriteFile(p.dst, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// writeExperiment writes a manifest and its payload directory as an
// experimenter's checkout and returns the manifest's path.
func writeExperiment(t *testing.T, manifest string, payload map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "payload"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, text := range payload {
		if err := os.WriteFile(filepath.Join(dir, "payload", name), []byte(text), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	p := filepath.Join(dir, "manifest.toml")
	if err := os.WriteFile(p, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
