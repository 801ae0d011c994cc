package sandbox

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestReadUsage(t *testing.T) {
	v2 := t.TempDir()
	writeFiles(t, v2, map[string]string{"cpu.stat": "usage_usec 2500000\nuser_usec 2000000\n", "memory.current": "1048576\n", "memory.max": "67108864\n"})
	u, err := readUsageV2(v2)
	if err != nil || u.CPU != 2500*time.Millisecond || u.MemoryBytes != 1<<20 || u.MemoryLimit != 64<<20 {
		t.Errorf("v2: %+v %v", u, err)
	}
	writeFiles(t, v2, map[string]string{"memory.max": "max\n"})
	if u, _ := readUsageV2(v2); u.MemoryLimit != 0 {
		t.Errorf("v2 unlimited: %+v", u)
	}
	if _, err := readUsageV2(filepath.Join(v2, "gone")); err == nil {
		t.Error("v2: no error for a missing cgroup")
	}

	v1 := t.TempDir()
	rel := "/arkgw/e1"
	writeFiles(t, v1, map[string]string{"cpuacct/arkgw/e1/cpuacct.usage": "1500000000\n",
		"memory/arkgw/e1/memory.usage_in_bytes": "4096\n", "memory/arkgw/e1/memory.limit_in_bytes": "9223372036854771712\n"})
	u, err = readUsageV1(v1, rel)
	if err != nil || u.CPU != 1500*time.Millisecond || u.MemoryBytes != 4096 || u.MemoryLimit != 0 {
		t.Errorf("v1: %+v %v", u, err)
	}
	if _, err := readUsageV1(v1, "/arkgw/e2"); err == nil {
		t.Error("v1: no error for a missing cgroup")
	}
}
