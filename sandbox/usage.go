package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/cgroups/v3"
)

// Usage is what an experiment's cgroup uses, read live (the owner page's
// "CPU and memory now").
type Usage struct {
	CPU         time.Duration // CPU time used so far, all processes
	MemoryBytes uint64        // memory charged now
	MemoryLimit uint64        // the cgroup's memory limit; 0 = none
}

// ReadUsage reads the usage of experiment id's cgroup (cgroupParent as in
// Spec; "" = "arkgw") from cgroup v2 or the v1 cpuacct and memory
// controllers. Values a controller does not provide stay zero; an error
// only when the cgroup is not there at all.
func ReadUsage(id, cgroupParent string) (Usage, error) {
	rel := cgroupRel(cgroupParent, id)
	if cgroupMode() == cgroups.Unified {
		return readUsageV2(filepath.Join(v2Root, rel))
	}
	return readUsageV1(v1Root, rel)
}

func readUsageV2(path string) (Usage, error) {
	var u Usage
	if _, err := os.Stat(path); err != nil {
		return u, fmt.Errorf("cgroup %s: %w", path, err)
	}
	if kv, err := readKV(filepath.Join(path, "cpu.stat")); err == nil {
		u.CPU = time.Duration(kv["usage_usec"]) * time.Microsecond
	}
	if n, err := readUint(filepath.Join(path, "memory.current")); err == nil {
		u.MemoryBytes = n
	}
	if b, err := os.ReadFile(filepath.Join(path, "memory.max")); err == nil && strings.TrimSpace(string(b)) != "max" {
		u.MemoryLimit, _ = readUint(filepath.Join(path, "memory.max"))
	}
	return u, nil
}

// noLimitV1 is the smallest value v1 reports for "no memory limit"
// (PAGE_COUNTER_MAX pages, rounded: 9223372036854771712 on 4 KiB pages).
const noLimitV1 = 1 << 62

func readUsageV1(root, rel string) (Usage, error) {
	var u Usage
	found := false
	if n, err := readUint(filepath.Join(root, "cpuacct", rel, "cpuacct.usage")); err == nil {
		u.CPU, found = time.Duration(n), true
	}
	if n, err := readUint(filepath.Join(root, "memory", rel, "memory.usage_in_bytes")); err == nil {
		u.MemoryBytes, found = n, true
	}
	if n, err := readUint(filepath.Join(root, "memory", rel, "memory.limit_in_bytes")); err == nil && n < noLimitV1 {
		u.MemoryLimit = n
	}
	if !found {
		return u, errors.New("cgroup " + rel + ": no cpuacct or memory controller directory")
	}
	return u, nil
}
