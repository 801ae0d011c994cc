package pcapstream

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/arkgw/arkgw/netlab/hostload"
	"github.com/arkgw/arkgw/reexec"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// benchServerHelper runs the capture server as its own process, as the
// daemon does, so that its CPU time is read from the kernel (rusage after
// Wait) instead of estimated inside the test process. Arguments: iface,
// socket path. It prints "listening <CPU microseconds so far>" once its
// socket listens, before any reader connects, serves until SIGTERM, then
// prints its Stats as JSON. The CPU it used until it listened is its
// process start-up (this test binary's Go initialisation): the daemon pays
// that once when it starts, not per capture or per experiment. Everything
// after it is counted: the reader's accept and handshake, the filter's
// compilation, opening and closing the ring, the capture, and the server's
// own shutdown.
const benchServerHelper = "pcapstream-bench-server"

func init() {
	reexec.Register(benchServerHelper, func() {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
		defer stop()
		s, err := New(Config{Experiment: "bench1", Iface: os.Args[1], SocketPath: os.Args[2],
			SocketUID: readerUID, SocketGID: readerUID})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		go func() {
			// Listening, before any reader: from here on the process is
			// what the daemon is for an experiment that runs.
			<-s.Ready()
			var ru syscall.Rusage
			syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
			fmt.Println("listening", ru.Utime.Nano()/1000+ru.Stime.Nano()/1000)
		}()
		if err := <-done; err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		st := s.Stats()
		st.Readers = nil
		json.NewEncoder(os.Stdout).Encode(st)
	})
}

// TestBenchPcap: one pcap reader (cmd/pcap, full packets, to a file on
// disk) through the production backend (the TPACKET_V3 ring, as the runner
// configures it), and in the same run on the same veth `tcpdump -w` to a
// file on disk, both with 4 MiB of capture buffer. The capture server runs
// as its own process; its CPU, the pcap client's and tcpdump's are each
// read with rusage after Wait (microseconds). The server process stands
// for the running daemon, so its CPU until its socket listens (this test
// binary's Go start-up, which the daemon pays once at boot) is taken out
// of cpu_ratio_vs_tcpdump and reported on its own; the client's and
// tcpdump's process start-ups are counted, as a capture pays them. Arms:
// iperf3 UDP at 100 Mbit/s with full-size datagrams, and a stress arm of
// 64-byte datagrams as fast as the sender goes; pcapRuns runs of each,
// medians.
// Last line: bench-pcap capture_ratio=<share of the flow's datagrams in
// the reader's file> cpu_ratio_vs_tcpdump=<(server from listening +
// client) CPU per packet / tcpdump's>, the same with the server's process
// start-up, the CPU per packet of each (ns) and the server's start-up
// (ms), all of the 100 Mbit/s arm, then the stress arm's.
func TestBenchPcap(t *testing.T) {
	if os.Getenv("ARKGW_BENCH") != "1" {
		t.Skip("benchmark: set ARKGW_BENCH=1")
	}
	l := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	iperfSrv := l.inet.Command(ctx, "iperf3", "-s", "-B", benchServer, "-p", strconv.Itoa(benchPort))
	if err := iperfSrv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { iperfSrv.Process.Kill(); iperfSrv.Wait() }()
	runIperf(t, ctx, l, 1, benchRate, 0) // until the server listens

	arms := []struct {
		name    string
		rate    string
		payload int
		seconds int
	}{{"100M", benchRate, 0, 6}, {"small", "0", 64, 4}}
	fmt.Printf("method: per arm %d runs (arms alternating), a fresh capture server process, pcap client and tcpdump -B 4096 -w FILE each run; CPU = rusage of each process after Wait, start to exit; ratios per run, medians; load average at start %s\n",
		pcapRuns, hostload.LoadAvg())
	res := map[string][]pcapRun{}
	for run := 0; run < pcapRuns; run++ {
		for _, a := range arms {
			r := benchRun(t, ctx, l, a.rate, a.payload, a.seconds)
			res[a.name] = append(res[a.name], r)
			fmt.Printf("run %d %-5s sent %d datagrams (%.1f Mbit/s, %.0f pps); arkgw file %d (%.4f), kernel drops %d, reader drops %d; tcpdump file %d (%.4f), dropped by kernel %d; "+
				"CPU server %v (of which %v process start-up) + client %v; per packet without the server's start-up %.3f us (server %.0f ns, client %.0f ns) vs tcpdump %v = %.3f us/packet (ratio %.2f; %.2f with the server's start-up); load average %s\n",
				run+1, a.name, r.sent, r.mbps, float64(r.sent)/float64(a.seconds), r.got, r.ratio(), r.kernelDrops, r.readerDrops, r.tdGot, r.tdRatio(), r.tdDropped,
				r.srvCPU.Round(time.Microsecond), r.srvStart.Round(time.Microsecond), r.cliCPU.Round(time.Microsecond), r.perPkt(), r.srvNs(), r.cliNs(),
				r.tdCPU.Round(time.Microsecond), r.tdPerPkt(), r.cpuRatio(), r.cpuRatioAll(), hostload.LoadAvg())
		}
	}
	med := func(name string, f func(pcapRun) float64) (m float64, spread string) {
		var v []float64
		for _, r := range res[name] {
			v = append(v, f(r))
		}
		slices.Sort(v)
		return v[len(v)/2], fmt.Sprintf("%.4g..%.4g", v[0], v[len(v)-1])
	}
	for _, a := range arms {
		cr, crs := med(a.name, pcapRun.ratio)
		tr, trs := med(a.name, pcapRun.tdRatio)
		cpu, cpus := med(a.name, pcapRun.cpuRatioAll)
		cpuRun, cpuRuns := med(a.name, pcapRun.cpuRatio)
		fmt.Printf("%-5s medians: capture ratio arkgw %.4f (%s) tcpdump %.4f (%s); CPU per packet (server+client)/tcpdump %.2f (%s), %.2f (%s) with the server's process start-up\n",
			a.name, cr, crs, tr, trs, cpuRun, cpuRuns, cpu, cpus)
	}
	cr, _ := med("100M", pcapRun.ratio)
	cpu, _ := med("100M", pcapRun.cpuRatioAll)
	cpuRun, _ := med("100M", pcapRun.cpuRatio)
	srvNs, _ := med("100M", pcapRun.srvNs)
	startMs, _ := med("100M", func(r pcapRun) float64 { return float64(r.srvStart.Microseconds()) / 1e3 })
	cliNs, _ := med("100M", pcapRun.cliNs)
	tdNs, _ := med("100M", pcapRun.tdNs)
	scr, _ := med("small", pcapRun.ratio)
	std, _ := med("small", pcapRun.tdRatio)
	scpu, _ := med("small", pcapRun.cpuRatioAll)
	scpuRun, _ := med("small", pcapRun.cpuRatio)
	sSrvNs, _ := med("small", pcapRun.srvNs)
	sCliNs, _ := med("small", pcapRun.cliNs)
	sTdNs, _ := med("small", pcapRun.tdNs)
	fmt.Printf("bench-pcap capture_ratio=%.4f cpu_ratio_vs_tcpdump=%.2f cpu_ratio_with_server_process_start=%.2f server_ns_per_pkt=%.0f server_process_start_ms=%.1f client_ns_per_pkt=%.0f tcpdump_ns_per_pkt=%.0f "+
		"small_capture_ratio=%.4f small_tcpdump_capture_ratio=%.4f small_cpu_ratio_vs_tcpdump=%.2f small_cpu_ratio_with_server_process_start=%.2f small_server_ns_per_pkt=%.0f small_client_ns_per_pkt=%.0f small_tcpdump_ns_per_pkt=%.0f backend=ring-per-reader\n",
		cr, cpuRun, cpu, srvNs, startMs, cliNs, tdNs, scr, std, scpuRun, scpu, sSrvNs, sCliNs, sTdNs)
}

const (
	benchRate   = "100M"
	benchPort   = 5201
	benchServer = "198.51.100.5"
	pcapRuns    = 3
)

type pcapRun struct {
	sent, got, tdGot         int64
	mbps                     float64
	captured, tdCaptured     int64
	kernelDrops, readerDrops uint64
	tdDropped                int64
	srvCPU, cliCPU, tdCPU    time.Duration
	srvStart                 time.Duration // the server process's CPU before its capture opened
}

func (r pcapRun) ratio() float64   { return float64(r.got) / float64(max(r.sent, 1)) }
func (r pcapRun) tdRatio() float64 { return float64(r.tdGot) / float64(max(r.sent, 1)) }

// Per packet, nanoseconds: the server from its capture opening on, the
// client and tcpdump from start to exit.
func (r pcapRun) srvNs() float64 {
	return float64((r.srvCPU - r.srvStart).Nanoseconds()) / float64(max(r.captured, 1))
}
func (r pcapRun) cliNs() float64 {
	return float64(r.cliCPU.Nanoseconds()) / float64(max(r.captured, 1))
}
func (r pcapRun) tdNs() float64 {
	return float64(r.tdCPU.Nanoseconds()) / float64(max(r.tdCaptured, 1))
}
func (r pcapRun) perPkt() float64 {
	return (r.srvNs() + r.cliNs()) / 1e3
}
func (r pcapRun) tdPerPkt() float64 { return r.tdNs() / 1e3 }
func (r pcapRun) cpuRatio() float64 {
	if r.tdPerPkt() == 0 {
		return 0
	}
	return r.perPkt() / r.tdPerPkt()
}

// cpuRatioAll counts the server's process start-up too.
func (r pcapRun) cpuRatioAll() float64 {
	if r.tdPerPkt() == 0 {
		return 0
	}
	return float64((r.srvCPU + r.cliCPU).Nanoseconds()) / 1e3 / float64(max(r.captured, 1)) / r.tdPerPkt()
}

func rusageOf(ps *os.ProcessState) time.Duration {
	if ps == nil {
		return 0
	}
	return ps.UserTime() + ps.SystemTime()
}

// benchRun is one run: server process, client, tcpdump, one iperf3 flow.
func benchRun(t *testing.T, ctx context.Context, l *lab, rate string, payload, seconds int) pcapRun {
	// A directory the unprivileged reader may traverse to the socket.
	dir, err := os.MkdirTemp("", "pcapbench-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o711)
	sock := filepath.Join(dir, "pcap.sock")
	srv := reexec.Command(benchServerHelper, exp1If, sock)
	srvOut, err := srv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var srvErr lockedBuffer
	srv.Stderr = &srvErr
	if err := l.node.Start(srv); err != nil {
		t.Fatal(err)
	}
	srvDone := false
	defer func() {
		if !srvDone {
			srv.Process.Kill()
			srv.Wait()
		}
	}()
	waitFor(t, "pcap socket", 10*time.Second, func() bool {
		fi, err := os.Stat(sock)
		return err == nil && fi.Mode().Type() == os.ModeSocket
	})
	lines := bufio.NewReader(srvOut)
	var startUS int64
	if line, err := lines.ReadString('\n'); err != nil || !strings.HasPrefix(line, "listening ") {
		t.Fatalf("capture server: %q %v; %s", line, err, srvErr.String())
	} else if startUS, err = strconv.ParseInt(strings.TrimSpace(strings.TrimPrefix(line, "listening ")), 10, 64); err != nil {
		t.Fatalf("capture server: %q: %v", line, err)
	}
	reader := startClient(t, sock)

	tdFile := filepath.Join(dir, "tcpdump.pcap")
	var tdErr lockedBuffer
	// Forked straight into the node's namespace (Host.Start), not through
	// Host.Command's re-executed test binary, whose Go start-up would be
	// counted in tcpdump's rusage.
	td := exec.CommandContext(ctx, "tcpdump", "-n", "-i", exp1If, "-s", "0", "-B", "4096", "-Z", "root", "-w", tdFile)
	td.Stderr = &tdErr
	if err := l.node.Start(td); err != nil {
		t.Fatal(err)
	}
	tdDone := false
	defer func() {
		if !tdDone {
			td.Process.Kill()
			td.Wait()
		}
	}()
	waitFor(t, "tcpdump listening", 10*time.Second, func() bool { return strings.Contains(tdErr.String(), "listening on") })

	res := runIperf(t, ctx, l, seconds, rate, payload)

	// Let the capture and the reader drain: the reader's file stops growing.
	var last int64 = -1
	waitFor(t, "reader drained", 60*time.Second, func() bool {
		time.Sleep(500 * time.Millisecond)
		fi, err := os.Stat(reader.out)
		if err != nil {
			return false
		}
		done := fi.Size() == last
		last = fi.Size()
		return done
	})

	td.Process.Signal(syscall.SIGINT)
	td.Wait()
	tdDone = true
	if err := reader.stop(t); err != nil {
		t.Fatalf("pcap: %v; %s", err, reader.stderr)
	}
	srv.Process.Signal(syscall.SIGTERM)
	var st Stats
	if err := json.NewDecoder(lines).Decode(&st); err != nil {
		t.Fatalf("capture server stats: %v; %s", err, srvErr.String())
	}
	if err := srv.Wait(); err != nil {
		t.Fatalf("capture server: %v; %s", err, srvErr.String())
	}
	srvDone = true

	r := pcapRun{
		sent: res.End.Sum.Packets, mbps: res.End.Sum.BitsPerSec / 1e6,
		got:      countUDP(t, reader.out, exp1Addr, benchServer, benchPort, payload),
		tdGot:    countUDP(t, tdFile, exp1Addr, benchServer, benchPort, payload),
		captured: int64(st.Captured), kernelDrops: st.KernelDropped, readerDrops: st.Dropped,
		srvCPU: rusageOf(srv.ProcessState), srvStart: time.Duration(startUS) * time.Microsecond,
		cliCPU: rusageOf(reader.cmd.ProcessState), tdCPU: rusageOf(td.ProcessState),
	}
	r.tdCaptured, r.tdDropped = parseTcpdumpCounts(tdErr.String())
	os.Remove(reader.out)
	os.Remove(tdFile)
	return r
}

type iperfResult struct {
	End struct {
		Sum struct {
			Packets     int64   `json:"packets"`
			LostPackets int64   `json:"lost_packets"`
			BitsPerSec  float64 `json:"bits_per_second"`
		} `json:"sum"`
	} `json:"end"`
}

// runIperf runs an iperf3 UDP client in exp1 against inet's server at rate
// ("0": as fast as it goes) with payload-byte datagrams (0: iperf3's
// default, the path MTU).
func runIperf(t *testing.T, ctx context.Context, l *lab, seconds int, rate string, payload int) iperfResult {
	t.Helper()
	var out []byte
	var res iperfResult
	for try := 0; ; try++ { // until the iperf3 server listens
		var err error
		args := []string{"-c", benchServer, "-p", strconv.Itoa(benchPort), "-u", "-b", rate, "-t", strconv.Itoa(seconds), "-J"}
		if payload > 0 {
			args = append(args, "-l", strconv.Itoa(payload))
		}
		out, err = l.exp1.Command(ctx, "iperf3", args...).Output()
		res = iperfResult{}
		jerr := json.Unmarshal(out, &res)
		if err == nil && jerr == nil && res.End.Sum.Packets > 0 {
			break
		}
		if try == 50 || !strings.Contains(string(out), "unable to connect") {
			t.Fatalf("iperf3 client: %v %v\n%s", err, jerr, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return res
}

// parseTcpdumpCounts reads "N packets captured" and "M packets dropped by
// kernel" from tcpdump's exit summary.
func parseTcpdumpCounts(s string) (captured, dropped int64) {
	for _, line := range strings.Split(s, "\n") {
		var n int64
		if _, err := fmt.Sscanf(line, "%d packets captured", &n); err == nil {
			captured = n
		}
		if _, err := fmt.Sscanf(line, "%d packets dropped by kernel", &n); err == nil {
			dropped = n
		}
	}
	return
}

// countUDP counts the datagrams of the iperf3 flow in a capture file: at
// least payload bytes (64 when 0) from src to dst:port.
func countUDP(t *testing.T, path, src, dst string, port, payload int) int64 {
	if payload == 0 {
		payload = 64
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var (
		eth layers.Ethernet
		ip  layers.IPv4
		udp layers.UDP
		n   int64
	)
	parser := gopacket.NewDecodingLayerParser(layers.LayerTypeEthernet, &eth, &ip, &udp)
	parser.IgnoreUnsupported = true
	decoded := []gopacket.LayerType{}
	for {
		data, _, err := r.ZeroCopyReadPacketData()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if parser.DecodeLayers(data, &decoded) != nil {
			continue
		}
		if len(decoded) == 3 && ip.SrcIP.String() == src && ip.DstIP.String() == dst && int(udp.DstPort) == port && len(udp.Payload) >= payload {
			n++
		}
	}
	return n
}

// lockedBuffer collects a process's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
