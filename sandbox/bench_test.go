package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/reexec"
)

const benchCrunName = "arkgw-bench-crun"

func init() { reexec.Register(benchCrunName, benchCrunMain) }

// benchCrunMain runs in a private mount namespace (Unshareflags) where the
// hybrid host's cgroup2 mount is hidden, because crun refuses hybrid
// hosts; it times `crun run` of the bundle n times and prints the
// durations (ns) as JSON.
func benchCrunMain() {
	bundle := os.Args[1]
	n, _ := strconv.Atoi(os.Args[2])
	if err := unix.Unmount("/sys/fs/cgroup/unified", unix.MNT_DETACH); err != nil {
		fmt.Fprintln(os.Stderr, "unmount cgroup2:", err)
		os.Exit(1)
	}
	var out []int64
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("arkbench-%d-%d", os.Getpid(), i)
		cmd := exec.Command("crun", "run", "--bundle", bundle, id)
		start := time.Now()
		b, err := cmd.CombinedOutput()
		d := time.Since(start)
		if err != nil {
			fmt.Fprintf(os.Stderr, "crun: %v: %s\n", err, b)
			exec.Command("crun", "delete", "-f", id).Run()
			os.Exit(1)
		}
		out = append(out, int64(d))
	}
	json.NewEncoder(os.Stdout).Encode(out)
	os.Exit(0)
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// TestBenchSandbox: launch of /bin/true in a full sandbox (userns+netns of
// the experiment, new mount/pid/uts/ipc/cgroup namespaces, read-only root,
// /proc, /dev, tmpfs /tmp, cgroup with cpu/memory/pids limits, seccomp,
// uid 1000 with network capabilities) versus bubblewrap and crun.
func TestBenchSandbox(t *testing.T) {
	if os.Getenv("ARKGW_BENCH") != "1" {
		t.Skip("benchmark: set ARKGW_BENCH=1")
	}
	needRoot(t)
	const n = 30
	containers := testContainers(t)
	root := filepath.Join(containers, testVersion)
	ctx := context.Background()

	// arkgw: the holder (made by the gateway when the experiment is
	// added) exists before the launch, as in the daemon.
	h := newHolder(t)
	rb := make([]byte, 2)
	rand.Read(rb)
	tag := hex.EncodeToString(rb)
	parent := "arkgw-bench-" + tag
	t.Cleanup(func() {
		for _, c := range []string{"cpu", "cpuacct", "memory", "pids", "freezer"} {
			os.Remove(filepath.Join(v1Root, c, parent))
		}
	})
	dir := t.TempDir()
	var benchLog hclog.Logger
	if os.Getenv("ARKGW_BENCH_DEBUG") != "" {
		benchLog = hclog.New(&hclog.LoggerOptions{Level: hclog.Debug})
	}
	var arkLaunch, arkRun []time.Duration
	for i := 0; i < n+3; i++ {
		spec := Spec{ID: fmt.Sprintf("b%s%02d", tag, i), Holder: h, ContainersDir: containers, Version: testVersion,
			Command: []string{"/bin/true"},
			Limits:  configs.Limits{CPUPercent: 100, MaxRAMMB: 256, TmpfsMB: 16, OutputMB: 1, MaxHours: 1},
			Stdout:  filepath.Join(dir, "out"), Stderr: filepath.Join(dir, "err"), CgroupParent: parent,
			Logger: benchLog}
		start := time.Now()
		sb, err := Launch(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		l := time.Since(start)
		res, err := sb.Wait(ctx)
		r := time.Since(start)
		if err != nil || !res.Exited || res.Code != 0 {
			t.Fatalf("run %d: %+v %v", i, res, err)
		}
		if i >= 3 { // warm-up
			arkLaunch = append(arkLaunch, l)
			arkRun = append(arkRun, r)
		}
	}

	// bubblewrap with comparable namespaces (it must create the user
	// namespace itself), a read-only bind root, /proc, /dev, tmpfs /tmp.
	var bw []time.Duration
	bwArgs := []string{"--unshare-user", "--uid", "1000", "--gid", "1000", "--unshare-pid", "--unshare-ipc",
		"--unshare-uts", "--unshare-cgroup", "--ro-bind", root, "/", "--proc", "/proc", "--dev", "/dev",
		"--tmpfs", "/tmp", "/bin/true"}
	for i := 0; i < n+3; i++ {
		start := time.Now()
		if out, err := exec.Command("bwrap", bwArgs...).CombinedOutput(); err != nil {
			t.Fatalf("bwrap: %v %s", err, out)
		}
		if i >= 3 {
			bw = append(bw, time.Since(start))
		}
	}

	// crun: a minimal read-only bundle (pid, ipc, uts, mount, cgroup
	// namespaces; /proc, /dev, /dev/pts, /dev/shm, tmpfs /tmp), run in a
	// private mount namespace with /sys/fs/cgroup/unified unmounted.
	bundle := filepath.Join(dir, "bundle")
	os.MkdirAll(bundle, 0o755)
	if out, err := exec.Command("crun", "spec", "--bundle", bundle).CombinedOutput(); err != nil {
		t.Fatalf("crun spec: %v %s", err, out)
	}
	var spec map[string]any
	b, _ := os.ReadFile(filepath.Join(bundle, "config.json"))
	json.Unmarshal(b, &spec)
	spec["root"] = map[string]any{"path": root, "readonly": true}
	proc := spec["process"].(map[string]any)
	proc["args"] = []string{"/bin/true"}
	proc["terminal"] = false
	lin := spec["linux"].(map[string]any)
	lin["namespaces"] = []map[string]string{{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}}
	var mounts []any
	for _, m := range spec["mounts"].([]any) {
		switch m.(map[string]any)["destination"] {
		case "/proc", "/dev", "/dev/pts", "/dev/shm":
			mounts = append(mounts, m)
		}
	}
	mounts = append(mounts, map[string]any{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": []string{"nosuid", "nodev", "size=16m"}})
	spec["mounts"] = mounts
	b, _ = json.Marshal(spec)
	os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o644)
	cmd := reexec.Command(benchCrunName, bundle, strconv.Itoa(n+3))
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("crun runs: %v", err)
	}
	var ns []int64
	if err := json.Unmarshal(out, &ns); err != nil {
		t.Fatal(err)
	}
	var cr []time.Duration
	for _, d := range ns[3:] {
		cr = append(cr, time.Duration(d))
	}

	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/1e6) }
	mL, mR, mB, mC := median(arkLaunch), median(arkRun), median(bw), median(cr)
	t.Logf("medians over %d runs: arkgw launch-to-exec %s, arkgw launch-to-exit incl. cgroup removal %s, bwrap %s, crun %s (crun in a private mount ns without the cgroup2 mount)",
		n, ms(mL), ms(mR), ms(mB), ms(mC))
	fmt.Printf("bench-sandbox arkgw_exec_ms=%.2f arkgw_exit_ms=%.2f bwrap_ms=%.2f crun_ms=%.2f\n",
		float64(mL)/1e6, float64(mR)/1e6, float64(mB)/1e6, float64(mC)/1e6)
	fmt.Printf("bench-sandbox ratio_vs_bwrap=%.2f ratio_vs_crun=%.2f\n", float64(mR)/float64(mB), float64(mR)/float64(mC))
}
