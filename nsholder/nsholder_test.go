package nsholder

import (
	"os"
	"path/filepath"
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
