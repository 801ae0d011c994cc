package quota

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/arkgw/arkgw/netlab"
	"github.com/arkgw/arkgw/netlab/bwlab"
)

// push sends n bytes from exp to addr, giving up after d (the quota stalls
// it), and waits (settle) until they arrived or nothing moved for quiet
// before closing: the close discards unsent data (linger 0).
func push(t *testing.T, lab *bwlab.Lab, addr string, got *atomic.Int64, n int, d, quiet time.Duration) int64 {
	t.Helper()
	c, err := lab.Exp.Dial(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	// Linger 0: closing discards unsent data (a stalled connection would
	// otherwise go on sending once the quota lets it).
	defer func() { c.(*net.TCPConn).SetLinger(0); c.Close() }()
	c.SetWriteDeadline(time.Now().Add(d))
	start := got.Load()
	buf := make([]byte, 32<<10)
	sent := 0
	for sent < n {
		w, err := c.Write(buf[:min(len(buf), n-sent)])
		sent += w
		if err != nil {
			break
		}
	}
	return settle(got, start+int64(n), quiet) - start
}

// settle waits until got stops growing (for quiet) or reaches want.
func settle(got *atomic.Int64, want int64, quiet time.Duration) int64 {
	last, since := got.Load(), time.Now()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		v := got.Load()
		if v >= want {
			return v
		}
		if v != last {
			last, since = v, time.Now()
		} else if time.Since(since) > quiet {
			return v
		}
	}
	return got.Load()
}

// ipBytes is rx IP bytes (frames minus Ethernet headers) of an interface.
func ipBytes(t *testing.T, h *netlab.Host, ifname string) uint64 {
	rb, rp, _, _, err := bwlab.LinkStats(h, ifname)
	if err != nil {
		t.Fatal(err)
	}
	return rb - 14*rp
}

func TestPrivilegedQuotaStopsAtBudget(t *testing.T) {
	lab := bwlab.New(t)
	addr, got := lab.Sink(t, bwlab.InetIP)
	tab := New(Config{NS: lab.Node.NS(), NFLOGGroup: 7})
	const budget = 2_000_000
	e := Exp{ID: "q1", HostIf: bwlab.HostIf, BudgetBytes: budget}
	created, err := tab.Add(e)
	if err != nil {
		t.Fatal(err)
	}
	if !created {
		t.Errorf("first Add: created = false")
	}
	out := lab.Node.Run(t, "nft", "list", "table", "inet", TableName)
	for _, want := range []string{`log prefix "ark:q1:quota" group 7`, "quota name \"q1_quota\"", "priority filter + 10"} {
		if !strings.Contains(out, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, out)
		}
	}

	inet0, exp0 := ipBytes(t, lab.Inet, "eth0"), ipBytes(t, lab.Exp, "eth0")
	push(t, lab, addr, got, 4*budget, 3*time.Second, time.Second)
	delivered := ipBytes(t, lab.Inet, "eth0") - inet0 + ipBytes(t, lab.Exp, "eth0") - exp0
	cs, err := tab.Read()
	if err != nil {
		t.Fatal(err)
	}
	c := cs["q1"]
	t.Logf("payload arrived %d, IP bytes delivered both ways %d, counters up %d down %d, quota used %d, dropped %d",
		got.Load(), delivered, c.Up, c.Down, c.QuotaUsed, c.Dropped)
	tol := max(int64(budget/100), 64<<10)
	if d := int64(delivered) - budget; d > tol || d < -tol {
		t.Errorf("delivered %d IP bytes, want the budget %d within %d", delivered, budget, tol)
	}
	if c.Dropped == 0 {
		t.Errorf("no bytes dropped by the quota")
	}
	if c.Budget != budget {
		t.Errorf("budget read back %d", c.Budget)
	}
	if d := int64(c.Up+c.Down) - int64(delivered); d > tol || d < -tol {
		t.Errorf("counters up+down %d differ from delivered %d", c.Up+c.Down, delivered)
	}

	// Re-adding (daemon restart with the table kept) keeps counters and quota.
	created, err = tab.Add(e)
	if err != nil {
		t.Fatal(err)
	}
	if created {
		t.Errorf("second Add: created = true, want counters kept")
	}
	cs2, _ := tab.Read()
	if cs2["q1"].Up < c.Up || cs2["q1"].QuotaUsed < c.QuotaUsed {
		t.Errorf("re-Add lost state: before %+v after %+v", c, cs2["q1"])
	}

	// Day rollover: reset, traffic flows again.
	used, err := tab.ResetQuota("q1")
	if err != nil {
		t.Fatal(err)
	}
	if used < budget {
		t.Errorf("ResetQuota returned %d, want >= budget", used)
	}
	if n := push(t, lab, addr, got, 500_000, 3*time.Second, 3*time.Second); n < 400_000 {
		cs, _ := tab.Read()
		t.Errorf("after reset only %d bytes arrived (used before reset %d; now %+v)", n, used, cs["q1"])
		t.Log(lab.Node.Run(t, "nft", "list", "table", "inet", TableName))
	}

	// Restore a used value close to the budget: traffic stops soon.
	if err := tab.RestoreUsed(e, budget-100_000); err != nil {
		t.Fatal(err)
	}
	cs3, _ := tab.Read()
	if cs3["q1"].QuotaUsed != budget-100_000 || cs3["q1"].Up < cs2["q1"].Up {
		t.Errorf("after RestoreUsed: %+v (counters must stay)", cs3["q1"])
	}
	if n := push(t, lab, addr, got, 1_000_000, 2*time.Second, time.Second); n > 100_000+64<<10 {
		t.Errorf("after restoring used=budget-100k, %d bytes arrived", n)
	}

	// Raise the budget: flows again.
	if err := tab.SetBudget("q1", 10*budget); err != nil {
		t.Fatal(err)
	}
	cs4, _ := tab.Read()
	t.Logf("after SetBudget: %+v", cs4["q1"])
	if n := push(t, lab, addr, got, 300_000, 3*time.Second, 3*time.Second); n < 250_000 {
		t.Errorf("after raising the budget only %d bytes arrived", n)
	}

	// IPv6 is counted too (inet table).
	addr6, got6 := lab.Sink(t, bwlab.InetIP6)
	cs5, _ := tab.Read()
	if n := push(t, lab, addr6, got6, 200_000, 3*time.Second, 3*time.Second); n < 200_000 {
		t.Errorf("IPv6: only %d of 200000 bytes arrived", n)
	}
	cs6, _ := tab.Read()
	if d := cs6["q1"].Up - cs5["q1"].Up; d < 200_000 {
		t.Errorf("IPv6 upload counted %d bytes, want >= 200000", d)
	}

	if err := tab.Remove("q1"); err != nil {
		t.Fatal(err)
	}
	if err := tab.Remove("q1"); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	out = lab.Node.Run(t, "nft", "list", "table", "inet", TableName)
	if strings.Contains(out, "q1") {
		t.Errorf("left after Remove:\n%s", out)
	}
	if err := tab.Delete(); err != nil {
		t.Fatal(err)
	}
}
