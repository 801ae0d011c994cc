package pcapstream

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/arkgw/arkgw/pcapstream/wire"
	"github.com/arkgw/arkgw/reexec"
)

// An experiment's connections to its pcap socket are bounded: at most
// MaxPending without a request, at most MaxConns in all; connections over
// the caps get an error frame and are closed at once, and a connection
// that sends nothing is closed after HandshakeTimeout. (No capture is
// opened: no reader completes a handshake, so no root is needed.)
func TestConnectionCaps(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "pcap.sock")
	s, err := New(Config{Experiment: "cap1", Iface: "arkcap1", SocketPath: sock,
		SocketUID: os.Getuid(), SocketGID: os.Getgid(), MaxPending: 3, MaxConns: 5, HandshakeTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	<-s.Ready()

	const n = 20
	conns := make([]*net.UnixConn, n)
	for i := range conns {
		c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	waitUntil(t, "the flood accepted or refused", 5*time.Second, func() bool {
		st := s.Stats()
		return st.Connections+st.Overflow == n
	})
	st := s.Stats()
	if st.Pending != 3 || st.Open != 3 || st.Overflow != n-3 {
		t.Fatalf("stats %+v, want 3 pending, 3 open, %d refused over the caps", st, n-3)
	}
	// The refused ones were told why and closed.
	refusals := 0
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		typ, p, _, err := wire.ReadFrame(c, nil)
		if err == nil && typ == wire.FrameError && strings.Contains(string(p), "too many pcap connections") {
			refusals++
			if _, _, _, err := wire.ReadFrame(c, nil); err != io.EOF {
				t.Errorf("refused connection not closed: %v", err)
			}
		}
	}
	if refusals != n-3 {
		t.Fatalf("%d connections told they are over the cap, want %d", refusals, n-3)
	}
	// The silent ones are closed by the handshake deadline: the slots free.
	waitUntil(t, "handshake deadline", 5*time.Second, func() bool { st := s.Stats(); return st.Open == 0 && st.Pending == 0 })
}

func waitUntil(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// floodHandler is a hostile experiment process: it holds n connections to
// the pcap socket without ever sending a request, and opens a new one
// whenever the daemon closes one, until its stdin closes (or a minute
// passes).
const floodHandler = "pcapstream-flood"

func init() {
	reexec.Register(floodHandler, func() {
		sock := os.Args[1]
		n, _ := strconv.Atoi(os.Args[2])
		stop := make(chan struct{})
		go func() {
			io.Copy(io.Discard, os.Stdin)
			close(stop)
		}()
		var ready sync.WaitGroup
		ready.Add(n)
		for i := 0; i < n; i++ {
			go func() {
				first := true
				for {
					c, err := net.Dial("unix", sock)
					if first {
						ready.Done()
						first = false
					}
					if err == nil {
						io.Copy(io.Discard, c) // until the daemon closes it
						c.Close()
					}
					select {
					case <-stop:
						return
					case <-time.After(50 * time.Millisecond):
					}
				}
			}()
		}
		ready.Wait()
		fmt.Println("ready")
		select {
		case <-stop:
		case <-time.After(time.Minute):
		}
		os.Exit(0)
	})
}

// openFDs counts this process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestPrivilegedPcapFlood: experiment 1 floods its pcap socket from
// several processes, each holding 1000 connections without a handshake
// and reconnecting as they are closed (the shape of the attack that once
// exhausted the daemon's descriptors). The daemon's descriptors stay
// bounded: experiment 2's pcap stream works throughout, and the daemon
// can still open files and sockets. The test process is the daemon here,
// with a descriptor limit of what it holds plus 600, so that an unbounded
// server would run out.
func TestPrivilegedPcapFlood(t *testing.T) {
	l := newLab(t)
	srv1, sock1 := startServer(t, l, "pf1", exp1If, nil)
	_, sock2 := startServer(t, l, "pf2", exp2If, nil)

	limit := uint64(openFDs(t) + 600 + 3*3) // + the flood processes' pipes
	const procs, per = 3, 1000
	for i := 0; i < procs; i++ {
		cmd := reexec.Command(floodHandler, sock1, strconv.Itoa(per))
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			stdin.Close()
			cmd.Wait()
		})
		line, err := bufio.NewReader(out).ReadString('\n')
		if err != nil || line != "ready\n" {
			t.Fatalf("flood process %d: %q %v", i, line, err)
		}
	}
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: limit, Max: old.Max}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Setrlimit(unix.RLIMIT_NOFILE, &old) })
	// The flood goes on: the server holds at most its caps.
	time.Sleep(time.Second)
	st := srv1.Stats()
	t.Logf("flooded server: %d open, %d pending, %d refused over the caps; daemon holds %d descriptors (limit %d)", st.Open, st.Pending, st.Overflow, openFDs(t), limit)
	if st.Open > DefaultMaxConns || st.Pending > DefaultMaxPending {
		t.Fatalf("flooded server holds %d connections (%d pending), caps %d/%d", st.Open, st.Pending, DefaultMaxConns, DefaultMaxPending)
	}
	if st.Overflow == 0 {
		t.Fatal("no connection was refused over the caps: the flood did not reach the server")
	}

	// Experiment 2's pcap is served during the flood.
	c := dialRaw(t, sock2, wire.Request{Count: 3, Filter: "icmp"})
	l.exp2.Run(t, "ping", "-n", "-c", "3", "-i", "0.2", "198.51.100.1")
	n, rst, errMsg := readToEnd(t, c)
	if errMsg != "" || rst.Packets != 3 || n == 0 {
		t.Fatalf("experiment 2's reader during the flood: %d pcap bytes, stats %+v, error %q", n, rst, errMsg)
	}
	// And the daemon can still open descriptors.
	for i := 0; i < 50; i++ {
		f, err := os.Open("/proc/self/status")
		if err != nil {
			t.Fatalf("daemon out of descriptors during the flood: %v", err)
		}
		defer f.Close()
	}
}
