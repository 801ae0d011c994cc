package systest

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/arkgw/arkgw/netlab"
)

// goodManifest declares everything it does: the name it resolves, ping, an
// HTTP fetch, and a TCP echo connection it then holds open.
const goodManifest = `
title = "Well-behaved latency survey"
container = "ark-2026.1"
command = ["/bin/bash", "-c", """
(/usr/bin/pcap | head -c 4 | od -An -tx1 | sed 's/^ */pcap-magic /') &
getent hosts www.arkgw.test || echo resolve-failed
ping -n -c1 -W2 198.51.100.1 >/dev/null && echo ping-ok
exec 3<>/dev/tcp/198.51.100.80/80 && printf 'GET /survey HTTP/1.0\\r\\nHost: www.arkgw.test\\r\\n\\r\\n' >&3 && head -1 <&3
exec 3<&-
exec 4<>/dev/tcp/198.51.100.7/7 && echo hold >&4 && read -r line <&4 && echo "echo-$line"
sleep 3600
"""]
max_hours = 1
cpu = "minimal"
max_ram_mb = 128
max_mbps = 5
ip = "ipv4"
dns = ["arkgw.test"]
icmp = ["echo-request"]
tcp = ["198.51.100.80/32:80", "198.51.100.7/32:7"]
[[experimenters]]
name = "Ada Lovelace"
email = "ada@example.edu"
`

// badManifest declares ICMP and DNS for arkgw.test only, then tries SSH to
// another host (every second, so the test can watch it stay dropped while
// the daemon is down) and a name it did not declare.
const badManifest = `
title = "Survey that breaks its declaration"
container = "ark-2026.1"
command = ["/bin/bash", "-c", """
getent hosts www.denied.test && echo resolved-denied || echo denied-refused
while true; do timeout 1 bash -c 'exec 3<>/dev/tcp/203.0.113.10/22' 2>/dev/null && echo ssh-connected; sleep 1; done
"""]
max_hours = 1
cpu = "minimal"
max_ram_mb = 128
max_mbps = 1
ip = "ipv4"
dns = ["arkgw.test"]
icmp = ["echo-request"]
[[experimenters]]
name = "Mallory Example"
email = "mallory@example.org"
`

// TestPrivilegedSystemNode runs a node as it really runs and checks what
// the node owner, the experimenters and staff rely on, through the built
// binaries and their command lines only.
func TestPrivilegedSystemNode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the system test runs the daemon with network namespaces, nftables and cgroups; run make test-system as root")
	}
	netlab.LockNode(t) // before anything whose cleanup must run under it
	bin := install(t)
	w := netlab.NewWorld(t)
	state := t.TempDir()
	root := filepath.Join(state, "containers", "ark-2026.1")
	makeContainerRoot(t, root)
	webPort := freePort(t, w)
	web := fmt.Sprintf("127.0.0.1:%d", webPort)
	n := startNode(t, w, bin, nodePolicy(state, webPort), state)
	alertsFile := filepath.Join(state, "alerts.jsonl")

	t.Run("the unit verifies", func(t *testing.T) {
		if _, err := exec.LookPath("systemd-analyze"); err != nil {
			t.Skip("systemd-analyze not installed")
		}
		// The unit as installed, naming the installed binary where DESTDIR put it.
		b, err := os.ReadFile(bin.unit)
		if err != nil {
			t.Fatal(err)
		}
		unit := filepath.Join(t.TempDir(), "arkgw.service")
		os.WriteFile(unit, []byte(strings.ReplaceAll(string(b), "/usr/local/sbin/arkgw", bin.arkgw)), 0o644)
		if out, err := exec.Command("systemd-analyze", "verify", unit).CombinedOutput(); err != nil || len(out) > 0 {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
	})

	t.Run("check judges by the running daemon's policy", func(t *testing.T) {
		dir := t.TempDir()
		m := filepath.Join(dir, "m.toml")
		os.WriteFile(m, []byte(goodManifest), 0o644)
		out, errs, code := n.cliEnv([]string{"ARKGW_CONFIG="}, "check", m)
		if code != 0 || !strings.Contains(out, n.config+" (in force in the running daemon)") {
			t.Errorf("arkgw check: exit %d\n%s%s", code, out, errs)
		}
	})

	good := n.submit(goodManifest)
	bad := n.submit(badManifest)
	n.waitState(good, "running", 30*time.Second)
	n.waitState(bad, "running", 30*time.Second)

	t.Run("declared traffic works", func(t *testing.T) {
		out := n.waitOutput(good, 30*time.Second, "www.arkgw.test", "ping-ok", "HTTP/1.", "echo-hold", "pcap-magic")
		// The experiment's own packets, streamed by the daemon to the
		// sandbox's /usr/bin/pcap: a pcap file header (either byte order,
		// micro- or nanosecond).
		if !strings.Contains(out, "pcap-magic d4 c3 b2 a1") && !strings.Contains(out, "pcap-magic 4d 3c b2 a1") &&
			!strings.Contains(out, "pcap-magic a1 b2 c3 d4") && !strings.Contains(out, "pcap-magic a1 b2 3c 4d") {
			t.Errorf("/usr/bin/pcap in the sandbox did not stream a pcap header:\n%s", out)
		}
		if strings.Contains(out, "resolve-failed") {
			t.Errorf("declared name did not resolve:\n%s", out)
		}
		if !w.Seen(func(r netlab.Record) bool {
			return r.Service == "http" && strings.Contains(r.Detail, "/survey") && r.Src.Addr() == netip.MustParseAddr(netlab.NodeUplink4)
		}) {
			t.Errorf("the fake Internet saw no HTTP GET /survey from the node's uplink address; log: %v", w.Log())
		}
	})

	t.Run("undeclared traffic is dropped and alerted", func(t *testing.T) {
		n.waitOutput(bad, 30*time.Second, "denied-refused")
		a := n.waitAlert(30*time.Second, "tcp-dst to 203.0.113.10:22", func(r alertLine) bool {
			return r.Experiment == bad && r.Proto == "tcp" && r.Dst == netlab.Other4 && r.DstPort == 22
		})
		if !strings.Contains(a.Message, "dropped") {
			t.Errorf("alert message %q does not say the packet was dropped", a.Message)
		}
		n.waitAlert(30*time.Second, "dns www.denied.test", func(r alertLine) bool {
			return r.Experiment == bad && r.Kind == "dns" && strings.HasPrefix(r.Name, "www.denied.test")
		})
		if out, _, _ := n.cli("logs", bad); strings.Contains(out, "ssh-connected") || strings.Contains(out, "resolved-denied") {
			t.Errorf("undeclared traffic got through:\n%s", out)
		}
		if w.Seen(func(r netlab.Record) bool { return r.Dst.Port() == 22 }) {
			t.Errorf("the fake Internet saw a packet to port 22")
		}
		if w.Seen(func(r netlab.Record) bool { return strings.Contains(r.Detail, "denied.test") }) {
			t.Errorf("the fake Internet's DNS saw the undeclared name")
		}
		// Staff read the same alerts in text, naming the experiment.
		out, _, code := n.cli("alerts")
		if code != 0 || !strings.Contains(out, bad) || !strings.Contains(out, "203.0.113.10") {
			t.Errorf("arkgw alerts (text): exit %d\n%s", code, out)
		}
	})

	t.Run("flows name the experiment of an open flow", func(t *testing.T) {
		f := waitFlows(t, n, 20*time.Second, "--dst", netlab.Echo4, "--port", "7")
		if f.experiment(good) == 0 {
			t.Errorf("arkgw flows --dst %s --port 7 does not name %s: %+v", netlab.Echo4, good, f)
		}
	})

	t.Run("list, logs and the owner page", func(t *testing.T) {
		out := n.must("list")
		for _, want := range []string{good, bad, "Well-behaved latency survey", "mallory@example.org", "running"} {
			if !strings.Contains(out, want) {
				t.Errorf("arkgw list lacks %q:\n%s", want, out)
			}
		}
		code, body := n.page(web, "/")
		if code != 200 || !strings.Contains(body, "Survey that breaks its declaration") || !strings.Contains(body, "ada@example.edu") {
			t.Errorf("owner page: %d\n%.2000s", code, body)
		}
		// The misbehaving experiment's page: what it declared, and its alerts.
		code, body = n.page(web, "/experiments/"+bad)
		for _, want := range []string{"mallory@example.org", "arkgw.test", "echo-request", netlab.Other4} {
			if code != 200 || !strings.Contains(body, want) {
				t.Errorf("owner page /experiments/%s: %d, lacks %q", bad, code, want)
			}
		}
	})

	t.Run("kill -9: forbidden traffic stays dropped, experiments re-adopted", func(t *testing.T) {
		before := n.alerts()
		n.kill9()
		// While the daemon is down the bad experiment keeps trying SSH every
		// second: the kernel's rules still drop it.
		time.Sleep(5 * time.Second)
		if w.Seen(func(r netlab.Record) bool { return r.Dst.Port() == 22 }) {
			t.Fatalf("with the daemon down, a packet to port 22 reached the fake Internet")
		}
		// Staff can still read alerts with the daemon down (the policy file names them).
		if got := n.alerts("ARKGW_CONFIG=" + n.config); len(got) < len(before) {
			t.Errorf("arkgw alerts with the daemon down: %d records, had %d", len(got), len(before))
		}
		n.start()
		for _, id := range []string{good, bad} {
			if x := n.get(id); x.State != "running" {
				t.Errorf("after restart %s is %s (%s: %s), want running (re-adopted)", id, x.State, x.Reason, x.Detail)
			}
		}
		// The re-adopted experiment still alerts, and still cannot leave.
		n.waitAlert(20*time.Second, "tcp-dst after restart", func(r alertLine) bool {
			return r.Experiment == bad && r.DstPort == 22 && !containsAlert(before, r)
		})
		if w.Seen(func(r netlab.Record) bool { return r.Dst.Port() == 22 }) {
			t.Errorf("after the restart a packet to port 22 reached the fake Internet")
		}
	})

	t.Run("stop, and flows after the end", func(t *testing.T) {
		for _, id := range []string{good, bad} {
			out := n.must("stop", id)
			if !strings.Contains(out, "completed") {
				t.Errorf("arkgw stop %s: %s", id, out)
			}
		}
		f := waitFlows(t, n, 20*time.Second, "--dst", netlab.WWW4, "--port", "80")
		if f.experiment(good) == 0 {
			t.Errorf("after the experiment ended, arkgw flows --dst %s --port 80 does not name %s: %+v", netlab.WWW4, good, f)
		}
	})

	t.Run("a failed start says why", func(t *testing.T) {
		// Admitted at submit, planned two seconds ahead; its files are
		// gone when it is due, so its sandbox cannot be made.
		start := time.Now().Add(2 * time.Second).UTC().Format(time.RFC3339)
		m := writeExperiment(t, fmt.Sprintf("files = \"payload\"\nstart = %q\n", start)+goodManifest, map[string]string{"run.sh": "true\n"})
		id := strings.TrimSpace(n.must("submit", m))
		if err := os.RemoveAll(filepath.Join(filepath.Dir(m), "payload")); err != nil {
			t.Fatal(err)
		}
		x := n.waitState(id, "completed", 30*time.Second)
		if x.ExitCode == 0 || !strings.Contains(x.Detail, "payload") {
			t.Errorf("failed start recorded as exit %d, detail %q", x.ExitCode, x.Detail)
		}
		if out := n.must("list"); !strings.Contains(out, "refused at start: sandbox "+id) || !strings.Contains(out, "(exit 125)") {
			t.Errorf("arkgw list does not say why %s failed:\n%s", id, out)
		}
		if out := n.must("logs", id, "--stderr"); !strings.Contains(out, "failed to start") {
			t.Errorf("arkgw logs %s --stderr: %q", id, out)
		}
		if _, errs, _ := n.cli("logs", id); !strings.Contains(errs, "failed to start") {
			t.Errorf("arkgw logs %s says nothing of the failed start on stderr: %q", id, errs)
		}
	})

	t.Run("shutdown and cleanup leave nothing", func(t *testing.T) {
		n.term()
		if out, errs, code := n.cli("cleanup", "--config", n.config); code != 0 {
			t.Errorf("arkgw cleanup: exit %d\n%s%s", code, out, errs)
		}
		if links, err := w.Node.Handle().LinkList(); err == nil {
			for _, l := range links {
				if strings.HasPrefix(l.Attrs().Name, "ark") {
					t.Errorf("link %s left in the node's namespace", l.Attrs().Name)
				}
			}
		}
		if out, err := w.Node.RunE(t.Context(), "nft", "list", "tables"); err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("nft tables left in the node's namespace: %q %v", out, err)
		}
		if left, _ := filepath.Glob("/sys/fs/cgroup/*/arkgw"); len(left) > 0 {
			t.Errorf("cgroup parent left after cleanup with nothing running: %v", left)
		}
		if left, _ := filepath.Glob("/sys/fs/cgroup/*/arkgw/*"); len(dirsOnly(left)) > 0 {
			t.Errorf("cgroups left: %v", dirsOnly(left))
		}
		if left, _ := filepath.Glob("/sys/fs/cgroup/unified/arkgw/*"); len(dirsOnly(left)) > 0 {
			t.Errorf("cgroups left: %v", dirsOnly(left))
		}
		mounts, _ := os.ReadFile("/proc/self/mountinfo")
		for _, l := range strings.Split(string(mounts), "\n") {
			// The image's own read-only mount is the test's, not the daemon's.
			if f := strings.Fields(l); len(f) > 4 && f[4] == root {
				continue
			}
			if strings.Contains(l, nodeRunDir+"/") || strings.Contains(l, state) {
				t.Errorf("mount left: %s", l)
			}
		}
	})

	t.Run("the daemon's log and alerts hold only what happened", func(t *testing.T) {
		checkLog(t, n.logf)
		b, err := os.ReadFile(alertsFile)
		if err != nil {
			t.Fatal(err)
		}
		unprovoked := 0
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			var r alertLine
			json.Unmarshal([]byte(l), &r)
			if r.Kind == "overrun" || (r.Experiment != bad && r.Experiment != good) {
				if unprovoked++; unprovoked <= 5 {
					t.Errorf("alert the test did not provoke: %s", l)
				}
			}
		}
		if unprovoked > 5 {
			t.Errorf("%d alerts the test did not provoke in all", unprovoked)
		}
	})
}

func containsAlert(l []alertLine, r alertLine) bool {
	for _, x := range l {
		if x == r {
			return true
		}
	}
	return false
}

func dirsOnly(paths []string) []string {
	var out []string
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			out = append(out, p)
		}
	}
	return out
}

// flows is `arkgw flows --json`.
type flows struct {
	Flows []struct{ Experiment string } `json:"flows"`
	Open  []struct{ Experiment string } `json:"open"`
}

func (f flows) experiment(id string) int {
	k := 0
	for _, x := range append(f.Flows, f.Open...) {
		if x.Experiment == id {
			k++
		}
	}
	return k
}

func waitFlows(t *testing.T, n *node, timeout time.Duration, args ...string) flows {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, errs, code := n.cli(append([]string{"flows", "--json"}, args...)...)
		var f flows
		if code == 0 {
			if err := json.Unmarshal([]byte(out), &f); err != nil {
				t.Fatalf("arkgw flows --json: %v\n%s", err, out)
			}
			if len(f.Flows)+len(f.Open) > 0 {
				return f
			}
		}
		if time.Now().After(deadline) {
			t.Errorf("arkgw flows %v: exit %d, nothing within %s\n%s%s", args, code, timeout, out, errs)
			return f
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// checkLog fails on a warning or error the daemon repeated more than a
// handful of times: a fault that repeats must back off and be counted.
func checkLog(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	count, sample := map[string]int{}, map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		var e struct {
			Level   string `json:"@level"`
			Message string `json:"@message"`
		}
		if json.Unmarshal([]byte(l), &e) != nil {
			continue
		}
		if e.Level == "warn" || e.Level == "error" {
			k := e.Level + ": " + e.Message
			count[k]++
			sample[k] = l
		}
	}
	var keys []string
	for k := range count {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if count[k] > 5 {
			t.Errorf("daemon log repeats %q %d times; the last: %s", k, count[k], sample[k])
		} else {
			t.Logf("daemon log: x%d %s", count[k], sample[k])
		}
	}
}

// freePort picks a TCP port free in the node's namespace for the page.
func freePort(t *testing.T, w *netlab.World) int {
	t.Helper()
	l, err := w.Node.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// makeContainerRoot makes the container version as images ship: the small
// test root (scripts/rootfs.sh) without any of the mount points the
// sandbox uses, packed as squashfs and loop-mounted read-only at dir, one
// mount. The sandbox must run it without writing to it.
func makeContainerRoot(t *testing.T, dir string) {
	t.Helper()
	tree := filepath.Join(t.TempDir(), "root")
	if out, err := exec.Command(filepath.Join(repoTop(), "scripts", "rootfs.sh"), tree).CombinedOutput(); err != nil {
		t.Fatalf("rootfs.sh: %v\n%s", err, out)
	}
	for _, p := range []string{"proc", "dev", "tmp", "run", "experiment", "etc/resolv.conf", "etc/hosts", "etc/hostname", "usr/bin/pcap"} {
		if err := os.RemoveAll(filepath.Join(tree, p)); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(t.TempDir(), "root.sqfs")
	if out, err := exec.Command("mksquashfs", tree, img, "-noappend", "-all-root", "-quiet").CombinedOutput(); err != nil {
		t.Fatalf("mksquashfs (Debian: squashfs-tools): %v\n%s", err, out)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-o", "loop,ro", "-t", "squashfs", img, dir).CombinedOutput(); err != nil {
		t.Fatalf("mount %s read-only on %s: %v\n%s", img, dir, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", dir, err, out)
		}
	})
}
