package dnsproxy

import (
	"context"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// freePort returns a port free on 127.0.0.1 for both UDP and TCP.
func freePort(t *testing.T) int {
	t.Helper()
	for i := 0; i < 20; i++ {
		u, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := u.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp", u.LocalAddr().String())
		u.Close()
		if err == nil {
			l.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// An explicit port gets a SO_REUSEPORT group of udpReaders sockets: every
// query is answered whichever member it lands on, a second proxy on the
// same address is refused (the TCP listener is exclusive), and stopping
// the proxy releases every descriptor.
func TestUDPReusePortGroup(t *testing.T) {
	up := startUpstream(t, nil)
	before := openFDs(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	p, err := New(Config{Experiment: "g1", Listen: []string{addr}, Names: []string{"example.org."}, Upstreams: []string{up.addr}})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.udp) != udpReaders {
		t.Fatalf("%d UDP sockets, want %d", len(p.udp), udpReaders)
	}
	if p2, err := New(Config{Experiment: "g2", Listen: []string{addr}, Any: true, Upstreams: []string{up.addr}}); err == nil {
		p2.Close()
		t.Fatal("a second proxy on the same address was accepted (it would share the first one's queries)")
	} else if !strings.Contains(err.Error(), "listen tcp") {
		t.Fatalf("second proxy: %v, want a TCP listen error", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()

	const n = 64 // fresh source ports: queries land on every member
	for i := 0; i < n; i++ {
		name := "x" + strconv.Itoa(i) + ".denied.test."
		if i%2 == 0 {
			name = "x" + strconv.Itoa(i) + ".example.org."
		}
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
		r, _, err := c.Exchange(m, addr)
		if err != nil {
			t.Fatalf("query %d (%s): %v", i, name, err)
		}
		want := dns.RcodeSuccess
		if i%2 == 1 {
			want = dns.RcodeRefused
		}
		if r.Id != m.Id || r.Rcode != want || r.Question[0].Name != name {
			t.Fatalf("query %d (%s): answer %v", i, name, r)
		}
	}
	if s := p.Stats(); s.Allowed != n/2 || s.Refused != n/2 {
		t.Errorf("stats %+v", s)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	deadline := time.Now().Add(5 * time.Second)
	for openFDs(t) > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if after := openFDs(t); after > before {
		t.Errorf("%d descriptors open after the proxy stopped, %d before", after, before)
	}
}

// Run after Close serves nothing and says so; the sockets are released.
func TestRunAfterClose(t *testing.T) {
	p, err := New(Config{Experiment: "c1", Listen: []string{"127.0.0.1:0"}, Any: true, Upstreams: []string{"127.0.0.1:9"}})
	if err != nil {
		t.Fatal(err)
	}
	addr := p.Addrs()[0].String()
	p.Close()
	if err := p.Run(context.Background()); err == nil {
		t.Fatal("Run after Close returned nil")
	}
	// The port is free again: the sockets were closed.
	u, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatalf("UDP port still bound after Close: %v", err)
	}
	u.Close()
}
