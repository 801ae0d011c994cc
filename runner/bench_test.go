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
	// Everything the daemon keeps per experiment is a descendant of it:
	// the namespace holders (arkgw-init as arkgw-nsholder), the sandbox
	// inits and the experiments' own commands. PSS, so that pages shared
	// between them (one arkgw-init binary) count once.
	byName := map[string]float64{}
	count := map[string]int{}
	for _, d := range descendants(pid) {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", d))
		name, _, _ := strings.Cut(string(cmdline), "\x00")
		name = filepath.Base(name)
		if v := rollupKB(fmt.Sprintf("/proc/%d/smaps_rollup", d), "Pss:"); v > 0 {
			byName[name] += v / 1024
			count[name]++
		}
	}
	var holderPSS, initPSS, cmdPSS float64
	var holders int
	for name, v := range byName {
		switch name {
		case "arkgw-nsholder":
			holderPSS, holders = v, count[name]
		case "sleep": // the experiments' command, not the daemon's
			cmdPSS = v
		default:
			initPSS += v
		}
		t.Logf("descendants named %q: %d, %.1f MB PSS", name, count[name], v)
	}
	total := rss + holderPSS + initPSS
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("method: start_ms/start100_ms are medians of 20 submits each (submit API call to the clock /bin/date prints); spread alone %.1f..%.1f ms, with 100 running %.1f..%.1f ms\n", ms(alone[0]), ms(alone[len(alone)-1]), ms(loaded[0]), ms(loaded[len(loaded)-1]))
	fmt.Printf("method: memory with 100 experiments running: daemon VmRSS %.1f MB + %d namespace holders %.1f MB PSS + the other arkgw processes it keeps (sandbox inits) %.1f MB PSS = rss100_total_mb %.1f (goal < 100 MB: %s; daemon + holders alone, rss100_holders_mb: %.1f); the experiments' own commands (/bin/sleep) %.1f MB PSS are not counted; loadavg %s\n",
		rss, holders, holderPSS, initPSS, total, map[bool]string{true: "met", false: "MISSED"}[total < 100], rss+holderPSS, cmdPSS, strings.TrimSpace(string(load)))
	fmt.Printf("bench-start start_ms=%.1f start100_ms=%.1f rss100_mb=%.1f rss100_holders_mb=%.1f rss100_total_mb=%.1f\n", ms(alone[len(alone)/2]), ms(loaded[len(loaded)/2]), rss, rss+holderPSS, total)
}

// descendants are the pids below pid in the process tree.
func descendants(pid int) []int {
	children := map[int][]int{}
	procs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// "pid (comm) state ppid ...": comm may hold spaces and parens.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		me, _ := strconv.Atoi(strings.Fields(s)[0])
		pp, _ := strconv.Atoi(f[1])
		children[pp] = append(children[pp], me)
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
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
