package runner

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/daemon"
	"github.com/arkgw/arkgw/flowlog"
	"github.com/arkgw/arkgw/netlab"
	"github.com/arkgw/arkgw/nsdo"
	"github.com/arkgw/arkgw/reexec"
	"github.com/arkgw/arkgw/store"
)

func TestMain(m *testing.M) {
	if reexec.Init() {
		return
	}
	code := m.Run()
	if rootDir != "" {
		os.RemoveAll(filepath.Dir(rootDir))
	}
	os.Exit(code)
}

var (
	rootOnce sync.Once
	rootDir  string
	rootErr  error
)

// containerRoot builds the sample container root (with arkprobe) once per
// test binary.
func containerRoot(t *testing.T) string {
	t.Helper()
	rootOnce.Do(func() {
		dir, err := os.MkdirTemp("", "arkgw-root-")
		if err != nil {
			rootErr = err
			return
		}
		rootDir = filepath.Join(dir, "ark-2026.1")
		_, file, _, _ := runtime.Caller(0)
		top := filepath.Dir(filepath.Dir(file))
		probe := filepath.Join(dir, "arkprobe")
		build := exec.Command("go", "build", "-o", probe, "./cmd/arkprobe")
		build.Dir, build.Env = top, append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			rootErr = fmt.Errorf("build arkprobe: %v\n%s", err, out)
			return
		}
		if out, err := exec.Command(filepath.Join(top, "scripts", "rootfs.sh"), rootDir).CombinedOutput(); err != nil {
			rootErr = fmt.Errorf("rootfs.sh: %v\n%s", err, out)
			return
		}
		rootErr = installProbe(probe, rootDir)
	})
	if rootErr != nil {
		t.Fatal(rootErr)
	}
	return rootDir
}

var (
	binMu    sync.Mutex
	binPaths = map[string]string{}
)

// cmdBinary builds ./cmd/<name> once per test binary, CGO off, beside the
// test container root.
func cmdBinary(t *testing.T, name string) string {
	t.Helper()
	dir := filepath.Dir(containerRoot(t))
	binMu.Lock()
	defer binMu.Unlock()
	if p, ok := binPaths[name]; ok {
		return p
	}
	_, file, _, _ := runtime.Caller(0)
	p := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", p, "./cmd/"+name)
	cmd.Dir, cmd.Env = filepath.Dir(filepath.Dir(file)), append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build cmd/%s: %v\n%s", name, err, out)
	}
	binPaths[name] = p
	return p
}

// pcapBinary is the sandbox's /usr/bin/pcap client.
func pcapBinary(t *testing.T) string { return cmdBinary(t, "pcap") }

// helperBinary is arkgw-init, the holder and sandbox init.
func helperBinary(t *testing.T) string { return cmdBinary(t, "arkgw-init") }

// installProbe puts arkprobe on the container's PATH, as `make rootfs` does.
func installProbe(probe, root string) error {
	data, err := os.ReadFile(probe)
	if err != nil {
		return err
	}
	dst := filepath.Join(root, "usr", "local", "bin", "arkprobe")
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o755)
}

// node is a daemon running against a netlab world's node namespace.
type node struct {
	w      *netlab.World
	state  string
	client *daemon.Client
	cancel context.CancelFunc
	done   chan error
}

func startNode(t *testing.T, w *netlab.World, state string, group int) *node {
	t.Helper()
	return startNodeListen(t, w, state, group, "127.0.0.1:0")
}

// startNodeListen starts the daemon on a netlab node; opts adjust its
// configuration (sampling interval, web password) before it starts.
func startNodeListen(t *testing.T, w *netlab.World, state string, group int, listen string, opts ...func(*daemon.Config)) *node {
	t.Helper()
	return startNodeIn(t, w, state, group, listen, w.Node.NS(), opts...)
}

// startNodeIn is startNodeListen with the runner given hostNS for the node
// (nsdo.Current() when the test process runs in the node, as on a node).
func startNodeIn(t *testing.T, w *netlab.World, state string, group int, listen string, hostNS nsdo.NS, opts ...func(*daemon.Config)) *node {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(state, "containers"), 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(state, "containers", "ark-2026.1")
	if _, err := os.Lstat(link); err != nil {
		if err := os.Symlink(containerRoot(t), link); err != nil {
			t.Fatal(err)
		}
	}
	policy := fmt.Sprintf(`node = "netlab"
state_dir = %q
uplink = "eth0"
[dns]
upstreams = [%q]
[alerts]
nflog_group = %d
[lab]
documentation_prefixes = true
`, state, netlab.DNS4, group)
	n, err := configs.ParseNode("node.toml", []byte(policy))
	if err != nil {
		t.Fatal(err)
	}
	n.Web.Listen = listen // tests use port 0: they run side by side
	sock := filepath.Join(state, "arkgw.sock")
	// Registered before the daemon's own clean-up, so it runs after it
	// (last in, first out): the parent can go once the experiments did.
	cgParent := testCgroupParent(t)
	pcap, helper := pcapBinary(t), helperBinary(t) // here: t.Fatal only in the test's goroutine
	ctx, cancel := context.WithCancel(context.Background())
	nd := &node{w: w, state: state, client: daemon.NewClient(sock), cancel: cancel, done: make(chan error, 1)}
	cfg := daemon.Config{
		Policy: &daemon.Policy{Node: n}, Socket: sock, Logger: testLogger(),
		NewRunner: func(deps daemon.RunnerDeps) (daemon.Runner, error) {
			return New(deps, Options{HostNS: hostNS, RunDir: filepath.Join(state, "run"), PcapBinary: pcap, HelperBinary: helper, CgroupParent: cgParent})
		},
	}
	for _, o := range opts {
		o(&cfg)
	}
	go func() { nd.done <- daemon.Run(ctx, cfg, nil) }()
	// Whatever the test does, stop its experiments and the daemon at the
	// end, so a failing test leaves nothing behind either.
	t.Cleanup(func() { nd.stop(t) })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := nd.client.List(); err == nil {
			break
		}
		select {
		case err := <-nd.done:
			t.Fatalf("daemon exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("daemon did not come up")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nd
}

// testLogger logs to the file in ARKGW_TEST_LOG (for benchmarks and
// debugging), else nowhere.
func testLogger() hclog.Logger {
	path := os.Getenv("ARKGW_TEST_LOG")
	if path == "" {
		return hclog.NewNullLogger()
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return hclog.NewNullLogger()
	}
	return hclog.New(&hclog.LoggerOptions{Output: f, Level: hclog.Debug})
}

// stop stops every experiment, then the daemon. Idempotent.
func (nd *node) stop(t *testing.T) {
	if nd.cancel == nil {
		return
	}
	if list, err := nd.client.List(); err == nil {
		for _, x := range list {
			if x.State != store.Completed {
				nd.client.Stop(x.ID)
			}
		}
	}
	nd.cancel()
	nd.cancel = nil
	if err := <-nd.done; err != nil {
		t.Errorf("daemon: %v", err)
	}
}

// testCgroupParent is a cgroup parent of this test binary's own, removed
// when the test ends (production uses "arkgw", kept across restarts).
func testCgroupParent(t *testing.T) string {
	parent := fmt.Sprintf("arkgw-test-%d", os.Getpid())
	t.Cleanup(func() {
		dirs, _ := filepath.Glob("/sys/fs/cgroup/*/" + parent)
		more, _ := filepath.Glob("/sys/fs/cgroup/unified/" + parent)
		for _, d := range append(dirs, more...) {
			os.Remove(d)
		}
	})
	return parent
}

func (nd *node) submit(t *testing.T, manifest string) string {
	t.Helper()
	dir := t.TempDir()
	x, err := nd.client.Submit([]byte(manifest), "m.toml", dir)
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	return x.ID
}

func (nd *node) waitState(t *testing.T, id, state string, timeout time.Duration) daemon.ExperimentView {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		x, err := nd.client.Get(id)
		if err == nil && x.State == state {
			return *x
		}
		if time.Now().After(deadline) {
			out, _ := nd.client.Logs(id, true)
			t.Fatalf("experiment %s: %+v (err %v), want %s; stderr:\n%s", id, x, err, state, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (nd *node) waitLog(t *testing.T, id, want string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, _ := nd.client.Logs(id, false)
		if strings.Contains(string(out), want) {
			return string(out)
		}
		if time.Now().After(deadline) {
			errOut, _ := nd.client.Logs(id, true)
			x, _ := nd.client.Get(id)
			t.Fatalf("experiment %s stdout lacks %q:\n%s\nstderr:\n%s\nrecord: %+v\n%s", id, want, out, errOut, x, cgroupProcs(id))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

const probeManifest = `
title = "probe"
container = "ark-2026.1"
command = ["/bin/sh", "-c", %q]
max_hours = 1
cpu = "minimal"
max_ram_mb = 128
max_mbps = 10
ip = "ipv4"
dns = ["arkgw.test"]
icmp = ["echo-request"]
tcp = ["198.51.100.80/32:80"]
[[experimenters]]
name = "A. Researcher"
email = "researcher@example.edu"
`

// cgroupProcs describes the processes of an experiment's cgroup (for
// failure messages): pid, state, wait channel and command line.
func cgroupProcs(id string) string {
	var b strings.Builder
	for _, dir := range []string{"/sys/fs/cgroup/pids/arkgw/" + id, "/sys/fs/cgroup/arkgw/" + id} {
		procs, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, pid := range strings.Fields(string(procs)) {
			stat, _ := os.ReadFile("/proc/" + pid + "/stat")
			wchan, _ := os.ReadFile("/proc/" + pid + "/wchan")
			cmd, _ := os.ReadFile("/proc/" + pid + "/cmdline")
			fmt.Fprintf(&b, "pid %s stat %.60s wchan %s cmd %q\n", pid, stat, wchan, strings.ReplaceAll(string(cmd), "\x00", " "))
		}
	}
	if b.Len() == 0 {
		return "no processes in the experiment's cgroup"
	}
	return b.String()
}

// waitAlert polls the alert API for a record of experiment id.
func (nd *node) waitAlert(t *testing.T, id string, match func(alert.Record) bool) alert.Record {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var recs []alert.Record
	for time.Now().Before(deadline) {
		body, err := nd.client.Raw("/api/v1/alerts?experiment=" + id)
		if err == nil && json.Unmarshal(body, &recs) == nil {
			for _, r := range recs {
				if match(r) {
					return r
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no matching alert for %s; have %+v", id, recs)
	return alert.Record{}
}

// kernelLeftovers lists arkgw objects in the node namespace: of the given
// experiments (the daemon still runs, its base tables stay), or with no
// ids, any at all (the daemon has stopped with no experiment left).
func kernelLeftovers(t *testing.T, w *netlab.World, ids ...string) string {
	t.Helper()
	mine := func(s string) bool {
		if len(ids) == 0 {
			return strings.Contains(s, "ark")
		}
		for _, id := range ids {
			if strings.Contains(s, `"ark`+id+`"`) || strings.Contains(s, "_"+id+" ") || strings.HasSuffix(s, "_"+id) ||
				s == "ark"+id {
				return true
			}
		}
		return false
	}
	var left []string
	links, _ := w.Node.Handle().LinkList()
	for _, l := range links {
		if n := l.Attrs().Name; strings.HasPrefix(n, "ark") && mine(n) {
			left = append(left, "link "+n)
		}
	}
	out, _ := w.Node.RunE(context.Background(), "nft", "list", "ruleset")
	for _, line := range strings.Split(out, "\n") {
		if line = strings.TrimSpace(line); mine(line) {
			left = append(left, "nft: "+line)
		}
	}
	return strings.Join(left, "\n")
}

func TestPrivilegedEndToEnd(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds netlab namespaces and runs sandboxes")
	}
	w := netlab.NewWorld(t)
	state := t.TempDir()
	nd := startNode(t, w, state, 2000+os.Getpid()%1000)
	defer nd.stop(t)

	script := `arkprobe dns www.arkgw.test; arkprobe tcp 198.51.100.80:80; arkprobe http http://198.51.100.80/; arkprobe tcp 203.0.113.10:22; arkprobe dns www.denied.test; ping -c1 -W2 198.51.100.1 >/dev/null && echo ping ok; echo done; sleep 600`
	id := nd.submit(t, fmt.Sprintf(probeManifest, script))
	nd.waitState(t, id, store.Running, 30*time.Second)
	out := nd.waitLog(t, id, "done", 60*time.Second)
	for _, want := range []string{
		"dns www.arkgw.test A: 198.51.100.80",
		"tcp 198.51.100.80:80: ok",
		"tcp 203.0.113.10:22: FAIL",
		"ping ok",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("experiment output lacks %q:\n%s", want, out)
		}
	}
	// The allowed connection reached the fake Internet NATed; the denied one did not.
	if !w.Internet().Seen(func(r netlab.Record) bool {
		return r.Service == "http" && r.Src.Addr().String() == netlab.NodeUplink4
	}) {
		t.Error("allowed TCP did not arrive at the fake Internet from the node's address")
	}
	if w.Internet().Seen(func(r netlab.Record) bool { return r.Dst.Port() == 22 }) {
		t.Error("denied TCP to port 22 arrived")
	}

	// Staff see both violations, attributed and explained.
	nd.waitAlert(t, id, func(r alert.Record) bool {
		return r.Kind == alert.KindPacket && r.Rule == "tcp-dst" && r.Dst == "203.0.113.10" && r.DstPort == 22 && r.Title == "probe"
	})
	nd.waitAlert(t, id, func(r alert.Record) bool {
		return r.Kind == alert.KindDNS && r.Name == "www.denied.test." && len(r.Contacts) == 1
	})
	// Bytes counted by the kernel, the cap in force.
	deadline := time.Now().Add(10 * time.Second)
	var live *daemon.Status
	for time.Now().Before(deadline) {
		x, _ := nd.client.Get(id)
		if live = x.Live; live != nil && live.BytesUpToday > 0 && live.BytesDownToday > 0 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if live == nil || live.BytesUpToday == 0 || live.BytesDownToday == 0 || live.RateMbps != 10 {
		t.Errorf("live status %+v: want bytes both ways and the 10 Mbit/s cap", live)
	}
	metrics, err := nd.client.Raw("/metrics")
	for _, want := range []string{`arkgw_experiments{state="running"} 1`, `arkgw_alerts_total{kind="packet",rule="tcp-dst"}`, `arkgw_alerts_file_written_total`} {
		if err != nil || !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %s: %v\n%.2000s", want, err, metrics)
		}
	}

	if _, err := nd.client.Stop(id); err != nil {
		t.Fatal(err)
	}
	x := nd.waitState(t, id, store.Completed, 10*time.Second)
	if x.Reason != store.ReasonStoppedStaff {
		t.Errorf("reason %q", x.Reason)
	}
	if left := kernelLeftovers(t, w, id); left != "" {
		t.Errorf("left in the kernel after stop:\n%s", left)
	}
	// Who sent this? The stop removed the experiment's conntrack entries, so
	// its HTTP flow is in the flow log, NATed source included.
	var res flowlog.Result
	deadline = time.Now().Add(10 * time.Second)
	for len(res.Flows) == 0 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		body, err := nd.client.Raw("/api/v1/flows?dst=" + netlab.WWW4 + "&port=80")
		if err == nil {
			json.Unmarshal(body, &res)
		}
	}
	if len(res.Flows) == 0 || res.Flows[0].Experiment != id || res.Flows[0].NATSrc.String() != netlab.NodeUplink4 {
		t.Errorf("flow log for %s:80: %+v, want flows of %s from %s", netlab.WWW4, res.Flows, id, netlab.NodeUplink4)
	}
}
