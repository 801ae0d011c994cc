package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/nsholder"
	"github.com/arkgw/arkgw/reexec"
)

func TestMain(m *testing.M) {
	if reexec.Init() {
		return
	}
	code := m.Run()
	if testRootBase != "" {
		os.RemoveAll(testRootBase)
	}
	os.Exit(code)
}

const probeName = "arkgw-sandbox-probe"

func init() { reexec.Register(probeName, probeMain) }

var (
	testRootOnce sync.Once
	testRootBase string // containers dir
	testRootErr  error
)

const testVersion = "ark-test"

// testContainers builds, once per test binary, a container root from the
// host's binaries (scripts/rootfs.sh) plus this test binary as
// /usr/bin/arkgw-sandbox-probe (argv[0] selects the probe handler).
func testContainers(t *testing.T) string {
	t.Helper()
	testRootOnce.Do(func() {
		base, err := os.MkdirTemp("", "arkgw-sandbox-roots-")
		if err != nil {
			testRootErr = err
			return
		}
		testRootBase = base
		self, err := os.Executable()
		if err != nil {
			testRootErr = err
			return
		}
		root := filepath.Join(base, testVersion)
		out, err := exec.Command("../scripts/rootfs.sh", root, self).CombinedOutput()
		if err != nil {
			testRootErr = err
			t.Logf("%s", out)
			return
		}
		// the test binary under the probe's name
		src := filepath.Join(root, self)
		if testRootErr = os.Rename(src, filepath.Join(root, "usr/bin", probeName)); testRootErr != nil {
			return
		}
		// Debian's ping with its file capability (cap_net_raw=ep), which
		// the bounding set must keep executable
		testRootErr = copyWithFileCaps("/usr/bin/ping", filepath.Join(root, "usr/bin/ping-fcap"))
	})
	if testRootErr != nil {
		t.Fatalf("build test container root: %v", testRootErr)
	}
	return testRootBase
}

func copyWithFileCaps(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		return err
	}
	buf := make([]byte, 64)
	n, err := unix.Getxattr(src, "security.capability", buf)
	if err != nil {
		return fmt.Errorf("%s has no file capabilities: %w", src, err)
	}
	return unix.Setxattr(dst, "security.capability", buf[:n], 0)
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates user/network namespaces, cgroups and mounts")
	}
}

func randID(t *testing.T) string {
	b := make([]byte, 4)
	rand.Read(b)
	return "t" + hex.EncodeToString(b)[:7]
}

var uidSlot struct {
	sync.Mutex
	n uint32
}

var (
	helperOnce sync.Once
	helperPath string
	helperErr  error
)

// helperBinary builds cmd/arkgw-init once per test binary: the holder and
// sandbox init the daemon starts in production.
func helperBinary(t *testing.T) string {
	t.Helper()
	base := testContainers(t)
	helperOnce.Do(func() {
		p := filepath.Join(base, "arkgw-init")
		cmd := exec.Command("go", "build", "-o", p, "../cmd/arkgw-init")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			helperErr = fmt.Errorf("build cmd/arkgw-init: %v\n%s", err, out)
			return
		}
		helperPath = p
	})
	if helperErr != nil {
		t.Fatal(helperErr)
	}
	return helperPath
}

// newHolder creates the experiment's namespaces, removed at cleanup, with
// the helper binary as holder (and so as sandbox init).
func newHolder(t *testing.T) *nsholder.Holder {
	t.Helper()
	return newHolderOf(t, helperBinary(t))
}

// newHolderOf is newHolder with the given holder binary ("" = this test
// binary re-executed, the daemon's fallback).
func newHolderOf(t *testing.T, binary string) *nsholder.Holder {
	t.Helper()
	uidSlot.Lock()
	uidSlot.n++
	base := 0x30000000 + (uint32(os.Getpid())%1000)*0x100000 + uidSlot.n*65536
	uidSlot.Unlock()
	h, err := nsholder.Create(nsholder.Config{Dir: filepath.Join(t.TempDir(), "ns"), HostUID: base, HostGID: base, Binary: binary})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Remove() })
	return h
}

type testRun struct {
	spec   Spec
	dir    string
	parent string
}

// newSpec returns a spec for the test container with a per-test cgroup
// parent (removed at cleanup, with a check that nothing of the run is left).
func newSpec(t *testing.T, cmd ...string) *testRun {
	t.Helper()
	needRoot(t)
	containers := testContainers(t)
	dir := t.TempDir()
	files := filepath.Join(dir, "files")
	os.MkdirAll(files, 0o755)
	os.WriteFile(filepath.Join(files, "hello.txt"), []byte("hello\n"), 0o644)
	os.Chmod(dir, 0o755)
	id := randID(t)
	parent := "arkgw-test-" + id
	tr := &testRun{dir: dir, parent: parent, spec: Spec{
		ID: id, Holder: newHolder(t), ContainersDir: containers, Version: testVersion,
		FilesDir: files, Command: cmd,
		Limits:       configs.Limits{CPUPercent: 100, MaxRAMMB: 256, TmpfsMB: 16, OutputMB: 1, MaxHours: 1},
		Stdout:       filepath.Join(dir, "stdout"),
		Stderr:       filepath.Join(dir, "stderr"),
		StatusFile:   filepath.Join(dir, "status.json"),
		CgroupParent: parent,
		Logger:       hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: os.Stderr}),
	}}
	t.Cleanup(func() {
		for _, d := range cgroupDirs(parent, id) {
			if _, err := os.Stat(d); err == nil {
				t.Errorf("cgroup %s left behind", d)
				os.Remove(d)
			}
			os.Remove(filepath.Dir(d))
		}
	})
	return tr
}

// cgroupDirs are the directories of a run's cgroup: one per v1
// controller, or its v2 cgroup (unified hosts, or the v2 path forced by a
// test): what must be gone after the run.
func cgroupDirs(parent, id string) []string {
	if mount, ok := unifiedAt(); ok {
		return []string{filepath.Join(mount, parent, id)}
	}
	var out []string
	for _, c := range []string{"cpu", "cpuacct", "memory", "pids", "freezer"} {
		out = append(out, filepath.Join(v1Root, c, parent, id))
	}
	return out
}

// cgroupDir is the run's cgroup directory holding ctrl's files.
func cgroupDir(ctrl, parent, id string) string {
	if mount, ok := unifiedAt(); ok {
		return filepath.Join(mount, parent, id)
	}
	return filepath.Join(v1Root, ctrl, parent, id)
}

func (tr *testRun) run(t *testing.T) (Result, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sb, err := Launch(ctx, tr.spec)
	if err != nil {
		t.Fatal(err)
	}
	res, err := sb.Wait(ctx)
	if err != nil {
		sb.Stop(context.Background())
		t.Fatal(err)
	}
	return res, tr.read("stdout"), tr.read("stderr")
}

func (tr *testRun) read(name string) string {
	b, _ := os.ReadFile(filepath.Join(tr.dir, name))
	return string(b)
}

func lines(s string) []string { return strings.Split(strings.TrimSpace(s), "\n") }
