package netlab

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// NodeLockPath is the lock LockNode takes.
const NodeLockPath = "/run/netlab-node.lock"

// LockNode makes t wait until no other test process runs the real daemon
// binary as a node runs it, and holds that until t ends. Such tests share
// what a node owns alone (the "arkgw" cgroup parent, which their daemons
// make and `arkgw cleanup` removes); `go test -p` would otherwise run two
// packages' at once, and one's cleanup would meet the other's experiments.
// One call per test process at a time: a second would wait for the first.
func LockNode(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile(NodeLockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatalf("node lock: %v", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		t.Fatalf("node lock %s: %v", NodeLockPath, err)
	}
	t.Cleanup(func() { f.Close() }) // closing releases the lock
}
