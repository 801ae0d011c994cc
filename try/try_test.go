package try

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/arkgw/arkgw/container"
	"github.com/arkgw/arkgw/netlab"
	"github.com/arkgw/arkgw/reexec"
)

func TestMain(m *testing.M) {
	if reexec.Init() {
		return
	}
	os.Exit(m.Run())
}

// buildBinaries builds cmd/arkgw-init and cmd/pcap into dir.
func buildBinaries(t *testing.T, dir string) (helper, pcap string) {
	t.Helper()
	helper, pcap = filepath.Join(dir, "arkgw-init"), filepath.Join(dir, "pcap")
	for _, b := range []struct{ out, pkg string }{{helper, "../cmd/arkgw-init"}, {pcap, "../cmd/pcap"}} {
		cmd := exec.Command("go", "build", "-trimpath", "-o", b.out, b.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", b.pkg, err, out)
		}
	}
	return helper, pcap
}

func cacheDir() string {
	if d := os.Getenv("ARKGW_TEST_CACHE"); d != "" {
		return d
	}
	return "/var/cache/arkgw-test"
}

func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		d := filepath.Join(dst, rel)
		if fi.IsDir() {
			return os.MkdirAll(d, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(d, b, fi.Mode().Perm()|0o444)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// testImage returns the cached standard image and the helper binaries.
func testImage(t *testing.T) (image, helper, pcap string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: namespaces, nftables, loop devices, cgroups")
	}
	for _, tool := range []string{"mmdebstrap", "mksquashfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s missing: apt-get install mmdebstrap squashfs-tools (scripts/deps.sh)", tool)
		}
	}
	helper, pcap = buildBinaries(t, t.TempDir())
	var buildLog strings.Builder
	image, _, err := container.Cached(context.Background(), cacheDir(), container.BuildOptions{
		Version: "ark-test", PcapBinary: pcap, Stderr: &buildLog})
	if err != nil {
		t.Fatalf("standard image: %v\n%s", err, buildLog.String())
	}
	return image, helper, pcap
}

// `arkgw try` of configs/examples/ping-survey.toml in netlab's fake
// Internet (the try code runs in a netlab "node" namespace, NATing out of
// its uplink): the survey's results are printed, and a destination the
// manifest does not declare (TCP to 198.51.100.80:80, added to the payload
// script) is dropped and alerted live; nothing is left behind.
func TestPrivilegedTryPingSurvey(t *testing.T) {
	image, helper, pcap := testImage(t)

	exp := t.TempDir()
	os.Chmod(exp, 0o755)
	copyTree(t, "../configs/examples/payload", filepath.Join(exp, "payload"))
	manifest, err := os.ReadFile("../configs/examples/ping-survey.toml")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(exp, "ping-survey.toml"), manifest, 0o644)
	script := filepath.Join(exp, "payload", "ping-survey.sh")
	f, err := os.OpenFile(script, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(f, "curl -s -m 3 http://198.51.100.80/ >/dev/null || echo undeclared-refused")
	f.Close()

	w := netlab.NewWorld(t)
	linksBefore := nodeState(t, w)
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := Run(ctx, Options{
		Manifest: filepath.Join(exp, "ping-survey.toml"), Image: image, HostNS: w.Node.NS(), Lab: true,
		HelperBinary: helper, PcapBinary: pcap, Out: &out,
		Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: os.Stderr}),
	})
	t.Logf("try output:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	o := out.String()
	for _, want := range []string{"up 198.51.100.1\n", "up 198.51.100.254\n", "up 2001:db8:100::1\n", "undeclared-refused", "--- exit code 0"} {
		if !strings.Contains(o, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	found := false
	for _, a := range res.Alerts {
		if a.Dst == "198.51.100.80" && a.DstPort == 80 && a.Proto == "tcp" {
			found = true
		}
	}
	if !found || !strings.Contains(o, "ALERT") || !strings.Contains(o, "198.51.100.80:80") {
		t.Errorf("no live alert for the undeclared TCP 198.51.100.80:80; alerts %+v", res.Alerts)
	}
	checkNothingLeft(t, w, linksBefore)
}

// Ctrl-C (ctx cancelled) stops a running experiment and removes
// everything.
func TestPrivilegedTryInterrupted(t *testing.T) {
	image, helper, pcap := testImage(t)
	exp := t.TempDir()
	os.Chmod(exp, 0o755)
	m := `title = "sleeps"
container = "ark-test"
command = ["/bin/sh", "-c", "echo started; sleep 300; echo never"]
max_hours = 1
[[experimenters]]
name = "A. Researcher"
email = "researcher@example.edu"
`
	os.WriteFile(filepath.Join(exp, "m.toml"), []byte(m), 0o644)
	w := netlab.NewWorld(t)
	linksBefore := nodeState(t, w)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw, _ := os.Pipe()
	defer pr.Close()
	go func() {
		// cancel once the run has started
		buf := make([]byte, 4096)
		var seen strings.Builder
		for {
			n, err := pr.Read(buf)
			seen.Write(buf[:n])
			if strings.Contains(seen.String(), "Ctrl-C stops it") {
				time.Sleep(2 * time.Second)
				cancel()
			}
			if err != nil {
				return
			}
		}
	}()
	t0 := time.Now()
	res, err := Run(ctx, Options{Manifest: filepath.Join(exp, "m.toml"), Image: image, HostNS: w.Node.NS(), Lab: true,
		HelperBinary: helper, PcapBinary: pcap, Out: pw})
	pw.Close()
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(t0) > 2*time.Minute || !strings.Contains(string(res.Stdout), "started") || strings.Contains(string(res.Stdout), "never") || res.Exit.Signal == "" {
		t.Fatalf("interrupted run: %+v stdout %q after %s", res.Exit, res.Stdout, time.Since(t0))
	}
	checkNothingLeft(t, w, linksBefore)
}

// checkNothingLeft: the image unmounted, no link or work directory of the
// run left.
func checkNothingLeft(t *testing.T, w *netlab.World, before string) {
	t.Helper()
	if after := nodeState(t, w); after != before {
		t.Errorf("the node's links or nftables tables changed: %s -> %s", before, after)
	}
	if mounts, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mounts), "arkgw-try-") {
		t.Errorf("a mount of the try run is left:\n%s", mounts)
	}
	if cg, _ := filepath.Glob("/sys/fs/cgroup/*/" + cgroupParent); len(cg) > 0 {
		t.Errorf("cgroups left: %v", cg)
	}
	if ms, _ := filepath.Glob(filepath.Join(os.TempDir(), "arkgw-try-*")); len(ms) > 0 {
		t.Errorf("work directories left: %v", ms)
	}
}

// nodeState lists the links and nftables tables of the netlab node (the
// "machine" try ran on).
func nodeState(t *testing.T, w *netlab.World) string {
	t.Helper()
	var names []string
	for _, l := range strings.Split(w.Node.Run(t, "ip", "-br", "link"), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return strings.Join(names, ",") + " | " + strings.Join(strings.Fields(w.Node.Run(t, "nft", "list", "tables")), " ")
}
