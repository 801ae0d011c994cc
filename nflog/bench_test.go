package nflog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/netlab"
	gonflog "github.com/florianl/go-nflog/v2"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// pacedFlood offers rate packets/s of forbidden UDP from the exp netns for
// dur, from `senders` sockets, in a separate process (the test binary
// re-run as TestFloodHelper inside the netns) so that the consumers' CPU
// use can be measured apart from the sender's. It returns the rate
// achieved.
func pacedFlood(t *testing.T, h *netlab.Host, rate int, dur time.Duration, senders int) float64 {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), dur+30*time.Second)
	defer cancel()
	cmd := h.Command(ctx, exe, "-test.run=^TestFloodHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), fmt.Sprintf("ARKGW_FLOOD_HELPER=%d,%d,%d", rate, dur.Milliseconds(), senders))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("flood helper: %v: %s", err, out)
	}
	var achieved float64
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "achieved="); ok {
			achieved, _ = strconv.ParseFloat(v, 64)
		}
	}
	return achieved
}

// TestFloodHelper is the sender process of pacedFlood; it does nothing
// unless ARKGW_FLOOD_HELPER is set.
func TestFloodHelper(t *testing.T) {
	spec := os.Getenv("ARKGW_FLOOD_HELPER")
	if spec == "" {
		t.Skip("helper process for TestBenchAlerts")
	}
	var rate, ms, senders int
	if _, err := fmt.Sscanf(spec, "%d,%d,%d", &rate, &ms, &senders); err != nil {
		t.Fatal(err)
	}
	var conns []*ipv4.PacketConn
	for i := 0; i < senders; i++ {
		pc, err := net.ListenPacket("udp4", expAddr+":0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		conns = append(conns, ipv4.NewPacketConn(pc))
	}
	fmt.Printf("achieved=%.0f\n", floodCore(t, conns, rate, time.Duration(ms)*time.Millisecond))
}

func floodCore(t *testing.T, conns []*ipv4.PacketConn, rate int, dur time.Duration) float64 {
	senders := len(conns)
	total := int(float64(rate) * dur.Seconds())
	var wg sync.WaitGroup
	var sentAll atomic.Int64
	start := time.Now()
	for s, p := range conns {
		wg.Add(1)
		go func(s int, p *ipv4.PacketConn) {
			defer wg.Done()
			n := total / senders
			per := float64(rate) / float64(senders)
			const batch = 32
			msgs := make([]ipv4.Message, batch)
			dst := net.ParseIP(dstAddr)
			port := floodLo + s*100
			sent := 0
			defer func() { sentAll.Add(int64(sent)) }()
			for sent < n {
				// Pace: do not run ahead of the schedule.
				if ahead := time.Duration(float64(sent)/per*float64(time.Second)) - time.Since(start); ahead > time.Millisecond {
					time.Sleep(ahead)
				}
				k := min(batch, n-sent)
				for i := 0; i < k; i++ {
					msgs[i] = ipv4.Message{Buffers: [][]byte{[]byte("flood")}, Addr: &net.UDPAddr{IP: dst, Port: port}}
					if port++; port > floodHi {
						port = floodLo
					}
				}
				w, err := p.WriteBatch(msgs[:k], 0)
				if err != nil {
					if errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EAGAIN) {
						continue
					}
					t.Errorf("flood: %v", err)
					return
				}
				sent += w
			}
		}(s, p)
	}
	wg.Wait()
	return float64(sentAll.Load()) / time.Since(start).Seconds()
}

// benchConsumer is one NFLOG reader under test.
type benchConsumer interface {
	name() string
	cpu() time.Duration // CPU time the consumer used so far
	// settle waits until the consumer has seen want messages since the
	// last call or gives up; returns seen and whether it reported loss.
	settle(want uint64) (seen uint64, lossy bool)
}

type alerterConsumer struct {
	a    *Alerter
	last Stats
}

func (c *alerterConsumer) name() string       { return "arkgw" }
func (c *alerterConsumer) cpu() time.Duration { return selfCPU() }
func (c *alerterConsumer) settle(want uint64) (uint64, bool) {
	deadline := time.Now().Add(5 * time.Second)
	var st Stats
	for {
		st = c.a.Stats()
		if st.Received-c.last.Received+st.SeqLost-c.last.SeqLost >= want || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // let the queue drain into the aggregator
	st = c.a.Stats()
	seen := st.Received - c.last.Received
	lossy := st.SeqLost != c.last.SeqLost || st.NoBufs != c.last.NoBufs || st.QueueDrops != c.last.QueueDrops
	c.last = st
	return seen, lossy
}

// ulogdConsumer counts ulogd2's JSON lines. Its output is buffered (sync=0,
// its fast setting), so up to one stdio buffer of lines (ulogdSlack) may
// still be in ulogd2's memory when a step is judged; they show up in the
// next step's count.
type ulogdConsumer struct {
	pid      int
	file     string
	expected uint64 // packets logged since ulogd2 started
}

const ulogdSlack = 32

func (c *ulogdConsumer) name() string { return "ulogd2" }
func (c *ulogdConsumer) cpu() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.pid))
	if err != nil {
		return 0
	}
	// Fields after the command (which may contain spaces) in parentheses.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ = 100
}
func (c *ulogdConsumer) lines() uint64 {
	b, _ := os.ReadFile(c.file)
	return uint64(bytes.Count(b, []byte{'\n'}))
}

// settle compares cumulative lines with cumulative logged packets, allowing
// ulogdSlack lines still in ulogd2's stdio buffer.
func (c *ulogdConsumer) settle(kernel uint64) (uint64, bool) {
	c.expected += kernel
	deadline := time.Now().Add(5 * time.Second)
	prev, stable := uint64(0), 0
	for time.Now().Before(deadline) {
		n := c.lines()
		if n+ulogdSlack >= c.expected {
			break
		}
		if n == prev {
			if stable++; stable > 10 {
				break
			}
		} else {
			stable = 0
		}
		prev = n
		time.Sleep(100 * time.Millisecond)
	}
	n := c.lines()
	if n+ulogdSlack >= c.expected {
		return kernel, false
	}
	missing := c.expected - n
	c.expected = n // judge the next step on its own
	return kernel - min(missing, kernel), true
}

// bareConsumer is a bare go-nflog counter with the same socket settings:
// the alerter must not fall behind it.
type bareConsumer struct {
	n, lost, nobufs atomic.Uint64
	last            [3]uint64
}

func (c *bareConsumer) name() string       { return "bare go-nflog" }
func (c *bareConsumer) cpu() time.Duration { return selfCPU() }
func (c *bareConsumer) settle(want uint64) (uint64, bool) {
	deadline := time.Now().Add(5 * time.Second)
	for c.n.Load()-c.last[0]+c.lost.Load()-c.last[1] < want && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	now := [3]uint64{c.n.Load(), c.lost.Load(), c.nobufs.Load()}
	seen, lossy := now[0]-c.last[0], now[1] != c.last[1] || now[2] != c.last[2]
	c.last = now
	return seen, lossy
}

func (c *bareConsumer) run(t *testing.T, ctx context.Context, tl *testLab) (closeFn func()) {
	nf, err := gonflog.Open(&gonflog.Config{NetNS: tl.node.NS().NetlinkNetNS(), Group: tl.group, Copymode: gonflog.CopyPacket,
		Bufsize: 256, Flags: gonflog.FlagSeq, Timeout: 2})
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	closeFn = func() { once.Do(func() { nf.Close() }) }
	t.Cleanup(closeFn)
	rc, _ := nf.Con.SyscallConn()
	rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20) })
	var next uint32
	err = nf.RegisterWithErrorFunc(ctx, func(a gonflog.Attribute) int {
		c.n.Add(1)
		if a.Seq != nil {
			if *a.Seq != next {
				c.lost.Add(uint64(*a.Seq - next))
			}
			next = *a.Seq + 1
		}
		return 0
	}, func(err error) int {
		if errors.Is(err, unix.ENOBUFS) {
			c.nobufs.Add(1)
			return 0
		}
		if ctx.Err() != nil {
			return 1
		}
		return 0
	})
	if err != nil {
		t.Fatal(err)
	}
	return closeFn
}

// stepRates offers increasing rates; it returns the highest achieved rate
// that c followed completely, and c's CPU time per packet over the steps it
// followed completely.
func stepRates(t *testing.T, tl *testLab, c benchConsumer) (best, cpuPerPkt float64) {
	var cpuSum time.Duration
	var pkts uint64
	for _, rate := range []int{10000, 20000, 40000, 60000, 80000, 100000, 120000, 150000, 200000, 250000} {
		before, cpu0 := tl.drops(t), c.cpu()
		achieved := pacedFlood(t, tl.exp, rate, 2*time.Second, 2)
		kernel := tl.drops(t) - before
		seen, lossy := c.settle(kernel)
		cpu := c.cpu() - cpu0
		ok := !lossy && seen == kernel
		t.Logf("%s: offered %d pps, achieved %.0f pps, kernel logged %d, consumer saw %d, complete=%v, consumer cpu %s (%.2f us/packet)",
			c.name(), rate, achieved, kernel, seen, ok, cpu.Round(time.Millisecond), float64(cpu.Microseconds())/float64(max(kernel, 1)))
		if !ok {
			break
		}
		cpuSum += cpu
		pkts += kernel
		if achieved > best {
			best = achieved
		}
		if achieved < 0.85*float64(rate) {
			t.Logf("%s: the sender saturates at %.0f pps; stopping", c.name(), achieved)
			break
		}
	}
	if pkts > 0 {
		cpuPerPkt = float64(cpuSum.Microseconds()) / float64(pkts)
	}
	return best, cpuPerPkt
}

func selfCPU() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestBenchAlerts: the highest rate of dropped packets the alerter follows
// with zero overruns, with ulogd2 (JSON output) on the same NFLOG setup as
// the anchor. Last line: bench-alerts pps=<x> ratio_vs_ulogd=<y>.
func TestBenchAlerts(t *testing.T) {
	if os.Getenv("ARKGW_BENCH") != "1" {
		t.Skip("benchmark: set ARKGW_BENCH=1")
	}
	tl := newLab(t)
	dir := t.TempDir()

	// arkgw alerter, writing its alerts file as in production.
	fs, err := alert.NewFileSink(filepath.Join(dir, "alerts.jsonl"), alert.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	r := tl.start(t, Config{}, fs)
	ours, oursCPU := stepRates(t, tl, &alerterConsumer{a: r.a})
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); groupBound(tl, tl.group) && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}

	// A bare go-nflog counter, for reference.
	bctx, bcancel := context.WithCancel(context.Background())
	bare := &bareConsumer{}
	closeBare := bare.run(t, bctx, tl)
	bareRate, bareCPU := stepRates(t, tl, bare)
	bcancel()
	closeBare()
	for deadline := time.Now().Add(5 * time.Second); groupBound(tl, tl.group) && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}

	// ulogd2 on the same group in the same netns, JSON output.
	uf := filepath.Join(dir, "ulogd.json")
	plug := "/usr/lib/x86_64-linux-gnu/ulogd/"
	if _, err := os.Stat(plug); err != nil {
		plug = "/usr/lib/" + archTriplet() + "/ulogd/"
	}
	conf := fmt.Sprintf(`[global]
logfile=%q
loglevel=5
plugin=%q
plugin=%q
plugin=%q
plugin=%q
plugin=%q
plugin=%q
stack=log1:NFLOG,base1:BASE,ifi1:IFINDEX,ip2str1:IP2STR,mac2str1:HWHDR,json1:JSON

[log1]
# the same 16 MiB receive buffer as the alerter (ulogd needs size < maxsize)
group=%d
netlink_socket_buffer_size=%d
netlink_socket_buffer_maxsize=%d

[json1]
file=%q
sync=0
`, filepath.Join(dir, "ulogd.log"), plug+"ulogd_inppkt_NFLOG.so", plug+"ulogd_raw2packet_BASE.so", plug+"ulogd_filter_IFINDEX.so",
		plug+"ulogd_filter_IP2STR.so", plug+"ulogd_filter_HWHDR.so", plug+"ulogd_output_JSON.so", tl.group, 16<<20, 32<<20, uf)
	cf := filepath.Join(dir, "ulogd.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := tl.node.Command(ctx, "ulogd", "-c", cf)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start ulogd2: %v", err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	for deadline := time.Now().Add(5 * time.Second); !groupBound(tl, tl.group); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "ulogd.log"))
			t.Fatalf("ulogd2 did not bind group %d: %s %s", tl.group, out.String(), log)
		}
	}
	uc := &ulogdConsumer{file: uf, pid: cmd.Process.Pid}
	before := tl.drops(t)
	theirs, theirCPU := stepRates(t, tl, uc)
	logged := tl.drops(t) - before
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	b, _ := os.ReadFile(uf)
	ulog, _ := os.ReadFile(filepath.Join(dir, "ulogd.log"))
	t.Logf("ulogd2 log:\n%s", ulog)
	t.Logf("ulogd2 wrote %d JSON lines for %d logged packets", bytes.Count(b, []byte{'\n'}), logged)
	ratio := 0.0
	if theirs > 0 {
		ratio = ours / theirs
	}
	t.Logf("followed completely (highest achieved offered rate; a consumer that never lost is bounded by the sender): arkgw alerter %.0f pps, bare go-nflog reader %.0f pps, ulogd2 %.0f pps", ours, bareRate, theirs)
	t.Logf("consumer CPU per packet: arkgw alerter %.2f us (%.0f pps per core), bare go-nflog %.2f us (%.0f pps per core), ulogd2 %.2f us (%.0f pps per core)",
		oursCPU, 1e6/max(oursCPU, 0.001), bareCPU, 1e6/max(bareCPU, 0.001), theirCPU, 1e6/max(theirCPU, 0.001))
	fmt.Printf("bench-alerts pps=%.0f ratio_vs_ulogd=%.2f\n", ours, ratio)
}

func archTriplet() string {
	out, err := exec.Command("gcc", "-dumpmachine").Output()
	if err != nil {
		return "aarch64-linux-gnu"
	}
	return string(bytes.TrimSpace(out))
}
