// Package shape rate-limits experiments in both directions with tc, through
// github.com/vishvananda/netlink, in an explicit network namespace.
//
// # Design
//
// Upload (what an experiment sends) is capped first, on its own IFB
// "arku<id>": the host veth's clsact ingress redirects every packet there
// (u32 match-all + mirred), an HTB class at the cap paces it, and the IFB
// hands it back to the veth's ingress. This happens before netfilter, so
// the gateway's filter and the byte counters of package quota see only
// what the shaper let through: a packet dropped because the shaper's queue
// overflowed never reached the owner's link and is not charged to the
// budget.
//
// Download (what it receives) and the node-wide cap use two shared IFBs
// with one HTB tree each:
//
//	arkgw-up (upload, on the uplink's egress)      HTB a4c1:  node class a4c1:1
//	arkgw-dn (download, on each veth's egress)     HTB a4c2:  node class a4c2:1
//
// Every experiment gets one leaf class under the node class of each tree
// (minor = slot+2). A packet is filed into its leaf by skb->priority: HTB
// uses the priority directly when it names one of its leaf classes. The
// priority is set by nftables in the forward hook (package quota's table
// inet arkgw_acct: "iifname ark<id> meta priority set a4c1:<minor>",
// "oifname ark<id> meta priority set a4c2:<minor>"), so the experiment
// cannot choose its class: whatever SO_PRIORITY it used is overwritten.
// Packets without an arkgw priority (the node's own traffic, the DNS
// proxy's replies) go to the top-level class ffff, which is not limited.
// In the download tree a leaf's ceil is the experiment's cap; in the upload
// tree (the cap was applied at the veth already) it is the node cap.
//
// Why not one tree at the veth's ingress for upload: tc ingress runs before
// netfilter, so only the packet itself could say which experiment sent it
// (its source address can be spoofed), and this kernel has no skbedit or
// matchall. Why not ingress policing: this kernel has no act_police either,
// and a policer drops what exceeds its bucket instead of queueing it, so a
// TCP sender saws between loss and recovery, below the cap at 1 Mbit/s
// with the small burst the owner's promise needs and above it with a large
// one. Queueing in HTB paces TCP at the configured rate at 1 and at 100
// Mbit/s alike (TestBenchBandwidth measures it against the CNI plugin's
// tbf/ifb approach: every wire ratio 0.996..1.002 here).
//
// Why shared trees and not one qdisc per veth for the node cap: the
// owner's node-wide cap (node_mbps) must be shared by all experiments;
// only a common parent class can do that, and a common parent needs a
// common device. The node class is the node cap; leaves have a guaranteed
// rate of min(cap, node cap / number of experiments), so the sum of the
// guarantees never exceeds the parent (HTB lets a leaf below its own rate
// send regardless of the parent).
//
// # Which bytes count
//
// The cap is on IP packets including their IP and transport headers, the
// same bytes the nftables counters of package quota count. HTB charges the
// frame as it sits on the device, i.e. IP packet + 14 bytes of Ethernet
// header (GSO packets count each segment's headers). We cannot tell the
// kernel to subtract 14 bytes (tc's size tables are not in the netlink
// library, and HTB's own overhead field is unsigned), so the rate handed to
// HTB is scaled by (MTU+14)/MTU: a stream of full-size packets then carries
// exactly the cap in IP bytes, and smaller packets carry less, never more.
// iperf3's TCP goodput is then 1448/1500 = 0.965 of the cap, against
// 1448/1514 = 0.956 for a shaper that counts frames.
package shape

import (
	"fmt"
	"sort"
)

// Names and handles the shaper owns in the node's network namespace.
const (
	UpIFB = "arkgw-up" // shared IFB for upload (experiment -> world), node cap
	// OwnIFBPrefix + id names an experiment's own upload IFB (<= 14 bytes).
	OwnIFBPrefix = "arku"
	DownIFB      = "arkgw-dn" // shared IFB for download (world -> experiment)

	UpMajor   uint16 = 0xa4c1 // HTB handle major on UpIFB; also the skb->priority major
	DownMajor uint16 = 0xa4c2 // HTB handle major on DownIFB

	RootMinor    uint16 = 1      // node-wide class, parent of the experiments' leaves
	DefaultMinor uint16 = 0xffff // top-level class for packets without an arkgw priority: not limited

	// EthOverhead is what the kernel adds to an IP packet on a veth.
	EthOverhead = 14
	// DefaultMTU of the experiment veths.
	DefaultMTU = 1500

	// MaxSlot is the largest slot: slot+2 is the class minor and the major
	// of the leaf's queue qdisc, which must stay clear of UpMajor/DownMajor.
	MaxSlot = 0x9ffd

	// unlimitedBps stands for "no node cap" at the root (10 Gbit/s).
	unlimitedBps = 10_000_000_000
	// MinRateBps is the smallest rate a class gets (HTB needs a positive
	// rate; budget throttling may ask for less).
	MinRateBps = 8_000
)

// Spec is what one experiment gets.
type Spec struct {
	ID     string // experiment id (configs.ValidID)
	HostIf string // host end of its veth in the node's netns
	Slot   int    // the gateway's slot for the experiment (0..MaxSlot), unique among running experiments
	// RateBps caps each direction, in bit/s of IP packets (headers included).
	// 0 means no per-experiment cap (only the node cap applies).
	RateBps uint64
}

// Validate checks a spec.
func (s Spec) Validate() error {
	if s.ID == "" || len(s.OwnIFB()) > 15 {
		return fmt.Errorf("shape spec: experiment id %q: want 1-%d characters", s.ID, 15-len(OwnIFBPrefix))
	}
	if s.HostIf == "" || len(s.HostIf) > 15 {
		return fmt.Errorf("shape spec for %q: host interface %q: want 1-15 bytes", s.ID, s.HostIf)
	}
	if s.Slot < 0 || s.Slot > MaxSlot {
		return fmt.Errorf("shape spec for %q: slot %d out of range 0..%d", s.ID, s.Slot, MaxSlot)
	}
	return nil
}

// OwnIFB names the experiment's upload IFB.
func (s Spec) OwnIFB() string { return OwnIFBPrefix + s.ID }

// Minor is the HTB class minor of the experiment in both trees.
func (s Spec) Minor() uint16 { return uint16(s.Slot + 2) }

// Class is one HTB class, in kernel units: rates and bursts are bytes of
// frames as HTB charges them (see "Which bytes count").
type Class struct {
	Minor   uint16
	Parent  uint16 // 0 = root of the qdisc
	Rate    uint64 // guaranteed, bytes/s of frames
	Ceil    uint64 // maximum, bytes/s of frames
	Burst   uint32 // bytes at Rate
	Cburst  uint32 // bytes at Ceil
	Quantum uint32 // bytes per DRR round among siblings
}

// Leaf ties an experiment to its classes.
type Leaf struct {
	Spec
	Class   Class // download tree (ceil = cap)
	UpClass Class // upload tree on the uplink (ceil = node cap)
	// Own is the class 1:1 on the experiment's own upload IFB (rate = ceil = cap).
	Own Class
	// CapBps is the effective cap in bit/s of IP bytes (min of the
	// experiment's and the node's; 0 = unlimited).
	CapBps uint64
}

// Plan is the desired state of both trees (they are identical in shape: the
// same classes go into the upload and the download tree).
type Plan struct {
	Root    Class
	Default Class
	Leaves  []Leaf // sorted by ID
}

// Config of the node-wide part.
type Config struct {
	NodeBps uint64 // node-wide cap in bit/s of IP bytes, shared by all experiments; 0 = none
	MTU     int    // of the experiment veths; 0 = DefaultMTU
}

// FrameRate converts a rate in bit/s of IP bytes into the bytes/s of frames
// that HTB must be given so that full-size packets carry exactly ipBps.
func FrameRate(ipBps uint64, mtu int) uint64 {
	if mtu <= 0 {
		mtu = DefaultMTU
	}
	if ipBps < MinRateBps {
		ipBps = MinRateBps
	}
	// bytes/s of IP, scaled up by (mtu+14)/mtu, rounded up.
	num := ipBps * uint64(mtu+EthOverhead)
	den := uint64(8 * mtu)
	return (num + den - 1) / den
}

// Burst is the bucket size for a class at frame rate r (bytes/s): 5 ms worth
// of traffic, at least two full frames. Small on purpose: the bucket is what
// may pass at line speed before the rate applies, and a 1 MB bucket let a 10
// Mbit/s cap pass 17.6 Mbit/s in its first second. 5 ms keeps HTB's timer
// from under-running at 100 Mbit/s (62.5 KB).
func Burst(r uint64, mtu int) uint32 {
	if mtu <= 0 {
		mtu = DefaultMTU
	}
	b := r * 5 / 1000
	if min := uint64(2 * (mtu + EthOverhead)); b < min {
		b = min
	}
	if b > 1<<24 {
		b = 1 << 24
	}
	return uint32(b)
}

// QueueLimit is the byte limit of a leaf's queue at frame rate r: 50 ms of
// traffic, at least 16 full frames. A packet-count limit (HTB's default
// pfifo) is useless here: GSO packets of up to 64 KB make 1000 "packets"
// minutes of queue at 1 Mbit/s, and TCP then times out and retransmits
// spuriously (20% of the bytes at 1 Mbit/s in the benchmark).
func QueueLimit(r uint64, mtu int) uint32 {
	if mtu <= 0 {
		mtu = DefaultMTU
	}
	l := r * 50 / 1000
	if min := uint64(16 * (mtu + EthOverhead)); l < min {
		l = min
	}
	if l > 1<<26 {
		l = 1 << 26
	}
	return uint32(l)
}

// quantum per class: rate/10 as HTB would pick, kept within the range the
// kernel does not warn about and at least one full frame.
func quantum(r uint64, mtu int) uint32 {
	q := r / 10
	if min := uint64(mtu + EthOverhead); q < min {
		q = min
	}
	if q > 200_000 {
		q = 200_000
	}
	return uint32(q)
}

func class(minor, parent uint16, rateBps, ceilBps uint64, mtu int) Class {
	r, c := FrameRate(rateBps, mtu), FrameRate(ceilBps, mtu)
	if r > c {
		r = c
	}
	return Class{Minor: minor, Parent: parent, Rate: r, Ceil: c,
		Burst: Burst(r, mtu), Cburst: Burst(c, mtu), Quantum: quantum(r, mtu)}
}

// Compile computes the classes for a set of experiments. It is pure.
func Compile(cfg Config, specs []Spec) (Plan, error) {
	mtu := cfg.MTU
	if mtu <= 0 {
		mtu = DefaultMTU
	}
	seenID, seenSlot, seenIf := map[string]bool{}, map[int]string{}, map[string]string{}
	for _, s := range specs {
		if err := s.Validate(); err != nil {
			return Plan{}, err
		}
		if seenID[s.ID] {
			return Plan{}, fmt.Errorf("shape: experiment %q listed twice", s.ID)
		}
		if o, ok := seenSlot[s.Slot]; ok {
			return Plan{}, fmt.Errorf("shape: experiments %q and %q share slot %d", o, s.ID, s.Slot)
		}
		if o, ok := seenIf[s.HostIf]; ok {
			return Plan{}, fmt.Errorf("shape: experiments %q and %q share interface %q", o, s.ID, s.HostIf)
		}
		seenID[s.ID], seenSlot[s.Slot], seenIf[s.HostIf] = true, s.ID, s.ID
	}
	node := cfg.NodeBps
	if node == 0 {
		node = unlimitedBps
	}
	p := Plan{
		Root:    class(RootMinor, 0, node, node, mtu),
		Default: class(DefaultMinor, 0, unlimitedBps, unlimitedBps, mtu),
	}
	n := uint64(len(specs))
	for _, s := range specs {
		ceil := s.RateBps
		if ceil == 0 || ceil > node {
			ceil = node
		}
		rate := ceil
		if cfg.NodeBps != 0 && n > 0 && cfg.NodeBps/n < rate {
			rate = cfg.NodeBps / n
		}
		capBps := ceil
		if ceil == unlimitedBps && cfg.NodeBps == 0 {
			capBps = 0
		}
		p.Leaves = append(p.Leaves, Leaf{Spec: s, CapBps: capBps,
			Class:   class(s.Minor(), RootMinor, rate, ceil, mtu),
			UpClass: class(s.Minor(), RootMinor, rate, node, mtu),
			Own:     class(1, 0, ceil, ceil, mtu)})
	}
	sort.Slice(p.Leaves, func(i, j int) bool { return p.Leaves[i].ID < p.Leaves[j].ID })
	return p, nil
}

// Priority is the skb->priority value (a tc class id) that files a packet
// into minor of the tree with the given major.
func Priority(major, minor uint16) uint32 { return uint32(major)<<16 | uint32(minor) }

// Priorities are the skb->priority values nftables must set on the packets
// an experiment in slot sends (up) and receives (down).
func Priorities(slot int) (up, down uint32) {
	m := Spec{Slot: slot}.Minor()
	return Priority(UpMajor, m), Priority(DownMajor, m)
}

// String renders a plan as sorted text lines (for golden tests and logs).
func (p Plan) String() string {
	line := func(name string, c Class) string {
		return fmt.Sprintf("%s minor=%#x parent=%#x rate=%dB/s ceil=%dB/s burst=%d cburst=%d quantum=%d\n",
			name, c.Minor, c.Parent, c.Rate, c.Ceil, c.Burst, c.Cburst, c.Quantum)
	}
	s := line("root", p.Root) + line("default", p.Default)
	for _, l := range p.Leaves {
		s += line(fmt.Sprintf("leaf %s if=%s cap=%dbit/s down", l.ID, l.HostIf, l.CapBps), l.Class)
		s += line(fmt.Sprintf("leaf %s if=%s cap=%dbit/s up", l.ID, l.HostIf, l.CapBps), l.UpClass)
		s += line(fmt.Sprintf("leaf %s if=%s own=%s", l.ID, l.HostIf, l.OwnIFB()), l.Own)
	}
	return s
}
