package sandbox

import (
	"bufio"
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
	"strings"
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
// hosts; for each line on stdin it times one `crun run` of the bundle and
// prints the duration in ns (or "error ...").
func benchCrunMain() {
	bundle := os.Args[1]
	if err := unix.Unmount("/sys/fs/cgroup/unified", unix.MNT_DETACH); err != nil {
		fmt.Println("error unmount cgroup2:", err)
		os.Exit(1)
	}
	in := bufio.NewScanner(os.Stdin)
	for i := 0; in.Scan(); i++ {
		id := fmt.Sprintf("arkbench-%d-%d", os.Getpid(), i)
		cmd := exec.Command("crun", "run", "--bundle", bundle, id)
		start := time.Now()
		b, err := cmd.CombinedOutput()
		d := time.Since(start)
		if err != nil {
			exec.Command("crun", "delete", "-f", id).Run()
			fmt.Printf("error crun: %v: %q\n", err, b)
			continue
		}
		fmt.Println(int64(d))
	}
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
	var arkLaunch, arkRun, bw, cr []time.Duration
	arkOnce := func(i int) (time.Duration, time.Duration) {
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
		return l, r
	}

	// bubblewrap with comparable namespaces (it must create the user
	// namespace itself), a read-only bind root, /proc, /dev, tmpfs /tmp.
	bwArgs := []string{"--unshare-user", "--uid", "1000", "--gid", "1000", "--unshare-pid", "--unshare-ipc",
		"--unshare-uts", "--unshare-cgroup", "--ro-bind", root, "/", "--proc", "/proc", "--dev", "/dev",
		"--tmpfs", "/tmp", "/bin/true"}
	bwOnce := func() time.Duration {
		start := time.Now()
		if out, err := exec.Command("bwrap", bwArgs...).CombinedOutput(); err != nil {
			t.Fatalf("bwrap: %v %s", err, out)
		}
		return time.Since(start)
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
	cmd := reexec.Command(benchCrunName, bundle)
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	cmd.Stderr = os.Stderr
	crIn, _ := cmd.StdinPipe()
	crOutP, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { crIn.Close(); cmd.Wait() }()
	crOut := bufio.NewReader(crOutP)
	crunOnce := func() time.Duration {
		fmt.Fprintln(crIn, "run")
		l, err := crOut.ReadString('\n')
		ns, perr := strconv.ParseInt(strings.TrimSpace(l), 10, 64)
		if err != nil || perr != nil {
			t.Fatalf("crun: %q %v", l, err)
		}
		return time.Duration(ns)
	}

	// interleaved rounds, so that the load of this shared machine hits all
	// three alike; 3 warm-up rounds
	for i := 0; i < n+3; i++ {
		l, r := arkOnce(i)
		bt := bwOnce()
		ct := crunOnce()
		if i >= 3 {
			arkLaunch, arkRun = append(arkLaunch, l), append(arkRun, r)
			bw, cr = append(bw, bt), append(cr, ct)
		}
	}

	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/1e6) }
	mL, mR, mB, mC := median(arkLaunch), median(arkRun), median(bw), median(cr)
	t.Logf("medians over %d runs: arkgw launch-to-exec %s, arkgw launch-to-exit incl. cgroup removal %s, bwrap %s, crun %s (crun in a private mount ns without the cgroup2 mount)",
		n, ms(mL), ms(mR), ms(mB), ms(mC))
	fmt.Printf("bench-sandbox arkgw_exec_ms=%.2f arkgw_exit_ms=%.2f bwrap_ms=%.2f crun_ms=%.2f\n",
		float64(mL)/1e6, float64(mR)/1e6, float64(mB)/1e6, float64(mC)/1e6)
	// launch-to-first-instruction: arkgw's Launch returns once the
	// command's execve succeeded; bwrap and crun can only be timed to
	// their exit (+ /bin/true's run and teardown, well under a ms).
	fmt.Printf("bench-sandbox ratio_vs_bwrap=%.2f ratio_vs_crun=%.2f\n", float64(mL)/float64(mB), float64(mL)/float64(mC))
}
