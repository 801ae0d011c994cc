package dnsproxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/arkgw/arkgw/reexec"
)

// Benchmark addresses: the upstream is a Go authoritative server in the fake
// Internet; the three resolvers listen in the node namespace on the
// experiment's gateway address, each on its own port.
const (
	benchUpstream = "198.51.100.60"
	portArkgw     = 53
	portDnsmasq   = 5301
	portUnbound   = 5302
)

const benchUpstreamHelper = "dnsproxy-bench-upstream"

func init() { reexec.Register(benchUpstreamHelper, benchUpstreamMain) }

// benchUpstreamMain is the benchmark's upstream, a separate process (so it
// does not share the Go runtime with the proxy under test): an
// authoritative server answering every A query for a name under
// bench.test. with one record, TTL 0 under nc.bench.test. (never cached),
// one day under c.bench.test. It serves until killed.
func benchUpstreamMain() {
	addr := os.Args[1]
	h := dns.HandlerFunc(func(rw dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		if len(r.Question) == 1 {
			q := r.Question[0]
			ttl := uint32(0)
			if strings.HasSuffix(strings.ToLower(q.Name), ".c.bench.test.") {
				ttl = 86400
			}
			if q.Qtype == dns.TypeA {
				m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: net.IPv4(198, 51, 100, 80)}}
			}
		}
		if o := r.IsEdns0(); o != nil {
			m.SetEdns0(1232, false)
		}
		_ = rw.WriteMsg(m)
	})
	for i := 0; i < 2; i++ {
		pc, err := reusePortListenPacket(addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		go (&dns.Server{PacketConn: pc, Handler: h}).ActivateAndServe()
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go (&dns.Server{Listener: l, Handler: h, MaxTCPQueries: -1}).ActivateAndServe()
	fmt.Println("ready")
	select {}
}

// startBenchUpstream runs benchUpstreamMain in the fake Internet's namespace.
func startBenchUpstream(t *testing.T, w *expWorld) {
	t.Helper()
	cmd := reexec.Command(benchUpstreamHelper, benchUpstream+":53")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := w.inet.Start(cmd); err != nil {
		t.Fatalf("start bench upstream: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("bench upstream did not start: %q %v", line, err)
	}
}

func reusePortListenPacket(addr string) (net.PacketConn, error) {
	lc := net.ListenConfig{Control: reusePortControl}
	return lc.ListenPacket(context.Background(), "udp", addr)
}

// startDaemon starts a resolver in the node namespace and waits until it
// answers on port.
func startDaemon(t *testing.T, w *expWorld, port int, name string, args ...string) int {
	t.Helper()
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := w.node.Start(cmd); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = pid
	})
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		c, err := w.exp.Dial(ctx, "udp", fmt.Sprintf("%s:%d", expGW4, port))
		cancel()
		if err == nil {
			dc := &dns.Conn{Conn: c}
			m := new(dns.Msg)
			m.SetQuestion("up.c.bench.test.", dns.TypeA)
			c.SetDeadline(time.Now().Add(300 * time.Millisecond))
			if dc.WriteMsg(m) == nil {
				if r, err := dc.ReadMsg(); err == nil && r.Rcode == dns.RcodeSuccess {
					c.Close()
					return pid
				}
			}
			c.Close()
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s did not come up on port %d:\n%s", name, port, out.String())
	return 0
}

// cpuSeconds is the CPU time (user+system) used so far by pid, or by this
// process (the proxy under test) when pid is 0.
func cpuSeconds(t *testing.T, pid int) float64 {
	if pid == 0 {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
		return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	ut, _ := strconv.ParseFloat(f[11], 64) // fields 14 and 15 of stat
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

type perfResult struct {
	qps      float64
	p50, p99 time.Duration
	lost     int
	done     int
	cpuUS    float64 // resolver CPU microseconds per answered query
	clientUS float64 // dnsperf's CPU microseconds per answered query
}

var (
	reDone = regexp.MustCompile(`Queries completed:\s+([0-9]+)`)
	reQPS  = regexp.MustCompile(`Queries per second:\s+([0-9.]+)`)
	reLost = regexp.MustCompile(`Queries lost:\s+([0-9]+)`)
)

// dnsperf runs dnsperf from the experiment namespace against the resolver
// with process pid (0: this process, the proxy under test) and parses its
// summary and the per-query latencies it prints with -v. dnsperf writes to
// a file, not a pipe: reading a line per query through a pipe would put
// work in this process (the proxy's) that the other resolvers do not pay
// for. The resolver's CPU time is taken around dnsperf alone, before the
// output is parsed.
func dnsperf(t *testing.T, w *expWorld, pid, port int, datafile, mode string) perfResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args := []string{"-s", expGW4, "-p", strconv.Itoa(port), "-d", datafile, "-l", "5", "-c", "2", "-q", "200", "-m", mode, "-v"}
	cmd := exec.CommandContext(ctx, "dnsperf", args...)
	outf, err := os.CreateTemp(t.TempDir(), "dnsperf-*.out")
	if err != nil {
		t.Fatal(err)
	}
	defer outf.Close()
	cmd.Stdout, cmd.Stderr = outf, outf
	c0 := cpuSeconds(t, pid)
	if err := w.exp.Start(cmd); err != nil {
		t.Fatal(err)
	}
	werr := cmd.Wait()
	cpu := cpuSeconds(t, pid) - c0
	outb, err := os.ReadFile(outf.Name())
	if err != nil {
		t.Fatal(err)
	}
	s := string(outb)
	var r perfResult
	if werr != nil {
		// dnsperf gives up on a server that breaks its connections
		// (dnsmasq over pipelined TCP): that server answered nothing.
		t.Logf("dnsperf %v: %v (counted as 0 q/s)\n%s", args, werr, tail(s))
		return r
	}
	m := reQPS.FindStringSubmatch(s)
	if m == nil {
		t.Fatalf("dnsperf: no result:\n%s", tail(s))
	}
	r.qps, _ = strconv.ParseFloat(m[1], 64)
	if m := reLost.FindStringSubmatch(s); m != nil {
		r.lost, _ = strconv.Atoi(m[1])
	}
	if m := reDone.FindStringSubmatch(s); m != nil {
		r.done, _ = strconv.Atoi(m[1])
	}
	if r.done > 0 {
		r.cpuUS = cpu * 1e6 / float64(r.done)
		ps := cmd.ProcessState
		r.clientUS = (ps.UserTime() + ps.SystemTime()).Seconds() * 1e6 / float64(r.done)
	}
	var lat []float64
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 5 && f[0] == ">" {
			if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
				lat = append(lat, v)
			}
		}
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		q := func(p float64) time.Duration {
			return time.Duration(lat[int(p*float64(len(lat)-1))] * float64(time.Second))
		}
		r.p50, r.p99 = q(0.50), q(0.99)
	}
	return r
}

func tail(s string) string {
	lines := strings.Split(s, "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return strings.Join(lines, "\n")
}

func writeQueries(t *testing.T, dir, name, format string, n int) string {
	t.Helper()
	var b strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, format+" A\n", i)
	}
	p := filepath.Join(dir, name)
	writeFile(t, p, b.String())
	return p
}

func TestBenchDNS(t *testing.T) {
	if os.Getenv("ARKGW_BENCH") != "1" {
		t.Skip("benchmark: set ARKGW_BENCH=1 (make bench-dns)")
	}
	w := newExpWorld(t)
	startBenchUpstream(t, w)
	dir := t.TempDir()

	// arkgw
	p := w.startNodeProxyOn(t, portArkgw, Config{Names: []string{"bench.test."}})
	// dnsmasq: forwards bench.test. only; with no default server it answers
	// REFUSED for every other name.
	writeFile(t, filepath.Join(dir, "dnsmasq.conf"), fmt.Sprintf(`port=%d
listen-address=%s
bind-interfaces
no-resolv
no-hosts
no-poll
server=/bench.test/%s
cache-size=10000
dns-forward-max=5000
user=root
`, portDnsmasq, expGW4, benchUpstream))
	pidDnsmasq := startDaemon(t, w, portDnsmasq, "dnsmasq", "-k", "--conf-file="+filepath.Join(dir, "dnsmasq.conf"), "--pid-file=", "--log-facility=/dev/null")
	// unbound: refuses everything but bench.test., which it forwards.
	writeFile(t, filepath.Join(dir, "unbound.conf"), fmt.Sprintf(`server:
  interface: %s@%d
  port: %d
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "%s"
  pidfile: ""
  logfile: ""
  use-syslog: no
  verbosity: 0
  num-threads: 2
  so-reuseport: yes
  access-control: 10.250.0.0/30 allow
  do-not-query-localhost: no
  module-config: "iterator"
  qname-minimisation: no
  incoming-num-tcp: 100
  local-zone: "." refuse
  local-zone: "bench.test." transparent
forward-zone:
  name: "bench.test."
  forward-addr: %s
remote-control:
  control-enable: no
`, expGW4, portUnbound, portUnbound, dir, benchUpstream))
	pidUnbound := startDaemon(t, w, portUnbound, "unbound", "-d", "-c", filepath.Join(dir, "unbound.conf"))

	files := map[string]string{
		"forwarded": writeQueries(t, dir, "fwd.txt", "n%d.nc.bench.test", 20000),
		"refused":   writeQueries(t, dir, "ref.txt", "n%d.denied.test", 1000),
		"cached":    writeQueries(t, dir, "cached.txt", "n%d.c.bench.test", 1000),
	}
	type row struct{ kind, mode, file string }
	rows := []row{{"forwarded", "udp", files["forwarded"]}, {"refused", "udp", files["refused"]},
		{"cached", "udp", files["cached"]}, {"tcp", "tcp", files["forwarded"]}}
	servers := []struct {
		name string
		port int
		pid  int
	}{{"arkgw", portArkgw, 0}, {"dnsmasq", portDnsmasq, pidDnsmasq}, {"unbound", portUnbound, pidUnbound}}

	res := map[string]map[string]perfResult{}
	for _, r := range rows {
		for _, s := range servers {
			if r.kind == "cached" { // warm the cache
				dnsperfN(t, w, s.port, r.file)
			}
			pr := dnsperf(t, w, s.pid, s.port, r.file, r.mode)
			if res[r.kind] == nil {
				res[r.kind] = map[string]perfResult{}
			}
			res[r.kind][s.name] = pr
			fmt.Printf("%-9s %-4s %-8s qps=%8.0f p50=%7.3fms p99=%7.3fms lost=%d cpu=%.1fus/q\n", r.kind, r.mode, s.name, pr.qps,
				float64(pr.p50.Microseconds())/1000, float64(pr.p99.Microseconds())/1000, pr.lost, pr.cpuUS)
		}
	}
	t.Logf("arkgw stats: %+v", p.Stats())
	ratio := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	fw := res["forwarded"]
	fmt.Printf("bench-dns qps_ratio_vs_dnsmasq=%.2f p99_ratio_vs_dnsmasq=%.2f tcp_ratio_vs_unbound=%.2f\n",
		ratio(fw["arkgw"].qps, fw["dnsmasq"].qps),
		ratio(float64(fw["arkgw"].p99), float64(fw["dnsmasq"].p99)),
		ratio(res["tcp"]["arkgw"].qps, res["tcp"]["unbound"].qps))
}

// dnsperfN sends each query of datafile once (cache warm-up).
func dnsperfN(t *testing.T, w *expWorld, port int, datafile string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "dnsperf", "-s", expGW4, "-p", strconv.Itoa(port), "-d", datafile, "-n", "1", "-q", "50")
	if err := w.exp.Start(cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("dnsperf warm-up: %v", err)
	}
}
