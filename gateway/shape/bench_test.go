package shape

import (
	"context"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/arkgw/arkgw/gateway/quota"
	"github.com/arkgw/arkgw/netlab/bwlab"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// cniShape installs what the CNI bandwidth plugin does on the host veth: tbf
// as the veth's root qdisc (towards the experiment) and ingress + u32
// mirred redirect to an ifb with tbf (from the experiment). The burst is the
// same as ours so that only the method differs.
func cniShape(t *testing.T, h *netlink.Handle, veth string, bps uint64) string {
	t.Helper()
	link, err := h.LinkByName(veth)
	if err != nil {
		t.Fatal(err)
	}
	rate := bps / 8
	burst := Burst(rate, DefaultMTU)
	tbf := func(idx int) *netlink.Tbf {
		// tc's tbf: buffer in ticks, limit = rate*latency(25ms)+burst.
		return &netlink.Tbf{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Parent: netlink.HANDLE_ROOT, Handle: netlink.MakeHandle(1, 0)},
			Rate: rate, Buffer: netlink.Xmittime(rate, burst), Limit: uint32(rate*25/1000) + burst}
	}
	if err := h.QdiscAdd(tbf(link.Attrs().Index)); err != nil {
		t.Fatalf("cni tbf on %s: %v", veth, err)
	}
	ifbName := "cnibw" + veth[len(veth)-1:]
	if err := h.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: ifbName, TxQLen: 1000}}); err != nil {
		t.Fatal(err)
	}
	ifb, _ := h.LinkByName(ifbName)
	h.LinkSetUp(ifb)
	if err := h.QdiscAdd(tbf(ifb.Attrs().Index)); err != nil {
		t.Fatalf("cni tbf on ifb: %v", err)
	}
	if err := h.QdiscAdd(&netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: link.Attrs().Index, Parent: netlink.HANDLE_INGRESS, Handle: netlink.MakeHandle(0xffff, 0)}}); err != nil {
		t.Fatal(err)
	}
	if err := h.FilterAdd(&netlink.U32{FilterAttrs: netlink.FilterAttrs{LinkIndex: link.Attrs().Index, Parent: netlink.MakeHandle(0xffff, 0), Priority: 1, Protocol: unix.ETH_P_ALL},
		Actions: []netlink.Action{netlink.NewMirredAction(ifb.Attrs().Index)}}); err != nil {
		t.Fatalf("cni redirect: %v", err)
	}
	t.Cleanup(func() { cniUnshape(h, veth, ifbName) })
	return ifbName
}

func cniUnshape(h *netlink.Handle, veth, ifbName string) {
	if link, err := h.LinkByName(veth); err == nil {
		h.QdiscDel(&netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: link.Attrs().Index, Parent: netlink.HANDLE_INGRESS, Handle: netlink.MakeHandle(0xffff, 0)}})
		h.QdiscDel(&netlink.Tbf{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: link.Attrs().Index, Parent: netlink.HANDLE_ROOT, Handle: netlink.MakeHandle(1, 0)}})
	}
	if ifb, err := h.LinkByName(ifbName); err == nil {
		h.LinkDel(ifb)
	}
}

type benchRun struct {
	wireRatio   float64 // IP bytes the shaper sent in steady state / cap
	deliveredIP float64 // IP bytes seen arriving on the far veth / cap (GSO packets count their headers once)
	goodput     float64 // iperf3 receiver, bit/s
}

// wireFunc returns the bytes and packets a shaper has sent, as the kernel
// counts them in the qdisc or class statistics: per segment, frames
// including the 14-byte Ethernet header.
type wireFunc func() (bytes, packets uint64)

func classWire(t *testing.T, h *netlink.Handle, dev string, handle uint32) wireFunc {
	return func() (uint64, uint64) {
		link, err := h.LinkByName(dev)
		if err != nil {
			t.Fatal(err)
		}
		cs, err := h.ClassList(link, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cs {
			if c.Attrs().Handle == handle && c.Attrs().Statistics != nil && c.Attrs().Statistics.Basic != nil {
				b := c.Attrs().Statistics.Basic
				return b.Bytes, uint64(b.Packets)
			}
		}
		t.Fatalf("class %x not found on %s", handle, dev)
		return 0, 0
	}
}

func rootQdiscWire(t *testing.T, h *netlink.Handle, dev string) wireFunc {
	return func() (uint64, uint64) {
		link, err := h.LinkByName(dev)
		if err != nil {
			t.Fatal(err)
		}
		qs, err := h.QdiscList(link)
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range qs {
			if q.Attrs().Parent == netlink.HANDLE_ROOT && q.Attrs().Statistics != nil && q.Attrs().Statistics.Basic != nil {
				b := q.Attrs().Statistics.Basic
				return b.Bytes, uint64(b.Packets)
			}
		}
		t.Fatalf("no root qdisc stats on %s", dev)
		return 0, 0
	}
}

// measure runs iperf3 for 6 s (first second omitted) and samples the
// counters between 1.5 s and 5.5 s.
func measure(t *testing.T, lab *bwlab.Lab, port int, capBps uint64, download bool, wire wireFunc) benchRun {
	t.Helper()
	type sample struct{ wire, far uint64 }
	read := func() sample {
		var s sample
		wb, wp := wire()
		s.wire = wb - 14*wp
		far, ifn := lab.Inet, "eth0"
		if download {
			far = lab.Exp
		}
		frb, frp, _, _, err := bwlab.LinkStats(far, ifn)
		if err != nil {
			t.Fatal(err)
		}
		s.far = frb - 14*frp
		return s
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	type res struct {
		r   bwlab.Result
		err error
	}
	ch := make(chan res, 1)
	start := time.Now()
	go func() {
		r, err := lab.Client(ctx, port, 6, download, "-O", "1")
		ch <- res{r, err}
	}()
	time.Sleep(time.Until(start.Add(1500 * time.Millisecond)))
	s0, t0 := read(), time.Now()
	time.Sleep(time.Until(start.Add(5500 * time.Millisecond)))
	s1, t1 := read(), time.Now()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	secs := t1.Sub(t0).Seconds()
	return benchRun{
		wireRatio:   float64(s1.wire-s0.wire) * 8 / secs / float64(capBps),
		deliveredIP: float64(s1.far-s0.far) * 8 / secs / float64(capBps),
		goodput:     r.r.GoodputBps,
	}
}

// TestBenchBandwidth: wire-rate accuracy of arkgw's shaping at 1, 10 and
// 100 Mbit/s in both directions, and iperf3 goodput against the CNI
// bandwidth plugin's tbf/ifb approach on the same veth in the same run.
func TestBenchBandwidth(t *testing.T) {
	if os.Getenv("ARKGW_BENCH") != "1" {
		t.Skip("benchmark: set ARKGW_BENCH=1 (make bench-bandwidth)")
	}
	lab := bwlab.New(t)
	port := lab.Server(t)
	ctx := context.Background()
	worst, worstGood := 1.0, math.Inf(1)
	caps := []uint64{1, 10, 100}
	if c := os.Getenv("ARKGW_BENCH_CAPS"); c != "" { // e.g. "100" for a quick look
		caps = nil
		for _, f := range strings.Split(c, ",") {
			v, err := strconv.ParseUint(f, 10, 64)
			if err != nil {
				t.Fatalf("ARKGW_BENCH_CAPS: %v", err)
			}
			caps = append(caps, v)
		}
	}
	for _, capMbps := range caps {
		capBps := capMbps * 1_000_000
		for _, download := range []bool{false, true} {
			dir := "up"
			if download {
				dir = "down"
			}
			// arkgw
			sh, err := NewShaper(ShaperConfig{NS: lab.Node.NS(), Uplinks: []string{bwlab.Uplink}})
			if err != nil {
				t.Fatal(err)
			}
			tab := quota.New(quota.Config{NS: lab.Node.NS()})
			up, down := Priorities(0)
			if _, err := tab.Add(quota.Exp{ID: "bench", HostIf: bwlab.HostIf, UpPriority: up, DownPriority: down}); err != nil {
				t.Fatal(err)
			}
			if err := sh.Apply(ctx, Spec{ID: "bench", HostIf: bwlab.HostIf, Slot: 0, RateBps: capBps}); err != nil {
				t.Fatal(err)
			}
			// Upload is capped on the experiment's own IFB (class 1:1).
			wire := classWire(t, lab.Node.Handle(), Spec{ID: "bench"}.OwnIFB(), netlink.MakeHandle(ownMajor, 1))
			if download {
				wire = classWire(t, lab.Node.Handle(), DownIFB, netlink.MakeHandle(DownMajor, 2))
			}
			ark := measure(t, lab, port, capBps, download, wire)
			if err := sh.Remove(ctx, "bench"); err != nil {
				t.Fatal(err)
			}
			sh.Close()
			if err := tab.Delete(); err != nil {
				t.Fatal(err)
			}
			// CNI
			ifbName := cniShape(t, lab.Node.Handle(), bwlab.HostIf, capBps)
			wire = rootQdiscWire(t, lab.Node.Handle(), ifbName)
			if download {
				wire = rootQdiscWire(t, lab.Node.Handle(), bwlab.HostIf)
			}
			cni := measure(t, lab, port, capBps, download, wire)
			cniUnshape(lab.Node.Handle(), bwlab.HostIf, ifbName)

			g := ark.goodput / cni.goodput
			fmt.Printf("cap %3d Mbit/s %-4s arkgw wire %.4f delivered %.4f goodput %.4f | cni wire %.4f delivered %.4f goodput %.4f | goodput ark/cni %.4f\n",
				capMbps, dir, ark.wireRatio, ark.deliveredIP, ark.goodput/float64(capBps),
				cni.wireRatio, cni.deliveredIP, cni.goodput/float64(capBps), g)
			if math.Abs(ark.wireRatio-1) > math.Abs(worst-1) {
				worst = ark.wireRatio
			}
			worstGood = math.Min(worstGood, g)
		}
	}
	fmt.Printf("bench-bandwidth worst_ratio=%.4f goodput_vs_cni=%.4f\n", worst, worstGood)
}
