package dnsproxy

import (
	"os"
	"os/exec"
	"regexp"
	"runtime/pprof"
	"strconv"
	"syscall"
	"testing"
)

func cpuTime() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func TestProfForward(t *testing.T) {
	if os.Getenv("PROF") == "" {
		t.Skip()
	}
	up := startUpstream(t, nil)
	p := startProxy(t, Config{Names: []string{"bench.test"}, Upstreams: []string{up.addr}})
	dir := t.TempDir()
	f := writeQueries(t, dir, "q.txt", os.Getenv("QNAME"), 20000)
	c0 := cpuTime()
	out, err := exec.Command("dnsperf", "-s", "127.0.0.1", "-p", strconv.Itoa(int(p.Addrs()[0].Port())), "-d", f, "-l", "5", "-c", "2", "-q", "200", "-m", os.Getenv("PROF")).CombinedOutput()
	c1 := cpuTime()
	m := regexp.MustCompile(`Queries completed:\s+([0-9]+)`).FindSubmatch(out)
	n, _ := strconv.Atoi(string(m[1]))
	q := regexp.MustCompile(`Queries per second:\s+([0-9.]+)`).FindSubmatch(out)
	t.Logf("%s: %d queries, qps %s, %.2f us cpu/query (proxy+upstream) err=%v", os.Getenv("PROF"), n, q[1], (c1-c0)*1e6/float64(n), err)
}

func TestProfCPU(t *testing.T) {
	if os.Getenv("PROFCPU") == "" {
		t.Skip()
	}
	pf, _ := os.Create("/tmp/cpu.prof")
	pprof.StartCPUProfile(pf)
	defer func() { pprof.StopCPUProfile(); pf.Close() }()
	TestProfForward(t)
}
