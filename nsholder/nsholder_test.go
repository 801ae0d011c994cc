package nsholder

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/arkgw/arkgw/reexec"
)

func TestMain(m *testing.M) {
	if reexec.Init() {
		return
	}
	os.Exit(m.Run())
}

// The netns is owned by the new user namespace, persists after the holder
// is released, and is gone (files unmounted and removed) after Remove.
func TestPrivilegedCreatePersistRemove(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates user and network namespaces and bind mounts")
	}
	dir := filepath.Join(t.TempDir(), "ns")
	h, err := Create(Config{Dir: dir, HostUID: 200000, HostGID: 200000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Remove() })

	h.Release()
	ns, err := netns.GetFromPath(h.NetNSPath())
	if err != nil {
		t.Fatalf("persisted netns not usable after release: %v", err)
	}
	defer ns.Close()
	hostNS, _ := netns.Get()
	defer hostNS.Close()
	if ns.Equal(hostNS) {
		t.Fatal("persisted netns is the host's")
	}
	// Ownership: NS_GET_USERNS on the netns returns the persisted userns.
	owner, err := unix.IoctlRetInt(int(ns), unix.NS_GET_USERNS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(owner)
	var a, b unix.Stat_t
	unix.Fstat(owner, &a)
	if err := unix.Stat(h.UserNSPath(), &b); err != nil {
		t.Fatal(err)
	}
	if a.Ino != b.Ino {
		t.Fatalf("netns owner userns inode %d != persisted userns %d", a.Ino, b.Ino)
	}
	// The host (init userns root) can configure it by handle.
	nh, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	links, err := nh.LinkList()
	nh.Close()
	if err != nil || len(links) != 1 || links[0].Attrs().Name != "lo" {
		t.Fatalf("fresh netns links = %v, %v; want only lo", links, err)
	}

	if err := h.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(h.NetNSPath()); !os.IsNotExist(err) {
		t.Fatalf("net ns file still there after Remove: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("dir still there after Remove: %v", err)
	}
}

// Spawn runs a process in the holder's namespaces; the holder captures its
// output with a cap, counts what it drops and writes the exit status.
func TestPrivilegedSpawnCaptureStatus(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates user and network namespaces")
	}
	tmp := t.TempDir()
	h, err := Create(Config{Dir: filepath.Join(tmp, "ns"), HostUID: 200000, HostGID: 200000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Remove() })
	open := func(name string) *os.File {
		f, err := os.OpenFile(filepath.Join(tmp, name), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	out, errf, status := open("out"), open("err"), open("status")
	p, err := h.Spawn(SpawnRequest{
		Path: "/bin/sh", Args: []string{"sh", "-c", "cat /proc/self/uid_map; grep -E '^(Uid|CapEff)' /proc/self/status; readlink /proc/self/ns/net; head -c 5000 /dev/zero; echo oops >&2; exit 7"},
		Stdout: out, Stderr: errf, Status: status, OutputCap: 1000,
	})
	if err != nil {
		t.Fatal(err)
	}
	st, err := p.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if !st.Exited || st.Code != 7 {
		t.Fatalf("status %+v, want exit 7", st)
	}
	if st.Stdout.Bytes != 1000 || st.Stdout.Dropped < 4000 || st.Stderr.Bytes != 5 {
		t.Fatalf("streams %+v %+v", st.Stdout, st.Stderr)
	}
	b, _ := os.ReadFile(filepath.Join(tmp, "out"))
	if len(b) != 1000 {
		t.Fatalf("stdout file has %d bytes, want 1000 (cap)", len(b))
	}
	netLink, _ := os.Readlink(h.NetNSPath())
	var ns unix.Stat_t
	unix.Stat(h.NetNSPath(), &ns)
	if !strings.Contains(string(b), "200000") {
		t.Fatalf("uid_map not the holder's: %q", b)
	}
	// root of the namespace (not unmapped host root) with its capabilities
	if !strings.Contains(string(b), "Uid:\t0\t0\t0\t0") || strings.Contains(string(b), "CapEff:\t0000000000000000") {
		t.Fatalf("child is not root of the namespace with full capabilities: %q", b)
	}
	if !strings.Contains(string(b), fmt.Sprintf("net:[%d]", ns.Ino)) {
		t.Fatalf("child not in the holder's netns (%d, %s): %q", ns.Ino, netLink, b)
	}
	fst, err := ReadStatus(filepath.Join(tmp, "status"))
	if err != nil || fst.Code != 7 || fst.Stdout.Dropped != st.Stdout.Dropped {
		t.Fatalf("status file %+v, %v", fst, err)
	}
	// A result of tens of KiB comes back whole: its reply is far larger
	// than the readers' usual buffer.
	big := `{"k":"` + strings.Repeat("r", 60<<10) + `"}`
	p, err = h.Spawn(SpawnRequest{Path: "/bin/sh", Args: []string{"sh", "-c", "printf '%s' \"$0\" >&3", big}, ResultPipe: true})
	if err != nil {
		t.Fatal(err)
	}
	if st, err = p.Wait(); err != nil || string(st.Result) != big {
		t.Fatalf("large result: %d bytes back, want %d (%v)", len(st.Result), len(big), err)
	}
	// a failing start is reported
	if _, err := h.Spawn(SpawnRequest{Path: "/nonexistent", Args: []string{"x"}}); err == nil {
		t.Fatal("spawn of a missing binary succeeded")
	}
	h.Release()
	if _, err := h.Spawn(SpawnRequest{Path: "/bin/true", Args: []string{"true"}}); !errors.Is(err, ErrNoHolder) {
		t.Fatalf("spawn after release: %v", err)
	}
}

// Status files are read back by a restarted daemon: arbitrary content must
// not panic.
func FuzzReadStatus(f *testing.F) {
	f.Add([]byte(`{"pid":3,"exited":true,"code":0,"stdout":{"bytes":1}}`))
	f.Add([]byte(``))
	f.Add([]byte(`{"result":[1,2`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(t.TempDir(), "status")
		os.WriteFile(p, b, 0o600)
		ReadStatus(p)
	})
}

// A holder binary that is not a holder (it exits without "ready") and one
// that does not exist: Create fails with the reason and leaves no
// directory entries or mounts behind.
func TestPrivilegedCreateBadBinary(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates user and network namespaces")
	}
	for _, c := range []struct{ binary, want string }{
		{"/bin/true", "holder did not start"},
		{"/nonexistent/arkgw-init", "open holder binary /nonexistent/arkgw-init"},
	} {
		dir := filepath.Join(t.TempDir(), "ns")
		h, err := Create(Config{Dir: dir, HostUID: 200000, HostGID: 200000, Binary: c.binary})
		if err == nil {
			h.Remove()
			t.Fatalf("%s: Create succeeded", c.binary)
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %q lacks %q", c.binary, err, c.want)
		}
		for _, kind := range []string{"user", "net"} {
			if _, err := os.Stat(filepath.Join(dir, kind)); err == nil {
				t.Errorf("%s: %s/%s left behind", c.binary, dir, kind)
			}
		}
	}
}
