package netlab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The child of InOwnNetNS finds its test and namespace in these.
const (
	envOwnTest = "ARKGW_NETLAB_OWN_TEST"
	envOwnNS   = "ARKGW_NETLAB_OWN_NETNS"
)

// ownNSTimeout bounds the child test.
const ownNSTimeout = 5 * time.Minute

// InOwnNetNS runs the calling test (or subtest) again in a child copy of the
// test binary whose whole process lives in a fresh network namespace made
// for it: how the daemon runs on a node, started inside the node's
// namespace with no handle. Goroutines run on any thread, so "the current
// namespace" can only be tested with every thread of the process in it,
// never by switching one thread.
//
// In the parent it builds the namespace, runs the child (the test binary
// with -test.run selecting t), logs the child's output, fails t if the child
// failed, removes the namespace and returns false: the caller returns. In
// the child it returns true and the test proceeds; a HostSpec with Current
// set (or NewCurrentWorld) is then that namespace, and code under test is
// given nsdo.Current().
func InOwnNetNS(t *testing.T) bool {
	t.Helper()
	if os.Getenv(envOwnTest) == t.Name() && os.Getenv(envOwnNS) != "" {
		return true
	}
	requireRoot(t)
	if _, err := Sweep(); err != nil {
		t.Logf("netlab: sweep: %v", err)
	}
	ns, path, err := createNamed(nsName(randID(6), "own"))
	if err != nil {
		t.Fatalf("netlab: namespace for the child test: %v", err)
	}
	defer func() {
		if id, err := nsOf(path); err == nil {
			if pids := killIn(id); len(pids) > 0 {
				t.Logf("netlab: killed processes %v left in %s", pids, path)
			}
		}
		ns.Close()
		if err := removeNamed(path); err != nil {
			t.Errorf("netlab: remove %s: %v", path, err)
		}
	}()
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("netlab: find the test binary: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), ownNSTimeout)
	defer cancel()
	// The trampoline (see Command) enters the namespace and execs the test
	// binary, so the child starts in it with all its threads.
	cmd := exec.CommandContext(ctx, "/proc/self/exe")
	cmd.Args = []string{nsexecArg0, path, exe, exe,
		"-test.run=" + runPattern(t.Name()), "-test.count=1", "-test.v",
		"-test.timeout=" + ownNSTimeout.String()}
	cmd.Env = append(os.Environ(), envOwnTest+"="+t.Name(), envOwnNS+"="+path)
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	t.Logf("child test in its own netns %s:\n%s", path, out)
	switch {
	case err != nil:
		t.Fatalf("netlab: child test in its own netns: %v", err)
	case !strings.Contains(string(out), "--- PASS: "+t.Name()+" "):
		t.Fatalf("netlab: child test in its own netns did not pass %s (skipped or not run)", t.Name())
	}
	return false
}

// runPattern is a -test.run pattern that selects exactly the test name
// (subtests: one anchored element per level).
func runPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}

// currentNSPath is the namespace file of the process's own namespace inside
// InOwnNetNS's child, or an error elsewhere: netlab never rewires the
// namespace a test binary was started in.
func currentNSPath() (string, error) {
	p := os.Getenv(envOwnNS)
	if p == "" {
		return "", fmt.Errorf("HostSpec.Current needs a test running in its own netns: call netlab.InOwnNetNS(t) first")
	}
	self, err := nsOf("/proc/self/ns/net")
	if err != nil {
		return "", err
	}
	own, err := nsOf(p)
	if err != nil {
		return "", err
	}
	if self != own {
		return "", fmt.Errorf("HostSpec.Current: this process is not in %s", p)
	}
	return p, nil
}

// NewCurrentWorld is NewWorld whose Node is the namespace the test process
// runs in (inside InOwnNetNS's child only).
func NewCurrentWorld(t testing.TB) *World {
	t.Helper()
	topo := WorldTopology()
	topo.Hosts[0].Current = true
	return newWorld(t, topo)
}
