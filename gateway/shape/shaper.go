package shape

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/arkgw/arkgw/nsdo"
)

// ShaperConfig configures a Shaper.
type ShaperConfig struct {
	NS      nsdo.NS  // the node's netns (where the host veths live); zero value = current
	Uplinks []string // interfaces experiment traffic leaves by (the gateway's uplink)
	NodeBps uint64   // node-wide cap (node_mbps * 1e6), 0 = none
	MTU     int      // 0 = DefaultMTU
	Logger  hclog.Logger
}

// Shaper applies Plans to the kernel. It remembers the experiments it was
// given (the node cap is shared among them) and is safe for concurrent use.
type Shaper struct {
	cfg ShaperConfig
	log hclog.Logger
	h   *netlink.Handle

	mu    sync.Mutex
	specs map[string]Spec
	// written is what syncClasses last wrote per experiment (and for the
	// root class): an experiment's start or stop then writes only the
	// classes that change, not every experiment's again. Cleared
	// whenever the trees are (re)made.
	written     map[string]Leaf
	rootWritten *Class
	// treesMade: the shared IFBs, their roots and the uplink's redirect
	// were made (or found) by this shaper and nothing failed since; Apply
	// then leaves them be (re-adding the uplink's filter on every start
	// briefly let upload traffic past the node cap).
	treesMade bool
}

// NewShaper opens a netlink handle in cfg.NS. Nothing is changed in the
// kernel until Apply.
func NewShaper(cfg ShaperConfig) (*Shaper, error) {
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	h, err := cfg.NS.NetlinkHandle()
	if err != nil {
		return nil, fmt.Errorf("shape: netlink handle in node netns: %w", err)
	}
	return &Shaper{cfg: cfg, log: log.Named("shape"), h: h, specs: map[string]Spec{}, written: map[string]Leaf{}}, nil
}

// Close releases the netlink handle; kernel state stays (see Sweep).
func (s *Shaper) Close() error {
	s.h.Close()
	return nil
}

// Apply installs or replaces the shaping of one experiment (idempotent; also
// re-adopts an experiment after a daemon restart). Its veth must exist.
func (s *Shaper) Apply(ctx context.Context, spec Spec) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := make(map[string]Spec, len(s.specs)+1)
	for k, v := range s.specs {
		next[k] = v
	}
	next[spec.ID] = spec
	plan, err := Compile(s.compileCfg(), specList(next))
	if err != nil {
		return err
	}
	if !s.treesMade {
		if err := s.ensureTrees(plan); err != nil {
			return err
		}
		s.treesMade = true
	}
	if err := s.syncClasses(plan); err != nil {
		s.treesMade = false
		return err
	}
	if err := s.attach(spec); err != nil {
		return err
	}
	s.specs = next
	s.log.Debug("shaping applied", "experiment", spec.ID, "if", spec.HostIf, "rate_bps", spec.RateBps)
	return nil
}

// Update changes an experiment's cap live (budget throttling): only its
// classes change, packets in flight stay queued.
func (s *Shaper) Update(ctx context.Context, id string, rateBps uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	spec, ok := s.specs[id]
	if !ok {
		return fmt.Errorf("shape: update experiment %q: not shaped (Apply it first)", id)
	}
	spec.RateBps = rateBps
	next := make(map[string]Spec, len(s.specs))
	for k, v := range s.specs {
		next[k] = v
	}
	next[id] = spec
	plan, err := Compile(s.compileCfg(), specList(next))
	if err != nil {
		return err
	}
	if err := s.syncClasses(plan); err != nil {
		return err
	}
	s.specs = next
	return nil
}

// SetNodeCap changes the node-wide cap (0 = none) for all experiments.
func (s *Shaper) SetNodeCap(ctx context.Context, bps uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.cfg.NodeBps
	s.cfg.NodeBps = bps
	plan, err := Compile(s.compileCfg(), specList(s.specs))
	if err == nil && len(s.specs) > 0 {
		err = s.syncClasses(plan)
	}
	if err != nil {
		s.cfg.NodeBps = old
		return err
	}
	return nil
}

// Rate is the experiment's current effective cap in bit/s of IP bytes
// (min of its own and the node's; 0 = unlimited) and whether it is shaped.
func (s *Shaper) Rate(id string) (uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.specs[id]; !ok {
		return 0, false
	}
	plan, err := Compile(s.compileCfg(), specList(s.specs))
	if err != nil {
		return 0, false
	}
	for _, l := range plan.Leaves {
		if l.ID == id {
			return l.CapBps, true
		}
	}
	return 0, false
}

// Remove takes an experiment's filters and classes away (idempotent; a veth
// that is already gone is fine). The IFBs go with the last experiment.
func (s *Shaper) Remove(ctx context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	spec, ok := s.specs[id]
	if !ok {
		return nil
	}
	var errs []error
	if err := s.detach(spec.HostIf); err != nil {
		errs = append(errs, err)
	}
	if err := s.deleteLink(spec.OwnIFB()); err != nil {
		errs = append(errs, err)
	}
	for _, t := range s.trees() {
		if ifb, err := s.h.LinkByName(t.ifb); err == nil {
			c := &netlink.HtbClass{ClassAttrs: netlink.ClassAttrs{LinkIndex: ifb.Attrs().Index,
				Handle: netlink.MakeHandle(t.major, spec.Minor()), Parent: netlink.MakeHandle(t.major, RootMinor)}}
			if err := s.h.ClassDel(c); err != nil && !notFound(err) {
				errs = append(errs, fmt.Errorf("shape: delete class %x:%x on %s for %q: %w", t.major, spec.Minor(), t.ifb, id, err))
			}
		}
	}
	delete(s.specs, id)
	delete(s.written, id)
	if len(s.specs) == 0 {
		errs = append(errs, s.deleteIFBs())
	} else if plan, err := Compile(s.compileCfg(), specList(s.specs)); err == nil {
		errs = append(errs, s.syncClasses(plan)) // guarantees grow back
	}
	return errors.Join(errs...)
}

// Sweep removes what a crashed daemon may have left behind in ns: the
// shared IFBs, arkgw's redirect from the uplinks, the clsact qdisc of every
// interface named in hostIfs and every "arku*" IFB whose experiment id is
// not in keep.
func Sweep(ns nsdo.NS, uplinks, hostIfs []string, keep map[string]bool) error {
	s, err := NewShaper(ShaperConfig{NS: ns, Uplinks: uplinks})
	if err != nil {
		return err
	}
	defer s.Close()
	var errs []error
	links, err := s.h.LinkList()
	if err != nil {
		return fmt.Errorf("shape: list links: %w", err)
	}
	for _, l := range links {
		n := l.Attrs().Name
		if l.Type() == "ifb" && strings.HasPrefix(n, OwnIFBPrefix) && !keep[strings.TrimPrefix(n, OwnIFBPrefix)] {
			errs = append(errs, s.deleteLink(n))
		}
	}
	for _, n := range hostIfs {
		errs = append(errs, s.detach(n))
	}
	errs = append(errs, s.deleteIFBs())
	return errors.Join(errs...)
}

type tree struct {
	ifb   string
	major uint16
}

func (s *Shaper) trees() []tree {
	return []tree{{UpIFB, UpMajor}, {DownIFB, DownMajor}}
}

func (s *Shaper) compileCfg() Config { return Config{NodeBps: s.cfg.NodeBps, MTU: s.cfg.MTU} }

func specList(m map[string]Spec) []Spec {
	out := make([]Spec, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

func notFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV) || errors.Is(err, os.ErrNotExist)
}

// ensureTrees creates the IFBs with their HTB root, root class and default
// class if missing.
func (s *Shaper) ensureTrees(p Plan) error {
	for _, t := range s.trees() {
		link, err := s.h.LinkByName(t.ifb)
		if err != nil {
			if !notFound(err) {
				return fmt.Errorf("shape: look up %s: %w", t.ifb, err)
			}
			// txqueuelen is the limit of the pfifo HTB puts under each leaf.
			ifb := &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: t.ifb, TxQLen: 1000}}
			if err := s.h.LinkAdd(ifb); err != nil {
				return fmt.Errorf("shape: add ifb %s (is the ifb module available?): %w", t.ifb, err)
			}
			if link, err = s.h.LinkByName(t.ifb); err != nil {
				return fmt.Errorf("shape: look up new %s: %w", t.ifb, err)
			}
			s.forgetWritten()
		}
		if err := s.h.LinkSetUp(link); err != nil {
			return fmt.Errorf("shape: set %s up: %w", t.ifb, err)
		}
		idx := link.Attrs().Index
		qs, err := s.h.QdiscList(link)
		if err != nil {
			return fmt.Errorf("shape: list qdiscs of %s: %w", t.ifb, err)
		}
		have := false
		for _, q := range qs {
			if q.Attrs().Parent == netlink.HANDLE_ROOT && q.Type() == "htb" && q.Attrs().Handle == netlink.MakeHandle(t.major, 0) {
				have = true
			}
		}
		if !have {
			q := netlink.NewHtb(netlink.QdiscAttrs{LinkIndex: idx, Parent: netlink.HANDLE_ROOT, Handle: netlink.MakeHandle(t.major, 0)})
			q.Defcls = uint32(DefaultMinor)
			if err := s.h.QdiscReplace(q); err != nil {
				return fmt.Errorf("shape: add htb root to %s: %w", t.ifb, err)
			}
			s.forgetWritten()
		}
		for _, c := range []Class{p.Root, p.Default} {
			if err := s.h.ClassReplace(htbClass(idx, t.major, c)); err != nil {
				return fmt.Errorf("shape: set class %x:%x on %s: %w", t.major, c.Minor, t.ifb, err)
			}
		}
	}
	for _, up := range s.cfg.Uplinks {
		if err := s.redirect(up, UpIFB); err != nil {
			return fmt.Errorf("shape: uplink: %w", err)
		}
	}
	return nil
}

func (s *Shaper) forgetWritten() {
	s.written = map[string]Leaf{}
	s.rootWritten = nil
}

// syncClasses writes the root and every leaf class that differs from what
// was last written (replace = create or change in place, queued packets
// stay). Without a node cap an experiment's classes do not depend on the
// others, so a start writes its own only; with one, the fair shares of all
// change.
func (s *Shaper) syncClasses(p Plan) error {
	var leaves []Leaf
	for _, l := range p.Leaves {
		if w, ok := s.written[l.ID]; !ok || w != l {
			leaves = append(leaves, l)
		}
	}
	root := s.rootWritten == nil || *s.rootWritten != p.Root
	if !root && len(leaves) == 0 {
		return nil
	}
	// Until all of it is written, nothing counts as written.
	for _, l := range leaves {
		delete(s.written, l.ID)
	}
	if root {
		s.rootWritten = nil
	}
	for _, t := range s.trees() {
		link, err := s.h.LinkByName(t.ifb)
		if err != nil {
			return fmt.Errorf("shape: look up %s (was Apply called?): %w", t.ifb, err)
		}
		idx := link.Attrs().Index
		if root {
			if err := s.h.ClassReplace(htbClass(idx, t.major, p.Root)); err != nil {
				return fmt.Errorf("shape: set root class on %s: %w", t.ifb, err)
			}
		}
		for _, l := range leaves {
			c := l.Class
			if t.major == UpMajor {
				c = l.UpClass
			}
			if err := s.h.ClassReplace(htbClass(idx, t.major, c)); err != nil {
				return fmt.Errorf("shape: set class %x:%x on %s for experiment %q: %w", t.major, c.Minor, t.ifb, l.ID, err)
			}
			if err := s.h.QdiscReplace(leafQueue(idx, t.major, c, s.cfg.MTU)); err != nil {
				return fmt.Errorf("shape: set queue of class %x:%x on %s for experiment %q: %w", t.major, c.Minor, t.ifb, l.ID, err)
			}
		}
	}
	for _, l := range leaves {
		if err := s.syncOwn(l); err != nil {
			return err
		}
		s.written[l.ID] = l
	}
	if root {
		r := p.Root
		s.rootWritten = &r
	}
	return nil
}

// ownMajor is the HTB handle major on an experiment's own upload IFB.
const ownMajor uint16 = 1

// syncOwn creates (if needed) the experiment's upload IFB with its HTB and
// sets its class to the cap.
func (s *Shaper) syncOwn(l Leaf) error {
	name := l.OwnIFB()
	link, err := s.h.LinkByName(name)
	if err != nil {
		if !notFound(err) {
			return fmt.Errorf("shape: look up %s: %w", name, err)
		}
		if err := s.h.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: name, TxQLen: 1000}}); err != nil {
			return fmt.Errorf("shape: add ifb %s for experiment %q: %w", name, l.ID, err)
		}
		if link, err = s.h.LinkByName(name); err != nil {
			return fmt.Errorf("shape: look up new %s: %w", name, err)
		}
		if err := s.h.LinkSetUp(link); err != nil {
			return fmt.Errorf("shape: set %s up: %w", name, err)
		}
		q := netlink.NewHtb(netlink.QdiscAttrs{LinkIndex: link.Attrs().Index, Parent: netlink.HANDLE_ROOT, Handle: netlink.MakeHandle(ownMajor, 0)})
		q.Defcls = uint32(l.Own.Minor)
		if err := s.h.QdiscReplace(q); err != nil {
			return fmt.Errorf("shape: add htb root to %s: %w", name, err)
		}
	}
	idx := link.Attrs().Index
	if err := s.h.ClassReplace(htbClass(idx, ownMajor, l.Own)); err != nil {
		return fmt.Errorf("shape: set class on %s for experiment %q: %w", name, l.ID, err)
	}
	if err := s.h.QdiscReplace(leafQueue(idx, ownMajor, l.Own, s.cfg.MTU)); err != nil {
		return fmt.Errorf("shape: set queue on %s for experiment %q: %w", name, l.ID, err)
	}
	return nil
}

func htbClass(idx int, major uint16, c Class) *netlink.HtbClass {
	parent := uint32(netlink.HANDLE_ROOT)
	if c.Parent != 0 {
		parent = netlink.MakeHandle(major, c.Parent)
	}
	// NewHtbClass takes bit/s and bucket bytes and converts them to the
	// kernel's bytes/s and ticks.
	return netlink.NewHtbClass(netlink.ClassAttrs{LinkIndex: idx, Handle: netlink.MakeHandle(major, c.Minor), Parent: parent},
		netlink.HtbClassAttrs{Rate: c.Rate * 8, Ceil: c.Ceil * 8, Buffer: c.Burst, Cbuffer: c.Cburst, Quantum: c.Quantum})
}

// leafQueue is the qdisc under a leaf class: a tbf that never limits (10
// Gbit/s) used as a byte-limited fifo (QueueLimit), the only byte-limited
// queue this kernel configuration and the netlink library offer together.
// Its bucket (6 frames) is below a GSO packet, so tbf splits GSO packets
// into segments and the limit counts real packets.
func leafQueue(idx int, major uint16, c Class, mtu int) *netlink.Tbf {
	qmajor := c.Minor // unique per tree: slot+2 < UpMajor
	if major == ownMajor {
		qmajor = ownMajor + 1
	}
	const rate = unlimitedBps / 8
	burst := uint32(6 * (DefaultMTU + EthOverhead))
	if mtu > 0 {
		burst = uint32(6 * (mtu + EthOverhead))
	}
	return &netlink.Tbf{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Parent: netlink.MakeHandle(major, c.Minor), Handle: netlink.MakeHandle(qmajor, 0)},
		Rate:       rate, Buffer: netlink.Xmittime(rate, burst), Limit: QueueLimit(c.Ceil, mtu),
	}
}

// attach puts clsact + the redirect filters on the experiment's veth:
// egress to the download tree, ingress to its own upload IFB.
func (s *Shaper) attach(spec Spec) error {
	if err := s.redirect(spec.HostIf, DownIFB); err != nil {
		return fmt.Errorf("shape: experiment %q: %w", spec.ID, err)
	}
	if err := s.redirectDir(spec.HostIf, spec.OwnIFB(), netlink.HANDLE_MIN_INGRESS); err != nil {
		return fmt.Errorf("shape: experiment %q: %w", spec.ID, err)
	}
	return nil
}

// filterPrio is the tc filter priority of arkgw's redirect filters (an
// uplink may carry the owner's own filters at other priorities). The two
// sides of a clsact get different priorities: u32 keeps its hash tables
// per qdisc, so a listing of one side can show the other side's filter.
const filterPrio = 0xa4c

func sidePrio(side uint32) uint16 {
	if side == netlink.HANDLE_MIN_INGRESS {
		return filterPrio + 1
	}
	return filterPrio
}

// redirect adds clsact to dev (kept if present) and an egress u32
// match-all filter that redirects every packet to ifb.
func (s *Shaper) redirect(dev, ifbName string) error {
	return s.redirectDir(dev, ifbName, netlink.HANDLE_MIN_EGRESS)
}

// redirectDir is redirect on the given clsact side (HANDLE_MIN_EGRESS or
// HANDLE_MIN_INGRESS).
func (s *Shaper) redirectDir(dev, ifbName string, side uint32) error {
	link, err := s.h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("interface %s: %w", dev, err)
	}
	idx := link.Attrs().Index
	// Add, never replace: replacing clsact drops the filters on it (ours
	// on the other side, the owner's on an uplink).
	q := &netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Parent: netlink.HANDLE_CLSACT, Handle: netlink.MakeHandle(0xffff, 0)}}
	if err := s.h.QdiscAdd(q); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add clsact to %s: %w", dev, err)
	}
	ifb, err := s.h.LinkByName(ifbName)
	if err != nil {
		return fmt.Errorf("look up %s: %w", ifbName, err)
	}
	// Replace = remove ours, add again (u32 handles are the kernel's).
	if err := s.unredirectDir(dev, side); err != nil {
		return err
	}
	f := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: idx, Parent: side, Priority: sidePrio(side), Protocol: unix.ETH_P_ALL},
		Actions:     []netlink.Action{netlink.NewMirredAction(ifb.Attrs().Index)},
	}
	if err := s.h.FilterAdd(f); err != nil {
		return fmt.Errorf("redirect %s to %s: %w", dev, ifbName, err)
	}
	return nil
}

// unredirect removes arkgw's filter from an uplink, keeping its clsact.
func (s *Shaper) unredirect(dev string) error {
	return s.unredirectDir(dev, netlink.HANDLE_MIN_EGRESS)
}

func (s *Shaper) unredirectDir(dev string, side uint32) error {
	link, err := s.h.LinkByName(dev)
	if err != nil {
		if notFound(err) {
			return nil
		}
		return fmt.Errorf("shape: look up %s: %w", dev, err)
	}
	fs, err := s.h.FilterList(link, side)
	if err != nil {
		if notFound(err) || errors.Is(err, unix.EINVAL) {
			return nil
		}
		return fmt.Errorf("shape: list filters of %s: %w", dev, err)
	}
	for _, f := range fs {
		if f.Attrs().Priority == sidePrio(side) {
			if err := s.h.FilterDel(f); err != nil && !notFound(err) {
				return fmt.Errorf("shape: remove redirect from %s: %w", dev, err)
			}
		}
	}
	return nil
}

// detach deletes the clsact qdisc (and with it both filters) of a veth.
func (s *Shaper) detach(hostIf string) error {
	link, err := s.h.LinkByName(hostIf)
	if err != nil {
		if notFound(err) {
			return nil
		}
		return fmt.Errorf("shape: look up %s: %w", hostIf, err)
	}
	q := &netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: link.Attrs().Index, Parent: netlink.HANDLE_CLSACT, Handle: netlink.MakeHandle(0xffff, 0)}}
	if err := s.h.QdiscDel(q); err != nil && !notFound(err) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("shape: remove clsact from %s: %w", hostIf, err)
	}
	return nil
}

func (s *Shaper) deleteLink(name string) error {
	link, err := s.h.LinkByName(name)
	if err != nil {
		if notFound(err) {
			return nil
		}
		return fmt.Errorf("shape: look up %s: %w", name, err)
	}
	if err := s.h.LinkDel(link); err != nil && !notFound(err) {
		return fmt.Errorf("shape: delete %s: %w", name, err)
	}
	return nil
}

func (s *Shaper) deleteIFBs() error {
	s.forgetWritten()
	s.treesMade = false
	var errs []error
	for _, up := range s.cfg.Uplinks {
		errs = append(errs, s.unredirect(up))
	}
	for _, t := range s.trees() {
		link, err := s.h.LinkByName(t.ifb)
		if err != nil {
			if !notFound(err) {
				errs = append(errs, fmt.Errorf("shape: look up %s: %w", t.ifb, err))
			}
			continue
		}
		if err := s.h.LinkDel(link); err != nil && !notFound(err) {
			errs = append(errs, fmt.Errorf("shape: delete %s: %w", t.ifb, err))
		}
	}
	return errors.Join(errs...)
}
