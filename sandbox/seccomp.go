package sandbox

// The seccomp filter of every sandboxed process.
//
// Modelled on Docker's default profile: an allowlist, EPERM for everything
// known and not allowed (deliberate denials, listed in `denied` for tests
// and the README), ENOSYS for clone3 (libcs fall back to clone, whose flags
// we can check; clone3 passes them in memory) and for every number the
// architecture's table does not know (a newer libc probing a newer syscall
// falls back on ENOSYS; EPERM would make it fail). A foreign architecture
// (e.g. 32-bit syscalls from a 64-bit process) kills the process.
//
// go-seccomp-bpf provides the syscall tables (arch.Info) and the loader;
// its Policy assembler builds only for the running architecture, compares
// linearly and has no rule for unknown numbers, so the program is built
// here with golang.org/x/net/bpf: the table's numbers are cut into ranges
// of equal verdict (unknown gaps -> ENOSYS) and searched with a balanced
// binary tree of JGE jumps (about log2(ranges) + 1 comparisons per call).

import (
	"fmt"
	"runtime"
	"slices"
	"sort"
	"sync"

	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// allowed syscalls (those missing from an architecture's table are
// skipped). Docker's default list minus: clock/time setters, mbind and
// friends, io_uring (see README), pidfd_getfd, name_to_handle_at (pairs with
// the denied open_by_handle_at), fanotify_init, socketcall (would bypass
// the socket family check).
var allowed = []string{
	"accept", "accept4", "access", "alarm", "bind", "brk", "cachestat", "capget", "capset", "chdir", "chmod",
	// chroot: privilege-separated tools (scamper) jail their unprivileged
	// half; it needs CAP_SYS_CHROOT of the experiment's user namespace and
	// cannot leave the pivoted container root (docs/HARDENING.md).
	"chroot",
	"chown", "chown32", "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64",
	"clock_nanosleep", "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat",
	"dup", "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
	"epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat", "exit",
	"exit_group", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate", "fanotify_mark",
	"fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat", "fcntl", "fcntl64",
	"fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr", "fsetxattr", "fstat", "fstat64",
	"fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futex", "futex_requeue",
	"futex_time64", "futex_wait", "futex_waitv", "futex_wake", "futimesat", "getcpu", "getcwd", "getdents",
	"getdents64", "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups",
	"getgroups32", "getitimer", "getpeername", "getpgid", "getpgrp", "getpid", "getppid", "getpriority",
	"getrandom", "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit", "get_robust_list",
	"getrusage", "getsid", "getsockname", "getsockopt", "get_thread_area", "gettid", "gettimeofday", "getuid",
	"getuid32", "getxattr", "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch",
	"io_cancel", "ioctl", "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64", "ioprio_get",
	"ioprio_set", "io_setup", "io_submit", "ipc", "kill", "landlock_add_rule", "landlock_create_ruleset",
	"landlock_restrict_self", "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen", "listxattr",
	"llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "madvise",
	"map_shadow_stack", "membarrier", "memfd_create", "mincore", "mkdir", "mkdirat", "mknod", "mknodat",
	"mlock", "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mq_getsetattr", "mq_notify", "mq_open",
	"mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap",
	"mseal", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap", "nanosleep",
	"newfstatat", "_newselect", "open", "openat", "openat2", "pause", "pidfd_open", "pidfd_send_signal",
	"pipe", "pipe2", "pkey_alloc", "pkey_free", "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl",
	"pread64", "preadv", "preadv2", "prlimit64", "process_mrelease", "pselect6", "pselect6_time64", "pwrite64",
	"pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "recv", "recvfrom",
	"recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr", "rename", "renameat",
	"renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction", "rt_sigpending", "rt_sigprocmask",
	"rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64",
	"rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr", "sched_getparam", "sched_get_priority_max",
	"sched_get_priority_min", "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
	"sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp",
	"select", "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "send", "sendfile", "sendfile64",
	"sendmmsg", "sendmsg", "sendto", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32",
	"setgroups", "setgroups32", "setitimer", "setpgid", "setpriority", "setregid", "setregid32", "setresgid",
	"setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit", "set_robust_list",
	"setsid", "setsockopt", "set_thread_area", "set_tid_address", "setuid", "setuid32", "setxattr", "shmat",
	"shmctl", "shmdt", "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4", "sigprocmask",
	"sigreturn", "socketpair", "splice", "stat", "stat64", "statfs", "statfs64", "statx", "symlink",
	"symlinkat", "sync", "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create",
	"timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime",
	"timer_settime64", "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
	"timerfd_settime64", "times", "tkill", "truncate", "truncate64", "ugetrlimit", "umask", "uname",
	"unlink", "unlinkat", "utime", "utimensat", "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4",
	"waitid", "waitpid", "write", "writev",
	// architecture specific
	"arch_prctl", "arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls",
}

// Namespace flags: clone and unshare may not create namespaces (a new
// user namespace would hand out a fresh full capability set).
const (
	cloneNSFlags   = unix.CLONE_NEWNS | unix.CLONE_NEWCGROUP | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWUSER | unix.CLONE_NEWPID | unix.CLONE_NEWNET
	unshareNSFlags = cloneNSFlags | unix.CLONE_NEWTIME
)

// conditional syscalls: allowed only when the argument check passes, EPERM
// otherwise.
var conditional = map[string]argCheck{
	"clone":   {arg: 0, bitsClear: cloneNSFlags},
	"unshare": {arg: 0, bitsClear: unshareNSFlags},
	// AF_ALG (kernel crypto API) and AF_VSOCK (host channels): attack
	// surface a measurement never needs. Raw and packet sockets stay.
	"socket": {arg: 0, noneOf: []uint32{unix.AF_ALG, unix.AF_VSOCK}},
	// personality: only the harmless values Docker allows.
	"personality": {arg: 0, oneOf: []uint32{0, 8, 0x20000, 0x20008, 0xffffffff}},
}

// enosys: present in the table but answered "not implemented" so libc
// falls back.
var enosys = []string{"clone3"}

// denied are the deliberate denials (EPERM), documented in the README and
// checked by the tests; everything else not allowed is EPERM too.
var denied = []string{
	"ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
	"mount", "umount", "umount2", "pivot_root", "fsopen", "fsconfig", "fsmount", "fspick", "move_mount",
	"open_tree", "mount_setattr",
	"setns", "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
	"bpf", "perf_event_open", "keyctl", "add_key", "request_key", "userfaultfd", "open_by_handle_at",
	"name_to_handle_at", "swapon", "swapoff", "reboot", "acct", "quotactl", "quotactl_fd",
	"io_uring_setup", "io_uring_enter", "io_uring_register",
	"settimeofday", "clock_settime", "clock_settime64", "clock_adjtime", "clock_adjtime64", "adjtimex", "stime",
	"syslog", "lookup_dcookie", "iopl", "ioperm", "uselib", "ustat", "sysfs", "_sysctl", "vhangup",
	"fanotify_init", "mbind", "set_mempolicy", "migrate_pages", "move_pages", "socketcall", "nfsservctl",
}

type argCheck struct {
	arg       uint32
	bitsClear uint32   // pass when arg & bitsClear == 0
	oneOf     []uint32 // pass when arg is one of these
	noneOf    []uint32 // pass when arg is none of these
}

const (
	retAllow  = unix.SECCOMP_RET_ALLOW
	retEPERM  = unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
	retENOSYS = unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)
	retKill   = unix.SECCOMP_RET_KILL_PROCESS
)

type verdict struct {
	ret   uint32
	check *argCheck // conditional: ret unused
}

type segment struct {
	lo, hi uint32 // inclusive
	v      verdict
}

// archFor maps a GOARCH to its syscall table.
func archFor(goarch string) (*arch.Info, error) {
	switch goarch {
	case "amd64":
		return arch.X86_64, nil
	case "arm64":
		return arch.AARCH64, nil
	case "arm":
		return arch.ARM, nil
	case "386":
		return arch.I386, nil
	}
	return nil, fmt.Errorf("seccomp: no syscall table for %s", goarch)
}

// segments cuts the number space into ranges of equal verdict.
func segments(info *arch.Info) []segment {
	nums := make([]int, 0, len(info.SyscallNumbers))
	for n := range info.SyscallNumbers {
		nums = append(nums, n)
	}
	sort.Ints(nums)
	var segs []segment
	add := func(lo, hi uint32, v verdict) {
		if n := len(segs); n > 0 && v.check == nil && segs[n-1].v.check == nil && segs[n-1].v.ret == v.ret && segs[n-1].hi+1 == lo {
			segs[n-1].hi = hi
			return
		}
		segs = append(segs, segment{lo, hi, v})
	}
	next := uint32(0)
	for _, n := range nums {
		nr := uint32(n | info.SeccompMask)
		if nr > next {
			add(next, nr-1, verdict{ret: retENOSYS})
		}
		name := info.SyscallNumbers[n]
		v := verdict{ret: retEPERM}
		switch {
		case slices.Contains(enosys, name):
			v.ret = retENOSYS
		case slices.Contains(allowed, name):
			v.ret = retAllow
		}
		if c, ok := conditional[name]; ok {
			v = verdict{check: &c}
		}
		add(nr, nr, v)
		next = nr + 1
	}
	add(next, 0xffffffff, verdict{ret: retENOSYS})
	return segs
}

// Filter builds the program for an architecture.
func Filter(goarch string) ([]bpf.Instruction, error) {
	info, err := archFor(goarch)
	if err != nil {
		return nil, err
	}
	prog := []bpf.Instruction{
		bpf.LoadAbsolute{Off: 4, Size: 4}, // seccomp_data.arch
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(info.ID), SkipTrue: 1},
		bpf.RetConstant{Val: retKill},
		bpf.LoadAbsolute{Off: 0, Size: 4}, // seccomp_data.nr
	}
	prog = append(prog, tree(segments(info))...)
	if len(prog) > 4096 {
		return nil, fmt.Errorf("seccomp: program for %s has %d instructions (max 4096)", goarch, len(prog))
	}
	return prog, nil
}

// tree emits a binary search over the segments; every leaf returns.
func tree(segs []segment) []bpf.Instruction {
	if len(segs) == 1 {
		return leaf(segs[0].v)
	}
	mid := len(segs) / 2
	left, right := tree(segs[:mid]), tree(segs[mid:])
	out := []bpf.Instruction{
		// nr >= boundary: fall to the jump over the left half; else skip it.
		bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: segs[mid].lo, SkipTrue: 0, SkipFalse: 1},
		bpf.Jump{Skip: uint32(len(left))},
	}
	out = append(out, left...)
	return append(out, right...)
}

func leaf(v verdict) []bpf.Instruction {
	if v.check == nil {
		return []bpf.Instruction{bpf.RetConstant{Val: v.ret}}
	}
	c := v.check
	// low 32 bits of the argument (little-endian seccomp_data): the
	// kernel reads clone/unshare flags and int arguments from them.
	out := []bpf.Instruction{bpf.LoadAbsolute{Off: 16 + 8*c.arg, Size: 4}}
	switch {
	case c.bitsClear != 0:
		out = append(out,
			bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: c.bitsClear, SkipTrue: 1},
			bpf.RetConstant{Val: retAllow},
			bpf.RetConstant{Val: retEPERM})
	case len(c.oneOf) > 0:
		for _, x := range c.oneOf {
			out = append(out, bpf.JumpIf{Cond: bpf.JumpEqual, Val: x, SkipFalse: 1}, bpf.RetConstant{Val: retAllow})
		}
		out = append(out, bpf.RetConstant{Val: retEPERM})
	default:
		for _, x := range c.noneOf {
			out = append(out, bpf.JumpIf{Cond: bpf.JumpEqual, Val: x, SkipFalse: 1}, bpf.RetConstant{Val: retEPERM})
		}
		out = append(out, bpf.RetConstant{Val: retAllow})
	}
	return out
}

var (
	nativeOnce sync.Once
	nativeProg []uint64
	nativeErr  error
)

// nativeFilter is the assembled program for the running architecture,
// packed one instruction per uint64 (code<<48 | jt<<40 | jf<<32 | k). The
// daemon builds it once and sends it in the init's config, so the init
// (on the launch's critical path) only loads it.
func nativeFilter() ([]uint64, error) {
	nativeOnce.Do(func() {
		prog, err := Filter(runtime.GOARCH)
		if err != nil {
			nativeErr = err
			return
		}
		raw, err := bpf.Assemble(prog)
		if err != nil {
			nativeErr = fmt.Errorf("seccomp: assemble: %w", err)
			return
		}
		for _, r := range raw {
			nativeProg = append(nativeProg, uint64(r.Op)<<48|uint64(r.Jt)<<40|uint64(r.Jf)<<32|uint64(r.K))
		}
	})
	return nativeProg, nativeErr
}
