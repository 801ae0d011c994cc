package sandbox

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/nsholder"
)

func TestComputeResources(t *testing.T) {
	for _, c := range []struct {
		name  string
		l     configs.Limits
		pids  int64
		want  Resources
		needs []string
	}{
		{"minimal class", configs.Limits{CPUPercent: 10, MaxRAMMB: 64}, 0,
			Resources{CPUQuotaUS: 10000, CPUPeriodUS: 100000, MemoryBytes: 64 << 20, PidsMax: 512}, []string{"pids", "cpu", "memory"}},
		{"substantial", configs.Limits{CPUPercent: 100, MaxRAMMB: 1024}, 100,
			Resources{CPUQuotaUS: 100000, CPUPeriodUS: 100000, MemoryBytes: 1 << 30, PidsMax: 100}, []string{"pids", "cpu", "memory"}},
		{"two cores", configs.Limits{CPUPercent: 200}, 0,
			Resources{CPUQuotaUS: 200000, CPUPeriodUS: 100000, PidsMax: 512}, []string{"pids", "cpu"}},
		{"tiny share clamps to 1 ms", configs.Limits{CPUPercent: 0 + 1}, 0,
			Resources{CPUQuotaUS: 1000, CPUPeriodUS: 100000, PidsMax: 512}, []string{"pids", "cpu"}},
		{"no limits", configs.Limits{}, 0, Resources{CPUPeriodUS: 100000, PidsMax: 512}, []string{"pids"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := ComputeResources(c.l, c.pids)
			if r != c.want {
				t.Fatalf("got %+v want %+v", r, c.want)
			}
			if !slices.Equal(r.Needs(), c.needs) {
				t.Fatalf("needs %v want %v", r.Needs(), c.needs)
			}
		})
	}
}

// What is asked of containerd/cgroups on a v2 host: cpu.max, memory.max,
// memory.swap.max 0, pids.max, and exactly these controllers enabled.
func TestResourcesV2(t *testing.T) {
	r := ComputeResources(configs.Limits{CPUPercent: 50, MaxRAMMB: 128}, 64)
	v2 := r.V2()
	if got := fmt.Sprint(v2.Values()); got != "[{cpu.max 50000 100000} {memory.swap.max 0} {memory.max 134217728} {pids.max 64}]" {
		t.Fatalf("v2 values %s", got)
	}
	if got := v2.EnabledControllers(); !slices.Equal(got, []string{"cpu", "memory", "pids"}) {
		t.Fatalf("controllers %v", got)
	}
	r = ComputeResources(configs.Limits{}, 0)
	if got := fmt.Sprint(r.V2().Values()); got != "[{pids.max 512}]" {
		t.Fatalf("unlimited v2 values %s", got)
	}
}

func TestResourcesV1(t *testing.T) {
	r := ComputeResources(configs.Limits{CPUPercent: 50, MaxRAMMB: 128}, 64)
	v1 := r.V1(true)
	if *v1.CPU.Quota != 50000 || *v1.CPU.Period != 100000 || *v1.Memory.Limit != 128<<20 ||
		*v1.Memory.Swap != 128<<20 || v1.Pids.Limit != nil && *v1.Pids.Limit != 64 {
		b, _ := json.Marshal(v1)
		t.Fatalf("v1 %s", b)
	}
	if r.V1(false).Memory.Swap != nil {
		t.Fatal("swap limit requested without swap accounting")
	}
}

func TestCheckControllers(t *testing.T) {
	noMemory := func(c string) bool { return c != "memory" }
	needs := []string{"pids", "cpu", "memory"}
	_, err := checkControllers("e1", needs, noMemory, nil)
	if err == nil || !strings.Contains(err.Error(), "cgroup_enable=memory") || !strings.Contains(err.Error(), "e1") {
		t.Fatalf("missing memory: %v", err)
	}
	missing, err := checkControllers("e1", needs, noMemory, []string{"memory"})
	if err != nil || !slices.Equal(missing, []string{"memory"}) {
		t.Fatalf("accepted missing memory: %v %v", missing, err)
	}
	missing, err = checkControllers("e1", []string{"pids"}, noMemory, nil)
	if err != nil || len(missing) != 0 {
		t.Fatalf("memory not needed: %v %v", missing, err)
	}
}

func TestRootDir(t *testing.T) {
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "ark-2026.1"), 0o755)
	os.WriteFile(filepath.Join(dir, "file"), nil, 0o644)
	if got, err := RootDir(dir, "ark-2026.1"); err != nil || got != filepath.Join(dir, "ark-2026.1") {
		t.Fatalf("%q %v", got, err)
	}
	for _, v := range []string{"", ".", "..", "../x", "a/b", ".hidden", "-x", "ark 1", "ark-2025.9", "file", strings.Repeat("a", 65)} {
		if _, err := RootDir(dir, v); err == nil {
			t.Errorf("version %q accepted", v)
		}
	}
	_, err := RootDir(dir, "ark-2025.9")
	if err == nil || !strings.Contains(err.Error(), "unknown container version") {
		t.Fatalf("unknown version error: %v", err)
	}
}

func TestPrepare(t *testing.T) {
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "v1"), 0o755)
	base := func() Spec {
		return Spec{ID: "e1", Holder: &nsholder.Holder{}, ContainersDir: dir, Version: "v1", Command: []string{"sh"},
			Limits:      configs.Limits{CPUPercent: 50, MaxHours: 2, TmpfsMB: 8, MaxRAMMB: 64},
			Nameservers: []netip.Addr{netip.MustParseAddr("10.250.0.1"), netip.MustParseAddr("fd00:a4c::1")}}
	}
	s := base()
	p, err := prepare(&s)
	if err != nil {
		t.Fatal(err)
	}
	c := p.cfg
	if c.UID != 1000 || c.GID != 1000 || c.Dir != "/tmp" || c.Hostname != "ark-e1" || c.NoFile != 1024 ||
		c.TmpfsBytes != 8<<20 || c.CPUSeconds != 2*3600/2+60 || c.Nice != 10 || p.timeout != 2*time.Hour ||
		p.cgroupRel != "/arkgw/e1" || !slices.Equal(c.Caps, experimentCaps) {
		t.Fatalf("defaults: %+v %v %s", c, p.timeout, p.cgroupRel)
	}
	if c.ResolvConf != "# written by arkgw: the gateway's DNS proxy\nnameserver 10.250.0.1\nnameserver fd00:a4c::1\noptions edns0\n" {
		t.Fatalf("resolv.conf %q", c.ResolvConf)
	}
	if !strings.Contains(c.Hosts, "127.0.1.1\tark-e1\n") {
		t.Fatalf("hosts %q", c.Hosts)
	}
	for name, mod := range map[string]func(*Spec){
		"bad id":          func(s *Spec) { s.ID = "Bad/ID" },
		"no holder":       func(s *Spec) { s.Holder = nil },
		"no command":      func(s *Spec) { s.Command = nil },
		"unknown version": func(s *Spec) { s.Version = "v2" },
		"uid outside":     func(s *Spec) { s.UID = 70000 },
		"negative limit":  func(s *Spec) { s.Limits.MaxRAMMB = -1 },
	} {
		s := base()
		mod(&s)
		if _, err := prepare(&s); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestResultOf(t *testing.T) {
	st := nsholder.ExitStatus{Exited: true, Code: 137, Result: json.RawMessage(`{"exited":false,"code":-1,"signal":9}`),
		UserCPU: time.Second}
	r := resultOf("e1", st, cgStats{OOMKills: 1}, false, false)
	if r.Exited || r.Signal != 9 || r.Code != -1 || !r.OOMKilled || r.CPUTime != time.Second {
		t.Fatalf("%+v", r)
	}
	// the init was killed before it could report
	r = resultOf("e1", nsholder.ExitStatus{Code: -1, Signal: 9}, cgStats{CPU: 5 * time.Millisecond}, true, false)
	if r.Exited || r.Signal != 9 || !r.Stopped || r.CPUTime != 5*time.Millisecond {
		t.Fatalf("%+v", r)
	}
}

// The init's report on the result pipe is parsed by the daemon: arbitrary
// bytes must not panic.
func FuzzResultOf(f *testing.F) {
	f.Add([]byte(`{"exited":true,"code":3}`))
	f.Add([]byte(`{"exited":false,"signal":9}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		resultOf("e1", nsholder.ExitStatus{Result: b}, cgStats{}, false, false)
	})
}

func TestWallClock(t *testing.T) {
	for _, c := range []struct {
		h    float64
		want time.Duration
	}{{0, 0}, {-1, 0}, {0.5, 30 * time.Minute}, {1e12, 24 * 365 * 10 * time.Hour}} {
		if got := wallClock(c.h); got != c.want {
			t.Errorf("wallClock(%v) = %v, want %v", c.h, got, c.want)
		}
	}
}
