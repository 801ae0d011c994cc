package shape

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/arkgw/arkgw/netlab"
	"github.com/arkgw/arkgw/netlab/bwlab"
	"github.com/vishvananda/netlink"
)

// TestPrivilegedShapeBothDirections: iperf3 through a shaped veth lands
// within 10% of the cap in both directions, Update changes the cap live,
// Remove leaves nothing behind.
func TestPrivilegedShapeBothDirections(t *testing.T) {
	lab := bwlab.New(t)
	port := lab.Server(t)
	up, down := Priorities(3)
	lab.Nft(t, fmt.Sprintf(`table inet shapetest {
		chain forw { type filter hook forward priority 10;
			iifname %q meta priority set %x:%x
			oifname %q meta priority set %x:%x
		}
	}`, bwlab.HostIf, up>>16, up&0xffff, bwlab.HostIf, down>>16, down&0xffff))
	s, err := NewShaper(ShaperConfig{NS: lab.Node.NS(), Uplinks: []string{bwlab.Uplink}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	const capBps = 5_000_000
	spec := Spec{ID: "bw1", HostIf: bwlab.HostIf, Slot: 3, RateBps: capBps}
	if err := s.Apply(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(ctx, spec); err != nil { // idempotent
		t.Fatalf("second Apply: %v", err)
	}
	check := func(name string, reverse bool, want float64) {
		t.Helper()
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		r, err := lab.Client(rctx, port, 4, reverse)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		ratio := r.GoodputBps / want
		t.Logf("%s: goodput %.3f Mbit/s = %.3f of cap %.1f Mbit/s", name, r.GoodputBps/1e6, ratio, want/1e6)
		if ratio < 0.9 || ratio > 1.1 {
			t.Errorf("%s: goodput %.0f bit/s not within 10%% of the cap %.0f", name, r.GoodputBps, want)
		}
	}
	check("upload", false, capBps)
	check("download", true, capBps)

	if err := s.Update(ctx, "bw1", 2_000_000); err != nil {
		t.Fatal(err)
	}
	if r, ok := s.Rate("bw1"); !ok || r != 2_000_000 {
		t.Errorf("Rate = %d %v, want 2e6", r, ok)
	}
	check("download after Update", true, 2_000_000)

	// The node-wide cap below the experiment's: both directions follow it
	// (upload through the uplink's shared tree, classified by the nft
	// priority mark).
	if err := s.Update(ctx, "bw1", 20_000_000); err != nil {
		t.Fatal(err)
	}
	if err := s.SetNodeCap(ctx, 3_000_000); err != nil {
		t.Fatal(err)
	}
	if r, _ := s.Rate("bw1"); r != 3_000_000 {
		t.Errorf("Rate under node cap = %d, want 3e6", r)
	}
	check("upload under node cap", false, 3_000_000)
	check("download under node cap", true, 3_000_000)

	if err := s.Remove(ctx, "bw1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(ctx, "bw1"); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	for _, n := range []string{UpIFB, DownIFB, spec.OwnIFB()} {
		if _, err := lab.Node.Handle().LinkByName(n); err == nil {
			t.Errorf("%s still exists after Remove", n)
		}
	}
	link, err := lab.Node.Handle().LinkByName(bwlab.HostIf)
	if err != nil {
		t.Fatal(err)
	}
	qs, _ := lab.Node.Handle().QdiscList(link)
	for _, q := range qs {
		if q.Type() == "clsact" {
			t.Errorf("clsact still on %s after Remove", bwlab.HostIf)
		}
	}
	fs, _ := lab.Node.Handle().FilterList(link, netlink.HANDLE_MIN_INGRESS)
	if len(fs) != 0 {
		t.Errorf("filters left on %s: %v", bwlab.HostIf, fs)
	}
	out := lab.Node.Run(t, "ip", "-o", "link")
	if strings.Contains(out, "ifb") {
		t.Errorf("ifb left:\n%s", out)
	}
	if out := lab.Node.Run(t, "tc", "filter", "show", "dev", bwlab.Uplink, "egress"); strings.Contains(out, "mirred") {
		t.Errorf("redirect left on the uplink:\n%s", out)
	}
}

// TestPrivilegedSweep: what a crashed daemon left (IFBs, redirects,
// clsact) is gone after Sweep; an IFB of a kept experiment stays.
func TestPrivilegedSweep(t *testing.T) {
	lab := bwlab.New(t)
	s, err := NewShaper(ShaperConfig{NS: lab.Node.NS(), Uplinks: []string{bwlab.Uplink}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(context.Background(), Spec{ID: "sw1", HostIf: bwlab.HostIf, Slot: 0, RateBps: 1_000_000}); err != nil {
		t.Fatal(err)
	}
	s.Close() // "crash": nothing removed
	if err := Sweep(lab.Node.NS(), []string{bwlab.Uplink}, []string{bwlab.HostIf}, map[string]bool{"sw1": true}); err != nil {
		t.Fatal(err)
	}
	if _, err := lab.Node.Handle().LinkByName("arkusw1"); err != nil {
		t.Errorf("kept experiment's IFB removed: %v", err)
	}
	if err := Sweep(lab.Node.NS(), []string{bwlab.Uplink}, []string{bwlab.HostIf}, nil); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{UpIFB, DownIFB, "arkusw1"} {
		if _, err := lab.Node.Handle().LinkByName(n); err == nil {
			t.Errorf("%s left after Sweep", n)
		}
	}
	if out := lab.Node.Run(t, "tc", "filter", "show", "dev", bwlab.Uplink, "egress"); strings.Contains(out, "mirred") {
		t.Errorf("uplink redirect left:\n%s", out)
	}
	if out := lab.Node.Run(t, "tc", "qdisc", "show", "dev", bwlab.HostIf); strings.Contains(out, "clsact") {
		t.Errorf("clsact left on the veth:\n%s", out)
	}
}

// TestPrivilegedFairShareFollowsStarts: under a node cap, an experiment's
// start halves the guaranteed rate of the one already running and its
// stop gives it back (Apply writes only changed classes, so this proves
// a change in another experiment's share is still written).
func TestPrivilegedFairShareFollowsStarts(t *testing.T) {
	lab := bwlab.New(t)
	h := lab.Node.Handle()
	second := "arkshare" + fmt.Sprint(time.Now().UnixNano()%1000)
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: second}, PeerName: second + "p"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if l, err := h.LinkByName(second); err == nil {
			h.LinkDel(l)
		}
	})
	const node = 10_000_000
	s, err := NewShaper(ShaperConfig{NS: lab.Node.NS(), Uplinks: []string{bwlab.Uplink}, NodeBps: node})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	a := Spec{ID: "sha", HostIf: bwlab.HostIf, Slot: 3}
	b := Spec{ID: "shb", HostIf: second, Slot: 4}
	t.Cleanup(func() { s.Remove(ctx, b.ID); s.Remove(ctx, a.ID) })
	rateOf := func(spec Spec) uint64 {
		t.Helper()
		ifb, err := h.LinkByName(DownIFB)
		if err != nil {
			t.Fatal(err)
		}
		cs, err := h.ClassList(ifb, netlink.MakeHandle(DownMajor, 0))
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cs {
			if hc, ok := c.(*netlink.HtbClass); ok && hc.Handle == netlink.MakeHandle(DownMajor, spec.Minor()) {
				return hc.Rate
			}
		}
		t.Fatalf("no class for %s", spec.ID)
		return 0
	}
	if err := s.Apply(ctx, a); err != nil {
		t.Fatal(err)
	}
	alone := rateOf(a)
	if want := FrameRate(node, DefaultMTU); alone != want {
		t.Fatalf("alone: rate %d B/s, want the whole cap %d", alone, want)
	}
	if err := s.Apply(ctx, b); err != nil {
		t.Fatal(err)
	}
	if got, want := rateOf(a), FrameRate(node/2, DefaultMTU); got != want {
		t.Errorf("with two: rate of the first %d B/s, want half the cap %d", got, want)
	}
	if err := s.Remove(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	if got := rateOf(a); got != alone {
		t.Errorf("after the second stopped: rate %d B/s, want %d back", got, alone)
	}
}

// The shaper caps the rate in the namespace it is given, including the
// current one (a node's daemon runs in the node's namespace, no handle),
// and Remove leaves nothing there.
func TestPrivilegedShaperNamespace(t *testing.T) {
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
			lab := bwlab.NewAt(t, tc.current)
			port := lab.Server(t)
			up, down := Priorities(1)
			lab.Nft(t, fmt.Sprintf(`table inet shapetest {
				chain forw { type filter hook forward priority 10;
					iifname %q meta priority set %x:%x
					oifname %q meta priority set %x:%x
				}
			}`, bwlab.HostIf, up>>16, up&0xffff, bwlab.HostIf, down>>16, down&0xffff))
			s, err := NewShaper(ShaperConfig{NS: lab.NodeNS, Uplinks: []string{bwlab.Uplink}})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			ctx := context.Background()
			const capBps = 5_000_000
			spec := Spec{ID: "ns1", HostIf: bwlab.HostIf, Slot: 1, RateBps: capBps}
			if err := s.Apply(ctx, spec); err != nil {
				t.Fatal(err)
			}
			for _, reverse := range []bool{false, true} {
				rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				r, err := lab.Client(rctx, port, 3, reverse)
				cancel()
				if err != nil {
					t.Fatalf("iperf3 (reverse %v): %v", reverse, err)
				}
				if ratio := r.GoodputBps / capBps; ratio < 0.85 || ratio > 1.1 {
					t.Errorf("reverse %v: goodput %.0f bit/s = %.2f of the cap %d", reverse, r.GoodputBps, ratio, capBps)
				}
			}
			if err := s.Remove(ctx, "ns1"); err != nil {
				t.Fatal(err)
			}
			for _, n := range []string{UpIFB, DownIFB, spec.OwnIFB()} {
				if _, err := lab.Node.Handle().LinkByName(n); err == nil {
					t.Errorf("%s still exists after Remove", n)
				}
			}
		})
	}
}
