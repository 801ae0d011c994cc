package sandbox

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/arkgw/arkgw/configs"
)

// Resources is what the cgroup of an experiment enforces, as a plain value
// (computed by ComputeResources, applied by a cgroupCtl).
type Resources struct {
	CPUQuotaUS  int64  // CFS quota per period; 0 = unlimited
	CPUPeriodUS uint64 // CFS period
	MemoryBytes int64  // 0 = unlimited
	PidsMax     int64
}

const cpuPeriodUS = 100000

// ComputeResources maps the experiment's limits to cgroup resources:
// CPUPercent of one core -> quota = percent% of a 100 ms period; MaxRAMMB ->
// memory limit, with memory+swap equal to it (no swap beyond the RAM
// limit); pidsMax (0 = 512) -> pids.max.
func ComputeResources(l configs.Limits, pidsMax int64) Resources {
	r := Resources{CPUPeriodUS: cpuPeriodUS, PidsMax: pidsMax}
	if r.PidsMax <= 0 {
		r.PidsMax = 512
	}
	if l.CPUPercent > 0 {
		r.CPUQuotaUS = int64(l.CPUPercent) * cpuPeriodUS / 100
		if r.CPUQuotaUS < 1000 {
			r.CPUQuotaUS = 1000 // the kernel minimum is 1 ms
		}
	}
	if l.MaxRAMMB > 0 {
		r.MemoryBytes = l.MaxRAMMB << 20
	}
	return r
}

// Needs lists the controllers these resources require.
func (r Resources) Needs() []string {
	n := []string{"pids"}
	if r.CPUQuotaUS > 0 {
		n = append(n, "cpu")
	}
	if r.MemoryBytes > 0 {
		n = append(n, "memory")
	}
	return n
}

// V1 is the request to cgroup1.New. withSwap: the kernel has
// memory.memsw.* (swap accounting); then memory+swap = memory.
func (r Resources) V1(withSwap bool) *specs.LinuxResources {
	out := &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: &r.PidsMax}}
	if r.CPUQuotaUS > 0 {
		q, p := r.CPUQuotaUS, r.CPUPeriodUS
		out.CPU = &specs.LinuxCPU{Quota: &q, Period: &p}
	}
	if r.MemoryBytes > 0 {
		m := r.MemoryBytes
		out.Memory = &specs.LinuxMemory{Limit: &m}
		if withSwap {
			sw := r.MemoryBytes
			out.Memory.Swap = &sw
		}
	}
	return out
}

// V2 is the request to cgroup2.NewManager: cpu.max, memory.max with
// memory.swap.max 0 (v2 counts swap separately), pids.max.
func (r Resources) V2() *cgroup2.Resources {
	out := &cgroup2.Resources{Pids: &cgroup2.Pids{Max: r.PidsMax}}
	if r.CPUQuotaUS > 0 {
		q, p := r.CPUQuotaUS, r.CPUPeriodUS
		out.CPU = &cgroup2.CPU{Max: cgroup2.NewCPUMax(&q, &p)}
	}
	if r.MemoryBytes > 0 {
		m, sw := r.MemoryBytes, int64(0)
		out.Memory = &cgroup2.Memory{Max: &m, Swap: &sw}
	}
	return out
}

// cgStats is read from the cgroup when a run ended.
type cgStats struct {
	CPU      time.Duration
	OOMKills uint64
}

// cgroupCtl is one experiment's cgroup.
type cgroupCtl interface {
	Add(pid int) error
	// Delegate lets host uid/gid write the cgroup's v1 "tasks" files,
	// as prepare listed them for the init (which then moves itself in);
	// an error where the init cannot (cgroup v2: the daemon moves it).
	Delegate(uid, gid int, tasks []string) error
	Kill() error // SIGKILL every process and wait until the cgroup is empty
	Stats() cgStats
	Delete() error
	Missing() []string // controllers this kernel lacks (accepted by policy)
	Empty() bool       // no process left
}

var (
	modeOnce sync.Once
	mode     cgroups.CGMode
)

func cgroupMode() cgroups.CGMode {
	modeOnce.Do(func() { mode = cgroups.Mode() })
	return mode
}

const v1Root = "/sys/fs/cgroup"

// v1Available reports whether a v1 controller hierarchy is mounted.
func v1Available(name string) bool {
	_, err := os.Stat(filepath.Join(v1Root, name, "cgroup.procs"))
	return err == nil
}

// missingError is the refusal for a controller the kernel lacks.
func missingError(id, ctrl string) error {
	fix := ""
	switch ctrl {
	case "memory":
		fix = "add cgroup_enable=memory (Raspberry Pi OS: also cgroup_memory=1) to the kernel command line (/boot/firmware/cmdline.txt) and reboot"
	case "cpu":
		fix = "enable CONFIG_CFS_BANDWIDTH / the cpu controller in the kernel"
	default:
		fix = "enable the " + ctrl + " controller (kernel config or cgroup_enable=" + ctrl + ")"
	}
	return fmt.Errorf("sandbox %s: the kernel has no %s cgroup controller, which this experiment's limits need: %s, or accept running without it in the node policy", id, ctrl, fix)
}

// checkControllers decides, for the controllers the resources need, which
// the kernel lacks, and refuses unless the policy accepts each missing one.
func checkControllers(id string, needs []string, have func(string) bool, allow []string) ([]string, error) {
	var missing []string
	for _, n := range needs {
		if have(n) {
			continue
		}
		if !slices.Contains(allow, n) {
			return nil, missingError(id, n)
		}
		missing = append(missing, n)
	}
	return missing, nil
}

// v2Mount, when set, is a cgroup2 hierarchy to use whatever the host's
// mode: tests point it at a hybrid host's /sys/fs/cgroup/unified to run
// the v2 path here.
var v2Mount = ""

// unifiedAt is where experiments' cgroups live when they are cgroup v2
// ones (ok false: v1 controllers, on legacy and hybrid hosts).
func unifiedAt() (mount string, ok bool) {
	if v2Mount != "" {
		return v2Mount, true
	}
	if cgroupMode() == cgroups.Unified {
		return v2Root, true
	}
	return "", false
}

// newCgroup creates the experiment's cgroup with its resources, refusing
// when a needed controller is missing and not allowed to be.
func newCgroup(id, rel string, r Resources, allowMissing []string) (cgroupCtl, error) {
	if mount, ok := unifiedAt(); ok {
		return newCgroupV2At(mount, id, rel, r, allowMissing)
	}
	return newCgroupV1(id, rel, r, allowMissing)
}

// loadCgroup finds an existing experiment cgroup (after a daemon restart).
// ok is false when it does not exist (any more).
func loadCgroup(rel string) (cgroupCtl, bool) {
	if mount, ok := unifiedAt(); ok {
		path := filepath.Join(mount, rel)
		if _, err := os.Stat(path); err != nil {
			return nil, false
		}
		m, err := cgroup2.Load(rel, cgroup2.WithMountpoint(mount))
		if err != nil {
			return nil, false
		}
		return &cgroupV2{m: m, path: path}, true
	}
	var subs []cgroup1.Subsystem
	var names []string
	for _, c := range []struct {
		name string
		s    cgroup1.Subsystem
	}{
		{"cpu", cgroup1.NewCpu(v1Root)}, {"cpuacct", cgroup1.NewCpuacct(v1Root)},
		{"memory", cgroup1.NewMemory(v1Root, cgroup1.OptionalSwap())}, {"pids", cgroup1.NewPids(v1Root)},
		{"freezer", cgroup1.NewFreezer(v1Root)},
	} {
		if _, err := os.Stat(filepath.Join(v1Root, c.name, rel)); err == nil {
			subs = append(subs, c.s)
			names = append(names, c.name)
		}
	}
	if len(subs) == 0 {
		return nil, false
	}
	cg, err := cgroup1.Load(cgroup1.StaticPath(rel), cgroup1.WithHierarchy(func() ([]cgroup1.Subsystem, error) { return subs, nil }))
	if err != nil {
		return nil, false
	}
	return &cgroupV1{cg: cg, rel: rel, subs: names}, true
}

// ---- v1 (legacy and hybrid hosts) ----

type cgroupV1 struct {
	cg      cgroup1.Cgroup
	rel     string
	missing []string
	subs    []string
}

func newCgroupV1(id, rel string, r Resources, allowMissing []string) (cgroupCtl, error) {
	missing, err := checkControllers(id, r.Needs(), v1Available, allowMissing)
	if err != nil {
		return nil, err
	}
	var subs []cgroup1.Subsystem
	var names []string
	add := func(name string, s cgroup1.Subsystem) {
		if v1Available(name) {
			subs = append(subs, s)
			names = append(names, name)
		}
	}
	add("cpu", cgroup1.NewCpu(v1Root))
	add("cpuacct", cgroup1.NewCpuacct(v1Root))
	add("memory", cgroup1.NewMemory(v1Root, cgroup1.OptionalSwap()))
	add("pids", cgroup1.NewPids(v1Root))
	add("freezer", cgroup1.NewFreezer(v1Root))
	withSwap := false
	if _, err := os.Stat(filepath.Join(v1Root, "memory", "memory.memsw.limit_in_bytes")); err == nil {
		withSwap = true
	}
	cg, err := cgroup1.New(cgroup1.StaticPath(rel), r.V1(withSwap),
		cgroup1.WithHierarchy(func() ([]cgroup1.Subsystem, error) { return subs, nil }))
	if err != nil {
		c := &cgroupV1{rel: rel, subs: names}
		c.rmdirs()
		return nil, fmt.Errorf("sandbox %s: create cgroup %s: %w", id, rel, err)
	}
	return &cgroupV1{cg: cg, rel: rel, missing: missing, subs: names}, nil
}

func (c *cgroupV1) Missing() []string { return c.missing }

func (c *cgroupV1) Empty() bool { return len(c.procs()) == 0 }

// v1TasksFiles are the "tasks" files of cgroup rel in every v1 controller
// arkgw uses that this kernel has (as newCgroupV1 makes them), nil on a
// cgroup v2 host.
func v1TasksFiles(rel string) []string {
	if _, v2 := unifiedAt(); v2 {
		return nil
	}
	var out []string
	for _, s := range []string{"cpu", "cpuacct", "memory", "pids", "freezer"} {
		if v1Available(s) {
			out = append(out, filepath.Join(v1Root, s, rel, "tasks"))
		}
	}
	return out
}

func (c *cgroupV1) Delegate(uid, gid int, tasks []string) error {
	for _, f := range tasks {
		if err := os.Chown(f, uid, gid); err != nil {
			return fmt.Errorf("delegate %s: %w", f, err)
		}
	}
	return nil
}

func (c *cgroupV1) Add(pid int) error {
	if err := c.cg.Add(cgroup1.Process{Pid: pid}); err != nil {
		return fmt.Errorf("move pid %d into cgroup %s: %w", pid, c.rel, err)
	}
	return nil
}

// procs lists the pids in the cgroup (pids controller, else any).
func (c *cgroupV1) procs() []int {
	for _, s := range []string{"pids", "freezer", "cpuacct", "memory", "cpu"} {
		if !slices.Contains(c.subs, s) {
			continue
		}
		ps, err := readPids(filepath.Join(v1Root, s, c.rel, "cgroup.procs"))
		if err == nil {
			return ps
		}
	}
	return nil
}

// Kill: freeze so nothing forks while we kill, SIGKILL every process,
// thaw so the kills are delivered, and wait for the holder to reap.
func (c *cgroupV1) Kill() error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ps := c.procs()
		if len(ps) == 0 {
			return nil
		}
		frozen := slices.Contains(c.subs, "freezer") && c.cg.Freeze() == nil
		for _, p := range c.procs() {
			syscall.Kill(p, syscall.SIGKILL)
		}
		if frozen {
			c.cg.Thaw()
		}
		for i := 0; i < 50 && len(c.procs()) > 0; i++ {
			time.Sleep(2 * time.Millisecond)
		}
	}
	if ps := c.procs(); len(ps) > 0 {
		return fmt.Errorf("cgroup %s: processes %v survive SIGKILL", c.rel, ps)
	}
	return nil
}

func (c *cgroupV1) Stats() cgStats {
	var st cgStats
	if n, err := readUint(filepath.Join(v1Root, "cpuacct", c.rel, "cpuacct.usage")); err == nil {
		st.CPU = time.Duration(n)
	}
	if kv, err := readKV(filepath.Join(v1Root, "memory", c.rel, "memory.oom_control")); err == nil {
		st.OOMKills = kv["oom_kill"]
	}
	return st
}

func (c *cgroupV1) Delete() error {
	if err := c.cg.Delete(); err != nil {
		return fmt.Errorf("remove cgroup %s: %w", c.rel, err)
	}
	return nil
}

// rmdirs removes what a failed cgroup1.New may have left.
func (c *cgroupV1) rmdirs() {
	for _, s := range c.subs {
		os.Remove(filepath.Join(v1Root, s, c.rel))
	}
}

// ---- v2 (unified hosts) ----

type cgroupV2 struct {
	m       *cgroup2.Manager
	path    string
	missing []string
}

const v2Root = "/sys/fs/cgroup"

// newCgroupV2At: v2 at a given mount point (tests use the hybrid host's
// /sys/fs/cgroup/unified).
func newCgroupV2At(mount, id, rel string, r Resources, allowMissing []string) (cgroupCtl, error) {
	b, err := os.ReadFile(filepath.Join(mount, "cgroup.controllers"))
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: read cgroup v2 controllers: %w", id, err)
	}
	have := strings.Fields(string(b))
	missing, err := checkControllers(id, r.Needs(), func(c string) bool { return slices.Contains(have, c) }, allowMissing)
	if err != nil {
		return nil, err
	}
	res := r.V2()
	if slices.Contains(missing, "memory") {
		res.Memory = nil
	}
	if slices.Contains(missing, "cpu") {
		res.CPU = nil
	}
	if slices.Contains(missing, "pids") {
		res.Pids = nil
	}
	m, err := cgroup2.NewManager(mount, rel, res)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: create cgroup %s (is %s delegated to arkgw?): %w", id, rel, filepath.Dir(rel), err)
	}
	return &cgroupV2{m: m, path: filepath.Join(mount, rel), missing: missing}, nil
}

func (c *cgroupV2) Missing() []string { return c.missing }

func (c *cgroupV2) Empty() bool {
	ps, err := readPids(filepath.Join(c.path, "cgroup.procs"))
	return err != nil || len(ps) == 0
}

func (c *cgroupV2) Delegate(int, int, []string) error {
	return errors.New("cgroup v2 has no tasks files to delegate")
}

func (c *cgroupV2) Add(pid int) error {
	if err := c.m.AddProc(uint64(pid)); err != nil {
		return fmt.Errorf("move pid %d into cgroup %s: %w", pid, c.path, err)
	}
	return nil
}

// Kill uses cgroup.kill (5.14+; the library falls back to freeze+kill).
func (c *cgroupV2) Kill() error {
	if err := c.m.Kill(); err != nil {
		return fmt.Errorf("kill cgroup %s: %w", c.path, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ps, err := readPids(filepath.Join(c.path, "cgroup.procs"))
		if err != nil || len(ps) == 0 {
			return nil
		}
		time.Sleep(2 * time.Millisecond)
	}
	return fmt.Errorf("cgroup %s: processes survive cgroup.kill", c.path)
}

func (c *cgroupV2) Stats() cgStats {
	var st cgStats
	if kv, err := readKV(filepath.Join(c.path, "cpu.stat")); err == nil {
		st.CPU = time.Duration(kv["usage_usec"]) * time.Microsecond
	}
	if kv, err := readKV(filepath.Join(c.path, "memory.events")); err == nil {
		st.OOMKills = kv["oom_kill"]
	}
	return st
}

func (c *cgroupV2) Delete() error {
	if err := c.m.Delete(); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove cgroup %s: %w", c.path, err)
	}
	return nil
}

// ---- small readers ----

func readPids(path string) ([]int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out, nil
}

func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}

func readKV(path string) (map[string]uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64); err == nil {
			out[k] = n
		}
	}
	return out, sc.Err()
}
