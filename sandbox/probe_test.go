package sandbox

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// probeMain runs inside the sandbox (the test binary bound as
// /usr/bin/arkgw-sandbox-probe): each argument names a check; it prints
// "<check> <errno name or ok>" per line.
func probeMain() {
	for _, a := range os.Args[1:] {
		fmt.Printf("%s %s\n", a, errName(probe(a)))
	}
	os.Exit(0)
}

func errName(err error) string {
	if err == nil {
		return "ok"
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return unix.ErrnoName(e)
	}
	return strings.ReplaceAll(err.Error(), " ", "_")
}

func probe(what string) error {
	switch what {
	case "ptrace":
		_, _, e := unix.RawSyscall6(unix.SYS_PTRACE, unix.PTRACE_ATTACH, 1, 0, 0, 0, 0)
		return errno(e)
	case "mount":
		return unix.Mount("none", "/tmp", "tmpfs", 0, "")
	case "umount":
		return unix.Unmount("/proc", unix.MNT_DETACH)
	case "unshare-user":
		_, _, e := unix.RawSyscall(unix.SYS_UNSHARE, unix.CLONE_NEWUSER, 0, 0)
		return errno(e)
	case "unshare-net":
		_, _, e := unix.RawSyscall(unix.SYS_UNSHARE, unix.CLONE_NEWNET, 0, 0)
		return errno(e)
	case "clone-newuser":
		_, _, e := unix.RawSyscall6(unix.SYS_CLONE, unix.CLONE_NEWUSER|uintptr(unix.SIGCHLD), 0, 0, 0, 0, 0)
		return errno(e)
	case "clone3":
		_, _, e := unix.RawSyscall(unix.SYS_CLONE3, 0, 0, 0)
		return errno(e)
	case "bpf":
		_, _, e := unix.RawSyscall(unix.SYS_BPF, 0, 0, 0)
		return errno(e)
	case "kexec":
		_, _, e := unix.RawSyscall6(unix.SYS_KEXEC_LOAD, 0, 0, 0, 0, 0, 0)
		return errno(e)
	case "setns":
		_, _, e := unix.RawSyscall(unix.SYS_SETNS, 0, 0, 0)
		return errno(e)
	case "unknown":
		_, _, e := unix.RawSyscall(1000, 0, 0, 0)
		return errno(e)
	case "keyctl":
		_, _, e := unix.RawSyscall(unix.SYS_KEYCTL, 0, 0, 0)
		return errno(e)
	case "ptys":
		// open ptys until refused (they stay open until exit)
		n := 0
		var err error
		for ; n < 1000; n++ {
			if _, err = unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY, 0); err != nil {
				break
			}
		}
		fmt.Printf("pty-count %d\n", n)
		return err
	case "raw":
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)
		if err == nil {
			unix.Close(fd)
		}
		return err
	case "packet":
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err == nil {
			unix.Close(fd)
		}
		return err
	case "alg":
		fd, err := unix.Socket(unix.AF_ALG, unix.SOCK_SEQPACKET, 0)
		if err == nil {
			unix.Close(fd)
		}
		return err
	case "write-root":
		return os.WriteFile("/probe", nil, 0o644)
	case "write-experiment":
		return os.WriteFile("/experiment/probe", nil, 0o644)
	case "write-tmp":
		return os.WriteFile("/tmp/probe", []byte("x"), 0o644)
	case "chroot":
		// allowed (scamper's privilege separation); go back to the
		// root through a directory fd kept open, so later probes run in
		// the sandbox's root again
		return chrootAndBack("/tmp", nil)
	case "chroot-escape":
		// The classic escape (chroot into a subdirectory, fchdir out
		// through an fd kept from before, climb, chroot ".") must end in
		// the container root, never above it: the mount namespace's
		// root is the pivoted container root and the old root is gone.
		var before, after unix.Stat_t
		if err := unix.Stat("/", &before); err != nil {
			return err
		}
		if err := os.MkdirAll("/tmp/jail", 0o755); err != nil {
			return err
		}
		err := chrootAndBack("/tmp/jail", func() error {
			for i := 0; i < 64; i++ {
				unix.Chdir("..")
			}
			if err := unix.Chroot("."); err != nil {
				return err
			}
			return unix.Stat("/", &after)
		})
		if err != nil {
			return err
		}
		if before.Dev != after.Dev || before.Ino != after.Ino {
			return fmt.Errorf("escaped: root dev/ino %d/%d, was %d/%d", after.Dev, after.Ino, before.Dev, before.Ino)
		}
		if _, err := os.Stat("/experiment"); err != nil {
			return fmt.Errorf("not in the container root after the escape attempt: %v", err)
		}
		return nil
	case "connect-pcap":
		c, err := net.Dial("unix", "/run/ark/pcap.sock")
		if err != nil {
			return err
		}
		defer c.Close()
		b := make([]byte, 5)
		if _, err := io.ReadFull(c, b); err != nil {
			return err
		}
		if string(b) != "hello" {
			return fmt.Errorf("got %q", b)
		}
		return nil
	case "hog": // touch memory until killed
		var keep [][]byte
		for i := 0; i < 4096; i++ {
			b := make([]byte, 1<<20)
			for j := range b {
				b[j] = byte(j)
			}
			keep = append(keep, b)
		}
		return fmt.Errorf("allocated %d MiB", len(keep))
	case "spin": // busy loop until killed
		for x := 0; ; x++ {
			if x < 0 {
				return nil
			}
		}
	case "spin3": // busy loop for 3 s of wall-clock time
		end := time.Now().Add(3 * time.Second)
		for time.Now().Before(end) {
		}
		return nil
	}
	return fmt.Errorf("unknown probe %q", what)
}

func errno(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

// chrootAndBack chroots into dir, runs fn (if any) from a working
// directory outside the new root, and returns to the original root.
func chrootAndBack(dir string, fn func() error) error {
	root, err := unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(root)
	if err := unix.Chroot(dir); err != nil {
		return err
	}
	defer func() {
		unix.Fchdir(root)
		unix.Chroot(".")
		unix.Chdir("/")
	}()
	if fn == nil {
		return nil
	}
	if err := unix.Fchdir(root); err != nil {
		return err
	}
	return fn()
}
