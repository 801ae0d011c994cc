// Package bwlab builds the small netlab topology the bandwidth and quota
// tests share (an experiment, the node, a fake Internet) and runs iperf3
// across it. Test support only: production code must not import it.
package bwlab

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/arkgw/arkgw/netlab"
	"github.com/arkgw/arkgw/nsdo"
)

// Addresses of the lab.
const (
	HostIf  = "arkbw1" // the node's end of the experiment veth (named like the gateway's)
	ExpAddr = "10.250.0.2"
	GWAddr  = "10.250.0.1"
	InetIP  = "192.168.77.1"
	NodeIP  = "192.168.77.2"
	Uplink  = "eth0" // on the node

	ExpAddr6 = "fd00:a4c::2"
	GWAddr6  = "fd00:a4c::1"
	InetIP6  = "fd77::1"
	NodeIP6  = "fd77::2"
)

// Lab is exp <-> node <-> inet.
type Lab struct {
	*netlab.Lab
	Exp, Node, Inet *netlab.Host
	// NodeNS is what code under test is given for the node: Node.NS(), or
	// nsdo.Current() in a lab from NewAt(t, true).
	NodeNS nsdo.NS
}

// New builds the lab (skips t when not root).
func New(t testing.TB) *Lab { return NewAt(t, false) }

// NewAt is New; with current, the node is the namespace the test process
// runs in (only inside netlab.InOwnNetNS's child) and NodeNS is
// nsdo.Current().
func NewAt(t testing.TB, current bool) *Lab {
	t.Helper()
	l := netlab.Build(t, netlab.Topology{
		Hosts: []netlab.HostSpec{
			{Name: "exp", Routes: []netlab.RouteSpec{{Dst: "default", Via: GWAddr}, {Dst: "default6", Via: GWAddr6}}},
			{Name: "node", Current: current, Forward: true, Routes: []netlab.RouteSpec{{Dst: "default", Via: InetIP}, {Dst: "default6", Via: InetIP6}}},
			{Name: "inet", Routes: []netlab.RouteSpec{{Dst: "10.250.0.0/16", Via: NodeIP}, {Dst: "fd00:a4c::/48", Via: NodeIP6}}},
		},
		Links: []netlab.LinkSpec{
			{A: "exp", B: "node", AIf: "eth0", BIf: HostIf, AAddrs: []string{ExpAddr + "/30", ExpAddr6 + "/64"}, BAddrs: []string{GWAddr + "/30", GWAddr6 + "/64"}},
			{A: "node", B: "inet", AIf: Uplink, BIf: "eth0", AAddrs: []string{NodeIP + "/24", NodeIP6 + "/64"}, BAddrs: []string{InetIP + "/24", InetIP6 + "/64"}},
		},
	})
	lab := &Lab{Lab: l, Exp: l.Host("exp"), Node: l.Host("node"), Inet: l.Host("inet"), NodeNS: l.Host("node").NS()}
	if current {
		lab.NodeNS = nsdo.Current()
	}
	return lab
}

// Server starts "iperf3 -s" on inet and returns its port; it stops with t.
func (l *Lab) Server(t testing.TB) int {
	t.Helper()
	ln, err := l.Inet.Listen("tcp", InetIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := l.Inet.Command(ctx, "iperf3", "-s", "-B", InetIP, "-p", strconv.Itoa(port))
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start iperf3 server: %v", err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	// Wait until it listens.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		c, err := l.Exp.Dial(context.Background(), "tcp", net.JoinHostPort(InetIP, strconv.Itoa(port)))
		if err == nil {
			c.Close()
			return port
		}
		// Route may be shaped/blocked in odd tests; dial from node instead.
		c, err = l.Node.Dial(context.Background(), "tcp", net.JoinHostPort(InetIP, strconv.Itoa(port)))
		if err == nil {
			c.Close()
			return port
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("iperf3 server on %s:%d did not come up", InetIP, port)
	return 0
}

// Result of one iperf3 run.
type Result struct {
	GoodputBps float64 // receiver's payload bit/s
	Seconds    float64
	Bytes      uint64 // payload bytes received
}

type iperfJSON struct {
	End struct {
		SumReceived struct {
			Seconds       float64 `json:"seconds"`
			Bytes         uint64  `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

// Client runs iperf3 from exp for secs seconds; reverse = download.
func (l *Lab) Client(ctx context.Context, port int, secs int, reverse bool, extra ...string) (Result, error) {
	args := []string{"-c", InetIP, "-p", strconv.Itoa(port), "-t", strconv.Itoa(secs), "-J"}
	if reverse {
		args = append(args, "-R")
	}
	args = append(args, extra...)
	cmd := l.Exp.Command(ctx, "iperf3", args...)
	out, err := cmd.Output()
	var j iperfJSON
	if jerr := json.Unmarshal(out, &j); jerr != nil {
		if err == nil {
			err = jerr
		}
		if ee, ok := err.(*exec.ExitError); ok {
			return Result{}, fmt.Errorf("iperf3: %w: %s", err, ee.Stderr)
		}
		return Result{}, fmt.Errorf("iperf3: %w: %s", err, out)
	}
	if j.Error != "" {
		return Result{}, fmt.Errorf("iperf3: %s", j.Error)
	}
	s := j.End.SumReceived
	return Result{GoodputBps: s.BitsPerSecond, Seconds: s.Seconds, Bytes: s.Bytes}, nil
}

// LinkStats returns rx/tx bytes and packets of an interface of host h.
func LinkStats(h *netlab.Host, ifname string) (rxB, rxP, txB, txP uint64, err error) {
	link, err := h.Handle().LinkByName(ifname)
	if err != nil {
		return 0, 0, 0, 0, err
	}
	st := link.Attrs().Statistics
	return st.RxBytes, st.RxPackets, st.TxBytes, st.TxPackets, nil
}

// Nft loads an nft script into the node's netns (tests may shell out).
func (l *Lab) Nft(t testing.TB, script string) {
	t.Helper()
	cmd := l.Node.Command(context.Background(), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v\n%s\n%s", err, out, script)
	}
}

// Sink accepts TCP connections on inet at ip and counts the payload bytes
// that arrive, until the test ends.
func (l *Lab) Sink(t testing.TB, ip string) (addr string, got *atomic.Int64) {
	t.Helper()
	ln, err := l.Inet.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got = new(atomic.Int64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					got.Add(int64(n))
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), got
}
