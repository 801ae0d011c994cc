package pcapstream

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// TestBenchPcap: iperf3 UDP at 100 Mbit/s from an experiment through its
// veth with one pcap reader (cmd/pcap, full packets, to a file) and, in the
// same run on the same veth, `tcpdump -w /dev/null`. Reports the share of
// iperf3's datagrams in the reader's file and the daemon's CPU time per
// captured packet relative to tcpdump's.
func TestBenchPcap(t *testing.T) {
	if os.Getenv("ARKGW_BENCH") != "1" {
		t.Skip("benchmark: set ARKGW_BENCH=1")
	}
	l := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	iperfSrv := l.inet.Command(ctx, "iperf3", "-s", "-B", benchServer, "-p", strconv.Itoa(benchPort))
	if err := iperfSrv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { iperfSrv.Process.Kill(); iperfSrv.Wait() }()

	// The test process's own CPU while the flow runs with no reader (no
	// capture open): netlab's in-process services, the Go runtime, and
	// kernel work that happens to be charged to this process.
	idleBefore := rusageSelf(t)
	idleStart := time.Now()
	runIperf(t, ctx, l, 3)
	idleRate := (rusageSelf(t) - idleBefore).Seconds() / time.Since(idleStart).Seconds()

	ringRatio, ringCPU := benchOne(t, ctx, l, true, idleRate)
	ratio, cpu := benchOne(t, ctx, l, false, idleRate)
	fmt.Printf("with Config.Ring (TPACKET_V3): capture_ratio=%.4f cpu_ratio_vs_tcpdump=%.2f\n", ringRatio, ringCPU)
	fmt.Printf("bench-pcap capture_ratio=%.4f cpu_ratio_vs_tcpdump=%.2f\n", ratio, cpu)
}

const (
	benchRate    = "100M"
	benchSeconds = 8
	benchPort    = 5201
	benchServer  = "198.51.100.5"
)

// benchOne measures one backend: returns the reader's share of the flow's
// datagrams and the daemon's CPU per packet relative to tcpdump's.
func benchOne(t *testing.T, ctx context.Context, l *lab, ring bool, idleRate float64) (ratio, cpuRatio float64) {
	name := "pcapgo"
	if ring {
		name = "ring"
	}
	srv, sock := startServer(t, l, "pc1", exp1If, func(c *Config) { c.Ring = ring; c.Logger = nil })
	reader := startClient(t, sock)
	waitFor(t, "reader", 10*time.Second, func() bool { return srv.Capturing() })

	var tdErr lockedBuffer
	td := l.node.Command(ctx, "tcpdump", "-n", "-i", exp1If, "-s", "0", "-w", "/dev/null")
	td.Stderr = &tdErr
	if err := td.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { td.Process.Kill(); td.Wait() }()
	waitFor(t, "tcpdump listening", 10*time.Second, func() bool { return strings.Contains(tdErr.String(), "listening on") })

	capturedBefore := srv.Stats().Captured
	selfBefore := rusageSelf(t)
	runStart := time.Now()
	tdBefore := procCPU(t, td.Process.Pid)

	res := runIperf(t, ctx, l, benchSeconds)
	sent := res.End.Sum.Packets

	// Let the capture and the reader drain, then read the CPU counters.
	last := uint64(0)
	waitFor(t, "reader drained", 30*time.Second, func() bool {
		time.Sleep(300 * time.Millisecond)
		d := srv.Stats().Delivered
		done := d == last
		last = d
		return done
	})
	selfCPU := rusageSelf(t) - selfBefore
	background := time.Duration(idleRate * float64(time.Since(runStart)))
	tdCPU := procCPU(t, td.Process.Pid) - tdBefore
	captured := srv.Stats().Captured - capturedBefore

	td.Process.Signal(syscall.SIGINT)
	td.Wait()
	tdCaptured := parseTcpdumpCount(tdErr.String())

	if err := reader.stop(t); err != nil {
		t.Fatalf("pcap: %v; %s", err, reader.stderr)
	}
	readerCPU := reader.cmd.ProcessState.UserTime() + reader.cmd.ProcessState.SystemTime()
	got := countUDP(t, reader.out, exp1Addr, benchServer, benchPort)
	os.Remove(reader.out)
	st := srv.Stats()

	ratio = float64(got) / float64(sent)
	perPkt := (selfCPU - background).Seconds() / float64(captured)
	tdPerPkt := tdCPU.Seconds() / float64(tdCaptured)
	fmt.Printf("[%s] iperf3 UDP %s for %ds: %d datagrams sent (%.1f Mbit/s, %d lost at the server)\n", name, benchRate, benchSeconds, sent, res.End.Sum.BitsPerSec/1e6, res.End.Sum.LostPackets)
	fmt.Printf("[%s] pcapstream: %d packets captured on %s, %d datagrams of the flow in the reader's file, kernel drops %d, reader drops %d\n", name, captured, exp1If, got, st.KernelDropped, st.Dropped)
	fmt.Printf("[%s] daemon side CPU %v, minus %v background (same flow, no reader) = %.2f us/packet (%.2f raw); cmd/pcap client CPU %v\n",
		name, selfCPU, background, perPkt*1e6, selfCPU.Seconds()/float64(captured)*1e6, readerCPU)
	fmt.Printf("[%s] tcpdump -w /dev/null: %d packets, CPU %v = %.2f us/packet (%s)\n", name, tdCaptured, tdCPU, tdPerPkt*1e6, strings.Join(strings.Fields(tdErr.String()), " "))
	if tdPerPkt > 0 {
		cpuRatio = perPkt / tdPerPkt
	}
	return ratio, cpuRatio
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

// runIperf runs an iperf3 UDP client in exp1 against inet's server.
func runIperf(t *testing.T, ctx context.Context, l *lab, seconds int) iperfResult {
	t.Helper()
	var out []byte
	var res iperfResult
	for try := 0; ; try++ { // until the iperf3 server listens
		var err error
		out, err = l.exp1.Command(ctx, "iperf3", "-c", benchServer, "-p", strconv.Itoa(benchPort), "-u", "-b", benchRate, "-t", strconv.Itoa(seconds), "-J").Output()
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

func rusageSelf(t *testing.T) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU reads utime+stime of pid from /proc (clock ticks of 10 ms).
func procCPU(t *testing.T, pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * (time.Second / 100)
}

func parseTcpdumpCount(s string) int64 {
	for _, line := range strings.Split(s, "\n") {
		var n int64
		if _, err := fmt.Sscanf(line, "%d packets captured", &n); err == nil {
			return n
		}
	}
	return 0
}

func countUDP(t *testing.T, path, src, dst string, port int) int64 {
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
		if len(decoded) == 3 && ip.SrcIP.String() == src && ip.DstIP.String() == dst && int(udp.DstPort) == port && len(udp.Payload) >= 64 {
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
