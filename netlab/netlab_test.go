package netlab

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/miekg/dns"
	"github.com/vishvananda/netns"
	"golang.org/x/net/ipv4"

	"github.com/arkgw/arkgw/nsholder"
	"github.com/arkgw/arkgw/reexec"
)

func TestMain(m *testing.M) {
	if reexec.Init() {
		return
	}
	os.Exit(m.Run())
}

// twoHop is client - router - server; server answers the fake Internet
// prefixes and runs its services.
func twoHop() Topology {
	return Topology{
		Hosts: []HostSpec{
			{Name: "client", Routes: []RouteSpec{{Dst: "default", Via: "10.1.0.1"}, {Dst: "default6", Via: "fd01::1"}}},
			{Name: "router", Forward: true, Routes: []RouteSpec{{Dst: InetPrefix4a, Via: "10.2.0.2"}, {Dst: InetPrefix6, Via: "fd02::2"}}},
			{Name: "server", LocalPrefixes: []string{InetPrefix4a, InetPrefix6},
				Routes: []RouteSpec{{Dst: "10.1.0.0/24", Via: "10.2.0.1"}, {Dst: "fd01::/64", Via: "fd02::1"}}},
		},
		Links: []LinkSpec{
			{A: "client", B: "router", AAddrs: []string{"10.1.0.2/24", "fd01::2/64"}, BAddrs: []string{"10.1.0.1/24", "fd01::1/64"}},
			{A: "router", B: "server", AIf: "down", BIf: "up", AAddrs: []string{"10.2.0.1/24", "fd02::1/64"}, BAddrs: []string{"10.2.0.2/24", "fd02::2/64"}},
		},
	}
}

func dnsQuery(t *testing.T, h *Host, proto, server, name string, qtype uint16, bufsize uint16) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: proto, Timeout: 5 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	if bufsize > 0 {
		m.SetEdns0(bufsize, false)
	}
	var r *dns.Msg
	err := h.Do(func() (err error) {
		r, _, err = c.Exchange(m, net.JoinHostPort(server, "53"))
		return err
	})
	if err != nil {
		t.Fatalf("dns %s %s %s via %s from %s: %v", proto, name, dns.TypeToString[qtype], server, h.Name, err)
	}
	return r
}

func echoTCP(t *testing.T, h *Host, addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := h.Dial(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial tcp %s from %s: %v", addr, h.Name, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := "ping " + addr + "\n"
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != msg {
		t.Fatalf("tcp echo %s: got %q, %v", addr, got, err)
	}
}

func echoUDP(t *testing.T, h *Host, addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := h.Dial(ctx, "udp", addr) // connected: a reply from another source would be dropped
	if err != nil {
		t.Fatalf("dial udp %s: %v", addr, err)
	}
	defer c.Close()
	buf := make([]byte, 100)
	for try := 0; try < 3; try++ {
		c.Write([]byte("hello " + addr))
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := c.Read(buf)
		if err == nil {
			if string(buf[:n]) != "hello "+addr {
				t.Fatalf("udp echo %s: got %q", addr, buf[:n])
			}
			return
		}
	}
	t.Fatalf("udp echo %s: no reply", addr)
}

func TestPrivilegedTwoHop(t *testing.T) {
	l := Build(t, twoHop())
	client, server := l.Host("client"), l.Host("server")
	if _, err := StartInternet(server); err != nil {
		t.Fatal(err)
	}

	t.Run("ping", func(t *testing.T) {
		for _, dst := range []string{"10.2.0.2", "fd02::2", "198.51.100.123", "2001:db8:100::1:2"} {
			out := client.Run(t, "ping", "-n", "-c1", "-W2", dst)
			if !strings.Contains(out, "1 received") {
				t.Errorf("ping %s: %s", dst, out)
			}
		}
		// Through Command (the re-exec trampoline) as well.
		out, err := client.Command(context.Background(), "ping", "-n", "-c1", "-W2", "fd02::2").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "1 received") {
			t.Errorf("Command ping: %v\n%s", err, out)
		}
	})
	t.Run("tcp", func(t *testing.T) {
		for _, addr := range []string{"10.2.0.2:7", "[fd02::2]:7", "198.51.100.9:7", "[2001:db8:100::abc]:7"} {
			echoTCP(t, client, addr)
			echoUDP(t, client, addr)
		}
		// A listener made in one namespace and a dial from another.
		ln, err := client.Listen("tcp", "[::]:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		port := ln.Addr().(*net.TCPAddr).Port
		go func() {
			if c, err := ln.Accept(); err == nil {
				c.Close()
			}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := server.Dial(ctx, "tcp", fmt.Sprintf("[fd01::2]:%d", port))
		if err != nil {
			t.Fatalf("server -> client tcp: %v", err)
		}
		c.Close()
	})
	t.Run("dns", func(t *testing.T) {
		for _, srv := range []string{DNS4, DNS6} {
			for _, proto := range []string{"udp", "tcp"} {
				r := dnsQuery(t, client, proto, srv, "www.arkgw.test.", dns.TypeA, 0)
				if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != WWW4 {
					t.Errorf("%s %s: %v", proto, srv, r)
				}
			}
		}
	})
	t.Run("icmp-errors-not-rate-limited", func(t *testing.T) {
		// 30 probes with TTL 1: the router must answer every one with Time
		// Exceeded (the kernel default would answer ~6, then 1/s).
		c := client.Capture(t, "v-router")
		const n = 30
		err := client.Do(func() error {
			conn, err := net.Dial("udp4", "10.2.0.2:33434")
			if err != nil {
				return err
			}
			defer conn.Close()
			if err := ipv4.NewConn(conn).SetTTL(1); err != nil {
				return err
			}
			for i := 0; i < n; i++ {
				if _, err := conn.Write([]byte("probe")); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		isTE := func(p gopacket.Packet) bool {
			ic, ok := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
			return ok && ic.TypeCode.Type() == layers.ICMPv4TypeTimeExceeded
		}
		deadline := time.Now().Add(5 * time.Second)
		for c.Count(isTE) < n && time.Now().Before(deadline) {
			c.Wait(func(gopacket.Packet) bool { return false }, 50*time.Millisecond)
		}
		if got := c.Count(isTE); got != n {
			t.Errorf("%d time-exceeded replies to %d probes", got, n)
		}
	})
	t.Run("command-netns", func(t *testing.T) {
		// Both ways of running a program must see the client's interfaces.
		out, err := client.Command(context.Background(), "cat", "/proc/self/net/dev").Output()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(out), "v-router:") || strings.Contains(string(out), "down:") {
			t.Errorf("Command: /proc/self/net/dev in client:\n%s", out)
		}
		out2 := l.Host("router").Run(t, "ip", "-o", "link")
		if !strings.Contains(out2, "v-client@") || !strings.Contains(out2, "down@") {
			t.Errorf("Run: ip -o link in router:\n%s", out2)
		}
		// Our own thread never moved.
		self, _ := netns.Get()
		defer self.Close()
		cfd, _ := client.NS().Fd()
		rfd, _ := l.Host("router").NS().Fd()
		if self.Equal(netns.NsHandle(cfd)) || self.Equal(netns.NsHandle(rfd)) {
			t.Error("test goroutine is inside a lab namespace")
		}
	})
}

func TestPrivilegedWorld(t *testing.T) {
	w := NewWorld(t)
	node := w.Node

	t.Run("ping", func(t *testing.T) {
		for _, dst := range []string{DefaultRouter4, DefaultRouter6, WWW4, WWW6, "203.0.113.200", "2001:db8:100:ffff::1"} {
			out := node.Run(t, "ping", "-n", "-c1", "-W2", dst)
			if !strings.Contains(out, "1 received") {
				t.Errorf("ping %s: %s", dst, out)
			}
		}
	})
	t.Run("echo", func(t *testing.T) {
		for _, addr := range []string{Echo4 + ":7", "[" + Echo6 + "]:7", "203.0.113.1:7", "[2001:db8:100:42::42]:7"} {
			echoTCP(t, node, addr)
			echoUDP(t, node, addr)
		}
		if !w.WaitSeen(func(r Record) bool {
			return r.Service == "echo" && r.Proto == "udp" && r.Src.Addr().String() == NodeUplink6 && r.Dst.Addr().String() == "2001:db8:100:42::42"
		}, 2*time.Second) {
			t.Errorf("no udp echo record from %s; log:\n%v", NodeUplink6, w.Log())
		}
		if !w.Seen(func(r Record) bool {
			return r.Service == "echo" && r.Proto == "tcp" && r.Src.Addr().String() == NodeUplink4 && r.Dst.Addr().String() == "203.0.113.1" && r.Bytes > 0
		}) {
			t.Errorf("no tcp echo record from %s; log:\n%v", NodeUplink4, w.Log())
		}
	})
	t.Run("http", func(t *testing.T) {
		hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			DialContext: node.Dial, DisableKeepAlives: true}}
		for _, u := range []string{"http://" + WWW4 + "/", "http://[" + WWW6 + "]/", "http://203.0.113.5/bytes?n=100000"} {
			resp, err := hc.Get(u)
			if err != nil {
				t.Fatalf("GET %s: %v", u, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || len(body) == 0 {
				t.Errorf("GET %s: %d %q", u, resp.StatusCode, body)
			}
			if strings.HasSuffix(u, "/") && !strings.Contains(string(body), "hello "+NodeUplink4) && !strings.Contains(string(body), "hello "+NodeUplink6) {
				t.Errorf("GET %s: %q", u, body)
			}
			if strings.Contains(u, "bytes") && len(body) != 100000 {
				t.Errorf("GET %s: %d bytes", u, len(body))
			}
		}
		if !w.Seen(func(r Record) bool {
			return r.Service == "http" && r.Dst.Addr().String() == WWW6 && r.Detail == "GET /"
		}) {
			t.Errorf("no http record; log:\n%v", w.Log())
		}
	})
	t.Run("dns", func(t *testing.T) {
		r := dnsQuery(t, node, "udp", DNS6, "WWW.arkgw.TEST.", dns.TypeAAAA, 0)
		if len(r.Answer) != 1 || r.Answer[0].(*dns.AAAA).AAAA.String() != WWW6 || !r.Authoritative {
			t.Errorf("AAAA: %v", r)
		}
		// big: truncated over UDP even with a 1232-byte buffer, whole over TCP.
		r = dnsQuery(t, node, "udp", DNS4, BigName, dns.TypeTXT, 1232)
		if !r.Truncated {
			t.Errorf("big over udp not truncated: %v", r)
		}
		r = dnsQuery(t, node, "tcp", DNS4, BigName, dns.TypeTXT, 0)
		if r.Truncated || len(r.Answer) != 1 || r.Len() <= 1232 {
			t.Errorf("big over tcp: truncated=%v answers=%d len=%d", r.Truncated, len(r.Answer), r.Len())
		}
		r = dnsQuery(t, node, "udp", DNS4, "a.arkgw.test.", dns.TypeA, 0)
		if len(r.Answer) != 3 || r.Answer[2].(*dns.A).A.String() != WWW4 {
			t.Errorf("cname chain: %v", r)
		}
		r = dnsQuery(t, node, "udp", DNS4, "alias-out.arkgw.test.", dns.TypeA, 0)
		if len(r.Answer) != 2 || r.Answer[1].Header().Name != "www.denied.test." {
			t.Errorf("alias-out: %v", r)
		}
		r = dnsQuery(t, node, "udp", DNS4, "nope.arkgw.test.", dns.TypeA, 0)
		if r.Rcode != dns.RcodeNameError || len(r.Ns) != 1 {
			t.Errorf("nxdomain: %v", r)
		}
		if !w.Seen(func(r Record) bool {
			return r.Service == "dns" && r.Proto == "tcp" && r.Src.Addr().String() == NodeUplink4 && r.Detail == BigName+" TXT"
		}) {
			t.Errorf("no dns record; log:\n%v", w.Log())
		}
	})
	t.Run("spoofed-source-routed-back", func(t *testing.T) {
		// An un-NATed pool address on the node answers from inet too.
		if err := node.AddAddr("lo", "10.250.9.2/32"); err != nil {
			t.Fatal(err)
		}
		out := node.Run(t, "ping", "-n", "-c1", "-W2", "-I", "10.250.9.2", WWW4)
		if !strings.Contains(out, "1 received") {
			t.Errorf("ping from pool address: %s", out)
		}
	})
}

func TestPrivilegedCapture(t *testing.T) {
	w := NewWorld(t)
	c := w.Inet.Capture(t, InetIf)
	w.Node.Run(t, "ping", "-n", "-c1", "-W2", "198.51.100.77")
	isReq := func(p gopacket.Packet) bool {
		ip, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		return ok && IsICMPEcho(p, false) && ip.SrcIP.String() == NodeUplink4 && ip.DstIP.String() == "198.51.100.77"
	}
	if !c.Wait(isReq, 5*time.Second) {
		t.Fatalf("echo request not captured; %d packets", len(c.Packets()))
	}
	if !c.Wait(func(p gopacket.Packet) bool { return IsICMPEcho(p, true) }, 5*time.Second) {
		t.Fatal("echo reply not captured")
	}
	// Nothing matches a condition that cannot hold: Wait times out.
	if c.Wait(func(gopacket.Packet) bool { return false }, 100*time.Millisecond) {
		t.Fatal("impossible condition matched")
	}
}

// deadPID returns the pid of a process that has exited.
func deadPID(t *testing.T) int {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	if alive(pid) {
		t.Skipf("pid %d reused already", pid)
	}
	return pid
}

func TestPrivilegedSweep(t *testing.T) {
	requireRoot(t)
	stale := fmt.Sprintf("nl%dx%s-stale", deadPID(t), randID(6))
	live := fmt.Sprintf("nl%dx%s-live", os.Getpid(), randID(6))
	var paths []string
	for _, n := range []string{stale, live} {
		h, p, err := createNamed(n)
		if err != nil {
			t.Fatal(err)
		}
		h.Close()
		paths = append(paths, p)
	}
	t.Cleanup(func() {
		for _, p := range paths {
			removeNamed(p)
		}
	})
	removed, err := Sweep()
	if err != nil {
		t.Fatal(err)
	}
	if !contains(removed, stale) || contains(removed, live) {
		t.Errorf("sweep removed %v; want %s and not %s", removed, stale, live)
	}
	names, _ := List()
	if contains(names, stale) || !contains(names, live) {
		t.Errorf("after sweep: %v", names)
	}
	if _, err := os.Stat(filepath.Join(RunDir, stale)); !os.IsNotExist(err) {
		t.Errorf("stale file: %v", err)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func labNames(t *testing.T, id string) []string {
	names, err := List()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range names {
		if strings.Contains(n, "x"+id+"-") {
			out = append(out, n)
		}
	}
	return out
}

// fakeTB collects cleanups and turns Fatalf into a recorded failure, so a
// test can watch Build fail and its cleanup run.
type fakeTB struct {
	testing.TB
	mu       sync.Mutex
	cleanups []func()
	failed   string
}

func (f *fakeTB) Cleanup(fn func()) { f.mu.Lock(); f.cleanups = append(f.cleanups, fn); f.mu.Unlock() }
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.failed = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}
func (f *fakeTB) Errorf(format string, args ...any) { f.TB.Errorf(format, args...) }
func (f *fakeTB) runCleanups() {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
}

func TestPrivilegedCleanup(t *testing.T) {
	requireRoot(t)
	t.Run("after-success", func(t *testing.T) {
		var id string
		var procPID int
		t.Run("lab", func(t *testing.T) {
			l := Build(t, twoHop())
			id = l.ID()
			if n := len(labNames(t, id)); n != 3 {
				t.Fatalf("%d namespaces of lab %s, want 3", n, id)
			}
			if out, _ := exec.Command("ip", "netns", "list").CombinedOutput(); strings.Count(string(out), "x"+id+"-") != 3 {
				t.Errorf("ip netns list does not show the lab's 3 namespaces:\n%s", out)
			}
			// A process left running inside is killed by the cleanup.
			cmd := l.Host("server").Command(context.Background(), "sleep", "600")
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			procPID = cmd.Process.Pid
			go cmd.Wait()
		})
		if left := labNames(t, id); len(left) != 0 {
			t.Errorf("left after cleanup: %v", left)
		}
		// The same as iproute2 sees it.
		out, err := exec.Command("ip", "netns", "list").CombinedOutput()
		if err != nil || strings.Contains(string(out), "x"+id+"-") {
			t.Errorf("ip netns list after cleanup (%v):\n%s", err, out)
		}
		deadline := time.Now().Add(5 * time.Second)
		for alive(procPID) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if alive(procPID) {
			t.Errorf("process %d left in the lab still runs", procPID)
		}
	})
	t.Run("after-failure", func(t *testing.T) {
		before, _ := List()
		f := &fakeTB{TB: t}
		topo := twoHop()
		topo.Links[1].BIf = "this-name-is-too-long"
		var l *Lab
		done := make(chan struct{})
		go func() {
			defer close(done)
			l = Build(f, topo)
		}()
		<-done
		if f.failed == "" || l != nil {
			t.Fatalf("Build did not fail: %q", f.failed)
		}
		if !strings.Contains(f.failed, "this-name-is-too-long") {
			t.Errorf("error does not name the interface: %s", f.failed)
		}
		during, _ := List()
		// Only this process's namespaces: with go test -p, other packages'
		// labs come and go meanwhile.
		ours := fmt.Sprintf("%s%dx", NamePrefix, os.Getpid())
		var created []string
		for _, n := range during {
			if strings.HasPrefix(n, ours) && !contains(before, n) {
				created = append(created, n)
			}
		}
		if len(created) != 3 {
			t.Errorf("failed Build left %v before cleanup, want the 3 hosts (else this proves nothing)", created)
		}
		f.runCleanups()
		after, _ := List()
		for _, n := range created {
			if contains(after, n) {
				t.Errorf("namespace %s left after failed Build's cleanup", n)
			}
		}
	})
}

func TestPrivilegedAdopt(t *testing.T) {
	requireRoot(t)
	dir := filepath.Join(t.TempDir(), "ns")
	holder, err := nsholder.Create(nsholder.Config{Dir: dir, HostUID: 300000, HostGID: 300000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Remove() })
	holder.Release()
	t.Run("lab", func(t *testing.T) {
		l := Build(t, Topology{
			Hosts: []HostSpec{{Name: "host", Forward: true}, {Name: "exp", NetNSPath: holder.NetNSPath()}},
			Links: []LinkSpec{{A: "host", B: "exp", AIf: "arkx", BIf: "eth0",
				AAddrs: []string{"10.9.0.1/30", "fd09::1/64"}, BAddrs: []string{"10.9.0.2/30", "fd09::2/64"}}},
		})
		exp := l.Host("exp")
		if err := exp.AddRoute(RouteSpec{Dst: "default", Via: "10.9.0.1"}); err != nil {
			t.Fatal(err)
		}
		if v, err := exp.Sysctl("net.ipv4.ip_forward"); err != nil || v != "0" {
			t.Errorf("sysctl in adopted ns: %q %v", v, err)
		}
		out := l.Host("host").Run(t, "ping", "-n", "-c1", "-W2", "fd09::2")
		if !strings.Contains(out, "1 received") {
			t.Errorf("ping into adopted ns: %s", out)
		}
	})
	if _, err := os.Stat(holder.NetNSPath()); err != nil {
		t.Fatalf("adopted netns file removed: %v", err)
	}
	ns, err := netns.GetFromPath(holder.NetNSPath())
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
}

// Worlds built concurrently in one process stay separate: same addresses,
// own namespaces, own logs.
func TestPrivilegedParallelWorlds(t *testing.T) {
	requireRoot(t)
	for i := 0; i < 4; i++ {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			w := NewWorld(t)
			if err := w.Node.Ping(DefaultRouter6, 2*time.Second); err != nil {
				t.Error(err)
			}
			r := dnsQuery(t, w.Node, "udp", DNS4, fmt.Sprintf("w%d.wild.arkgw.test.", i), dns.TypeA, 0)
			if len(r.Answer) != 1 {
				t.Errorf("wildcard answer: %v", r)
			}
			echoTCP(t, w.Node, fmt.Sprintf("198.51.100.%d:7", 100+i))
			for _, rec := range w.Log() {
				if rec.Service == "echo" && rec.Dst.Addr().String() != fmt.Sprintf("198.51.100.%d", 100+i) {
					t.Errorf("record of another world: %v", rec)
				}
			}
		})
	}
}
