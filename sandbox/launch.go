package sandbox

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/arkgw/arkgw/nsholder"
	"github.com/arkgw/arkgw/reexec"
	"github.com/arkgw/arkgw/sandbox/sandboxinit"
)

// Sandbox is a launched run. Its methods are safe for concurrent use.
type Sandbox struct {
	ID  string
	PID int // host pid of the sandbox init (pid 1 of the run's PID namespace)

	log     hclog.Logger
	proc    waiter
	cg      cgroupCtl
	timeout time.Duration

	mu       sync.Mutex
	stopped  bool
	timedOut bool

	stop chan struct{} // closed by Stop
	done chan struct{} // closed when the run ended and was cleaned up
	res  Result
}

// cloneflags of the init: new mount, PID, UTS and IPC namespaces, owned by
// the experiment's user namespace (the holder's). The cgroup namespace is
// unshared by the init after it was moved into its cgroup, so that its
// cgroup root is the experiment's cgroup.
const cloneflags = unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC

// Launch starts spec.Command in a new sandbox and returns once the command
// was executed (or failed to start: then nothing is left behind). ctx
// bounds the launch only; the run is bounded by spec.Limits.MaxHours and
// Stop.
//
// Sequence: validate and compute (prepare) -> create the cgroup (in the
// background, until the init is placed) -> open the output/status files,
// detached clones of the bind sources and a new /dev -> send the init's
// configuration into a pipe -> the holder spawns the init in new
// namespaces and starts draining its output -> the daemon makes the
// cgroup's v1 tasks files the init's and writes 'c' (the init moves
// itself in), or moves it and writes 'p' -> (Prepare ends; Start:) the
// daemon writes 'g' -> the init finishes the sandbox, starts the command
// and reports "ok" (or the error) on a report pipe.
func Launch(ctx context.Context, spec Spec) (*Sandbox, error) {
	pd, err := Prepare(ctx, spec)
	if err != nil {
		return nil, err
	}
	return pd.Start(ctx)
}

// Pending is a prepared sandbox: its init is in its namespaces and cgroup
// and has built the root; the command has not started. Start or Abort it.
type Pending struct {
	spec Spec
	p    *prepared
	log  hclog.Logger
	proc *nsholder.Process
	cg   cgroupCtl
	cfgW *os.File // the init waits for the "go" byte on it
	repR *os.File // its report

	t0                                        time.Time
	tCgroup, tPrep, tSpawn, tPlaced, released time.Duration
}

// Prepare does all of a launch up to the command's start, so that the
// caller can set up what must be in place before the command runs (its
// shaping and accounting) while the init builds the sandbox. On error
// nothing is left behind.
func Prepare(ctx context.Context, spec Spec) (pd *Pending, err error) {
	t0 := time.Now()
	p, err := prepare(&spec)
	if err != nil {
		return nil, err
	}
	log := spec.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	log = log.With("experiment", spec.ID)
	// Nothing is written into the container root (it may be a read-only
	// image): the mount points it lacks go into the skeleton layer of the
	// init's root overlay, and mounts below it are mounted over that.
	// Worked out while the init starts (reading the mount table took
	// 0.3-0.5 ms here) and sent after the cgroup byte.
	type layoutMade struct {
		b   []byte
		err error
	}
	layoutC := make(chan layoutMade, 1)
	go func() {
		l := sandboxinit.Layout{Skeleton: skeletonOf(p.root, spec.PcapBinary != "")}
		subs, err := submounts(p.root)
		if err != nil {
			layoutC <- layoutMade{nil, err}
			return
		}
		l.Submounts = subs
		b, err := l.Encode()
		layoutC <- layoutMade{b, err}
	}()
	layoutWaited := false
	awaitLayout := func() ([]byte, error) {
		layoutWaited = true
		m := <-layoutC
		return m.b, m.err
	}
	defer func() {
		if !layoutWaited {
			awaitLayout()
		}
	}()
	// The cgroup is made while the init is spawned (on v1 it is several
	// directories and files, about as long as the spawn); it is needed
	// only to place the init.
	type made struct {
		cg  cgroupCtl
		err error
	}
	cgMade := make(chan made, 1)
	go func() {
		cg, err := newCgroup(spec.ID, p.cgroupRel, p.res, spec.AllowMissing)
		cgMade <- made{cg, err}
	}()
	var cg cgroupCtl
	var tCgroup time.Duration
	cgWaited := false
	awaitCgroup := func() error {
		if cgWaited {
			return nil
		}
		cgWaited = true
		m := <-cgMade
		tCgroup = time.Since(t0)
		if m.err != nil {
			return m.err
		}
		cg = m.cg
		if missing := cg.Missing(); len(missing) > 0 {
			log.Warn("running without cgroup controllers (accepted by policy)", "missing", missing)
		}
		return nil
	}
	var proc *nsholder.Process
	defer func() {
		if err == nil {
			return
		}
		awaitCgroup()
		if cg != nil {
			cg.Kill()
		}
		// Not yet placed, the init exits by itself: its configuration
		// pipe was closed (the deferred close below ran first) before
		// the "go" byte.
		if proc != nil {
			proc.Wait()
		}
		if cg != nil {
			cg.Kill()
			cg.Delete()
		}
	}()

	var toClose []*os.File
	defer func() {
		for _, f := range toClose {
			f.Close()
		}
	}()
	openOut := func(path string) (*os.File, error) {
		if path == "" {
			return nil, nil
		}
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|unix.O_CLOEXEC, 0o640)
		if err != nil {
			return nil, fmt.Errorf("sandbox %s: open output file: %w", spec.ID, err)
		}
		toClose = append(toClose, f)
		return f, nil
	}
	stdout, err := openOut(spec.Stdout)
	if err != nil {
		return nil, err
	}
	stderr, err := openOut(spec.Stderr)
	if err != nil {
		return nil, err
	}
	status, err := openOut(spec.StatusFile)
	if err != nil {
		return nil, err
	}
	// Bind sources travel as detached mounts (open_tree clones made here,
	// already read-only, nosuid, nodev) that the init attaches with
	// move_mount: the init's mount namespace is a copy, where binding a
	// path of ours fails (EINVAL), and its uid could not walk the
	// daemon's 0700 directories anyway. Recursive: a root made of
	// several mounts keeps them all.
	openPath := func(path, what string) (*os.File, error) {
		fd, err := unix.OpenTree(unix.AT_FDCWD, path, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
		if err != nil {
			return nil, fmt.Errorf("sandbox %s: clone mount of %s %s: %w", spec.ID, what, path, err)
		}
		f := os.NewFile(uintptr(fd), path)
		toClose = append(toClose, f)
		attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV}
		if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &attr); err != nil {
			return nil, fmt.Errorf("sandbox %s: make %s %s read-only: %w", spec.ID, what, path, err)
		}
		return f, nil
	}
	cfgR, cfgW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	toClose = append(toClose, cfgR, cfgW)
	repR, repW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	toClose = append(toClose, repR, repW)
	extra := []*os.File{cfgR, repW}
	p.cfg.ReportFD = 4
	rootF, err := openPath(p.root, "container root")
	if err != nil {
		return nil, err
	}
	extra = append(extra, rootF)
	p.cfg.RootFD = 2 + len(extra)
	// /dev is made in line (0.13 ms): made in a goroutine alongside the
	// rest, it arrived later, the goroutine waiting for a thread to wake.
	devF, err := makeDev()
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", spec.ID, err)
	}
	toClose = append(toClose, devF)
	extra = append(extra, devF)
	p.cfg.DevFD = 2 + len(extra)
	for _, b := range []struct {
		path, what string
		fd         *int
	}{
		{spec.FilesDir, "experiment files", &p.cfg.FilesFD},
		{spec.PcapBinary, "pcap client", &p.cfg.PcapBinFD},
		{spec.PcapSocket, "pcap socket", &p.cfg.PcapSockFD},
	} {
		if b.path == "" {
			continue
		}
		f, err := openPath(b.path, b.what)
		if err != nil {
			return nil, err
		}
		extra = append(extra, f)
		*b.fd = 2 + len(extra)
	}
	p.cfg.ResultFD = 3 + len(extra)
	cfgBytes, err := p.cfg.Encode()
	if err != nil {
		return nil, err
	}
	if _, err := cfgW.Write(cfgBytes); err != nil {
		return nil, fmt.Errorf("sandbox %s: write init config: %w", spec.ID, err)
	}

	tPrep := time.Since(t0)
	proc, err = spec.Holder.Spawn(nsholder.SpawnRequest{
		Path: reexec.Self,
		Args: []string{sandboxinit.Name},
		// One P: the init is a small single-purpose process, and every
		// thread the runtime starts is one more for the capability drop
		// (all threads) to reach. Not the command's environment.
		Env:        []string{"GOMAXPROCS=1"},
		Cloneflags: cloneflags,
		ExtraFiles: extra,
		ResultPipe: true,
		Stdout:     stdout,
		Stderr:     stderr,
		Status:     status,
		OutputCap:  spec.Limits.OutputMB << 20,
	})
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", spec.ID, err)
	}
	// Only the holder and the init keep these now.
	for _, f := range toClose {
		if f != cfgW && f != repR {
			f.Close()
		}
	}
	toClose = []*os.File{cfgW, repR}

	tSpawn := time.Since(t0)
	if err := awaitCgroup(); err != nil {
		return nil, err
	}
	// The init moves itself into the cgroup ('c') where it can: a move
	// by the daemon waits for an RCU grace period (see sandboxinit's
	// placeSelf). Else ('p') the daemon moves it.
	placed := byte('c')
	uid, gid := spec.Holder.HostIDs()
	if len(p.cfg.CgroupTasks) == 0 {
		placed = 'p'
	} else if err := cg.Delegate(int(uid), int(gid), p.cfg.CgroupTasks); err != nil {
		log.Debug("cgroup not delegated to the init; moving it", "error", err)
		placed = 'p'
	}
	if placed == 'p' {
		if err := cg.Add(proc.PID); err != nil {
			return nil, fmt.Errorf("sandbox %s: %w", spec.ID, err)
		}
	}
	layout, err := awaitLayout()
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", spec.ID, err)
	}
	if _, err := cfgW.Write(append([]byte{placed}, layout...)); err != nil {
		return nil, fmt.Errorf("sandbox %s: release init into its cgroup: %w", spec.ID, err)
	}
	pd = &Pending{spec: spec, p: p, log: log, proc: proc, cg: cg, cfgW: cfgW, repR: repR,
		t0: t0, tCgroup: tCgroup, tPrep: tPrep, tSpawn: tSpawn, tPlaced: time.Since(t0)}
	toClose = nil // the Pending owns the pipes now
	return pd, nil
}

// Abort ends a prepared sandbox that will not start: the init exits when
// its configuration pipe closes, then its cgroup goes.
func (pd *Pending) Abort() {
	pd.cfgW.Close()
	pd.repR.Close()
	pd.cg.Kill()
	pd.proc.Wait()
	pd.cg.Kill()
	pd.cg.Delete()
}

// Start lets the init start the command and returns once it was executed
// (or failed to start: then nothing is left behind). ctx bounds the start
// only; the run is bounded by the spec's Limits.MaxHours and Stop.
func (pd *Pending) Start(ctx context.Context) (sb *Sandbox, err error) {
	spec, p, log, proc, cg, t0 := pd.spec, pd.p, pd.log, pd.proc, pd.cg, pd.t0
	defer func() {
		if err != nil {
			pd.Abort()
		}
	}()
	defer pd.repR.Close()
	pd.released = time.Since(t0)
	if _, err := pd.cfgW.Write([]byte{'g'}); err != nil {
		return nil, fmt.Errorf("sandbox %s: release init: %w", spec.ID, err)
	}
	pd.cfgW.Close()

	type rep struct {
		line string
		err  error
	}
	rc := make(chan rep, 1)
	go func() {
		l, err := bufio.NewReader(pd.repR).ReadString('\n')
		rc <- rep{l, err}
	}()
	var r rep
	select {
	case r = <-rc:
	case <-ctx.Done():
		return nil, fmt.Errorf("sandbox %s: launch: %w", spec.ID, ctx.Err())
	}
	line := strings.TrimSpace(r.line)
	initTimes, isOK := strings.CutPrefix(line, "ok")
	if !isOK {
		if line == "" {
			line = fmt.Sprintf("init ended without report (%v)", r.err)
		}
		return nil, fmt.Errorf("sandbox %s: %s", spec.ID, strings.TrimPrefix(line, "error: "))
	}
	sb = &Sandbox{
		ID: spec.ID, PID: proc.PID, log: log, proc: proc, cg: cg, timeout: p.timeout,
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	go sb.monitor()
	log.Debug("sandbox started", "pid", proc.PID, "root", p.root, "cgroup_created", pd.tCgroup,
		"prepared", pd.tPrep, "spawned", pd.tSpawn, "placed", pd.tPlaced, "released", pd.released, "executed", time.Since(t0),
		"init", strings.TrimSpace(initTimes))
	return sb, nil
}

// waiter is the end of a run as seen by the daemon: the holder's report
// (*nsholder.Process) or, after a restart, the status file it writes.
type waiter interface {
	Done() <-chan struct{}
	Wait() (nsholder.ExitStatus, error)
}

// monitor owns the run: it enforces the wall-clock limit, and when the
// init ended it reads the cgroup's accounting, removes the cgroup and
// publishes the Result.
func (sb *Sandbox) monitor() {
	var timer <-chan time.Time
	if sb.timeout != 0 {
		t := time.NewTimer(max(sb.timeout, time.Millisecond))
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-sb.proc.Done():
	case <-timer:
		sb.mu.Lock()
		sb.timedOut = true
		sb.mu.Unlock()
		sb.log.Info("wall-clock limit reached, killing")
		sb.cg.Kill()
	}
	st, werr := sb.proc.Wait()
	stats := sb.cg.Stats()
	var errs []error
	if werr != nil {
		errs = append(errs, werr)
	}
	if st.Err != "" {
		errs = append(errs, errors.New(st.Err))
	}
	// With the init gone its PID namespace is empty; anything left (it
	// cannot be) is killed before the cgroup is removed.
	if err := sb.cg.Kill(); err != nil {
		errs = append(errs, err)
	}
	if err := sb.cg.Delete(); err != nil {
		errs = append(errs, err)
	}
	sb.mu.Lock()
	res := resultOf(sb.ID, st, stats, sb.stopped, sb.timedOut)
	sb.mu.Unlock()
	if err := errors.Join(errs...); err != nil {
		res.Err = err.Error()
	}
	sb.res = res
	sb.log.Info("sandbox ended", "exited", res.Exited, "code", res.Code, "signal", res.Signal,
		"oom", res.OOMKilled, "timeout", res.TimedOut, "stopped", res.Stopped, "cpu", res.CPUTime)
	close(sb.done)
}

// resultOf combines the holder's view of the init, the init's report about
// the command and the cgroup's accounting.
func resultOf(id string, st nsholder.ExitStatus, cs cgStats, stopped, timedOut bool) Result {
	r := Result{ID: id, Exited: st.Exited, Code: st.Code, Signal: st.Signal,
		UserCPU: st.UserCPU, SysCPU: st.SysCPU, Stdout: st.Stdout, Stderr: st.Stderr,
		Started: st.Started, Ended: st.Ended, Stopped: stopped, TimedOut: timedOut,
		OOMKilled: cs.OOMKills > 0, CPUTime: cs.CPU}
	var ps sandboxinit.Status
	if len(st.Result) > 0 && json.Unmarshal(st.Result, &ps) == nil {
		r.Exited, r.Code, r.Signal = ps.Exited, ps.Code, ps.Signal
		if !ps.Exited {
			r.Code = -1
		}
	}
	if r.CPUTime == 0 {
		r.CPUTime = st.UserCPU + st.SysCPU
	}
	return r
}

// Done is closed when the run ended and its cgroup was removed.
func (sb *Sandbox) Done() <-chan struct{} { return sb.done }

// Wait blocks until the run ended and was cleaned up, or ctx ends.
func (sb *Sandbox) Wait(ctx context.Context) (Result, error) {
	select {
	case <-sb.done:
		return sb.res, nil
	case <-ctx.Done():
		return Result{}, fmt.Errorf("sandbox %s: wait: %w", sb.ID, ctx.Err())
	}
}

// Stop kills every process of the run (the whole cgroup) and waits until
// it was cleaned up: no process, mount (they live in the run's mount
// namespace, which dies with its last process) or cgroup remains.
// Idempotent; after the run ended it just returns the Result.
func (sb *Sandbox) Stop(ctx context.Context) (Result, error) {
	select {
	case <-sb.done:
		return sb.res, nil
	default:
	}
	sb.mu.Lock()
	first := !sb.stopped
	sb.stopped = true
	sb.mu.Unlock()
	if first {
		close(sb.stop)
		if err := sb.cg.Kill(); err != nil {
			sb.log.Error("stop: kill cgroup", "error", err)
		}
	}
	return sb.Wait(ctx)
}
