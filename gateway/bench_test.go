package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/netlab"
)

// bigPolicy is an allowlist of n distinct /32:port entries in the fake
// Internet's 203.0.113.0/24 and 198.51.100.0/24, plus extra.
func bigPolicy(id string, n int, extra ...configs.Dest) *configs.Effective {
	eff := &configs.Effective{ID: id, IPv4: true, IPv6: true, ICMPAny: true}
	for i := 0; len(eff.TCP) < n; i++ {
		// Spread over public-looking space outside the reserved ranges.
		a := netip.AddrFrom4([4]byte{100 + byte(i/65536), byte(i / 256 % 256), byte(i % 256), 1})
		eff.TCP = append(eff.TCP, configs.Dest{Prefix: netip.PrefixFrom(a, 32), Ports: []configs.PortRange{{Lo: uint16(1000 + i%5000), Hi: uint16(1000 + i%5000)}}})
	}
	eff.TCP = append(eff.TCP, extra...)
	return eff
}

// iperf runs an iperf3 client in the experiment against inet and returns
// bits per second received.
func iperf(t *testing.T, exp *netlab.Host, server string, secs int) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs+15)*time.Second)
	defer cancel()
	out, err := exp.Command(ctx, "iperf3", "-c", server, "-t", fmt.Sprint(secs), "-J").Output()
	if err != nil {
		t.Fatalf("iperf3 client: %v: %s", err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("iperf3 output: %v", err)
	}
	return res.End.SumReceived.BitsPerSecond
}

// TestBenchGateway: TCP throughput through an experiment with a 1,000-entry
// allowlist vs the same topology without any rules, and the time to apply
// a 10,000-entry policy. Run with ARKGW_BENCH=1 (make bench-gateway).
func TestBenchGateway(t *testing.T) {
	if os.Getenv("ARKGW_BENCH") != "1" {
		t.Skip("benchmark: set ARKGW_BENCH=1")
	}
	needRoot(t)
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Skip("needs iperf3 (apt install iperf3)")
	}
	l := newLab(t)
	// The lab's packet capture on the fake Internet (for the tests'
	// assertions) would copy every packet of the measurement into this
	// process, a third of the machine's CPU.
	l.inetCp.Close()
	server := "198.51.100.201"
	srvCtx, stop := context.WithCancel(context.Background())
	defer stop()
	srv := l.w.Inet.Command(srvCtx, "iperf3", "-s", "-B", server)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Wait()
	defer stop()

	eff := bigPolicy("bench", 1000, configs.Dest{Prefix: netip.MustParsePrefix(server + "/32"), Ports: []configs.PortRange{{Lo: 5201, Hi: 5201}}})
	n, _ := l.add(t, eff, 0)
	exp := netlab.Build(t, netlab.Topology{Hosts: []netlab.HostSpec{{Name: "exp", NetNSPath: n.NetNSPath}}}).Host("exp")
	// Wait for the server.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := dialIn(exp.NS(), "tcp", server+":5201", time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("iperf3 server: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)

	// Alternate short runs so that load from elsewhere on the machine
	// hits both sides alike; compare medians.
	const secs, rounds = 2, 15
	var withs, withouts []float64
	rs := l.g.Ruleset()
	// How big the packets through the gateway are (a GSO packet counts
	// once): per-packet costs matter only as much as there are packets.
	hostLink := func() (pk, by uint64) {
		lk, err := l.w.Node.Handle().LinkByName(n.HostIf)
		if err != nil || lk.Attrs().Statistics == nil {
			return 0, 0
		}
		st := lk.Attrs().Statistics
		return st.RxPackets + st.TxPackets, st.RxBytes + st.TxBytes
	}
	pk0, by0 := hostLink()
	defer func() {
		pk1, by1 := hostLink()
		if pk1 > pk0 {
			t.Logf("through %s: %d packets, %.0f bytes each on average", n.HostIf, pk1-pk0, float64(by1-by0)/float64(pk1-pk0))
		}
	}()
	// Each run starts a moment after the table was loaded or deleted (the
	// kernel finishes such a transaction in deferred work), and the order
	// of the arms rotates, so that none always runs first.
	settle := func() { time.Sleep(500 * time.Millisecond) }
	runWith := func() {
		if err := applyRuleset(l.w.Node.NS(), rs); err != nil {
			t.Fatal(err)
		}
		settle()
		withs = append(withs, iperf(t, exp, server, secs))
		if err := deleteTable(l.w.Node.NS(), TableName); err != nil {
			t.Fatal(err)
		}
	}
	runWithout := func() {
		// No rules at all: inet routes the pool back, so nothing is needed.
		settle()
		withouts = append(withouts, iperf(t, exp, server, secs))
	}
	arms := []func(){runWith, runWithout}
	// ARKGW_BENCH_NATONLY=1: a third arm, a table holding nothing but the
	// masquerade: conntrack and NAT, the floor of any policy that NATs.
	// (An nftables flowtable, which would take established flows off
	// that path, is not an option: this kernel has no
	// CONFIG_NF_FLOW_TABLE, and it would bypass gateway/quota's
	// forward-hook accounting.)
	var nats []float64
	if os.Getenv("ARKGW_BENCH_NATONLY") == "1" {
		arms = append(arms, func() {
			l.w.Node.Run(t, "nft", "add table inet natonly; add chain inet natonly post { type nat hook postrouting priority 100; }; add rule inet natonly post oifname eth0 ip saddr 10.250.0.0/16 masquerade")
			settle()
			nats = append(nats, iperf(t, exp, server, secs))
			l.w.Node.Run(t, "nft", "delete table inet natonly")
		})
	}
	for round := 0; round < rounds; round++ {
		for i := range arms {
			arms[(round+i)%len(arms)]()
		}
	}
	if len(nats) > 0 {
		t.Logf("nat-only vs none: median ratio %.3f; full policy vs nat-only: %.3f",
			median(pairRatios(nats, withouts)), median(pairRatios(withs, nats)))
	}
	with, without := median(withs), median(withouts)
	var ratios []float64
	for i := range withs {
		ratios = append(ratios, withs[i]/withouts[i])
	}
	if err := applyRuleset(l.w.Node.NS(), rs); err != nil {
		t.Fatal(err)
	}

	// Apply time of a 10,000-entry policy: compile + one transaction.
	big := bigPolicy(eff.ID, 10000)
	var best time.Duration
	for i := 0; i < 3; i++ {
		start := time.Now()
		if err := l.g.Update(context.Background(), []*configs.Effective{big}); err != nil {
			t.Fatal(err)
		}
		d := time.Since(start)
		if best == 0 || d < best {
			best = d
		}
	}
	// Where the time goes.
	start := time.Now()
	rs10k, err := Compile(CompileInput{Uplink: "eth0", NFLOGGroup: 1, Exps: []CompileExp{{Eff: big, Net: n}}})
	if err != nil {
		t.Fatal(err)
	}
	compileD := time.Since(start)
	start = time.Now()
	if err := applyRuleset(l.w.Node.NS(), rs10k); err != nil {
		t.Fatal(err)
	}
	t.Logf("10k: compile %v, apply %v, update (compile+apply+conntrack) best %v", compileD, time.Since(start), best)
	t.Logf("runs with rules %.0f, without %.0f (bit/s)", withs, withouts)
	t.Logf("median with rules %.0f Mbit/s, without %.0f Mbit/s; ratio of medians %.3f, of best runs %.3f",
		with/1e6, without/1e6, with/without, slices.Max(withs)/slices.Max(withouts))
	// The figure: the median of the ratios of adjacent runs (robust
	// against load from elsewhere on a shared machine).
	fmt.Printf("bench-gateway ratio=%.3f apply10k_ms=%d\n", median(ratios), best.Milliseconds())
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	slices.Sort(s)
	return s[len(s)/2]
}

func pairRatios(a, b []float64) []float64 {
	var out []float64
	for i := range a {
		out = append(out, a[i]/b[i])
	}
	return out
}
