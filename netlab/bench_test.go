package netlab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func median(d []time.Duration) time.Duration {
	slices.Sort(d)
	return d[len(d)/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// TestBenchNetlab measures what every privileged test pays: building and
// tearing down the standard world, and starting a program in a namespace
// three ways (Host.Run's locked-thread fork, Host.Command's re-exec
// trampoline, and `ip netns exec` for reference).
func TestBenchNetlab(t *testing.T) {
	if os.Getenv("ARKGW_BENCH") != "1" {
		t.Skip("benchmark: set ARKGW_BENCH=1")
	}
	requireRoot(t)
	const worlds, runs = 10, 30
	var build []time.Duration
	for i := 0; i < worlds; i++ {
		var d time.Duration
		t.Run("world", func(t *testing.T) {
			start := time.Now()
			t.Cleanup(func() { d = time.Since(start) })
			NewWorld(t)
		})
		build = append(build, d)
	}
	w := NewWorld(t)
	ctx := context.Background()
	var run, cmd, ipexec []time.Duration
	name := filepath.Base(w.Node.Path())
	for i := 0; i < runs; i++ {
		s := time.Now()
		if _, err := w.Node.RunE(ctx, "true"); err != nil {
			t.Fatal(err)
		}
		run = append(run, time.Since(s))
		s = time.Now()
		if err := w.Node.Command(ctx, "true").Run(); err != nil {
			t.Fatal(err)
		}
		cmd = append(cmd, time.Since(s))
		s = time.Now()
		if out, err := exec.Command("ip", "netns", "exec", name, "true").CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		ipexec = append(ipexec, time.Since(s))
	}
	fmt.Printf("bench-netlab world_build_teardown_ms=%.1f run_ms=%.2f command_ms=%.2f ip_netns_exec_ms=%.2f\n",
		ms(median(build)), ms(median(run)), ms(median(cmd)), ms(median(ipexec)))
}
