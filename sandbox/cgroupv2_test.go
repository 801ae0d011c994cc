package sandbox

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/arkgw/arkgw/configs"
)

// fakeCgroup2 is a directory laid out like a cgroup2 mount whose root
// offers controllers, with the parent cgroup made: what the library
// writes to it can be read back (on this hybrid host the real unified
// hierarchy has no controllers: they are bound to v1).
func fakeCgroup2(t *testing.T, controllers, parent string) string {
	t.Helper()
	mount := t.TempDir()
	for _, d := range []string{mount, filepath.Join(mount, parent)} {
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "cgroup.controllers"), []byte(controllers+"\n"), 0o644)
		os.WriteFile(filepath.Join(d, "cgroup.subtree_control"), nil, 0o644)
	}
	return mount
}

// The files and values a v2 cgroup gets for an experiment's limits, and
// the controllers enabled for it in its parents' cgroup.subtree_control
// (delegation: processes never live in a cgroup with children).
func TestCgroupV2FilesOnFake(t *testing.T) {
	for _, c := range []struct {
		name        string
		controllers string
		limits      configs.Limits
		allow       []string
		files       map[string]string // file -> content; "" = must not exist
		subtree     string
		missing     []string
		err         string
	}{
		{name: "all limits", controllers: "cpuset cpu io memory pids",
			limits: configs.Limits{CPUPercent: 50, MaxRAMMB: 64},
			files: map[string]string{"cpu.max": "50000 100000", "memory.max": "67108864", "memory.swap.max": "0",
				"pids.max": "32", "cpu.weight": ""},
			subtree: "+cpu +memory +pids"},
		{name: "a tenth of a core, no memory limit", controllers: "cpu memory pids",
			limits:  configs.Limits{CPUPercent: 10},
			files:   map[string]string{"cpu.max": "10000 100000", "pids.max": "32", "memory.max": "", "memory.swap.max": ""},
			subtree: "+cpu +pids"},
		{name: "pids only", controllers: "cpu memory pids",
			files:   map[string]string{"pids.max": "32", "cpu.max": "", "memory.max": ""},
			subtree: "+pids"},
		{name: "memory missing, accepted by policy", controllers: "cpu pids",
			limits: configs.Limits{CPUPercent: 100, MaxRAMMB: 64}, allow: []string{"memory"},
			files:   map[string]string{"cpu.max": "100000 100000", "pids.max": "32", "memory.max": ""},
			subtree: "+cpu +pids", missing: []string{"memory"}},
		{name: "memory missing, refused", controllers: "cpu pids",
			limits: configs.Limits{MaxRAMMB: 64}, err: "cgroup_enable=memory"},
		{name: "cpu missing, refused", controllers: "memory pids",
			limits: configs.Limits{CPUPercent: 20}, err: "no cpu cgroup controller"},
	} {
		t.Run(c.name, func(t *testing.T) {
			mount := fakeCgroup2(t, c.controllers, "arkgw")
			cg, err := newCgroupV2At(mount, "e1", "/arkgw/e1", ComputeResources(c.limits, 32), c.allow)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error %v, want %q", err, c.err)
				}
				if _, err := os.Stat(filepath.Join(mount, "arkgw/e1")); err == nil {
					t.Error("cgroup made although refused")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(cg.Missing(), c.missing) {
				t.Errorf("missing %v, want %v", cg.Missing(), c.missing)
			}
			dir := filepath.Join(mount, "arkgw/e1")
			for f, want := range c.files {
				b, err := os.ReadFile(filepath.Join(dir, f))
				if want == "" {
					if err == nil {
						t.Errorf("%s written: %q", f, b)
					}
					continue
				}
				if err != nil || strings.TrimSpace(string(b)) != want {
					t.Errorf("%s: %q (%v), want %q", f, b, err, want)
				}
			}
			for _, d := range []string{mount, filepath.Join(mount, "arkgw")} {
				b, _ := os.ReadFile(filepath.Join(d, "cgroup.subtree_control"))
				if string(b) != c.subtree {
					t.Errorf("%s/cgroup.subtree_control: %q, want %q", d, b, c.subtree)
				}
			}
			if err := cg.Delegate(1, 1, nil); err == nil {
				t.Error("v2 delegation of tasks files did not fail (the daemon must move the init)")
			}
			// accounting, as the kernel lays it out
			os.WriteFile(filepath.Join(dir, "cpu.stat"), []byte("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n"), 0o644)
			os.WriteFile(filepath.Join(dir, "memory.events"), []byte("low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n"), 0o644)
			if st := cg.Stats(); st.CPU != 1500*time.Microsecond || st.OOMKills != 2 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

// unifiedMount is this host's cgroup2 hierarchy: /sys/fs/cgroup/unified
// on a hybrid host, /sys/fs/cgroup on a unified one.
func unifiedMount(t *testing.T) string {
	t.Helper()
	for _, m := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		if _, err := os.Stat(filepath.Join(m, "cgroup.controllers")); err == nil {
			return m
		}
	}
	t.Fatal("no cgroup2 hierarchy mounted (hybrid hosts have /sys/fs/cgroup/unified)")
	return ""
}

// useUnified runs the sandbox's v2 path on this host's cgroup2 hierarchy
// for one test; limits whose controllers it lacks are accepted (on a
// hybrid host it has none). The test's cgroup parent is removed at the
// end, with a check that its experiment's cgroup went.
func useUnified(t *testing.T, tr *testRun) string {
	t.Helper()
	mount := unifiedMount(t)
	v2Mount = mount
	t.Cleanup(func() {
		v2Mount = ""
		p := filepath.Join(mount, tr.parent)
		if _, err := os.Stat(filepath.Join(p, tr.spec.ID)); err == nil {
			t.Errorf("v2 cgroup %s/%s left behind", p, tr.spec.ID)
			os.Remove(filepath.Join(p, tr.spec.ID))
		}
		os.Remove(p)
	})
	tr.spec.AllowMissing = []string{"cpu", "memory", "pids"}
	return mount
}

// Whole runs on the v2 path, on this host's real cgroup2 hierarchy: the
// daemon moves the init into its cgroup (no tasks files to delegate), the
// command sees its cgroup namespace's root, CPU is accounted from
// cpu.stat, Stop and the wall-clock limit kill through cgroup.kill, and
// the cgroup goes; Cleanup after a daemon restart finds a v2 cgroup by id.
func TestPrivilegedCgroupV2Runs(t *testing.T) {
	t.Run("placed, accounted, removed", func(t *testing.T) {
		tr := newSpec(t, "/bin/sh", "-c", `cat /proc/self/cgroup; i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done`)
		useUnified(t, tr)
		res, out, errOut := tr.run(t)
		if !res.Exited || res.Code != 0 {
			t.Fatalf("%+v %s %s", res, out, errOut)
		}
		// the unified hierarchy's line: its namespace root
		if !slices.Contains(lines(out), "0::/") {
			t.Errorf("command's /proc/self/cgroup lacks 0::/ (its own cgroup namespace):\n%s", out)
		}
		if res.CPUTime < 20*time.Millisecond {
			t.Errorf("CPU time %v from cpu.stat for a busy loop", res.CPUTime)
		}
	})
	t.Run("stop kills the cgroup", func(t *testing.T) {
		tr := newSpec(t, "/bin/sh", "-c", "sleep 60 & sleep 60 & exec sleep 60")
		mount := useUnified(t, tr)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		sb, err := Launch(ctx, tr.spec)
		if err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(mount, tr.parent, tr.spec.ID)
		ps, err := readPids(filepath.Join(dir, "cgroup.procs"))
		if err != nil || !slices.Contains(ps, sb.PID) {
			sb.Stop(ctx)
			t.Fatalf("init %d not in %s/cgroup.procs: %v %v", sb.PID, dir, ps, err)
		}
		if files := v1TasksFiles(cgroupRel(tr.parent, tr.spec.ID)); files != nil {
			t.Errorf("v1 tasks files offered to the init on the v2 path: %v", files)
		}
		res, err := sb.Stop(ctx)
		if err != nil || !res.Stopped {
			t.Fatalf("stop: %+v %v", res, err)
		}
		for _, p := range ps {
			if err := processGone(p); err != nil {
				t.Error(err)
			}
		}
		if _, err := os.Stat(dir); err == nil {
			t.Errorf("cgroup %s left after stop", dir)
		}
	})
	t.Run("wall-clock limit", func(t *testing.T) {
		tr := newSpec(t, "/bin/sleep", "60")
		useUnified(t, tr)
		tr.spec.Limits.MaxHours = 0.5 / 3600
		res, _, _ := tr.run(t)
		if !res.TimedOut || res.Exited {
			t.Fatalf("%+v", res)
		}
	})
	t.Run("cleanup after a restart", func(t *testing.T) {
		tr := newSpec(t, "/bin/sleep", "60")
		mount := useUnified(t, tr)
		sb, err := Launch(context.Background(), tr.spec)
		if err != nil {
			t.Fatal(err)
		}
		if err := Cleanup(tr.spec.ID, tr.parent); err != nil {
			sb.Stop(context.Background())
			t.Fatal(err)
		}
		select {
		case <-sb.Done():
		case <-time.After(20 * time.Second):
			t.Fatal("run survived Cleanup")
		}
		if _, err := os.Stat(filepath.Join(mount, tr.parent, tr.spec.ID)); err == nil {
			t.Error("cgroup left after Cleanup")
		}
	})
}

// processGone: pid does not exist or is a zombie no more of ours.
func processGone(pid int) error {
	for i := 0; i < 250; i++ {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || strings.Contains(string(b), ") Z ") {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("process %d survived", pid)
}
