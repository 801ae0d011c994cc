package pcapstream

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/arkgw/arkgw/netlab"
	"github.com/arkgw/arkgw/nsdo"
	"github.com/arkgw/arkgw/pcapstream/wire"
	"github.com/arkgw/arkgw/reexec"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
)

func TestMain(m *testing.M) {
	if reexec.Init() {
		return
	}
	code := m.Run()
	if clientDir != "" {
		os.RemoveAll(clientDir)
	}
	os.Exit(code)
}

// The experiments of the test lab: node-side interface, node address,
// experiment address.
const (
	exp1If, exp1GW, exp1Addr = "arkpc1", "10.250.0.1", "10.250.0.2"
	exp2If, exp2GW, exp2Addr = "arkpc2", "10.250.0.5", "10.250.0.6"
	// readerUID is the unprivileged uid cmd/pcap runs as (the sandboxed
	// experiment's uid on the host).
	readerUID = 54321
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 || os.Getenv("ARKGW_UNPRIVILEGED") != "" {
		t.Skip("needs root: network namespaces and AF_PACKET sockets")
	}
}

// lab is the standard world plus two experiments linked to the node, as
// the gateway would plumb them (addresses in the pool, routed by inet back
// via the node, no NAT needed).
type lab struct {
	*netlab.Lab
	node, inet, exp1, exp2 *netlab.Host
	nodeNS                 nsdo.NS // what the server is given: node.NS() or Current()
}

func newLab(t *testing.T) *lab {
	return newLabAt(t, false)
}

// newLabAt is newLab; with current, the node is the namespace the test
// process runs in (inside netlab.InOwnNetNS's child) and the server is
// given nsdo.Current().
func newLabAt(t *testing.T, current bool) *lab {
	t.Helper()
	requireRoot(t)
	topo := netlab.WorldTopology()
	topo.Hosts[0].Current = current
	topo.Hosts = append(topo.Hosts,
		netlab.HostSpec{Name: "exp1", Routes: []netlab.RouteSpec{{Dst: "default", Via: exp1GW}}},
		netlab.HostSpec{Name: "exp2", Routes: []netlab.RouteSpec{{Dst: "default", Via: exp2GW}}},
	)
	topo.Links = append(topo.Links,
		netlab.LinkSpec{A: "node", AIf: exp1If, AAddrs: []string{exp1GW + "/30"}, B: "exp1", BIf: "eth0", BAddrs: []string{exp1Addr + "/30"}},
		netlab.LinkSpec{A: "node", AIf: exp2If, AAddrs: []string{exp2GW + "/30"}, B: "exp2", BIf: "eth0", BAddrs: []string{exp2Addr + "/30"}},
	)
	l := netlab.Build(t, topo)
	if _, err := netlab.StartInternet(l.Host("inet")); err != nil {
		t.Fatalf("start fake internet: %v", err)
	}
	nodeNS := l.Host("node").NS()
	if current {
		nodeNS = nsdo.Current()
	}
	return &lab{Lab: l, node: l.Host("node"), inet: l.Host("inet"), exp1: l.Host("exp1"), exp2: l.Host("exp2"), nodeNS: nodeNS}
}

var (
	clientOnce sync.Once
	clientDir  string
	clientBin  string
	clientErr  error
)

// pcapClient builds cmd/pcap statically (CGO off) into a directory every
// uid may read, once per test binary.
func pcapClient(t *testing.T) string {
	t.Helper()
	clientOnce.Do(func() {
		clientDir, clientErr = os.MkdirTemp("", "pcapstream-client-")
		if clientErr != nil {
			return
		}
		os.Chmod(clientDir, 0o755)
		clientBin = filepath.Join(clientDir, "pcap")
		cmd := exec.Command("go", "build", "-trimpath", "-o", clientBin, "github.com/arkgw/arkgw/cmd/pcap")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			clientErr = fmt.Errorf("build cmd/pcap: %v\n%s", err, out)
		}
	})
	if clientErr != nil {
		t.Fatal(clientErr)
	}
	return clientBin
}

// startServer runs a Server for an experiment on the node and waits for its
// socket. The socket belongs to readerUID, in a directory it may traverse.
func startServer(t *testing.T, l *lab, id, iface string, mod func(*Config)) (*Server, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "pcapstream-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o711)
	sock := filepath.Join(dir, "pcap.sock")
	cfg := Config{
		Experiment: id, NS: l.nodeNS, Iface: iface,
		SocketPath: sock, SocketUID: readerUID, SocketGID: readerUID,
		Logger: hclog.New(&hclog.LoggerOptions{Name: "pcapstream", Level: hclog.Debug, Output: testWriter{t}}),
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return 10 s after cancel")
		}
		if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket %s left behind: %v", sock, err)
		}
	})
	waitFor(t, "pcap socket", 5*time.Second, func() bool {
		fi, err := os.Stat(sock)
		return err == nil && fi.Mode().Type() == os.ModeSocket
	})
	return s, sock
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// client is a running cmd/pcap.
type client struct {
	cmd    *exec.Cmd
	out    string
	stderr *bytes.Buffer
	done   chan error
}

// startClient runs the pcap binary as readerUID (no privileges) with its
// stdout in a file.
func startClient(t *testing.T, sock string, args ...string) *client {
	t.Helper()
	bin := pcapClient(t)
	out := filepath.Join(t.TempDir(), "out.pcap")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c := &client{out: out, stderr: &bytes.Buffer{}, done: make(chan error, 1)}
	c.cmd = exec.Command(bin, args...)
	c.cmd.Env = []string{"ARK_PCAP_SOCK=" + sock}
	c.cmd.Stdout = f
	c.cmd.Stderr = c.stderr
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: readerUID, Gid: readerUID}}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.done <- c.cmd.Wait() }()
	t.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			c.cmd.Process.Kill()
			<-c.done
		}
	})
	return c
}

// stop sends SIGINT and waits for the client to exit.
func (c *client) stop(t *testing.T) error {
	t.Helper()
	c.cmd.Process.Signal(syscall.SIGINT)
	return c.wait(t)
}

func (c *client) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-c.done:
		return err
	case <-time.After(15 * time.Second):
		t.Fatalf("pcap did not exit; stderr: %s", c.stderr)
		return nil
	}
}

// counts parses "pcap: N packets captured, M dropped" from stderr.
func (c *client) counts(t *testing.T) (captured, dropped int) {
	t.Helper()
	for _, line := range strings.Split(c.stderr.String(), "\n") {
		if _, err := fmt.Sscanf(line, "pcap: %d packets captured, %d dropped", &captured, &dropped); err == nil {
			return
		}
	}
	t.Fatalf("no counts line on pcap's stderr: %q", c.stderr)
	return
}

// readPcap parses a pcap file with gopacket.
func readPcap(t *testing.T, path string) (*pcapgo.Reader, []gopacket.Packet) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatalf("%s is not a pcap file for gopacket: %v", path, err)
	}
	var pkts []gopacket.Packet
	for {
		data, ci, err := r.ReadPacketData()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s: packet %d: %v", path, len(pkts)+1, err)
		}
		p := gopacket.NewPacket(data, r.LinkType(), gopacket.Default)
		p.Metadata().CaptureInfo = ci
		pkts = append(pkts, p)
	}
	return r, pkts
}

func ip4(p gopacket.Packet) *layers.IPv4 {
	l, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	return l
}

func isEcho(p gopacket.Packet, src, dst string, reply bool) bool {
	ip := ip4(p)
	ic, _ := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	if ip == nil || ic == nil || ip.SrcIP.String() != src || ip.DstIP.String() != dst {
		return false
	}
	want := uint8(layers.ICMPv4TypeEchoRequest)
	if reply {
		want = layers.ICMPv4TypeEchoReply
	}
	return ic.TypeCode.Type() == want
}

func isTCP(p gopacket.Packet, src, dst string, syn, ack bool) bool {
	ip := ip4(p)
	tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
	return ip != nil && tcp != nil && ip.SrcIP.String() == src && ip.DstIP.String() == dst && tcp.SYN == syn && tcp.ACK == ack
}

func hasAddr(p gopacket.Packet, addr string) bool {
	if ip := ip4(p); ip != nil {
		return ip.SrcIP.String() == addr || ip.DstIP.String() == addr
	}
	if a, ok := p.Layer(layers.LayerTypeARP).(*layers.ARP); ok {
		return net.IP(a.SourceProtAddress).String() == addr || net.IP(a.DstProtAddress).String() == addr
	}
	return false
}

// httpGet fetches url from inside h and returns the body length.
func httpGet(t *testing.T, h *netlab.Host, url string) int64 {
	t.Helper()
	tr := &http.Transport{DialContext: h.Dial, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 60 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s from %s: %v", url, h.Path(), err)
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: status %d, %d bytes, %v", url, resp.StatusCode, n, err)
	}
	return n
}

// packetSockets counts AF_PACKET sockets bound to iface in h's netns.
func packetSockets(t *testing.T, h *netlab.Host, iface string) int {
	t.Helper()
	n := 0
	err := h.Do(func() error {
		ifi, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		// thread-self: this thread is the one inside h's netns.
		b, err := os.ReadFile("/proc/thread-self/net/packet")
		if err != nil {
			return err
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Scan() // header: sk RefCnt Type Proto Iface R Rmem User Inode
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) >= 5 && f[4] == strconv.Itoa(ifi.Index) {
				n++
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestPrivilegedPcapStream: an unprivileged cmd/pcap records an
// experiment's ping and HTTP fetch; the file parses with gopacket and
// tshark, shows the experiment's own address in both directions and
// nothing of a second experiment; the capture exists only while a reader
// is connected.
// The server captures on the interface of the namespace it is given,
// including the current one (a node's daemon runs in the node's namespace,
// no handle).
func TestPrivilegedPcapNamespace(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name    string
		current bool
	}{
		{"opened handle", false},
		{"current namespace", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.current && !netlab.InOwnNetNS(t) {
				return
			}
			l := newLabAt(t, tc.current)
			srv, sock := startServer(t, l, "pc1", exp1If, nil)
			const want = 6
			c := dialRaw(t, sock, wire.Request{Count: want, Filter: "icmp"})
			waitFor(t, "reader connected", 10*time.Second, func() bool { return srv.Capturing() })
			l.exp1.Run(t, "ping", "-n", "-c", "3", "-i", "0.2", "198.51.100.1")
			n, st, msg := readToEnd(t, c)
			if msg != "" || st.Packets != want || n < 24+want*(16+98) {
				t.Fatalf("stream: %d pcap bytes, stats %+v, error %q; want %d ICMP packets", n, st, msg, want)
			}
		})
	}
}

func TestPrivilegedPcapStream(t *testing.T) {
	l := newLab(t)
	srv, sock := startServer(t, l, "pc1", exp1If, nil)

	if srv.Capturing() || packetSockets(t, l.node, exp1If) != 0 {
		t.Fatalf("capturing with no reader: %v, sockets %d", srv.Capturing(), packetSockets(t, l.node, exp1If))
	}
	c := startClient(t, sock)
	waitFor(t, "reader connected", 10*time.Second, func() bool { return len(srv.Stats().Readers) == 1 })
	if !srv.Capturing() || packetSockets(t, l.node, exp1If) != 1 {
		t.Fatalf("reader connected but capturing=%v, packet sockets on %s = %d", srv.Capturing(), exp1If, packetSockets(t, l.node, exp1If))
	}

	// Traffic of both experiments at once.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		l.exp2.Run(t, "ping", "-n", "-c", "3", "-i", "0.2", "198.51.100.2")
	}()
	l.exp1.Run(t, "ping", "-n", "-c", "3", "-i", "0.2", "198.51.100.1")
	httpGet(t, l.exp1, "http://198.51.100.80/")
	httpGet(t, l.exp2, "http://198.51.100.81/")
	wg.Wait()
	// The stream is asynchronous: wait until the server has written the
	// packets, then stop the client as a user would (SIGINT).
	// ARP 2, ICMP 6, then TCP: the handshake ends by the 11th packet.
	waitFor(t, "packets delivered", 10*time.Second, func() bool { return srv.Stats().Delivered >= 13 })
	if err := c.stop(t); err != nil {
		t.Fatalf("pcap exited with %v; stderr: %s", err, c.stderr)
	}
	captured, dropped := c.counts(t)
	t.Logf("pcap stderr: %s", strings.TrimSpace(c.stderr.String()))

	r, pkts := readPcap(t, c.out)
	if r.LinkType() != layers.LinkTypeEthernet || r.Snaplen() != DefaultSnaplen {
		t.Errorf("link type %v snaplen %d, want Ethernet %d", r.LinkType(), r.Snaplen(), DefaultSnaplen)
	}
	if len(pkts) != captured || dropped != 0 {
		t.Errorf("file has %d packets; pcap said %d captured, %d dropped", len(pkts), captured, dropped)
	}
	count := func(cond func(gopacket.Packet) bool) int {
		n := 0
		for _, p := range pkts {
			if cond(p) {
				n++
			}
		}
		return n
	}
	checks := []struct {
		what string
		min  int
		cond func(gopacket.Packet) bool
	}{
		{"echo requests from the experiment", 3, func(p gopacket.Packet) bool { return isEcho(p, exp1Addr, "198.51.100.1", false) }},
		{"echo replies to the experiment", 3, func(p gopacket.Packet) bool { return isEcho(p, "198.51.100.1", exp1Addr, true) }},
		{"SYN", 1, func(p gopacket.Packet) bool { return isTCP(p, exp1Addr, "198.51.100.80", true, false) }},
		{"SYN-ACK", 1, func(p gopacket.Packet) bool { return isTCP(p, "198.51.100.80", exp1Addr, true, true) }},
		{"ACK", 1, func(p gopacket.Packet) bool { return isTCP(p, exp1Addr, "198.51.100.80", false, true) }},
	}
	for _, c := range checks {
		if n := count(c.cond); n < c.min {
			t.Errorf("%s: %d packets, want at least %d", c.what, n, c.min)
		}
	}
	if n := count(func(p gopacket.Packet) bool { return hasAddr(p, exp2Addr) || hasAddr(p, exp2GW) }); n != 0 {
		t.Errorf("%d packets of the second experiment in the first one's capture", n)
	}
	for i, p := range pkts {
		if p.Metadata().Timestamp.IsZero() || time.Since(p.Metadata().Timestamp) > time.Hour {
			t.Errorf("packet %d: timestamp %v", i+1, p.Metadata().Timestamp)
			break
		}
	}

	// tshark reads it too, and decodes the same conversation.
	out, err := exec.Command("tshark", "-n", "-r", c.out).CombinedOutput()
	if err != nil {
		t.Fatalf("tshark -r: %v\n%s", err, out)
	}
	ts := strings.Join(strings.Fields(string(out)), " ")
	for _, want := range []string{exp1Addr + " → 198.51.100.1 ICMP", "198.51.100.1 → " + exp1Addr + " ICMP", "Echo (ping) reply", "[SYN]", "[SYN, ACK]", "HTTP"} {
		if !strings.Contains(ts, want) {
			t.Errorf("tshark output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(ts, exp2Addr) {
		t.Errorf("tshark shows the second experiment's address %s", exp2Addr)
	}

	// The last reader left: the capture socket is gone.
	waitFor(t, "capture closed", 5*time.Second, func() bool { return !srv.Capturing() })
	if n := packetSockets(t, l.node, exp1If); n != 0 {
		t.Errorf("%d packet sockets on %s with no reader", n, exp1If)
	}
	if st := srv.Stats(); st.Captures != 1 || st.Connections != 1 {
		t.Errorf("stats %+v: want 1 capture, 1 connection", st)
	}
}

// dialRaw connects to the socket and sends a request, as cmd/pcap would.
func dialRaw(t *testing.T, sock string, req wire.Request) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	b, err := req.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	return c
}

// finish half-closes c as cmd/pcap does on SIGINT and reads the rest of the
// stream: the pcap bytes, the last stats and any error.
func finish(t *testing.T, c *net.UnixConn) (pcapBytes int, st wire.Stats, errMsg string) {
	t.Helper()
	c.CloseWrite()
	return readToEnd(t, c)
}

// readToEnd reads the stream until the server closes it.
func readToEnd(t *testing.T, c *net.UnixConn) (pcapBytes int, st wire.Stats, errMsg string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	var buf []byte
	for {
		typ, p, nb, err := wire.ReadFrame(c, buf)
		buf = nb
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatalf("reading stream: %v", err)
		}
		switch typ {
		case wire.FramePcap:
			pcapBytes += len(p)
		case wire.FrameStats:
			if st, err = wire.ParseStats(p); err != nil {
				t.Fatal(err)
			}
		case wire.FrameError:
			errMsg = string(p)
		}
	}
}

// transfer fetches n bytes over HTTP from inside h and returns the rate in
// bytes per second.
func transfer(t *testing.T, h *netlab.Host, n int) float64 {
	t.Helper()
	start := time.Now()
	got := httpGet(t, h, fmt.Sprintf("http://198.51.100.80/bytes?n=%d", n))
	if got != int64(n) {
		t.Fatalf("got %d bytes, want %d", got, n)
	}
	return float64(n) / time.Since(start).Seconds()
}

// TestPrivilegedPcapSlowReader: a reader that never reads loses packets
// (counted, reported in-band and in metrics) while a second reader keeps
// receiving and the experiment's transfer keeps its rate.
func TestPrivilegedPcapSlowReader(t *testing.T) {
	l := newLab(t)
	// Small rings: the stalled reader's fills within the first transfer.
	srv, sock := startServer(t, l, "pc1", exp1If, func(c *Config) { c.CaptureBuffer = 1 << 20 })
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(srv); err != nil {
		t.Fatal(err)
	}

	// A healthy reader (cut to headers so it keeps up), running throughout.
	healthy := startClient(t, sock, "-s", "128")
	waitFor(t, "healthy reader", 10*time.Second, func() bool { return len(srv.Stats().Readers) == 1 })

	const size = 128 << 20
	transfer(t, l.exp1, 1<<20) // warm up (ARP, route cache)
	without := max(transfer(t, l.exp1, size), transfer(t, l.exp1, size), transfer(t, l.exp1, size))

	stalled := dialRaw(t, sock, wire.Request{})
	waitFor(t, "stalled reader", 10*time.Second, func() bool { return len(srv.Stats().Readers) == 2 })
	with := max(transfer(t, l.exp1, size), transfer(t, l.exp1, size), transfer(t, l.exp1, size))
	t.Logf("transfer rate: %.0f Mbit/s with a healthy reader, %.0f Mbit/s with a stalled one too", without*8/1e6, with*8/1e6)
	if with < 0.3*without {
		t.Errorf("the stalled reader slowed the experiment: %.0f -> %.0f Mbit/s", without*8/1e6, with*8/1e6)
	}

	var stalledStats ReaderStats
	for _, r := range srv.Stats().Readers {
		if r.Snaplen == DefaultSnaplen {
			stalledStats = r
		}
	}
	if stalledStats.Dropped == 0 {
		t.Fatalf("stalled reader: %+v, want drops", stalledStats)
	}

	// The capture goroutine is not stuck behind the stalled reader: new
	// packets still reach the healthy reader.
	// A probe reader that ends after the four echo packets tells when the
	// capture has handed them to the readers.
	probe := dialRaw(t, sock, wire.Request{Count: 4, Filter: "host 198.51.100.9 and icmp"})
	waitFor(t, "probe reader", 10*time.Second, func() bool { return len(srv.Stats().Readers) == 3 })
	l.exp1.Run(t, "ping", "-n", "-c", "2", "-i", "0.2", "198.51.100.9")
	if _, pst, msg := readToEnd(t, probe); pst.Packets != 4 || msg != "" {
		t.Fatalf("probe reader: %+v %q", pst, msg)
	}

	// The stalled reader finally reads: what was queued, then its counts.
	n, st, msg := finish(t, stalled)
	t.Logf("stalled reader: %d pcap bytes, %+v %q", n, st, msg)
	if st.Dropped < stalledStats.Dropped || st.Packets == 0 || msg != "" {
		t.Errorf("stalled reader's last stats %+v (server saw %+v), error %q", st, stalledStats, msg)
	}

	if err := healthy.stop(t); err != nil {
		t.Fatalf("pcap: %v; %s", err, healthy.stderr)
	}
	captured, dropped := healthy.counts(t)
	_, pkts := readPcap(t, healthy.out)
	if len(pkts) != captured {
		t.Errorf("healthy reader: file has %d packets, pcap said %d", len(pkts), captured)
	}
	echoes := 0
	for _, p := range pkts {
		if isEcho(p, exp1Addr, "198.51.100.9", false) || isEcho(p, "198.51.100.9", exp1Addr, true) {
			echoes++
		}
		if p.Metadata().CaptureLength > 128 {
			t.Fatalf("packet of %d bytes with -s 128", p.Metadata().CaptureLength)
		}
	}
	if echoes != 4 {
		t.Errorf("healthy reader got %d of the 4 echo packets sent after the stall (it dropped %d)", echoes, dropped)
	}
	t.Logf("healthy reader: %d captured, %d dropped", captured, dropped)

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() != "pc1" {
				t.Errorf("%s labelled %v", mf.GetName(), m.GetLabel())
			}
			if m.Counter != nil {
				got[mf.GetName()] = m.GetCounter().GetValue()
			} else {
				got[mf.GetName()] = m.GetGauge().GetValue()
			}
		}
	}
	if got["arkgw_pcap_reader_dropped_packets_total"] < float64(st.Dropped) || got["arkgw_pcap_captured_packets_total"] == 0 || got["arkgw_pcap_connections_total"] != 3 {
		t.Errorf("metrics %v", got)
	}
	waitFor(t, "capture closed", 5*time.Second, func() bool { return !srv.Capturing() })
}

// TestPrivilegedPcapOptions: several readers at once, each with its own
// count, snap length, timestamp resolution and filter; errors reach the
// user on stderr; the socket's owner and mode keep other uids out; a
// reader whose stdout closes (popen's pclose) still exits cleanly.
func TestPrivilegedPcapOptions(t *testing.T) {
	l := newLab(t)
	srv, sock := startServer(t, l, "pc1", exp1If, func(c *Config) { c.MaxReaders = 4 })

	counted := startClient(t, sock, "-c", "3", "-s", "64", "-nano", "icmp")
	web := startClient(t, sock, "tcp", "port", "80")
	all := startClient(t, sock)
	// A fourth reader fills the slots. (The popen case below cannot: it
	// exits at the first packet after its pipe closed, and a stray
	// neighbour solicitation may come any time.)
	fourth := startClient(t, sock)
	waitFor(t, "four readers", 10*time.Second, func() bool { return len(srv.Stats().Readers) == 4 })

	// A fifth reader is refused; so is a bad filter; so is a uid the
	// socket does not belong to.
	extra := startClient(t, sock)
	if err := extra.wait(t); err == nil || !strings.Contains(extra.stderr.String(), "too many pcap readers") {
		t.Errorf("fifth reader: %v, stderr %q", err, extra.stderr)
	}
	fourth.stop(t)
	waitFor(t, "three readers", 10*time.Second, func() bool { return len(srv.Stats().Readers) == 3 })

	// popen("/usr/bin/pcap", "r") then pclose: stdout is a pipe whose
	// reader goes away.
	piped := exec.Command(pcapClient(t))
	piped.Env = []string{"ARK_PCAP_SOCK=" + sock}
	piped.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: readerUID, Gid: readerUID}}
	var pipedErr bytes.Buffer
	piped.Stderr = &pipedErr
	pipe, err := piped.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := piped.Start(); err != nil {
		t.Fatal(err)
	}
	hdr := make([]byte, 24)
	if _, err := io.ReadFull(pipe, hdr); err != nil {
		t.Fatalf("reading the pcap header from a pipe: %v", err)
	}
	pipe.Close()

	l.exp1.Run(t, "ping", "-n", "-c", "5", "-i", "0.2", "198.51.100.1")
	httpGet(t, l.exp1, "http://198.51.100.80/")

	// popen's reader is gone: the next write fails, pcap says what it got.
	if err := piped.Wait(); err != nil {
		t.Errorf("pcap with a closed stdout pipe: %v; stderr %q", err, pipedErr.String())
	}
	if !strings.HasPrefix(pipedErr.String(), "pcap: ") || !strings.Contains(pipedErr.String(), "packets captured") {
		t.Errorf("pcap with a closed stdout pipe printed %q", pipedErr.String())
	}

	// -c 3 ends on its own.
	if err := counted.wait(t); err != nil {
		t.Fatalf("pcap -c 3: %v; %s", err, counted.stderr)
	}
	if n, d := counted.counts(t); n != 3 || d != 0 {
		t.Errorf("pcap -c 3 said %d captured, %d dropped", n, d)
	}
	r, pkts := readPcap(t, counted.out)
	if len(pkts) != 3 || r.Snaplen() != 64 || r.Resolution() != gopacket.TimestampResolutionNanosecond {
		t.Errorf("pcap -c 3 -s 64 -nano: %d packets, snaplen %d, resolution %v", len(pkts), r.Snaplen(), r.Resolution())
	}
	for _, p := range pkts {
		md := p.Metadata()
		if p.Layer(layers.LayerTypeICMPv4) == nil || md.CaptureLength != 64 || md.Length != 98 {
			t.Errorf("pcap -s 64 icmp: packet %v, %d of %d bytes", p.Layers(), md.CaptureLength, md.Length)
		}
	}

	waitFor(t, "web reader got the HTTP exchange", 10*time.Second, func() bool {
		for _, r := range srv.Stats().Readers {
			// SYN, SYN-ACK, ACK, request, response at least (how the
			// rest merges depends on timing); stopping drains the queue.
			if r.Filter == "tcp port 80" && r.Delivered >= 5 {
				return true
			}
		}
		return false
	})
	for _, c := range []*client{web, all} {
		if err := c.stop(t); err != nil {
			t.Fatalf("pcap: %v; %s", err, c.stderr)
		}
	}
	_, webPkts := readPcap(t, web.out)
	_, allPkts := readPcap(t, all.out)
	syns := 0
	for _, p := range webPkts {
		tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if tcp == nil || (tcp.SrcPort != 80 && tcp.DstPort != 80) {
			t.Fatalf("tcp port 80 filter let through %v", p)
		}
		if tcp.SYN {
			syns++
		}
	}
	echoes := 0
	for _, p := range allPkts {
		if isEcho(p, exp1Addr, "198.51.100.1", false) {
			echoes++
		}
	}
	if syns != 2 || echoes != 5 || len(allPkts) <= len(webPkts) {
		t.Errorf("filtered reader: %d packets (%d SYNs); unfiltered: %d packets (%d echo requests)", len(webPkts), syns, len(allPkts), echoes)
	}

	bad := startClient(t, sock, "tcp", "port")
	if err := bad.wait(t); err == nil || !strings.Contains(bad.stderr.String(), "pcap: filter \"tcp port\"") {
		t.Errorf("bad filter: %v, stderr %q", err, bad.stderr)
	}
	if fi, err := os.Stat(bad.out); err != nil || fi.Size() != 0 {
		t.Errorf("bad filter wrote to stdout: %v %v", fi, err)
	}

	other := exec.Command(pcapClient(t), "-S", sock)
	other.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: readerUID + 1, Gid: readerUID + 1}}
	if out, err := other.CombinedOutput(); err == nil || !strings.Contains(string(out), "permission denied") {
		t.Errorf("another uid connected: %v %q", err, out)
	}
	waitFor(t, "capture closed", 5*time.Second, func() bool { return !srv.Capturing() })
}

// TestPrivilegedPcapInterfaceGone: when the experiment's veth disappears
// under a reader, the reader is told why and gets its counts; the server
// keeps running and refuses new readers with a message naming the
// interface.
func TestPrivilegedPcapInterfaceGone(t *testing.T) {
	l := newLab(t)
	srv, sock := startServer(t, l, "pc2", exp2If, nil)
	c := dialRaw(t, sock, wire.Request{})
	waitFor(t, "capturing", 10*time.Second, func() bool { return srv.Capturing() })
	l.exp2.Run(t, "ping", "-n", "-c", "1", "198.51.100.1")
	waitFor(t, "packets", 10*time.Second, func() bool { return srv.Stats().Captured >= 2 })

	link, err := l.node.Handle().LinkByName(exp2If)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.node.Handle().LinkDel(link); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var (
		buf    []byte
		errMsg string
		st     wire.Stats
	)
	for {
		typ, p, nb, err := wire.ReadFrame(c, buf)
		buf = nb
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reader was not ended after the interface went away: %v", err)
		}
		switch typ {
		case wire.FrameError:
			errMsg = string(p)
		case wire.FrameStats:
			st, _ = wire.ParseStats(p)
		}
	}
	if !strings.Contains(errMsg, "capture on "+exp2If+" ended") || st.Packets < 2 {
		t.Errorf("reader got error %q, stats %+v", errMsg, st)
	}
	waitFor(t, "capture closed", 5*time.Second, func() bool { return !srv.Capturing() })

	c2 := dialRaw(t, sock, wire.Request{})
	if _, _, msg := finish(t, c2); !strings.Contains(msg, "cannot capture on "+exp2If) {
		t.Errorf("new reader after the interface went away: %q", msg)
	}
}

// TestPrivilegedPcapKernelFilter: a reader's filter runs in the kernel on
// its own socket. With "icmp", a UDP flood on the same veth never reaches
// the daemon: the capture reads exactly the ICMP packets, while an
// unfiltered reader (of another server on the same interface) sees the
// flood.
func TestPrivilegedPcapKernelFilter(t *testing.T) {
	l := newLab(t)
	srv, sock := startServer(t, l, "pk1", exp1If, nil)
	all, allSock := startServer(t, l, "pk2", exp1If, nil)
	icmp := dialRaw(t, sock, wire.Request{Count: 6, Filter: "icmp"})
	every := dialRaw(t, allSock, wire.Request{Snaplen: 64})
	waitFor(t, "both readers", 10*time.Second, func() bool { return srv.Capturing() && all.Capturing() })

	const flood = 20000
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	u, err := l.exp1.Dial(ctx, "udp", "198.51.100.1:7") // the fake Internet echoes: UDP both ways
	if err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 200)
	for i := 0; i < flood; i++ {
		if _, err := u.Write(payload); err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
	}
	// The socket stays open until the echoes are in: closed, it would
	// answer late ones with ICMP port unreachable.
	defer u.Close()
	l.exp1.Run(t, "ping", "-n", "-c", "3", "-i", "0.2", "198.51.100.1")

	n, st, msg := readToEnd(t, icmp)
	if msg != "" || st.Packets != 6 || n < 24+6*(16+98) {
		t.Fatalf("icmp reader: %d pcap bytes, stats %+v, error %q", n, st, msg)
	}
	if got := srv.Stats().Captured; got != 6 {
		t.Errorf("the filtered capture read %d packets: want only the 6 ICMP ones (the kernel filter drops the UDP flood)", got)
	}
	waitFor(t, "the unfiltered reader sees the flood", 10*time.Second, func() bool { return all.Stats().Captured >= flood })
	if _, st, msg := finish(t, every); st.Packets < flood || msg != "" {
		t.Errorf("unfiltered reader: stats %+v, error %q", st, msg)
	}
	waitFor(t, "captures closed", 5*time.Second, func() bool { return !srv.Capturing() && !all.Capturing() })
	if n := packetSockets(t, l.node, exp1If); n != 0 {
		t.Errorf("%d packet sockets left on %s", n, exp1If)
	}
}
