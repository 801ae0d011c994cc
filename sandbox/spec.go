// Package sandbox runs an experiment's command in a sandbox: inside the
// experiment's user namespace and the network namespace it owns (both made
// by nsholder), in new mount, PID, UTS, IPC and cgroup namespaces, on a
// read-only versioned container root, as a non-root uid holding only the
// network capabilities, under seccomp, rlimits and a cgroup, with its output
// captured to capped files.
//
// The daemon calls Launch; the holder of the experiment's namespaces starts
// a re-executed copy of the binary as the sandbox init (handler
// "arkgw-sandbox-init", configured over an inherited pipe, never argv),
// monitors it, drains its output and records its exit status, also while
// the daemon is down. See README.md for the sequence and every choice.
package sandbox

import (
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/nsholder"
	"github.com/arkgw/arkgw/sandbox/sandboxinit"
)

// Spec describes one sandboxed run. The zero values of optional fields pick
// the documented defaults.
type Spec struct {
	ID     string           // experiment id (configs.ValidID)
	Holder *nsholder.Holder // holder of the experiment's user+net namespaces (required)

	// ContainersDir is <state_dir>/containers; Version names a directory in
	// it (the container root). An unknown version is refused.
	ContainersDir string
	Version       string

	FilesDir    string       // experiment files, read-only at /experiment; "" = empty
	Nameservers []netip.Addr // /etc/resolv.conf (the gateway's DNS proxy addresses)
	Hostname    string       // "" = "ark-<id>"
	Hosts       []HostEntry  // extra /etc/hosts lines after localhost

	PcapBinary string // host path of the pcap client, bound at /usr/bin/pcap; "" = none
	PcapSocket string // host path of the pcap service socket, bound at /run/ark/pcap.sock; "" = none

	Command []string // argv; Command[0] is looked up in PATH inside the root when it has no '/'
	Env     []string // "" = PATH, HOME=/tmp, LANG=C.UTF-8
	Dir     string   // working directory inside; "" = /tmp when there is a tmpfs, else /
	UID     uint32   // inside the user namespace; 0 = 1000 (root inside is refused)
	GID     uint32   // 0 = same as UID

	Limits     configs.Limits // CPUPercent, MaxRAMMB, MaxHours, TmpfsMB, OutputMB
	PidsMax    int64          // 0 = 512
	NoFile     uint64         // RLIMIT_NOFILE; 0 = 1024
	CPUSeconds uint64         // RLIMIT_CPU; 0 = derived from MaxHours and CPUPercent (see cpuSeconds)
	// AllowMissing lists cgroup controllers ("memory", "cpu", "pids") the
	// node policy accepts running without, when the kernel lacks them.
	AllowMissing []string
	// CgroupParent is the cgroup (relative to the hierarchy root) under
	// which a cgroup per experiment is made; "" = "arkgw". On cgroup v2 it
	// must be delegated to the daemon (see README).
	CgroupParent string

	// Output files in the experiment's directory (created/truncated) and
	// the status file the holder writes when the run ended ("" = none).
	Stdout, Stderr, StatusFile string

	Logger hclog.Logger
}

// HostEntry is one /etc/hosts line.
type HostEntry struct {
	Addr  netip.Addr
	Names []string
}

// Result is the outcome of a run.
type Result struct {
	ID        string
	Exited    bool          // the command exited by itself; Code is valid
	Code      int           // exit code; -1 when killed by a signal
	Signal    int           // signal that ended the command (9 for kills)
	OOMKilled bool          // the memory cgroup killed a process of the run
	TimedOut  bool          // killed at the wall-clock limit (MaxHours)
	Stopped   bool          // killed by Stop
	CPUTime   time.Duration // from the cgroup (all processes), else rusage
	UserCPU   time.Duration // rusage of the init and everything it reaped
	SysCPU    time.Duration
	Stdout    nsholder.Stream
	Stderr    nsholder.Stream
	Started   time.Time
	Ended     time.Time
	Err       string // something went wrong while monitoring or cleaning up
}

// netCaps are the only capabilities an experiment holds (ambient, inside
// its own user namespace; they count only in its own network namespace).
var netCaps = []string{"CAP_NET_RAW", "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST"}

// experimentCaps are what the command holds (ambient, permitted and the
// bounding set): the network capabilities plus what privilege-separated
// tools (Debian's scamper: chroot to /var/empty, then setuid to nobody)
// need. All of them count only in the experiment's own user namespace,
// whose ids (0..65535) map to the experiment slot's own host range, and
// the root they chroot in is already the pivoted, read-only container
// root: see docs/HARDENING.md.
var experimentCaps = append(append([]string(nil), netCaps...), "CAP_SETUID", "CAP_SETGID", "CAP_SYS_CHROOT")

// mountPoints are where the sandbox mounts on the container root. A root
// need not have them: those it lacks (or has as another type, e.g.
// /etc/resolv.conf as a symlink) are made in a skeleton layer of the
// sandbox's root overlay (see skeletonOf); nothing is ever written into
// the root itself, which may be read-only.
var mountPoints = []struct {
	path string
	dir  bool
}{
	{"proc", true}, {"dev", true}, {"tmp", true}, {"run", true}, {"experiment", true},
	{"etc/resolv.conf", false}, {"etc/hosts", false}, {"etc/hostname", false},
	{"usr/bin/pcap", false},
}

// RootDir resolves the container root of a version, refusing unknown or
// malformed versions.
func RootDir(containersDir, version string) (string, error) {
	if !configs.ValidContainerVersion(version) {
		return "", fmt.Errorf("container version %q is not a valid name (letters, digits, . _ -)", version)
	}
	dir := filepath.Join(containersDir, version)
	st, err := os.Stat(dir)
	if err != nil || !st.IsDir() {
		return "", fmt.Errorf("unknown container version %q: no directory %s (install it, e.g. `make rootfs ROOTFS=%s`)", version, dir, dir)
	}
	return dir, nil
}

// prepared is the pure part of a launch: everything computed from the Spec.
type prepared struct {
	root      string
	cfg       sandboxinit.Config
	res       Resources
	timeout   time.Duration
	cgroupRel string // "/arkgw/<id>"
}

// prepare validates the spec and computes the init configuration, the
// cgroup resources and the timeout. It touches the file system only to
// check that the container root exists.
func prepare(s *Spec) (*prepared, error) {
	if err := configs.ValidID(s.ID); err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	if s.Holder == nil {
		return nil, fmt.Errorf("sandbox %s: no namespace holder (nsholder.Create) given", s.ID)
	}
	if len(s.Command) == 0 || s.Command[0] == "" {
		return nil, fmt.Errorf("sandbox %s: empty command", s.ID)
	}
	root, err := RootDir(s.ContainersDir, s.Version)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", s.ID, err)
	}
	uid, gid := s.UID, s.GID
	if uid == 0 {
		uid = 1000
	}
	if gid == 0 {
		gid = uid
	}
	if uid >= 65536 || gid >= 65536 {
		return nil, fmt.Errorf("sandbox %s: uid/gid %d/%d outside the namespace's 65536 ids", s.ID, uid, gid)
	}
	if s.Limits.TmpfsMB < 0 || s.Limits.MaxRAMMB < 0 || s.Limits.OutputMB < 0 || s.Limits.CPUPercent < 0 {
		return nil, fmt.Errorf("sandbox %s: negative limit in %+v", s.ID, s.Limits)
	}
	host := s.Hostname
	if host == "" {
		host = "ark-" + s.ID
	}
	env := s.Env
	if len(env) == 0 {
		env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/tmp", "LANG=C.UTF-8", "ARK_EXPERIMENT=" + s.ID}
	}
	dir := s.Dir
	if dir == "" {
		dir = "/"
		if s.Limits.TmpfsMB > 0 {
			dir = "/tmp"
		}
	}
	nofile := s.NoFile
	if nofile == 0 {
		nofile = 1024
	}
	filter, err := nativeFilter()
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", s.ID, err)
	}
	rel := cgroupRel(s.CgroupParent, s.ID)
	p := &prepared{
		root: root,
		cfg: sandboxinit.Config{
			ID:         s.ID,
			TmpfsBytes: s.Limits.TmpfsMB << 20,
			HasFiles:   s.FilesDir != "",
			HasPcapBin: s.PcapBinary != "",
			HasPcapSck: s.PcapSocket != "",
			Hostname:   host,
			ResolvConf: resolvConf(s.Nameservers),
			Hosts:      hostsFile(host, s.Hosts),
			Args:       s.Command,
			Env:        env,
			Dir:        dir,
			UID:        uid,
			GID:        gid,
			NoFile:     nofile,
			CPUSeconds: cpuSeconds(s),
			Nice:       10,
			Caps:       experimentCaps,
			Seccomp:    filter,
			// the init joins its cgroup itself where it can (v1)
			CgroupTasks: tasksForInit(rel),
		},
		res:       ComputeResources(s.Limits, s.PidsMax),
		timeout:   wallClock(s.Limits.MaxHours),
		cgroupRel: rel,
	}
	return p, nil
}

// placeByDaemon makes the daemon move every init into its cgroup, as on a
// cgroup v2 host (set by tests, to run that path on a v1 host too).
var placeByDaemon = false

// tasksForInit are the cgroup files the init writes to move itself in;
// none when the daemon moves it.
func tasksForInit(rel string) []string {
	if placeByDaemon {
		return nil
	}
	return v1TasksFiles(rel)
}

// cpuSeconds is RLIMIT_CPU: the CPU time one process could use in the
// whole allowed wall-clock time at its CPU share, plus a minute, so that it
// never fires before the cgroup quota and the timeout would stop a process
// that behaves. 0 when no MaxHours (then only the timeout applies).
func cpuSeconds(s *Spec) uint64 {
	if s.CPUSeconds > 0 {
		return s.CPUSeconds
	}
	if s.Limits.MaxHours <= 0 {
		return 0
	}
	share := float64(s.Limits.CPUPercent) / 100
	if share <= 0 {
		share = 1
	}
	return uint64(math.Ceil(s.Limits.MaxHours*3600*share)) + 60
}

func wallClock(hours float64) time.Duration {
	if hours <= 0 {
		return 0
	}
	if hours > 24*365*10 { // no Duration overflow (which would read as "over")
		hours = 24 * 365 * 10
	}
	return time.Duration(hours * float64(time.Hour))
}

func resolvConf(ns []netip.Addr) string {
	var b strings.Builder
	b.WriteString("# written by arkgw: the gateway's DNS proxy\n")
	for _, a := range ns {
		if a.IsValid() {
			fmt.Fprintf(&b, "nameserver %s\n", a.Unmap())
		}
	}
	b.WriteString("options edns0\n")
	return b.String()
}

func hostsFile(hostname string, extra []HostEntry) string {
	var b strings.Builder
	fmt.Fprintf(&b, "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t%s\n", hostname)
	for _, e := range extra {
		if !e.Addr.IsValid() || len(e.Names) == 0 {
			continue
		}
		fmt.Fprintf(&b, "%s\t%s\n", e.Addr.Unmap(), strings.Join(e.Names, " "))
	}
	return b.String()
}

// skeletonOf lists the mount points root lacks, or has as another type
// (a directory where a file is bound, a symlink, which a mount would
// follow): directories with a trailing "/". The init makes them in the
// skeleton layer that its root overlay puts above the container root.
// With pcap false, usr/bin/pcap is not needed.
func skeletonOf(root string, pcap bool) []string {
	var out []string
	for _, mp := range mountPoints {
		if mp.path == "usr/bin/pcap" && !pcap {
			continue
		}
		st, err := os.Lstat(filepath.Join(root, mp.path))
		if err == nil && st.IsDir() == mp.dir && (mp.dir || st.Mode().IsRegular()) {
			continue
		}
		if mp.dir {
			out = append(out, mp.path+"/")
		} else {
			out = append(out, mp.path)
		}
	}
	return out
}
