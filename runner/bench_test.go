package runner

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/arkgw/arkgw/netlab"
	"github.com/arkgw/arkgw/store"
)

const benchManifest = `
title = "start latency"
container = "ark-2026.1"
command = %s
max_hours = 1
cpu = "minimal"
max_ram_mb = 64
max_mbps = 1
ip = "ipv4"
icmp = ["echo-request"]
[[experimenters]]
name = "Bench"
email = "bench@example.edu"
`

// TestBenchStart (make bench-start): time from `arkgw submit` (the API
// call) to the first instruction of the experiment's command — network,
// rules, shaping, DNS proxy, pcap service and sandbox all in place — as the
// median over 20 experiments, alone and with 100 experiments running; and
// the daemon's resident memory then. The daemon is the real binary (with
// arkgw-init beside it) running as its own process in the netlab node.
func TestBenchStart(t *testing.T) {
	if os.Getenv("ARKGW_BENCH") == "" {
		t.Skip("benchmark: run with make bench-start")
	}
	if os.Geteuid() != 0 {
		t.Fatal("bench-start needs root")
	}
	w := netlab.NewWorld(t)
	p, nd := startProcNode(t, w, "bench", 5000+os.Getpid()%1000)

	// The command's first instruction prints the clock (date's main runs
	// microseconds after execve).
	measure := func(n int) []time.Duration {
		var out []time.Duration
		for i := 0; i < n; i++ {
			t0 := time.Now()
			id := nd.submit(t, fmt.Sprintf(benchManifest, `["/bin/date", "+%s%N"]`))
			x := nd.waitState(t, id, store.Completed, 60*time.Second)
			if x.Reason != store.ReasonFinished {
				t.Fatalf("%s: %s %s", id, x.Reason, x.Detail)
			}
			logs, _ := nd.client.Logs(id, false)
			ns, err := strconv.ParseInt(strings.TrimSpace(string(logs)), 10, 64)
			if err != nil {
				t.Fatalf("%s printed %q", id, logs)
			}
			out = append(out, time.Unix(0, ns).Sub(t0))
		}
		sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
		return out
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

	alone := measure(20)
	t.Logf("alone: median %.1f ms, min %.1f, max %.1f", ms(alone[len(alone)/2]), ms(alone[0]), ms(alone[len(alone)-1]))

	for i := 0; i < 100; i++ {
		id := nd.submit(t, fmt.Sprintf(benchManifest, `["/bin/sleep", "3600"]`))
		nd.waitState(t, id, store.Running, 60*time.Second)
	}
	loaded := measure(20)
	t.Logf("with 100 running: median %.1f ms, min %.1f, max %.1f", ms(loaded[len(loaded)/2]), ms(loaded[0]), ms(loaded[len(loaded)-1]))
	pid := p.cmd.Process.Pid
	rss := statusKB(t, pid, "VmRSS:") / 1024
	var holders int
	var holderPSS float64
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range procs {
		cmdline, _ := os.ReadFile(filepath.Join(d, "cmdline"))
		if !strings.HasPrefix(string(cmdline), "arkgw-nsholder\x00") {
			continue
		}
		child, _ := strconv.Atoi(filepath.Base(d))
		if statusKB(t, child, "PPid:") != float64(pid) {
			continue
		}
		holders++
		holderPSS += rollupKB(filepath.Join(d, "smaps_rollup"), "Pss:") / 1024
	}
	t.Logf("resident memory with 100 running: daemon %.1f MB; its %d namespace holders (arkgw-init) %.1f MB PSS together", rss, holders, holderPSS)
	fmt.Printf("bench-start start_ms=%.1f start100_ms=%.1f rss100_mb=%.1f\n", ms(alone[len(alone)/2]), ms(loaded[len(loaded)/2]), rss)
}

// statusKB is a numeric field of /proc/<pid>/status (kB for sizes).
func statusKB(t *testing.T, pid int, field string) float64 {
	t.Helper()
	v := rollupKB(fmt.Sprintf("/proc/%d/status", pid), field)
	if v < 0 {
		t.Fatalf("/proc/%d/status has no %s", pid, field)
	}
	return v
}

// rollupKB reads "field value" from a /proc file, -1 if absent.
func rollupKB(path, field string) float64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == field {
			v, _ := strconv.ParseFloat(f[1], 64)
			return v
		}
	}
	return -1
}
