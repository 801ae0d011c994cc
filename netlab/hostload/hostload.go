// Package hostload reads how busy the machine is while a benchmark runs:
// the load average and the share of CPU time the hypervisor stole. On a
// shared VM the figures swing with both, so every bench prints them beside
// its results.
package hostload

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// LoadAvg is the 1, 5 and 15 minute load averages of /proc/loadavg, or "?".
func LoadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// Load1 is the 1 minute load average of /proc/loadavg.
func Load1() string {
	b, _ := os.ReadFile("/proc/loadavg")
	l, _, _ := strings.Cut(string(b), " ")
	return l
}

// CPUTimes reads the aggregate cpu line of /proc/stat: all time and the
// stolen part (clock ticks since boot).
func CPUTimes() (total, steal uint64) {
	b, _ := os.ReadFile("/proc/stat")
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	for i := 1; i < len(f) && i <= 8; i++ {
		v, _ := strconv.ParseUint(f[i], 10, 64)
		total += v
		if i == 8 {
			steal = v
		}
	}
	return total, steal
}

// Steal meters the share of CPU time stolen between calls of Pct.
type Steal struct{ total, steal uint64 }

// Pct is the percentage of CPU time stolen since the previous call (the
// first call: since boot); ok is false when no time passed.
func (m *Steal) Pct() (pct float64, ok bool) {
	t, s := CPUTimes()
	dt, ds := t-m.total, s-m.steal
	m.total, m.steal = t, s
	if dt == 0 {
		return 0, false
	}
	return 100 * float64(ds) / float64(dt), true
}

// LoadSteal is "load L steal S%": the 1 minute load average and m.Pct, or
// "load L" when no time passed since m's last call.
func (m *Steal) LoadSteal() string {
	l := Load1()
	pct, ok := m.Pct()
	if !ok {
		return "load " + l
	}
	return fmt.Sprintf("load %s steal %.1f%%", l, pct)
}
