package nsdo

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCurrentIsZeroValue(t *testing.T) {
	for name, ns := range map[string]NS{"Current()": Current(), "NS{}": {}} {
		t.Run(name, func(t *testing.T) {
			if !ns.IsCurrent() {
				t.Error("IsCurrent = false")
			}
			if got := ns.NetlinkNetNS(); got != 0 {
				t.Errorf("NetlinkNetNS = %d, want 0 (the libraries' \"calling thread\")", got)
			}
			if opts := ns.NFTOptions(); len(opts) != 0 {
				t.Errorf("NFTOptions = %d options, want none", len(opts))
			}
			if _, ok := ns.Fd(); ok {
				t.Error("Fd ok for the current namespace")
			}
			if ns.String() != "current" {
				t.Errorf("String = %q", ns.String())
			}
			if err := ns.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			ran := false
			if err := In(ns, func() error { ran = true; return nil }); err != nil || !ran {
				t.Errorf("In: ran=%v err=%v", ran, err)
			}
		})
	}
}

func TestOpenRefusesWhatIsNotANetns(t *testing.T) {
	plain := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(plain, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, path string }{
		{"missing", filepath.Join(t.TempDir(), "missing")},
		{"plain file", plain},
		{"mount namespace", "/proc/self/ns/mnt"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns, err := Open(tc.path)
			if err == nil {
				ns.Close()
				t.Fatalf("Open(%s) succeeded", tc.path)
			}
		})
	}
}

func TestOpenOwnNetns(t *testing.T) {
	path := fmt.Sprintf("/proc/%d/ns/net", os.Getpid())
	ns, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	fd, ok := ns.Fd()
	if ns.IsCurrent() || !ok || fd <= 0 || ns.NetlinkNetNS() != fd || len(ns.NFTOptions()) != 1 {
		t.Fatalf("opened namespace: IsCurrent=%v fd=%d ok=%v NetlinkNetNS=%d", ns.IsCurrent(), fd, ok, ns.NetlinkNetNS())
	}
	if ns.String() != path {
		t.Errorf("String = %q, want %q", ns.String(), path)
	}
}

// With stdin closed, Open's descriptor would be 0, which the netlink
// libraries read as "current": Open must move it.
func TestOpenNeverYieldsFdZero(t *testing.T) {
	saved, err := unix.Dup(0)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { unix.Dup2(saved, 0); unix.Close(saved) }()
	unix.Close(0)
	ns, err := Open("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if fd, _ := ns.Fd(); fd == 0 || ns.IsCurrent() {
		t.Fatalf("Open with stdin closed: fd %d, IsCurrent %v", fd, ns.IsCurrent())
	}
}
