// Package nsholder creates an experiment's user namespace and the network
// namespace it owns, and persists both as bind-mounted files.
//
// Why a holder process: the kernel checks raw sockets against the user
// namespace that owns the network namespace (ns_capable(net->user_ns, ...)),
// so the experiment's netns must be created inside the experiment's userns.
// A multithreaded process (every Go process) cannot unshare or setns a user
// namespace, so a re-executed copy of the binary is cloned with
// CLONE_NEWUSER|CLONE_NEWNET and the parent writes its uid/gid maps. The
// parent then bind-mounts /proc/PID/ns/{user,net} under Dir so the
// namespaces outlive the holder (and the daemon). Processes that must run as
// members of the user namespace are started by the holder itself (a child of
// a process in a userns is in that userns): see Holder.Spawn in spawn.go.
package nsholder

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/arkgw/arkgw/reexec"
)

const holderName = "arkgw-nsholder"

func init() { reexec.Register(holderName, holderMain) }

// Config describes the namespace pair to create.
type Config struct {
	// Dir receives the files "user" and "net" (bind mounts of the
	// namespaces). It is created if missing. One directory per experiment.
	Dir string
	// HostUID/HostGID is the first host id that uid/gid 0 of the namespace
	// maps to; Size ids are mapped (65536 when 0).
	HostUID, HostGID uint32
	Size             uint32
	// Binary is the executable started as the holder; the processes the
	// holder spawns with Path reexec.Self run it too. It must register the
	// holder (and the sandbox init): the arkgw binary or the small
	// cmd/arkgw-init, which starts several times faster. Empty: this
	// binary.
	Binary string
}

// Holder is a created namespace pair. The holder process keeps running until
// Release or Remove; the namespaces live until Remove.
type Holder struct {
	cfg   Config
	cmd   *exec.Cmd
	stdin io.WriteCloser

	mu         sync.Mutex
	ctl        *seqConn // control socket for Spawn; nil once released
	nextID     uint64
	pending    map[uint64]*pending
	readerDone chan struct{}
}

// UserNSPath is the persisted user namespace file.
func (h *Holder) UserNSPath() string { return filepath.Join(h.cfg.Dir, "user") }

// NetNSPath is the persisted network namespace file.
func (h *Holder) NetNSPath() string { return filepath.Join(h.cfg.Dir, "net") }

// HostIDs are the host uid and gid that uid/gid 0 of the namespace map to
// (the holder's, and the sandbox init's, credentials on the host).
func (h *Holder) HostIDs() (uid, gid uint32) { return h.cfg.HostUID, h.cfg.HostGID }

// PID of the holder process, 0 once released.
func (h *Holder) PID() int {
	if h.cmd == nil || h.cmd.Process == nil {
		return 0
	}
	return h.cmd.Process.Pid
}

// UserNSPath and NetNSPath for a directory, for callers that re-find
// persisted namespaces after a restart.
func Paths(dir string) (userNS, netNS string) {
	return filepath.Join(dir, "user"), filepath.Join(dir, "net")
}

// Create starts a holder in a new user namespace (uid/gid 0..Size-1 mapped to
// HostUID/HostGID..) with a new network namespace owned by it, and persists
// both under cfg.Dir. On error nothing is left behind.
func Create(cfg Config) (h *Holder, err error) {
	if cfg.Size == 0 {
		cfg.Size = 65536
	}
	if cfg.HostUID == 0 || cfg.HostGID == 0 {
		return nil, fmt.Errorf("nsholder %s: host uid/gid base must not be 0 (root would map to host root)", cfg.Dir)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("nsholder: create %s: %w", cfg.Dir, err)
	}
	// A named local: "return nil, err" sets the result h to nil before
	// the deferred clean-up runs.
	made := &Holder{cfg: cfg, pending: map[uint64]*pending{}}
	h = made
	defer func() {
		if err != nil {
			made.Remove()
		}
	}()

	cmd := reexec.Command(holderName)
	if cfg.Binary != "" {
		exe, err := openExecutable(cfg.Binary)
		if err != nil {
			return nil, fmt.Errorf("nsholder %s: %w", cfg.Dir, err)
		}
		defer exe.Close()
		cmd.Path = fmt.Sprintf("/proc/self/fd/%d", exe.Fd())
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(cfg.HostUID), Size: int(cfg.Size)}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(cfg.HostGID), Size: int(cfg.Size)}},
		// Let the sandbox init setgroups() to the experiment's gid: with
		// "deny" the payload would keep the daemon's supplementary groups
		// (host gid 0). The maps are written by host root, so allowing
		// setgroups gives the namespace nothing the mapping did not.
		GidMappingsEnableSetgroups: true,
		// Become uid/gid 0 OF THE NAMESPACE (host HostUID/HostGID) once
		// the maps are written, and drop supplementary groups. Without it
		// the holder keeps host uid 0 — unmapped inside, so it would lose
		// every capability at exec and could not create the sandbox's
		// namespaces — and host root's file access.
		Credential: &syscall.Credential{Uid: 0, Gid: 0, Groups: []uint32{}},
		// The holder must not die with a daemon thread (Pdeathsig is per
		// thread); it watches its stdin instead.
		Setsid: true,
	}
	cmd.Stderr = os.Stderr
	// fd 3 of the holder: its end of the Spawn control socket.
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("nsholder %s: control socket pair: %w", cfg.Dir, err)
	}
	theirs := os.NewFile(uintptr(pair[1]), "nsholder-ctl-holder")
	defer theirs.Close()
	cmd.ExtraFiles = []*os.File{theirs}
	conn, err := newSeqConn(pair[0], "nsholder-ctl")
	if err != nil {
		return nil, fmt.Errorf("nsholder %s: %w", cfg.Dir, err)
	}
	h.ctl = conn
	h.readerDone = make(chan struct{})
	go h.readReplies(h.ctl)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("nsholder %s: %w", cfg.Dir, err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("nsholder %s: %w", cfg.Dir, err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("nsholder %s: start holder in new user+net namespace: %w (is unprivileged user namespace creation allowed? kernel.unprivileged_userns_clone / user.max_user_namespaces)", cfg.Dir, err)
	}
	h.cmd, h.stdin = cmd, stdin
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		return nil, fmt.Errorf("nsholder %s: holder did not start (%q): %v", cfg.Dir, line, err)
	}
	pid := cmd.Process.Pid
	for _, kind := range []string{"user", "net"} {
		dst := filepath.Join(cfg.Dir, kind)
		if err := bindNS(fmt.Sprintf("/proc/%d/ns/%s", pid, kind), dst); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// openExecutable opens the holder binary for exec through /proc/self/fd:
// the child execs it after becoming the namespace's uid 0 (a host uid that
// cannot walk root's 0700 directories), and the fd's magic link reaches
// the file without walking its path. The fd is moved above the numbers
// the child's ExtraFiles take, which it would otherwise be overwritten by.
func openExecutable(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open holder binary %s: %w", path, err)
	}
	high, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 64)
	unix.Close(fd)
	if err != nil {
		return nil, fmt.Errorf("holder binary %s: %w", path, err)
	}
	return os.NewFile(uintptr(high), path), nil
}

func bindNS(src, dst string) error {
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_RDONLY, 0o400)
	if err != nil {
		return fmt.Errorf("nsholder: create mount point %s: %w", dst, err)
	}
	f.Close()
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("nsholder: bind %s on %s: %w", src, dst, err)
	}
	return nil
}

// Release ends the holder process; the persisted namespaces stay. Processes
// it spawned keep running but are no longer monitored (stop them first).
// Idempotent.
func (h *Holder) Release() {
	h.mu.Lock()
	ctl := h.ctl
	h.ctl = nil
	h.mu.Unlock()
	if ctl != nil {
		ctl.Close()
		<-h.readerDone
	}
	if h.stdin != nil {
		h.stdin.Close()
		h.stdin = nil
	}
	if h.cmd != nil && h.cmd.Process != nil {
		h.cmd.Process.Kill()
		h.cmd.Wait()
		h.cmd = nil
	}
}

// Remove releases the holder and unmounts and deletes the persisted
// namespaces. Idempotent.
func (h *Holder) Remove() error {
	h.Release()
	return RemoveDir(h.cfg.Dir)
}

// RemoveDir unmounts and deletes the persisted namespaces under dir, for
// cleanup of a holder this process did not create (after a restart).
// Missing files are not an error.
func RemoveDir(dir string) error {
	var errs []error
	for _, kind := range []string{"net", "user"} {
		p := filepath.Join(dir, kind)
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("nsholder: unmount %s: %w", p, err))
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("nsholder: remove %s: %w", p, err))
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOTEMPTY) {
		errs = append(errs, fmt.Errorf("nsholder: remove %s: %w", dir, err))
	}
	return errors.Join(errs...)
}

// holderMain runs in the re-executed holder: announce readiness, then serve
// Spawn requests on fd 3 until the creator is gone (stdin or the socket
// closed) and every spawned process ended.
func holderMain() {
	os.Stdout.WriteString("ready\n")
	serveSpawns(3)
}
