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

	"github.com/arkgw/arkgw/netlab/hostload"
	"github.com/arkgw/arkgw/reexec"
)

// Benchmark addresses: the upstream is a Go authoritative server in the fake
// Internet; the three resolvers listen in the node namespace on the
// experiment's gateway address, each on its own port.
const (
	benchUpstream  = "198.51.100.60"
	portArkgw      = 53
	portDnsmasq    = 5301
	portUnbound    = 5302
	portArkgwFresh = 5303
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

// cpuSeconds is the CPU time used so far by pid (the sum of its threads'
// /proc/PID/task/*/schedstat, nanoseconds), or by this process (the proxy
// under test, rusage) when pid is 0.
func cpuSeconds(t *testing.T, pid int) float64 {
	if pid == 0 {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
		return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
	}
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(tasks) == 0 {
		t.Fatalf("no schedstat for pid %d: %v", pid, err)
	}
	var ns int64
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // a thread that just exited
		}
		if v := strings.Fields(string(b)); len(v) > 0 {
			n, _ := strconv.ParseInt(v[0], 10, 64)
			ns += n
		}
	}
	return float64(ns) / 1e9
}

type perfResult struct {
	qps      float64
	p50, p99 time.Duration
	lost     int
	done     int
	rcodes   map[string]int // response codes dnsperf counted
	cpuUS    float64        // resolver CPU microseconds per answered query
	clientUS float64        // dnsperf's CPU microseconds per answered query
}

var (
	reDone   = regexp.MustCompile(`Queries completed:\s+([0-9]+)`)
	reQPS    = regexp.MustCompile(`Queries per second:\s+([0-9.]+)`)
	reLost   = regexp.MustCompile(`Queries lost:\s+([0-9]+)`)
	reRcodes = regexp.MustCompile(`Response codes:\s+(.*)`)
	reRcode  = regexp.MustCompile(`([A-Z]+) ([0-9]+) \(`)
)

// benchClients is dnsperf's -c: enough client sockets that every resolver
// thread (unbound runs two, arkgw two reuseport sockets) gets its own share
// of the load instead of two threads sharing one socket's queries.
const benchClients = 16

// dnsperf runs dnsperf from the experiment namespace against the resolver
// with process pid (0: this process, the proxy under test) and parses its
// summary and the per-query latencies it prints with -v. dnsperf writes to
// a file, not a pipe: reading a line per query through a pipe would put
// work in this process (the proxy's) that the other resolvers do not pay
// for. The resolver's CPU time is taken around dnsperf alone, before the
// output is parsed. rate > 0 paces dnsperf (-Q) for the latency arm.
func dnsperf(t *testing.T, w *expWorld, pid, port int, datafile, mode string, rate int) perfResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args := []string{"-s", expGW4, "-p", strconv.Itoa(port), "-d", datafile, "-l", "4", "-c", strconv.Itoa(benchClients), "-q", "200", "-m", mode, "-v"}
	if rate > 0 {
		args = append(args, "-Q", strconv.Itoa(rate))
	}
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
	r := perfResult{rcodes: map[string]int{}}
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
	if m := reRcodes.FindStringSubmatch(s); m != nil {
		for _, c := range reRcode.FindAllStringSubmatch(m[1], -1) {
			r.rcodes[c[1]], _ = strconv.Atoi(c[2])
		}
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

// checkRcodes fails the benchmark when a run got any response code but
// want: a resolver answering SERVFAIL or REFUSED fast must not count as
// fast.
func checkRcodes(t *testing.T, row, server string, r perfResult, want string) {
	t.Helper()
	for code, n := range r.rcodes {
		if code != want && n > 0 {
			t.Errorf("%s row, %s: %d answers with %s (want only %s): %v", row, server, n, code, want, r.rcodes)
		}
	}
	if r.done > 0 && r.rcodes[want] == 0 {
		t.Errorf("%s row, %s: no %s answers among %d: %v", row, server, want, r.done, r.rcodes)
	}
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

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// benchRounds is how many interleaved rounds each row gets; the order of
// the servers rotates from round to round so no server always runs first
// (or right after the same neighbour).
const benchRounds = 3

// TestBenchDNS compares the proxy with dnsmasq and unbound, each answering
// the same query files from the experiment namespace. Method: benchRounds
// rounds; in each, every row (forwarded, refused, cached over UDP, forwarded
// over TCP) is run against every server in a rotated order, 4 s of dnsperf
// -c 16 each; a row's ratio is the median over rounds of arkgw's q/s over
// the better peer's q/s in the same round (paired). Every answer's
// response code is checked. Then the latency arm: each server paced at half
// the weaker server's forwarded capacity, p99 median over rounds.
// Last line: bench-dns min_ratio_vs_best_peer=<min over rows> ...
func TestBenchDNS(t *testing.T) {
	if os.Getenv("ARKGW_BENCH") != "1" {
		t.Skip("benchmark: set ARKGW_BENCH=1 (make bench-dns)")
	}
	w := newExpWorld(t)
	startBenchUpstream(t, w)
	dir := t.TempDir()

	// arkgw, as in production: queries multiplexed over udpSockets
	// long-lived upstream sockets.
	p := w.startNodeProxyOn(t, portArkgw, Config{Names: []string{"bench.test."}})
	// arkgw with the peers' upstream-socket policy: a fresh socket (and
	// source port) per query. Not how arkgw runs; it shows how much of the
	// forwarded row the socket reuse is.
	pFresh := w.startNodeProxyOn(t, portArkgwFresh, Config{Names: []string{"bench.test."}})
	pFresh.pool.maxUses = 1
	// dnsmasq: forwards bench.test. only; with no default server it answers
	// REFUSED for every other name. Default query ports: a random port per
	// forwarded query (dnsmasq's own policy).
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
	// unbound: refuses everything but bench.test., which it forwards, from
	// a random port per query (unbound has no socket reuse for UDP).
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
  # unbound serves test. itself (a static RFC 6761 zone answering
  # NXDOMAIN); refuse it like every other name outside bench.test.
  local-zone: "test." refuse
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
	type row struct{ kind, mode, file, rcode string }
	rows := []row{{"forwarded", "udp", files["forwarded"], "NOERROR"}, {"refused", "udp", files["refused"], "REFUSED"},
		{"cached", "udp", files["cached"], "NOERROR"}, {"tcp", "tcp", files["forwarded"], "NOERROR"}}
	type server struct {
		name string
		port int
		pid  int
	}
	servers := []server{{"arkgw", portArkgw, 0}, {"dnsmasq", portDnsmasq, pidDnsmasq}, {"unbound", portUnbound, pidUnbound}}
	fresh := server{"arkgw-fresh-port", portArkgwFresh, 0}

	fmt.Printf("method: %d interleaved rounds (server order rotated each round); per row and server 4 s of dnsperf -c %d -q 200 from the experiment netns; "+
		"ratio = median over rounds of arkgw q/s / better peer's q/s in the same round; response codes checked; resolver CPU per answered query from rusage (arkgw, in this process) or /proc/PID/task/*/schedstat (peers)\n",
		benchRounds, benchClients)
	fmt.Printf("upstream sockets: arkgw reuses %d connected UDP sockets (production); dnsmasq and unbound use a random port per query; arkgw-fresh-port is arkgw with a new socket per query (forwarded row only)\n", udpSockets)

	qps := map[string]map[string][]float64{} // row -> server -> per round
	ratios := map[string][]float64{}         // row -> per round arkgw/best peer
	cpu := map[string]map[string][]float64{}
	add := func(m map[string]map[string][]float64, r, s string, v float64) {
		if m[r] == nil {
			m[r] = map[string][]float64{}
		}
		m[r][s] = append(m[r][s], v)
	}
	for round := 0; round < benchRounds; round++ {
		fmt.Printf("round %d (load average %s)\n", round+1, hostload.LoadAvg())
		for _, r := range rows {
			order := slices.Clone(servers)
			if r.kind == "forwarded" {
				order = append(order, fresh)
			}
			for i := 0; i < round%len(order); i++ { // rotate
				order = append(order[1:], order[0])
			}
			got := map[string]float64{}
			for _, s := range order {
				if r.kind == "cached" { // warm the cache
					dnsperfN(t, w, s.port, r.file)
				}
				pr := dnsperf(t, w, s.pid, s.port, r.file, r.mode, 0)
				if !(r.kind == "tcp" && s.name == "dnsmasq" && pr.done == 0) {
					checkRcodes(t, r.kind, s.name, pr, r.rcode)
				}
				got[s.name] = pr.qps
				add(qps, r.kind, s.name, pr.qps)
				add(cpu, r.kind, s.name, pr.cpuUS)
				fmt.Printf("  %-9s %-4s %-16s qps=%8.0f p50=%7.3fms p99=%7.3fms lost=%d cpu=%.1fus/q rcodes=%v\n", r.kind, r.mode, s.name, pr.qps,
					float64(pr.p50.Microseconds())/1000, float64(pr.p99.Microseconds())/1000, pr.lost, pr.cpuUS, pr.rcodes)
			}
			best := max(got["dnsmasq"], got["unbound"])
			if best > 0 {
				ratios[r.kind] = append(ratios[r.kind], got["arkgw"]/best)
				if r.kind == "forwarded" {
					ratios["forwarded-fresh"] = append(ratios["forwarded-fresh"], got[fresh.name]/best)
				}
			}
		}
	}
	t.Logf("arkgw stats: %+v", p.Stats())

	minRatio, minRow := 0.0, ""
	for _, r := range append(rows, row{kind: "forwarded-fresh"}) {
		rs := ratios[r.kind]
		spread := ""
		if len(rs) > 0 {
			spread = fmt.Sprintf("%.2f..%.2f", slices.Min(rs), slices.Max(rs))
		}
		k := r.kind
		if k == "forwarded-fresh" {
			k = "forwarded"
		}
		fmt.Printf("%-15s median q/s arkgw %.0f (fresh-port %.0f) dnsmasq %.0f unbound %.0f; arkgw/best peer median %.2f (rounds %s); CPU us/q arkgw %.1f dnsmasq %.1f unbound %.1f\n",
			r.kind, median(qps[k]["arkgw"]), median(qps[k][fresh.name]), median(qps[k]["dnsmasq"]), median(qps[k]["unbound"]), median(rs), spread,
			median(cpu[k]["arkgw"]), median(cpu[k]["dnsmasq"]), median(cpu[k]["unbound"]))
		if r.kind != "forwarded-fresh" && (minRow == "" || median(rs) < minRatio) {
			minRatio, minRow = median(rs), r.kind
		}
	}

	// Latency at a fixed rate below the weaker server's forwarded capacity.
	weaker := min(median(qps["forwarded"]["arkgw"]), median(qps["forwarded"]["dnsmasq"]), median(qps["forwarded"]["unbound"]))
	rate := int(weaker / 2)
	p99 := map[string][]float64{}
	for round := 0; round < benchRounds; round++ {
		order := slices.Clone(servers)
		for i := 0; i < round%len(order); i++ {
			order = append(order[1:], order[0])
		}
		for _, s := range order {
			pr := dnsperf(t, w, s.pid, s.port, files["forwarded"], "udp", rate)
			checkRcodes(t, "paced", s.name, pr, "NOERROR")
			p99[s.name] = append(p99[s.name], float64(pr.p99.Microseconds())/1000)
			fmt.Printf("  paced %d q/s %-8s qps=%8.0f p50=%7.3fms p99=%7.3fms lost=%d\n", rate, s.name, pr.qps,
				float64(pr.p50.Microseconds())/1000, float64(pr.p99.Microseconds())/1000, pr.lost)
		}
	}
	fmt.Printf("paced at %d q/s (half the weaker server's forwarded capacity), median p99 over %d rounds: arkgw %.3f ms (%.3f..%.3f), dnsmasq %.3f ms (%.3f..%.3f), unbound %.3f ms (%.3f..%.3f); load average now %s\n",
		rate, benchRounds, median(p99["arkgw"]), slices.Min(p99["arkgw"]), slices.Max(p99["arkgw"]),
		median(p99["dnsmasq"]), slices.Min(p99["dnsmasq"]), slices.Max(p99["dnsmasq"]),
		median(p99["unbound"]), slices.Min(p99["unbound"]), slices.Max(p99["unbound"]), hostload.LoadAvg())
	ratio := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	fmt.Printf("bench-dns min_ratio_vs_best_peer=%.2f min_row=%s forwarded=%.2f refused=%.2f cached=%.2f tcp=%.2f forwarded_fresh_port=%.2f p99_ratio_vs_dnsmasq=%.2f p99_ratio_vs_unbound=%.2f\n",
		minRatio, minRow, median(ratios["forwarded"]), median(ratios["refused"]), median(ratios["cached"]), median(ratios["tcp"]), median(ratios["forwarded-fresh"]),
		ratio(median(p99["arkgw"]), median(p99["dnsmasq"])), ratio(median(p99["arkgw"]), median(p99["unbound"])))
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
