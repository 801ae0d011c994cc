package runner

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/daemon"
	"github.com/arkgw/arkgw/netlab"
	"github.com/arkgw/arkgw/nsdo"
	"github.com/arkgw/arkgw/store"
)

// buildArkgw builds the real binary (and the pcap client and arkgw-init
// beside it, where the daemon finds them).
func buildArkgw(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	top := filepath.Dir(filepath.Dir(file))
	dir := t.TempDir()
	for _, p := range []string{"arkgw", "pcap", "arkgw-init"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, p), "./cmd/"+p)
		cmd.Dir, cmd.Env = top, append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", p, err, out)
		}
	}
	return filepath.Join(dir, "arkgw")
}

// procDaemon is `arkgw run` as its own process inside the netlab node.
type procDaemon struct {
	bin, config, sock, runDir string
	w                         *netlab.World
	cmd                       *exec.Cmd
	log                       *os.File
	stopped                   bool // the test stopped it itself
}

// startProcNode builds the real binary (with arkgw-init and pcap beside
// it) and starts it as the daemon of w's node with a fresh state
// directory. At cleanup its experiments are stopped, then the daemon, and
// its log is shown if the test failed.
func startProcNode(t *testing.T, w *netlab.World, name string, group int) (*procDaemon, *node) {
	t.Helper()
	// Registered first, so released last: after the daemon stopped.
	netlab.LockNode(t)
	bin := buildArkgw(t)
	state := t.TempDir()
	os.MkdirAll(filepath.Join(state, "containers"), 0o755)
	os.Symlink(containerRoot(t), filepath.Join(state, "containers", "ark-2026.1"))
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	web := ln.Addr().String()
	ln.Close()
	config := filepath.Join(state, "node.toml")
	os.WriteFile(config, []byte(fmt.Sprintf("node = %q\nstate_dir = %q\nuplink = \"eth0\"\n[web]\nlisten = %q\n[dns]\nupstreams = [%q]\n[alerts]\nnflog_group = %d\n[lab]\ndocumentation_prefixes = true\n",
		name, state, web, netlab.DNS4, group)), 0o644)
	// Its log: the state dir's, or ARKGW_TEST_LOG's file (benchmarks,
	// debugging; ARKGW_LOG_LEVEL=debug reaches the daemon too).
	logPath := filepath.Join(state, "daemon.log")
	if p := os.Getenv("ARKGW_TEST_LOG"); p != "" {
		logPath = p
	}
	logf, _ := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := os.ReadFile(logf.Name())
			t.Logf("daemon log:\n%s", strings.TrimSpace(string(out)))
		}
		logf.Close()
	})
	// The real binary uses the production cgroup parent: remove it once
	// the daemon stopped (cleanups run last-registered first), if empty.
	t.Cleanup(func() {
		dirs, _ := filepath.Glob("/sys/fs/cgroup/*/arkgw")
		for _, d := range dirs {
			os.Remove(d)
		}
	})
	p := &procDaemon{bin: bin, config: config, sock: filepath.Join(state, "arkgw.sock"), runDir: filepath.Join(state, "run"), w: w, log: logf}
	p.start(t)
	c := daemon.NewClient(p.sock)
	t.Cleanup(func() {
		if !p.stopped {
			// Whatever happened, leave nothing: stop experiments, then the daemon.
			if list, err := c.List(); err == nil {
				for _, x := range list {
					c.Stop(x.ID)
				}
			}
			p.cmd.Process.Signal(syscall.SIGTERM)
			p.cmd.Wait()
		}
	})
	return p, &node{w: w, state: state, client: c}
}

func (p *procDaemon) start(t *testing.T) {
	t.Helper()
	p.cmd = p.w.Node.Command(context.Background(), p.bin, "run", "--config", p.config, "--socket", p.sock, "--run-dir", p.runDir)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := daemon.NewClient(p.sock)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := c.List(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(p.log.Name())
			t.Fatalf("arkgw run did not come up:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// dialFrom connects from inside an experiment's network namespace (as the
// node's root, which is enough to send packets through its veth).
func dialFrom(nsPath, addr string) error {
	ns, err := nsdo.Open(nsPath)
	if err != nil {
		return err
	}
	defer ns.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := nsdo.Dial(ctx, ns, "tcp", addr)
	if err == nil {
		c.Close()
	}
	return err
}

func alertCount(t *testing.T, path string) int {
	t.Helper()
	n := 0
	alert.ReadFile(path, time.Time{}, func(alert.Record, []byte) error { n++; return nil })
	return n
}

// TestPrivilegedCrashRecovery: kill -9 the daemon while two experiments
// run; their rules stay in force while it is down (the forbidden packet is
// dropped, the declared one passes); after a restart both are re-adopted
// with their alerts and counters, and stopping them leaves nothing behind.
func TestPrivilegedCrashRecovery(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds netlab namespaces and runs sandboxes")
	}
	w := netlab.NewWorld(t)
	p, nd := startProcNode(t, w, "crash", 3000+os.Getpid()%1000)
	c, state, logf := nd.client, nd.state, p.log

	script := `while true; do arkprobe tcp 203.0.113.10:22 >/dev/null; echo tick; sleep 1; done`
	ids := []string{nd.submit(t, fmt.Sprintf(probeManifest, script)), nd.submit(t, fmt.Sprintf(probeManifest, script))}
	for _, id := range ids {
		nd.waitState(t, id, store.Running, 30*time.Second)
		nd.waitAlert(t, id, func(r alert.Record) bool { return r.Rule == "tcp-dst" && r.DstPort == 22 })
	}
	alertsPath := filepath.Join(state, "alerts.jsonl")
	before := alertCount(t, alertsPath)
	counts := map[string]uint64{}
	for _, id := range ids {
		x, _ := c.Get(id)
		counts[id] = x.Alerts
	}

	// Crash.
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.cmd.Wait()

	// Fail-closed while no daemon runs: declared traffic passes, the rest
	// is dropped in the kernel.
	for _, id := range ids {
		ns := filepath.Join(p.runDir, "ns", id, "net")
		if err := dialFrom(ns, netlab.WWW4+":80"); err != nil {
			t.Errorf("%s: declared TCP while the daemon is down: %v", id, err)
		}
		if err := dialFrom(ns, netlab.Other4+":22"); err == nil {
			t.Errorf("%s: undeclared TCP passed while the daemon is down", id)
		}
	}
	if w.Internet().Seen(func(r netlab.Record) bool { return r.Dst.Port() == 22 }) {
		t.Error("a packet to port 22 reached the fake Internet")
	}

	// Restart: both re-adopted, alerts and counts intact.
	p.start(t)
	for _, id := range ids {
		x := nd.waitState(t, id, store.Running, 10*time.Second)
		if x.Alerts < counts[id] {
			t.Errorf("%s: %d alerts after restart, %d before", id, x.Alerts, counts[id])
		}
		// Still captured while the daemon was down, and after.
		nd.waitLog(t, id, "tick", 10*time.Second)
	}
	if after := alertCount(t, alertsPath); after < before {
		t.Errorf("alerts file has %d records after restart, %d before", after, before)
	}
	// The new daemon alerts again (its alerter took over the NFLOG group).
	time.Sleep(1500 * time.Millisecond)
	nd.waitAlert(t, ids[0], func(r alert.Record) bool { return r.Rule == "tcp-dst" && r.Time.After(time.Now().Add(-60*time.Second)) })

	for _, id := range ids {
		if _, err := c.Stop(id); err != nil {
			t.Fatal(err)
		}
		nd.waitState(t, id, store.Completed, 10*time.Second)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.cmd.Wait(); err != nil {
		out, _ := os.ReadFile(logf.Name())
		t.Errorf("daemon exit after SIGTERM: %v\n%s", err, out)
	}
	p.stopped = true
	if left := kernelLeftovers(t, w); left != "" {
		t.Errorf("left in the kernel:\n%s", left)
	}
	if ents, _ := os.ReadDir(filepath.Join(p.runDir, "ns")); len(ents) != 0 {
		t.Errorf("namespace dirs left: %v", ents)
	}
}
