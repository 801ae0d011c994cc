package sandbox

import (
	"encoding/binary"
	"slices"
	"testing"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// seccompData is struct seccomp_data as the filter sees it on a
// little-endian machine (amd64, arm64, arm): the kernel loads 32-bit words
// in native order, the x/net/bpf interpreter in network order, so each word
// is stored big-endian at its little-endian position (an argument's low
// word first).
func seccompData(nr, auditArch uint32, args ...uint64) []byte {
	b := make([]byte, 64)
	binary.BigEndian.PutUint32(b[0:], nr)
	binary.BigEndian.PutUint32(b[4:], auditArch)
	for i, a := range args {
		binary.BigEndian.PutUint32(b[16+8*i:], uint32(a))
		binary.BigEndian.PutUint32(b[16+8*i+4:], uint32(a>>32))
	}
	return b
}

// The generated filter, run in a BPF interpreter for each architecture:
// the allowlist passes, deliberate denials get EPERM, clone3 and unknown
// numbers ENOSYS, namespace flags on clone/unshare EPERM, a foreign
// architecture kills.
func TestSeccompFilterAllArches(t *testing.T) {
	for _, goarch := range []string{"amd64", "arm64", "arm"} {
		t.Run(goarch, func(t *testing.T) {
			prog, err := Filter(goarch)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%d instructions", len(prog))
			vm, err := bpf.NewVM(prog)
			if err != nil {
				t.Fatal(err)
			}
			info, _ := archFor(goarch)
			run := func(name string, args ...uint64) uint32 {
				t.Helper()
				nr, ok := info.SyscallNames[name]
				if !ok {
					t.Fatalf("%s not in the %s table", name, goarch)
				}
				out, err := vm.Run(seccompData(uint32(nr), uint32(info.ID), args...))
				if err != nil {
					t.Fatal(err)
				}
				return uint32(out)
			}
			has := func(name string) bool { _, ok := info.SyscallNames[name]; return ok }
			// every allowed name of this arch passes (unconditional ones)
			n := 0
			for _, name := range allowed {
				if !has(name) {
					continue
				}
				if _, cond := conditional[name]; cond {
					continue
				}
				n++
				if got := run(name); got != retAllow {
					t.Errorf("%s: %#x, want allow", name, got)
				}
			}
			if n < 250 {
				t.Errorf("only %d allowed syscalls on %s", n, goarch)
			}
			for _, name := range denied {
				if !has(name) {
					continue
				}
				if slices.Contains(allowed, name) {
					t.Errorf("%s both allowed and denied", name)
				}
				if got := run(name); got != retEPERM {
					t.Errorf("denied %s: %#x, want EPERM", name, got)
				}
			}
			if got := run("clone3"); got != retENOSYS {
				t.Errorf("clone3: %#x, want ENOSYS", got)
			}
			cases := []struct {
				name string
				arg  uint64
				want uint32
			}{
				{"clone", unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND | unix.CLONE_THREAD | unix.CLONE_SYSVSEM, retAllow},
				{"clone", uint64(unix.SIGCHLD), retAllow},
				{"clone", unix.CLONE_NEWUSER | uint64(unix.SIGCHLD), retEPERM},
				{"clone", unix.CLONE_NEWNET, retEPERM},
				{"clone", unix.CLONE_NEWNS | unix.CLONE_VFORK, retEPERM},
				{"unshare", unix.CLONE_FILES, retAllow},
				{"unshare", unix.CLONE_NEWUSER, retEPERM},
				{"unshare", unix.CLONE_NEWTIME, retEPERM},
				{"socket", unix.AF_INET, retAllow},
				{"socket", unix.AF_PACKET, retAllow},
				{"socket", unix.AF_NETLINK, retAllow},
				{"socket", unix.AF_ALG, retEPERM},
				{"socket", unix.AF_VSOCK, retEPERM},
				{"personality", 0xffffffff, retAllow},
				{"personality", 0x0400000, retEPERM}, // READ_IMPLIES_EXEC
			}
			for _, c := range cases {
				if got := run(c.name, c.arg); got != c.want {
					t.Errorf("%s(%#x): %#x, want %#x", c.name, c.arg, got, c.want)
				}
			}
			// numbers the table does not know
			maxNr := 0
			for nr := range info.SyscallNumbers {
				if nr < 0xf0000 {
					maxNr = max(maxNr, nr)
				}
			}
			for _, nr := range []uint32{uint32(maxNr + 1), uint32(maxNr + 100), 0x40000000 | 1, 0xffffffff} {
				out, _ := vm.Run(seccompData(nr, uint32(info.ID)))
				if uint32(out) != retENOSYS {
					t.Errorf("unknown nr %#x: %#x, want ENOSYS", nr, out)
				}
			}
			// another architecture's audit id
			out, _ := vm.Run(seccompData(0, 0x40000003))
			if uint32(out) != retKill {
				t.Errorf("foreign arch: %#x, want kill", out)
			}
		})
	}
}

func TestSeccompArmPrivateCalls(t *testing.T) {
	prog, _ := Filter("arm")
	vm, _ := bpf.NewVM(prog)
	for _, c := range []struct {
		nr   uint32
		want uint32
	}{{0xf0005, retAllow}, {0xf0002, retAllow}, {0xf0100, retENOSYS}} {
		out, _ := vm.Run(seccompData(c.nr, 0x40000028))
		if uint32(out) != c.want {
			t.Errorf("arm nr %#x: %#x want %#x", c.nr, out, c.want)
		}
	}
}
