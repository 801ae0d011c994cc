package sandbox

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/netlab/hostload"
	"github.com/arkgw/arkgw/nsholder"
	"github.com/arkgw/arkgw/reexec"
)

const (
	benchCrunName  = "arkgw-bench-crun"
	benchBwrapName = "arkgw-bench-bwrap"
)

func init() {
	reexec.Register(benchCrunName, benchCrunMain)
	reexec.Register(benchBwrapName, benchBwrapMain)
}

// benchLimits are the limits every arm of TestBenchSandbox gets.
var benchLimits = configs.Limits{CPUPercent: 100, MaxRAMMB: 256, TmpfsMB: 16, OutputMB: 1, MaxHours: 1}

// benchRunTimes are one launch's clock readings (unix ns): the clock just
// before the launch, the clock the command printed as its first
// instruction, the launcher's exit and the end of its teardown.
type benchRunTimes struct {
	Start, Exec, Exit, Torn int64
	Holder                  int64 // arkgw: when its holder was made
}

func (r benchRunTimes) toExec() time.Duration { return time.Duration(r.Exec - r.Start) }
func (r benchRunTimes) toTorn() time.Duration { return time.Duration(r.Torn - r.Start) }

// printedClock parses what `/bin/date +%s%N` printed.
func printedClock(out []byte) (int64, error) {
	return strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
}

// benchCrunMain runs in a private mount namespace (Unshareflags) where the
// hybrid host's cgroup2 mount is hidden, because crun refuses hybrid
// hosts; for each line on stdin it runs the bundle once with `crun run`
// (crun makes the namespaces, the cgroup with the limits, and removes it)
// and prints the run's benchRunTimes as JSON (or "error ...").
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
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		start := time.Now()
		err := cmd.Run()
		exit := time.Now()
		if err != nil {
			exec.Command("crun", "delete", "-f", id).Run()
			fmt.Printf("error crun: %v: %q %q\n", err, out.Bytes(), errb.Bytes())
			continue
		}
		ns, err := printedClock(out.Bytes())
		if err != nil {
			fmt.Printf("error crun output %q\n", out.Bytes())
			continue
		}
		// crun removes the container's cgroup before it exits.
		b, _ := json.Marshal(benchRunTimes{Start: start.UnixNano(), Exec: ns, Exit: exit.UnixNano(), Torn: exit.UnixNano()})
		fmt.Println(string(b))
	}
	os.Exit(0)
}

// benchBwrapMain: bubblewrap cannot make cgroups, so this driver makes the
// experiment's cgroup with arkgw's own code and limits (newCgroup), steps
// into it so that bwrap starts inside (cgroup v1 has no CLONE_INTO_CGROUP),
// steps back out, and removes the cgroup after bwrap exited, all on the
// clock. argv: cgroup parent, then bwrap's arguments; fd 3 is the seccomp
// program bwrap loads (--seccomp 3). One run per stdin line; each prints
// its benchRunTimes as JSON (or "error ...").
func benchBwrapMain() {
	parent, args := os.Args[1], os.Args[2:]
	prog, err := os.ReadFile("/proc/self/fd/3")
	if err != nil {
		fmt.Println("error read seccomp program:", err)
		os.Exit(1)
	}
	res := ComputeResources(benchLimits, 0)
	// Where the driver came from, to step back after each start.
	home := map[string]string{}
	b, _ := os.ReadFile("/proc/self/cgroup")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.SplitN(l, ":", 3); len(f) == 3 {
			for _, c := range strings.Split(f[1], ",") {
				home[c] = f[2]
			}
		}
	}
	in := bufio.NewScanner(os.Stdin)
	for i := 0; in.Scan(); i++ {
		id := fmt.Sprintf("bw%d", i)
		start := time.Now()
		cg, err := newCgroup(id, cgroupRel(parent, id), res, nil)
		if err != nil {
			fmt.Println("error", err)
			continue
		}
		r, w, _ := os.Pipe()
		go func() { w.Write(prog); w.Close() }()
		cmd := exec.Command("bwrap", args...)
		cmd.ExtraFiles = []*os.File{r}
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cg.Add(os.Getpid()); err != nil {
			fmt.Println("error", err)
			continue
		}
		err = cmd.Start()
		r.Close()
		for _, s := range cg.(*cgroupV1).subs {
			if werr := os.WriteFile(filepath.Join(v1Root, s, home[s], "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); werr != nil && err == nil {
				err = fmt.Errorf("step out of the cgroup: %w", werr)
			}
		}
		if err == nil {
			err = cmd.Wait()
		}
		exit := time.Now()
		// The pid namespace's last processes may still be exiting when
		// bwrap has been reaped: retry, on the clock.
		derr := cg.Delete()
		for k := 0; derr != nil && k < 500; k++ {
			time.Sleep(time.Millisecond)
			derr = cg.Delete()
		}
		torn := time.Now()
		if err != nil || derr != nil {
			left, _ := os.ReadFile(filepath.Join(v1Root, "pids", cgroupRel(parent, id), "tasks"))
			self, _ := os.ReadFile("/proc/self/task")
			_ = self
			fmt.Printf("error bwrap: %v %v (tasks left %q, driver %d): %q %q\n", err, derr, left, os.Getpid(), out.Bytes(), errb.Bytes())
			continue
		}
		ns, err := printedClock(out.Bytes())
		if err != nil {
			fmt.Printf("error bwrap output %q %q\n", out.Bytes(), errb.Bytes())
			continue
		}
		b, _ := json.Marshal(benchRunTimes{Start: start.UnixNano(), Exec: ns, Exit: exit.UnixNano(), Torn: torn.UnixNano()})
		fmt.Println(string(b))
	}
	os.Exit(0)
}

// benchDriver talks to a driver process: one line in, one JSON line out.
type benchDriver struct {
	cmd *exec.Cmd
	in  interface{ Write([]byte) (int, error) }
	out *bufio.Reader
}

func startBenchDriver(t *testing.T, cmd *exec.Cmd) *benchDriver {
	t.Helper()
	cmd.Stderr = os.Stderr
	in, _ := cmd.StdinPipe()
	outP, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(); cmd.Wait() })
	return &benchDriver{cmd: cmd, in: in, out: bufio.NewReader(outP)}
}

func (d *benchDriver) run(t *testing.T, name string) benchRunTimes {
	t.Helper()
	d.in.Write([]byte("run\n"))
	l, err := d.out.ReadString('\n')
	var r benchRunTimes
	if err != nil || json.Unmarshal([]byte(l), &r) != nil {
		t.Fatalf("%s: %q %v", name, l, err)
	}
	return r
}

// ociSeccomp is arkgw's seccomp policy (seccomp.go: allowed, conditional,
// enosys, denied) in the OCI form crun compiles with libseccomp.
func ociSeccomp(t *testing.T) *specs.LinuxSeccomp {
	t.Helper()
	info, err := archFor(runtime.GOARCH)
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, n := range info.SyscallNumbers {
		known[n] = true
	}
	eperm, enosysRet := uint(unix.EPERM), uint(unix.ENOSYS)
	sc := &specs.LinuxSeccomp{DefaultAction: specs.ActErrno, DefaultErrnoRet: &eperm,
		Architectures: []specs.Arch{map[string]specs.Arch{"amd64": specs.ArchX86_64, "arm64": specs.ArchAARCH64, "arm": specs.ArchARM}[runtime.GOARCH]}}
	var allow []string
	for _, n := range allowed {
		if _, cond := conditional[n]; known[n] && !cond && !slices.Contains(enosys, n) {
			allow = append(allow, n)
		}
	}
	sc.Syscalls = append(sc.Syscalls, specs.LinuxSyscall{Names: allow, Action: specs.ActAllow})
	sc.Syscalls = append(sc.Syscalls, specs.LinuxSyscall{Names: enosys, Action: specs.ActErrno, ErrnoRet: &enosysRet})
	for name, c := range conditional {
		if !known[name] {
			continue
		}
		arg := func(v, v2 uint64, op specs.LinuxSeccompOperator) specs.LinuxSyscall {
			return specs.LinuxSyscall{Names: []string{name}, Action: specs.ActAllow,
				Args: []specs.LinuxSeccompArg{{Index: uint(c.arg), Value: v, ValueTwo: v2, Op: op}}}
		}
		switch {
		case c.bitsClear != 0:
			sc.Syscalls = append(sc.Syscalls, arg(uint64(c.bitsClear), 0, specs.OpMaskedEqual))
		case len(c.oneOf) > 0:
			for _, v := range c.oneOf {
				sc.Syscalls = append(sc.Syscalls, arg(uint64(v), 0, specs.OpEqualTo))
			}
		case len(c.noneOf) > 0:
			// allowed between the excluded values (rules of one syscall are ORed)
			ex := slices.Sorted(slices.Values(c.noneOf))
			sc.Syscalls = append(sc.Syscalls, arg(uint64(ex[0]), 0, specs.OpLessThan))
			for i := 0; i+1 < len(ex); i++ {
				for v := ex[i] + 1; v < ex[i+1]; v++ {
					sc.Syscalls = append(sc.Syscalls, arg(uint64(v), 0, specs.OpEqualTo))
				}
			}
			sc.Syscalls = append(sc.Syscalls, arg(uint64(ex[len(ex)-1]), 0, specs.OpGreaterThan))
		}
	}
	return sc
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// TestBenchSandbox: the time from the launch to the command's first
// instruction (/bin/date +%s%N printing the clock, compared with the clock
// read just before the launch) of a full sandbox, in arkgw, bubblewrap and
// crun, each doing the same work on the clock: a new user namespace (uid
// 1000 inside, the network capabilities) and network namespace (arkgw:
// its holder, made per run on the clock as the gateway makes it per
// experiment), new mount/pid/uts/ipc/cgroup namespaces, the read-only
// container root, /proc, /dev, a 16 MB tmpfs /tmp, a cgroup with the same
// cpu/memory/pids limits, and arkgw's seccomp policy.
func TestBenchSandbox(t *testing.T) {
	if os.Getenv("ARKGW_BENCH") != "1" {
		t.Skip("benchmark: set ARKGW_BENCH=1")
	}
	needRoot(t)
	n, warm := 30, 3
	if v, err := strconv.Atoi(os.Getenv("ARKGW_BENCH_N")); err == nil && v > 0 { // a quick look
		n = v
	}
	containers := testContainers(t)
	root := filepath.Join(containers, testVersion)
	holderBin := helperBinary(t)
	ctx := context.Background()
	rb := make([]byte, 2)
	rand.Read(rb)
	tag := hex.EncodeToString(rb)
	parent := "arkgw-bench-" + tag
	// crun makes its cgroups in every hierarchy (blkio, cpuset, ... too):
	// remove the parent wherever it was made.
	t.Cleanup(func() {
		parents, _ := filepath.Glob(filepath.Join(v1Root, "*", parent))
		for _, p := range parents {
			subs, _ := filepath.Glob(filepath.Join(p, "*"))
			for _, d := range subs {
				if fi, err := os.Stat(d); err == nil && fi.IsDir() {
					os.Remove(d)
				}
			}
			os.Remove(p)
		}
	})
	dir := t.TempDir()
	var benchLog hclog.Logger
	if os.Getenv("ARKGW_BENCH_DEBUG") != "" {
		benchLog = hclog.New(&hclog.LoggerOptions{Level: hclog.Debug})
	}
	date := []string{"/bin/date", "+%s%N"}

	// arkgw: the holder (user+net namespaces) is made on the clock, then
	// the launch; teardown is the sandbox's exit with its cgroup removed,
	// then the holder's removal.
	arkOnce := func(i int) benchRunTimes {
		base := 0x38000000 + (uint32(os.Getpid())%64)*0x400000 + uint32(i)*65536
		out := filepath.Join(dir, fmt.Sprintf("out%d", i))
		start := time.Now()
		h, err := nsholder.Create(nsholder.Config{Dir: filepath.Join(dir, "ns", strconv.Itoa(i)), HostUID: base, HostGID: base, Binary: holderBin})
		if err != nil {
			t.Fatal(err)
		}
		made := time.Now()
		spec := Spec{ID: fmt.Sprintf("b%s%02d", tag, i), Holder: h, ContainersDir: containers, Version: testVersion,
			Command: date, Limits: benchLimits, Stdout: out, Stderr: filepath.Join(dir, "err"), CgroupParent: parent,
			Logger: benchLog}
		sb, err := Launch(ctx, spec)
		if err != nil {
			h.Remove()
			t.Fatal(err)
		}
		res, err := sb.Wait(ctx)
		exit := time.Now()
		if err != nil || !res.Exited || res.Code != 0 {
			t.Fatalf("run %d: %+v %v", i, res, err)
		}
		if err := h.Remove(); err != nil {
			t.Fatal(err)
		}
		torn := time.Now()
		b, _ := os.ReadFile(out)
		ns, err := printedClock(b)
		if err != nil {
			t.Fatalf("arkgw run %d printed %q", i, b)
		}
		return benchRunTimes{Start: start.UnixNano(), Exec: ns, Exit: exit.UnixNano(), Torn: torn.UnixNano(), Holder: made.UnixNano()}
	}

	// arkgw's seccomp program, byte for byte, for bubblewrap.
	prog, err := Filter(runtime.GOARCH)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := bpf.Assemble(prog)
	if err != nil {
		t.Fatal(err)
	}
	var progBytes bytes.Buffer
	for _, r := range raw {
		binary.Write(&progBytes, binary.NativeEndian, struct {
			Code   uint16
			Jt, Jf uint8
			K      uint32
		}{r.Op, r.Jt, r.Jf, r.K})
	}
	progFile := filepath.Join(dir, "seccomp.bpf")
	os.WriteFile(progFile, progBytes.Bytes(), 0o600)

	// bubblewrap: it makes the user and network namespaces itself.
	bwArgs := []string{"--unshare-user", "--uid", "1000", "--gid", "1000", "--unshare-net", "--unshare-pid", "--unshare-ipc",
		"--unshare-uts", "--unshare-cgroup", "--ro-bind", root, "/", "--proc", "/proc", "--dev", "/dev",
		"--size", strconv.Itoa(16 << 20), "--tmpfs", "/tmp"}
	for _, c := range netCaps {
		bwArgs = append(bwArgs, "--cap-add", c)
	}
	bwArgs = append(bwArgs, "--seccomp", "3")
	bwArgs = append(bwArgs, date...)
	pf, err := os.Open(progFile)
	if err != nil {
		t.Fatal(err)
	}
	bwCmd := reexec.Command(benchBwrapName, append([]string{parent}, bwArgs...)...)
	bwCmd.ExtraFiles = []*os.File{pf}
	bw := startBenchDriver(t, bwCmd)
	pf.Close()

	// crun: a read-only bundle with user (the holder's mapping), network,
	// pid, ipc, uts, mount and cgroup namespaces; /proc, /dev, /dev/pts,
	// /dev/shm, tmpfs /tmp; the cgroup limits as OCI resources; arkgw's
	// seccomp policy; uid 1000 with the network capabilities. Run in a
	// private mount namespace with /sys/fs/cgroup/unified unmounted.
	// crun resolves the root inside its user namespace, as the mapped
	// root: the test roots' private (0700) directory must be traversable.
	if err := os.Chmod(containers, 0o711); err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(dir, "bundle")
	os.MkdirAll(bundle, 0o755)
	if out, err := exec.Command("crun", "spec", "--bundle", bundle).CombinedOutput(); err != nil {
		t.Fatalf("crun spec: %v %s", err, out)
	}
	var spec specs.Spec
	b, _ := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err := json.Unmarshal(b, &spec); err != nil {
		t.Fatal(err)
	}
	spec.Root = &specs.Root{Path: root, Readonly: true}
	spec.Process.Args = date
	spec.Process.Terminal = false
	spec.Process.User = specs.User{UID: 1000, GID: 1000}
	spec.Process.Capabilities = &specs.LinuxCapabilities{Bounding: netCaps, Effective: netCaps, Permitted: netCaps, Inheritable: netCaps, Ambient: netCaps}
	spec.Process.NoNewPrivileges = true
	spec.Process.Rlimits = []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}}
	crunBase := uint32(0x3f000000 + (uint32(os.Getpid())%64)*65536)
	spec.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: crunBase, Size: 65536}}
	spec.Linux.GIDMappings = spec.Linux.UIDMappings
	spec.Linux.Namespaces = []specs.LinuxNamespace{{Type: specs.UserNamespace}, {Type: specs.NetworkNamespace}, {Type: specs.PIDNamespace},
		{Type: specs.IPCNamespace}, {Type: specs.UTSNamespace}, {Type: specs.MountNamespace}, {Type: specs.CgroupNamespace}}
	withSwap := false
	if _, err := os.Stat(filepath.Join(v1Root, "memory", "memory.memsw.limit_in_bytes")); err == nil {
		withSwap = true
	}
	spec.Linux.Resources = ComputeResources(benchLimits, 0).V1(withSwap)
	spec.Linux.CgroupsPath = "/" + parent + "/crun"
	spec.Linux.Seccomp = ociSeccomp(t)
	var mounts []specs.Mount
	for _, m := range spec.Mounts {
		switch m.Destination {
		case "/proc", "/dev", "/dev/pts", "/dev/shm":
			mounts = append(mounts, m)
		}
	}
	spec.Mounts = append(mounts, specs.Mount{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "size=16m"}})
	b, _ = json.Marshal(spec)
	os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o644)
	crCmd := reexec.Command(benchCrunName, bundle)
	crCmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	cr := startBenchDriver(t, crCmd)

	// Interleaved rounds with the order rotating, so that the load of
	// this shared machine hits all three alike; warm-up rounds first.
	type round struct {
		ark, bw, cr benchRunTimes
		steal       float64
		load        string
	}
	var rounds []round
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	for i := 0; i < n+warm; i++ {
		t0, s0 := hostload.CPUTimes()
		var r round
		arms := []func(){
			func() { r.ark = arkOnce(i) },
			func() { r.bw = bw.run(t, "bwrap") },
			func() { r.cr = cr.run(t, "crun") },
		}
		for j := range arms {
			arms[(i+j)%len(arms)]()
		}
		t1, s1 := hostload.CPUTimes()
		if t1 > t0 {
			r.steal = 100 * float64(s1-s0) / float64(t1-t0)
		}
		r.load = hostload.Load1()
		if i < warm {
			continue
		}
		rounds = append(rounds, r)
		fmt.Printf("run %2d: to exec arkgw %.2f ms, bwrap %.2f, crun %.2f; to exit+teardown arkgw %.2f, bwrap %.2f, crun %.2f; steal %.1f%% load %s\n",
			len(rounds), ms(r.ark.toExec()), ms(r.bw.toExec()), ms(r.cr.toExec()), ms(r.ark.toTorn()), ms(r.bw.toTorn()), ms(r.cr.toTorn()), r.steal, r.load)
	}
	col := func(f func(round) time.Duration) []time.Duration {
		var out []time.Duration
		for _, r := range rounds {
			out = append(out, f(r))
		}
		return out
	}
	ratios := func(a, b func(round) time.Duration) []float64 {
		var out []float64
		for _, r := range rounds {
			out = append(out, float64(a(r))/float64(b(r)))
		}
		slices.Sort(out)
		return out
	}
	aE, bE, cE := func(r round) time.Duration { return r.ark.toExec() }, func(r round) time.Duration { return r.bw.toExec() }, func(r round) time.Duration { return r.cr.toExec() }
	aT, bT, cT := func(r round) time.Duration { return r.ark.toTorn() }, func(r round) time.Duration { return r.bw.toTorn() }, func(r round) time.Duration { return r.cr.toTorn() }
	var steals []float64
	for _, r := range rounds {
		steals = append(steals, r.steal)
	}
	slices.Sort(steals)
	desc := func(f func(round) time.Duration) string {
		s := col(f)
		return fmt.Sprintf("%.2f ms (%.2f..%.2f)", ms(median(s)), ms(slices.Min(s)), ms(slices.Max(s)))
	}
	rb2, rc2 := ratios(aE, bE), ratios(aE, cE)
	fmt.Printf("method: %d interleaved rounds (order rotating, %d warm-up rounds dropped) of one launch each; timed from the clock read just before the launch to the clock /bin/date +%%s%%N prints inside (its first instruction, after the dynamic loader); medians (min..max)\n", n, warm)
	fmt.Printf("method: same work on the clock: new user ns (uid 1000, the 4 network capabilities; arkgw: its holder made per run, bwrap --unshare-user, crun a user ns with a 65536-id mapping) and net ns, mount/pid/uts/ipc/cgroup ns, read-only root, /proc, /dev, 16 MB tmpfs /tmp; a cgroup v1 with cpu 100%%, memory 256 MB, pids 512 (bwrap: made with arkgw's own cgroup code by its driver, which steps into it before starting bwrap); arkgw's seccomp policy (bwrap: the same BPF program; crun: the same lists as OCI rules, except unknown syscall numbers get EPERM instead of ENOSYS)\n")
	fmt.Printf("method: remaining differences: /dev is arkgw's own tmpfs with a few nodes, bwrap's --dev, crun's tmpfs with /dev/pts and /dev/shm; arkgw also writes /etc/hosts, resolv.conf and hostname binds, sets rlimits (crun: RLIMIT_NOFILE only; bwrap: none), nice 10 and captures the output to capped files; bwrap and crun are started by a driver process (crun's in a mount ns without the cgroup2 mount, because crun refuses hybrid hosts)\n")
	fmt.Printf("method: arkgw's holder (user+net namespaces, one arkgw-init process) took %s of its time to exec, the launch after it %s\n",
		desc(func(r round) time.Duration { return time.Duration(r.ark.Holder - r.ark.Start) }), desc(func(r round) time.Duration { return time.Duration(r.ark.Exec - r.ark.Holder) }))
	fmt.Printf("method: to exec: arkgw %s, bwrap %s, crun %s; ratio per round vs bwrap %.2f..%.2f, vs crun %.2f..%.2f\n",
		desc(aE), desc(bE), desc(cE), rb2[0], rb2[len(rb2)-1], rc2[0], rc2[len(rc2)-1])
	rbT, rcT := ratios(aT, bT), ratios(aT, cT)
	fmt.Printf("method: to exit incl. teardown (arkgw: sandbox cgroup and holder removed; bwrap: its cgroup removed; crun: crun run returned, its cgroup removed): arkgw %s, bwrap %s, crun %s; ratio of medians vs bwrap %.2f, vs crun %.2f (per round %.2f..%.2f, %.2f..%.2f)\n",
		desc(aT), desc(bT), desc(cT), float64(median(col(aT)))/float64(median(col(bT))), float64(median(col(aT)))/float64(median(col(cT))),
		rbT[0], rbT[len(rbT)-1], rcT[0], rcT[len(rcT)-1])
	fmt.Printf("method: steal per round %.1f..%.1f%% (median %.1f%%)\n", steals[0], steals[len(steals)-1], steals[len(steals)/2])
	fmt.Printf("bench-sandbox ratio_vs_bwrap=%.2f ratio_vs_crun=%.2f arkgw_ms=%.2f bwrap_ms=%.2f crun_ms=%.2f steal_pct=%.1f timed_to=exec\n",
		float64(median(col(aE)))/float64(median(col(bE))), float64(median(col(aE)))/float64(median(col(cE))),
		ms(median(col(aE))), ms(median(col(bE))), ms(median(col(cE))), steals[len(steals)/2])
}
