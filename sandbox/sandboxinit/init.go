// Package sandboxinit is the sandbox init: a re-executed binary that the holder starts
// in new mount, PID, UTS and IPC namespaces (inside the experiment's user
// and network namespaces). It runs as uid 0 of the experiment's user
// namespace, builds the sandbox, then starts the command as the
// experiment's uid and stays as pid 1 of the run: it reaps orphans,
// forwards SIGTERM/SIGINT/SIGHUP to the command, and reports the command's
// exit status on the result pipe when it ended. Its exit takes the whole
// PID namespace with it.
//
// Every step that changes the process happens on the main thread, locked:
// the cgroup move, the cgroup namespace, capabilities, the bounding set and
// the seccomp "no new privs" bit are per-thread, and the command is forked
// from this thread.
//
// It is its own package, importing little beyond the standard library, so
// that the small helper binary (cmd/arkgw-init) carries it: a Go binary's
// start-up cost grows with the packages it initialises, and the init
// starts once per launch.
package sandboxinit

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/moby/sys/capability"
	"golang.org/x/sys/unix"

	"github.com/arkgw/arkgw/reexec"
)

// Name is the handler name (argv[0]) that starts the init.
const Name = "arkgw-sandbox-init"

func init() { reexec.Register(Name, initMain) }

// Config is what the daemon tells the init, on fd 3 (see Encode); the
// byte 'c' or 'p', the root's Layout and then the byte 'g' follow on the
// same pipe.
type Config struct {
	ID         string
	ReportFD   int
	ResultFD   int
	RootFD     int
	FilesFD    int
	PcapBinFD  int
	PcapSockFD int
	DevFD      int // /dev, made by the daemon (a detached mount)
	TmpfsBytes int64
	HasFiles   bool
	HasPcapBin bool
	HasPcapSck bool
	Hostname   string
	ResolvConf string
	Hosts      string
	Args       []string
	Env        []string
	Dir        string
	UID        uint32
	GID        uint32
	NoFile     uint64
	CPUSeconds uint64
	Nice       int
	Caps       []string
	// CgroupTasks are the experiment cgroup's v1 "tasks" files, one per
	// controller: when the daemon sends 'c' it has made them the init's
	// to write, and the init moves itself in (see placeSelf).
	CgroupTasks []string
	// Seccomp is the packed BPF program (op<<48 | jt<<40 | jf<<32 | k).
	Seccomp []uint64
}

// stage is where the new root is assembled, in the init's private mount
// namespace: a fresh tmpfs over /tmp (reachable by any uid; the host's
// /tmp is untouched, the mount exists only in this namespace).
const stage = "/tmp"

func initMain() {
	t0 := time.Now()
	runtime.LockOSThread()
	report := os.NewFile(4, "report")
	fail := func(step string, err error) {
		fmt.Fprintf(report, "error: %s: %v\n", step, err)
		os.Exit(125)
	}
	// Nothing the holder passed may reach the command.
	closeFrom3OnExec()
	cfgPipe := os.NewFile(3, "config")
	rd := bufio.NewReader(cfgPipe)
	cfg, err := decodeConfig(rd)
	if errors.Is(err, io.EOF) {
		os.Exit(125) // the daemon gave up before sending it
	}
	if err != nil {
		fail("decode config", err)
	}
	if cfg.ReportFD != 4 {
		fail("config", fmt.Errorf("report fd %d", cfg.ReportFD))
	}
	tCfg := time.Since(t0)
	// The cgroup: 'p' = the daemon placed us, 'c' = it is ready for us
	// to move in ourselves (before the pivot hides /sys/fs/cgroup).
	switch b, err := rd.ReadByte(); {
	case err != nil:
		os.Exit(125) // the daemon gave up
	case b == 'c':
		if err := placeSelf(cfg.CgroupTasks); err != nil {
			fail("join the experiment's cgroup", err)
		}
	case b != 'p':
		fail("config", fmt.Errorf("cgroup byte %q", b))
	}
	layout, err := decodeLayout(rd)
	if errors.Is(err, io.EOF) {
		os.Exit(125)
	}
	if err != nil {
		fail("config", err)
	}
	if err := buildRoot(&cfg, &layout); err != nil {
		fail("build root", err)
	}
	tBuilt := time.Since(t0)
	// Wait until the daemon lets the command start.
	if b, err := rd.ReadByte(); err != nil || b != 'g' {
		os.Exit(125)
	}
	cfgPipe.Close()
	tGo := time.Since(t0)
	// A cgroup namespace rooted at the experiment's cgroup.
	if err := unix.Unshare(unix.CLONE_NEWCGROUP); err != nil {
		fail("unshare cgroup namespace", err)
	}
	cmd, err := prepareCommand(&cfg)
	if err != nil {
		fail("prepare command", err)
	}
	tPrepared := time.Since(t0)
	if err := restrict(&cfg); err != nil {
		fail("restrict", err)
	}
	tRestricted := time.Since(t0)
	// Before the fork keep only what the child needs to become the
	// experiment uid with its ambient set; after it, CAP_KILL only. The
	// first reduction is of this thread only: the command is forked from
	// it and inherits its sets, and the second reaches every thread.
	// CAP_SYS_NICE: to lower the command's priority once it runs (its
	// uid is not ours). The child loses it with its uid change.
	keep := uint64(1<<unix.CAP_KILL | 1<<unix.CAP_SETUID | 1<<unix.CAP_SETGID | 1<<unix.CAP_SYS_NICE)
	for _, c := range cmd.attr.Sys.AmbientCaps {
		keep |= 1 << c
	}
	if err := unix.Capset(capsOf(keep)); err != nil {
		fail("reduce the init's capabilities", err)
	}
	pid, err := cmd.start()
	if err != nil {
		fail("start "+cfg.Args[0], err)
	}
	// Nice is given to the command's process group once it runs, not
	// taken by this thread before the fork: a nice-10 fork and exec took
	// 1-3 ms instead of 0.3-0.7 here, a third of the launch. (A child
	// that the command forks and moves out of its group within those
	// microseconds keeps nice 0; the cgroup's CPU limit holds either way.)
	if err := unix.Setpriority(unix.PRIO_PGRP, pid, cfg.Nice); err != nil && err != unix.ESRCH {
		unix.Kill(pid, unix.SIGKILL)
		fail("nice "+strconv.Itoa(cfg.Nice), err)
	}
	// "ok" (the command runs) and where the init's time went (logged at
	// debug level); then the init's own drop to CAP_KILL, which the
	// command runs alongside of either way. Should it fail (it does not),
	// the run ends: the command is killed and the reason is in its
	// stderr.
	fmt.Fprintf(report, "ok config=%v built=%v released=%v prepared=%v restricted=%v executed=%v\n",
		tCfg, tBuilt, tGo, tPrepared, tRestricted, time.Since(t0))
	report.Close()
	if err := dropInitCaps(1 << unix.CAP_KILL); err != nil {
		unix.Kill(pid, unix.SIGKILL)
		fmt.Fprintf(os.Stderr, "arkgw sandbox init: drop the init's capabilities: %v; the command was killed\n", err)
		os.Exit(125)
	}
	// Forwarding starts after the report, off the launch's path (starting
	// the runtime's signal machinery costs about half a millisecond). A
	// signal before that ends the init by Go's default action, and the
	// run with it: what a stop signal asks for anyway.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGHUP)
	go func() {
		for s := range sigs {
			unix.Kill(pid, s.(syscall.Signal))
		}
	}()
	st := reap(pid)
	if res := os.NewFile(uintptr(cfg.ResultFD), "result"); res != nil {
		b, _ := json.Marshal(st)
		res.Write(b)
		res.Close()
	}
	if st.Exited {
		os.Exit(st.Code)
	}
	os.Exit(128 + st.Signal)
}

// Status is what the init reports about the command on the result pipe
// (the init is pid 1 of its namespace and cannot die of the command's
// signal itself).
type Status struct {
	Exited bool `json:"exited"`
	Code   int  `json:"code"`
	Signal int  `json:"signal"`
}

// placeSelf moves the calling thread into the cgroup of each v1 "tasks"
// file. Written by the thread itself ("0"), a move takes no global lock;
// moving another process (the daemon writing the init's pid) takes
// cgroup_threadgroup_rwsem for writing, which waits for an RCU grace
// period when no move happened lately: about 10 ms of every experiment's
// start. Only this thread moves, the one the command is forked from (its
// children start in its cgroup); the runtime's other threads stay where
// they were, and die with it when the cgroup is killed.
func placeSelf(tasks []string) error {
	if len(tasks) == 0 {
		return errors.New("no cgroup tasks files given")
	}
	for _, p := range tasks {
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		_, err = f.WriteString("0")
		f.Close()
		if err != nil {
			return fmt.Errorf("write %s: %w", p, err)
		}
	}
	return nil
}

// reap waits for every child (pid 1 inherits orphans) until the command
// itself ended.
func reap(pid int) Status {
	for {
		var ws unix.WaitStatus
		p, err := unix.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return Status{Code: -1, Signal: int(unix.SIGKILL)}
		}
		if p == pid {
			if ws.Exited() {
				return Status{Exited: true, Code: ws.ExitStatus()}
			}
			return Status{Code: -1, Signal: int(ws.Signal())}
		}
	}
}

func closeFrom3OnExec() {
	if unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC) == nil {
		return
	}
	// kernels before 5.11
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd >= 3 {
			unix.CloseOnExec(fd)
		}
	}
}

// mountFlagsOf returns the flags of the mount holding path that a
// read-only bind remount must repeat: in a user namespace, flags locked by
// the parent (nosuid, nodev, noexec, atime) cannot be cleared.
func mountFlagsOf(path string) uintptr {
	var st unix.Statfs_t
	if unix.Statfs(path, &st) != nil {
		return 0
	}
	var f uintptr
	for _, m := range []struct{ st, ms uintptr }{
		{unix.ST_NOSUID, unix.MS_NOSUID}, {unix.ST_NODEV, unix.MS_NODEV}, {unix.ST_NOEXEC, unix.MS_NOEXEC},
		{unix.ST_NOATIME, unix.MS_NOATIME}, {unix.ST_NODIRATIME, unix.MS_NODIRATIME}, {unix.ST_RELATIME, unix.MS_RELATIME},
	} {
		if uintptr(st.Flags)&m.st != 0 {
			f |= m.ms
		}
	}
	return f
}

// attach moves a detached mount (an open_tree clone the daemon made,
// already read-only) onto dst.
func attach(fd int, dst string) error {
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, dst, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount onto %s: %w", dst, err)
	}
	return nil
}

// bindRO bind-mounts src on dst and makes the bind read-only.
func bindRO(src, dst string, extra uintptr) error {
	if err := unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s on %s: %w", src, dst, err)
	}
	return remountRO(dst, extra)
}

func remountRO(dst string, extra uintptr) error {
	flags := unix.MS_REMOUNT | unix.MS_BIND | unix.MS_RDONLY | mountFlagsOf(dst) | extra
	if err := unix.Mount("", dst, "", flags, ""); err != nil {
		return fmt.Errorf("remount %s read-only: %w", dst, err)
	}
	return nil
}

// buildRoot assembles the new root under stage and pivots into it.
func buildRoot(c *Config, l *Layout) error {
	// Nothing we mount may propagate to the host.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	if err := unix.Mount("arkgw-stage", stage, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=64k,mode=755"); err != nil {
		return fmt.Errorf("mount staging tmpfs on %s: %w", stage, err)
	}
	root, err := assembleRoot(c.RootFD, l)
	if err != nil {
		return err
	}
	in := func(p string) string { return filepath.Join(root, p) }

	// /proc of the new PID namespace (allowed: the PID namespace is owned
	// by our user namespace and the host's /proc is fully visible here).
	if err := unix.Mount("proc", in("proc"), "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount /proc: %w", err)
	}
	if err := buildDev(c, in("dev")); err != nil {
		return err
	}
	if c.TmpfsBytes > 0 {
		if err := unix.Mount("tmpfs", in("tmp"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV,
			fmt.Sprintf("size=%d,mode=1777", c.TmpfsBytes)); err != nil {
			return fmt.Errorf("mount /tmp tmpfs: %w", err)
		}
	}
	// /run: a small tmpfs holding the generated /etc files and the pcap
	// socket's mount point.
	if err := unix.Mount("tmpfs", in("run"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=256k,mode=755"); err != nil {
		return fmt.Errorf("mount /run tmpfs: %w", err)
	}
	gen := in("run/arkgw")
	if err := os.MkdirAll(gen, 0o755); err != nil {
		return err
	}
	for name, content := range map[string]string{"resolv.conf": c.ResolvConf, "hosts": c.Hosts, "hostname": c.Hostname + "\n"} {
		src := filepath.Join(gen, name)
		if err := os.WriteFile(src, []byte(content), 0o644); err != nil {
			return err
		}
		if err := bindRO(src, in("etc/"+name), 0); err != nil {
			return err
		}
	}
	// The files are attached as they are (a bind), not through an
	// overlay like the root: an overlay does not see changes made to its
	// layers while mounted, and the files may change during a run. So
	// /experiment's line in mountinfo shows their path within their file
	// system.
	if c.HasFiles {
		if err := attach(c.FilesFD, in("experiment")); err != nil {
			return fmt.Errorf("experiment files: %w", err)
		}
	}
	if c.HasPcapBin {
		if err := attach(c.PcapBinFD, in("usr/bin/pcap")); err != nil {
			return fmt.Errorf("pcap client: %w", err)
		}
	}
	if c.HasPcapSck {
		if err := os.MkdirAll(in("run/ark"), 0o755); err != nil {
			return err
		}
		sock := in("run/ark/pcap.sock")
		if err := os.WriteFile(sock, nil, 0o644); err != nil {
			return err
		}
		if err := attach(c.PcapSockFD, sock); err != nil {
			return fmt.Errorf("bind pcap socket: %w", err)
		}
	}
	if err := unix.Sethostname([]byte(c.Hostname)); err != nil {
		return fmt.Errorf("sethostname: %w", err)
	}
	// pivot_root(".", ".") stacks the old root on the new one; detaching
	// it leaves only the new root (runc's trick, no put_old directory).
	if err := unix.Chdir(root); err != nil {
		return err
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach old root: %w", err)
	}
	return unix.Chdir("/")
}

// Stage paths of the root's layers. They show in the experiment's
// /proc/self/mountinfo as the overlay's options (where a bind mount would
// show the host path of its source), and mean nothing outside.
var (
	stageImage    = filepath.Join(stage, "image")    // the container root (attached clone)
	stageSkeleton = filepath.Join(stage, "skeleton") // the mount points it lacks
	stageRoot     = filepath.Join(stage, "root")     // the overlay: the sandbox's /
	stageEmpty    = filepath.Join(stage, "empty")    // an empty layer, where no skeleton is needed
)

// assembleRoot makes the sandbox's root, without writing to the container
// root: a read-only overlay of a skeleton layer (the mount points the root
// lacks, l.Skeleton) above the container root (the detached mount rootFD),
// and the root's own submounts mounted over it (the overlay sees the top
// mount's files only). Returns the path of the new root.
func assembleRoot(rootFD int, l *Layout) (string, error) {
	for _, d := range []string{stageImage, stageSkeleton, stageRoot, stageEmpty} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return "", err
		}
	}
	if err := attach(rootFD, stageImage); err != nil {
		return "", fmt.Errorf("container root: %w", err)
	}
	for _, p := range l.Skeleton {
		dst := filepath.Join(stageSkeleton, p)
		if strings.HasSuffix(p, "/") {
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return "", fmt.Errorf("skeleton: %w", err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return "", fmt.Errorf("skeleton: %w", err)
		}
		if err := os.WriteFile(dst, nil, 0o644); err != nil {
			return "", fmt.Errorf("skeleton: %w", err)
		}
	}
	if err := mountOverlay(stageRoot, stageSkeleton, stageImage); err != nil {
		return "", fmt.Errorf("container root: %w", err)
	}
	for _, rel := range l.Submounts {
		if err := submount(rel, l.Skeleton); err != nil {
			return "", fmt.Errorf("container root: its mount %s: %w", rel, err)
		}
	}
	return stageRoot, nil
}

// submount shows one mount below the container root (rel, relative to
// it; its parents were done before) in the sandbox's root: a directory
// through an overlay like the root's, with the skeleton's part below it
// on top when the root lacks mount points there; a file by a bind.
func submount(rel string, skeleton []string) error {
	src, dst := filepath.Join(stageImage, rel), filepath.Join(stageRoot, rel)
	var st unix.Stat_t
	if err := unix.Stat(src, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s on %s: %w", src, dst, err)
		}
		return nil
	}
	top := stageEmpty
	for _, p := range skeleton {
		if strings.HasPrefix(p, rel+"/") {
			top = filepath.Join(stageSkeleton, rel)
			break
		}
	}
	return mountOverlay(dst, top, src)
}

// mountOverlay mounts a read-only overlay of the given layers (top first)
// on dst: no upper layer, so nothing can be written through it and the
// layers are only read. A non-root user namespace may mount overlayfs
// (Linux 5.11+).
func mountOverlay(dst string, layers ...string) error {
	opts := "lowerdir=" + strings.Join(layers, ":")
	if err := unix.Mount("arkgw", dst, "overlay", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		return fmt.Errorf("mount overlay %s on %s: %w", opts, dst, err)
	}
	return nil
}

// ptyMax bounds the ptys of one run (its own devpts instance): the
// node-wide limit (kernel.pty.max) is 4096 by default, and one experiment
// opened 900. 64 is far beyond what a measurement uses (a shell, a few
// interactive tools) while 60 experiments cannot exhaust the node.
const ptyMax = 64

// buildDev attaches the daemon's /dev (device nodes and symlinks,
// read-only) and mounts the run's own devpts instance and /dev/shm on it.
func buildDev(c *Config, dev string) error {
	if err := attach(c.DevFD, dev); err != nil {
		return fmt.Errorf("/dev: %w", err)
	}
	if err := unix.Mount("devpts", filepath.Join(dev, "pts"), "devpts", unix.MS_NOSUID|unix.MS_NOEXEC,
		"newinstance,ptmxmode=0666,mode=0620,max="+strconv.Itoa(ptyMax)); err != nil {
		return fmt.Errorf("mount /dev/pts: %w", err)
	}
	if err := unix.Mount("shm", filepath.Join(dev, "shm"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=16m,mode=1777"); err != nil {
		return fmt.Errorf("mount /dev/shm: %w", err)
	}
	return nil
}

// command is the experiment's command, started with syscall.ForkExec: the
// first os.StartProcess of a process first probes pidfd support with
// several syscalls and a clone of its own, and os/exec adds little the
// init needs.
type command struct {
	path  string
	argv  []string
	attr  syscall.ProcAttr
	stdin *os.File
}

// start forks and executes the command; it returns once the exec
// succeeded, or its error.
func (c *command) start() (int, error) {
	pid, err := syscall.ForkExec(c.path, c.argv, &c.attr)
	c.stdin.Close()
	if err != nil {
		return 0, fmt.Errorf("fork/exec %s: %w", c.path, err)
	}
	return pid, nil
}

// prepareCommand resolves the command inside the new root.
func prepareCommand(c *Config) (*command, error) {
	path := c.Args[0]
	if !strings.Contains(path, "/") {
		found := ""
		pathEnv := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
		for _, e := range c.Env {
			if v, ok := strings.CutPrefix(e, "PATH="); ok {
				pathEnv = v
			}
		}
		for _, d := range filepath.SplitList(pathEnv) {
			p := filepath.Join(d, path)
			if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
				found = p
				break
			}
		}
		if found == "" {
			return nil, fmt.Errorf("%q not found in PATH %s of the container", path, pathEnv)
		}
		path = found
	}
	caps, err := capNumbers(c.Caps)
	if err != nil {
		return nil, err
	}
	amb := make([]uintptr, len(caps))
	for i, cp := range caps {
		amb[i] = uintptr(cp)
	}
	// stdin is the sandbox's /dev/null (the init's own is the host's).
	stdin, err := os.Open("/dev/null")
	if err != nil {
		return nil, err
	}
	return &command{path: path, argv: c.Args, stdin: stdin, attr: syscall.ProcAttr{
		Dir: c.Dir, Env: c.Env, Files: []uintptr{stdin.Fd(), 1, 2},
		Sys: &syscall.SysProcAttr{
			Credential:  &syscall.Credential{Uid: c.UID, Gid: c.GID, Groups: []uint32{c.GID}},
			AmbientCaps: amb,
			Setsid:      true,
		},
	}}, nil
}

func capNumbers(names []string) ([]capability.Cap, error) {
	var out []capability.Cap
	for _, n := range names {
		found := false
		for _, c := range capability.ListKnown() {
			if "CAP_"+strings.ToUpper(c.String()) == n {
				out = append(out, c)
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown capability %s", n)
		}
	}
	return out, nil
}

// dropInitCaps reduces the init's (uid 0 of the user namespace, pid 1 of
// the run) effective and permitted sets to keep (caps 0..31), on every
// thread; once the command runs it keeps CAP_KILL only (it reaps and
// forwards signals). Capabilities are
// per thread; AllThreadsSyscall reaches them all but is unavailable in cgo
// binaries (test binaries), where only this thread — the one /proc/1/status
// shows — drops them.
func dropInitCaps(keep uint64) error {
	hdr, data := capsOf(keep)
	_, _, e := syscall.AllThreadsSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(hdr)), uintptr(unsafe.Pointer(data)), 0)
	if e == syscall.ENOTSUP {
		return unix.Capset(hdr, data)
	}
	if e != 0 {
		return e
	}
	return nil
}

// capsOf is capset's argument for effective = permitted = keep.
func capsOf(keep uint64) (*unix.CapUserHeader, *unix.CapUserData) {
	hdr := &unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	data := make([]unix.CapUserData, 2)
	data[0].Effective = uint32(keep)
	data[0].Permitted = uint32(keep)
	data[1].Effective = uint32(keep >> 32)
	data[1].Permitted = uint32(keep >> 32)
	return hdr, &data[0]
}

// restrict applies everything inherited by the command: rlimits, the
// bounding set (exactly the network capabilities), no_new_privs and,
// last, seccomp (TSYNC: all of the init's threads).
func restrict(c *Config) error {
	lim := func(res int, v uint64) error {
		// syscall.Setrlimit, not unix: it also stops syscall.ForkExec
		// from restoring the NOFILE limit Go found at start in the child.
		if err := syscall.Setrlimit(res, &syscall.Rlimit{Cur: v, Max: v}); err != nil {
			return fmt.Errorf("setrlimit %d=%d: %w", res, v, err)
		}
		return nil
	}
	if err := lim(unix.RLIMIT_NOFILE, c.NoFile); err != nil {
		return err
	}
	if err := lim(unix.RLIMIT_CORE, 0); err != nil {
		return err
	}
	if c.CPUSeconds > 0 {
		if err := lim(unix.RLIMIT_CPU, c.CPUSeconds); err != nil {
			return err
		}
	}
	caps, err := capNumbers(c.Caps)
	if err != nil {
		return err
	}
	cp, err := capability.NewPid2(0)
	if err != nil {
		return err
	}
	// Applying the bounding set needs no Load (a parse of
	// /proc/self/status): the library reads what it must itself.
	cp.Clear(capability.BOUNDING)
	cp.Set(capability.BOUNDING, caps...)
	if err := cp.Apply(capability.BOUNDING); err != nil {
		return fmt.Errorf("reduce bounding set: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	return loadSeccomp(c.Seccomp)
}

// loadSeccomp installs a packed program on every thread of the process
// (TSYNC); restrict set no_new_privs before.
func loadSeccomp(packed []uint64) error {
	if len(packed) == 0 || len(packed) > maxSeccomp {
		return fmt.Errorf("seccomp: program of %d instructions", len(packed))
	}
	filter := make([]unix.SockFilter, len(packed))
	for i, x := range packed {
		filter[i] = unix.SockFilter{Code: uint16(x >> 48), Jt: uint8(x >> 40), Jf: uint8(x >> 32), K: uint32(x)}
	}
	fprog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	r, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog)))
	if e != 0 {
		return fmt.Errorf("seccomp: load filter: %w", e)
	}
	if r != 0 {
		return fmt.Errorf("seccomp: thread %d could not be synchronized", r)
	}
	return nil
}
