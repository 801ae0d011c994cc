package netlab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/arkgw/arkgw/nsdo"
)

// Topology describes a set of hosts (network namespaces) and the veth links
// between them.
type Topology struct {
	Hosts []HostSpec
	Links []LinkSpec
}

// HostSpec describes one host.
type HostSpec struct {
	Name          string      // logical name: "node", "inet", "exp1", ...
	Forward       bool        // IPv4+IPv6 forwarding on
	LocalPrefixes []string    // whole prefixes answered locally (type-local routes on lo), e.g. "198.51.100.0/24"
	Routes        []RouteSpec // added after all links are up
	NetNSPath     string      // adopt an existing netns file (e.g. nsholder's) instead of creating one; not deleted by netlab
	// Current adopts the namespace the test process runs in (only inside
	// InOwnNetNS's child, which made it; not deleted by netlab).
	Current bool
}

// LinkSpec is a veth pair between hosts A and B. AIf/BIf name the ends
// (at most 15 bytes; default "v-"+peer host name, truncated); AAddrs/BAddrs
// are CIDR addresses ("10.0.0.1/24", "fd00::1/64"). IPv6 addresses are added
// with IFA_F_NODAD so they are usable at once.
type LinkSpec struct {
	A, B           string
	AIf, BIf       string
	AAddrs, BAddrs []string
}

// RouteSpec is a route: Dst is a CIDR, "default" (0.0.0.0/0) or "default6"
// (::/0); Via is the gateway address. The kernel picks the device.
type RouteSpec struct {
	Dst string
	Via string
}

// Lab is a built topology. It is torn down by the test's Cleanup.
type Lab struct {
	t     testing.TB
	id    string
	hosts map[string]*Host
	order []string

	mu       sync.Mutex
	closers  []func() error // run in reverse order at cleanup, before namespaces go
	closed   bool
	captures []*Capture
}

// Host is one network namespace of a Lab.
type Host struct {
	Name    string
	lab     *Lab
	ns      nsdo.NS
	path    string
	adopted bool
	handle  *netlink.Handle

	vethNames []string // veth ends created by Build, waited for
}

// requireRoot skips t unless it runs as root.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: netlab creates network namespaces")
	}
}

// Build creates the topology for t: one network namespace per host (named
// "nl<pid>x<random>-<host>" under RunDir, or adopted from NetNSPath), lo up,
// veth links with their addresses, local prefixes, forwarding sysctls, and
// routes. It skips t when not root and fails t on any error. t.Cleanup
// removes everything it made, also when the test fails; Build first sweeps
// stale namespaces of dead test processes.
func Build(t testing.TB, topo Topology) *Lab {
	t.Helper()
	requireRoot(t)
	if removed, err := Sweep(); err != nil {
		t.Logf("netlab: sweep: %v", err)
	} else if len(removed) > 0 {
		t.Logf("netlab: swept stale namespaces %v", removed)
	}
	l := &Lab{t: t, id: randID(6), hosts: map[string]*Host{}}
	t.Cleanup(l.cleanup)
	if err := l.build(topo); err != nil {
		t.Fatalf("netlab: build topology: %v", err)
	}
	return l
}

func (l *Lab) build(topo Topology) error {
	for _, hs := range topo.Hosts {
		if err := l.addHost(hs); err != nil {
			return err
		}
	}
	for i, ls := range topo.Links {
		if err := l.addLink(ls); err != nil {
			return fmt.Errorf("link %d (%s-%s): %w", i, ls.A, ls.B, err)
		}
	}
	if err := l.waitLinksUp(10 * time.Second); err != nil {
		return err
	}
	for _, hs := range topo.Hosts {
		h := l.hosts[hs.Name]
		for _, p := range hs.LocalPrefixes {
			if err := h.AddLocalPrefix(p); err != nil {
				return err
			}
		}
		for _, r := range hs.Routes {
			if err := h.AddRoute(r); err != nil {
				return err
			}
		}
	}
	return nil
}

// waitLinksUp waits until every veth made by this lab is ready (WaitIfReady).
func (l *Lab) waitLinksUp(timeout time.Duration) error {
	for _, h := range l.Hosts() {
		for _, name := range h.vethNames {
			if err := h.WaitIfReady(name, timeout); err != nil {
				return err
			}
		}
	}
	return nil
}

// WaitIfReady waits until interface ifname of h is operationally up and
// has joined the solicited-node multicast groups of all its IPv6 addresses.
// The kernel activates a device's queue (until then a noop qdisc drops
// every packet) from the linkwatch worker, and joins solicited-node groups
// from a workqueue even for IFA_F_NODAD addresses; before that, the first
// packets vanish or the first IPv6 neighbour resolution takes a second.
// Build waits for its own links; call this after adding a link or IPv6
// addresses yourself (for example a gateway's veth).
func (h *Host) WaitIfReady(ifname string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		link, err := h.handle.LinkByName(ifname)
		if err != nil {
			return fmt.Errorf("host %q: find %s: %w", h.Name, ifname, err)
		}
		if link.Attrs().OperState == netlink.OperUp || link.Attrs().OperState == netlink.OperUnknown && link.Attrs().Flags&net.FlagUp != 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("host %q: %s not up after %v (operstate %s)", h.Name, ifname, timeout, link.Attrs().OperState)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return h.waitSolicitedNode(ifname, deadline)
}

// waitSolicitedNode waits until ifname has joined the solicited-node
// multicast group of each of its IPv6 addresses. The kernel joins them from
// a workqueue after the address is added (even with IFA_F_NODAD); until
// then neighbour solicitations for the address are dropped and the first
// IPv6 packet to it waits a second for a retransmission.
func (h *Host) waitSolicitedNode(ifname string, deadline time.Time) error {
	link, err := h.handle.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("host %q: find %s: %w", h.Name, ifname, err)
	}
	for {
		addrs, err := h.handle.AddrList(link, netlink.FAMILY_V6)
		if err != nil {
			return fmt.Errorf("host %q: list addresses of %s: %w", h.Name, ifname, err)
		}
		var groups []byte
		err = h.Do(func() (err error) {
			// thread-self: this thread's namespace, not the process's.
			groups, err = os.ReadFile("/proc/thread-self/net/igmp6")
			return err
		})
		if err != nil {
			return fmt.Errorf("host %q: read igmp6: %w", h.Name, err)
		}
		missing := ""
		for _, a := range addrs {
			ip := a.IP.To16()
			group := fmt.Sprintf("ff0200000000000000000001ff%02x%02x%02x", ip[13], ip[14], ip[15])
			if !hasGroup(string(groups), ifname, group) {
				missing = a.IP.String()
				break
			}
		}
		if missing == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("host %q: %s has not joined the solicited-node group of %s", h.Name, ifname, missing)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// hasGroup looks for "idx ifname group ..." in /proc/net/igmp6 text.
func hasGroup(igmp6, ifname, group string) bool {
	for _, line := range strings.Split(igmp6, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[1] == ifname && f[2] == group {
			return true
		}
	}
	return false
}

func validHostName(name string) bool {
	if name == "" || len(name) > 40 {
		return false
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

func (l *Lab) addHost(hs HostSpec) error {
	if !validHostName(hs.Name) {
		return fmt.Errorf("host name %q: use 1-40 characters [A-Za-z0-9._-]", hs.Name)
	}
	if _, dup := l.hosts[hs.Name]; dup {
		return fmt.Errorf("host %q defined twice", hs.Name)
	}
	h := &Host{Name: hs.Name, lab: l}
	if hs.Current {
		p, err := currentNSPath()
		if err != nil {
			return fmt.Errorf("host %q: %w", hs.Name, err)
		}
		hs.NetNSPath = p
	}
	if hs.NetNSPath != "" {
		ns, err := nsdo.Open(hs.NetNSPath)
		if err != nil {
			return fmt.Errorf("host %q: %w", hs.Name, err)
		}
		h.ns, h.path, h.adopted = ns, hs.NetNSPath, true
	} else {
		ns, path, err := createNamed(nsName(l.id, hs.Name))
		if err != nil {
			return fmt.Errorf("host %q: %w", hs.Name, err)
		}
		h.ns, h.path = ns, path
	}
	// Registered before anything else can fail, so cleanup finds it.
	l.hosts[hs.Name] = h
	l.order = append(l.order, hs.Name)

	hd, err := h.ns.NetlinkHandle()
	if err != nil {
		return fmt.Errorf("host %q: netlink handle in %s: %w", hs.Name, h.path, err)
	}
	h.handle = hd
	lo, err := hd.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("host %q: find lo: %w", hs.Name, err)
	}
	if err := hd.LinkSetUp(lo); err != nil {
		return fmt.Errorf("host %q: set lo up: %w", hs.Name, err)
	}
	if !h.adopted {
		// ICMP errors (time exceeded, unreachable) are rate-limited per
		// destination by default: traceroute-style tests would see random
		// gaps. Labs are small and closed, so turn the limit off.
		for _, k := range []string{"net/ipv4/icmp_ratelimit", "net/ipv6/icmp/ratelimit"} {
			if err := h.SetSysctl(k, "0"); err != nil {
				return err
			}
		}
	}
	if hs.Forward {
		if err := h.SetSysctl("net/ipv4/ip_forward", "1"); err != nil {
			return err
		}
		if err := h.SetSysctl("net/ipv6/conf/all/forwarding", "1"); err != nil {
			return err
		}
	}
	return nil
}

func defaultIf(peer string) string {
	n := "v-" + peer
	if len(n) > unix.IFNAMSIZ-1 {
		n = n[:unix.IFNAMSIZ-1]
	}
	return n
}

func (l *Lab) addLink(ls LinkSpec) error {
	a, b := l.hosts[ls.A], l.hosts[ls.B]
	if a == nil || b == nil {
		return fmt.Errorf("unknown host (have %s)", strings.Join(l.order, ", "))
	}
	if a == b {
		return errors.New("a link needs two different hosts")
	}
	aif, bif := ls.AIf, ls.BIf
	if aif == "" {
		aif = defaultIf(ls.B)
	}
	if bif == "" {
		bif = defaultIf(ls.A)
	}
	for _, n := range []string{aif, bif} {
		if len(n) > unix.IFNAMSIZ-1 || n == "" {
			return fmt.Errorf("interface name %q: use 1-15 bytes", n)
		}
	}
	// Created directly in A with its peer directly in B (by namespace fd):
	// the pair never appears in the test process's own namespace.
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: aif, Namespace: a.ns.LinkNS()},
		PeerName:      bif,
		PeerNamespace: b.ns.LinkNS(),
	}
	if err := a.handle.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s@%s <-> %s@%s: %w", aif, ls.A, bif, ls.B, err)
	}
	a.vethNames = append(a.vethNames, aif)
	b.vethNames = append(b.vethNames, bif)
	if err := a.configureIf(aif, ls.AAddrs); err != nil {
		return err
	}
	return b.configureIf(bif, ls.BAddrs)
}

// configureIf adds addresses to an interface of h and sets it up.
func (h *Host) configureIf(name string, addrs []string) error {
	link, err := h.handle.LinkByName(name)
	if err != nil {
		return fmt.Errorf("host %q: find %s: %w", h.Name, name, err)
	}
	// No DAD on the link-local address either: while it is tentative the
	// kernel sends no neighbour solicitation for forwarded packets (it has
	// no source address for them), so IPv6 forwarding would stall for ~2s.
	// No router solicitations: less noise in captures and counters.
	for k, v := range map[string]string{"accept_dad": "0", "router_solicitations": "0"} {
		if err := h.SetSysctl("net/ipv6/conf/"+name+"/"+k, v); err != nil {
			return err
		}
	}
	for _, a := range addrs {
		if err := h.AddAddr(name, a); err != nil {
			return err
		}
	}
	if err := h.handle.LinkSetUp(link); err != nil {
		return fmt.Errorf("host %q: set %s up: %w", h.Name, name, err)
	}
	return nil
}

// AddAddr adds a CIDR address to interface ifname (IPv6 with IFA_F_NODAD).
func (h *Host) AddAddr(ifname, cidr string) error {
	link, err := h.handle.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("host %q: find %s: %w", h.Name, ifname, err)
	}
	addr, err := netlink.ParseAddr(cidr)
	if err != nil {
		return fmt.Errorf("host %q: address %q on %s: %w", h.Name, cidr, ifname, err)
	}
	if addr.IP.To4() == nil {
		addr.Flags |= unix.IFA_F_NODAD
	}
	if err := h.handle.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("host %q: add address %s to %s: %w", h.Name, cidr, ifname, err)
	}
	return nil
}

// AddLocalPrefix makes h answer every address in prefix: a route of type
// local on lo in the local table (IPv4 and IPv6 alike).
func (h *Host) AddLocalPrefix(prefix string) error {
	_, dst, err := net.ParseCIDR(prefix)
	if err != nil {
		return fmt.Errorf("host %q: local prefix %q: %w", h.Name, prefix, err)
	}
	lo, err := h.handle.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("host %q: find lo: %w", h.Name, err)
	}
	r := &netlink.Route{
		LinkIndex: lo.Attrs().Index,
		Dst:       dst,
		Type:      unix.RTN_LOCAL,
		Table:     unix.RT_TABLE_LOCAL,
		Scope:     netlink.SCOPE_HOST,
	}
	if err := h.handle.RouteAdd(r); err != nil {
		return fmt.Errorf("host %q: add local route %s on lo: %w", h.Name, prefix, err)
	}
	return nil
}

// AddRoute adds a route (see RouteSpec).
func (h *Host) AddRoute(rs RouteSpec) error {
	var dst *net.IPNet
	switch rs.Dst {
	case "default":
		dst = &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	case "default6":
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	default:
		var err error
		if _, dst, err = net.ParseCIDR(rs.Dst); err != nil {
			return fmt.Errorf("host %q: route destination %q: use a CIDR, \"default\" or \"default6\": %w", h.Name, rs.Dst, err)
		}
	}
	gw := net.ParseIP(rs.Via)
	if gw == nil {
		return fmt.Errorf("host %q: route %s via %q: not an IP address", h.Name, rs.Dst, rs.Via)
	}
	if (gw.To4() == nil) != (dst.IP.To4() == nil) {
		return fmt.Errorf("host %q: route %s via %s: address families differ", h.Name, rs.Dst, rs.Via)
	}
	if err := h.handle.RouteAdd(&netlink.Route{Dst: dst, Gw: gw}); err != nil {
		return fmt.Errorf("host %q: add route %s via %s: %w", h.Name, rs.Dst, rs.Via, err)
	}
	return nil
}

// sysctlPath accepts "net.ipv4.ip_forward", "net/ipv4/ip_forward" or
// "/proc/sys/net/ipv4/ip_forward"; use the slash form when a component
// (an interface name) contains a dot.
func sysctlPath(key string) string {
	key = strings.TrimPrefix(key, "/proc/sys/")
	if !strings.Contains(key, "/") {
		key = strings.ReplaceAll(key, ".", "/")
	}
	return key
}

// SetSysctl writes a /proc/sys value (key like "net/ipv4/ip_forward") from
// inside h's namespace: net sysctls are per namespace of the writing thread.
func (h *Host) SetSysctl(key, value string) error {
	key = sysctlPath(key)
	err := h.Do(func() error {
		return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644)
	})
	if err != nil {
		return fmt.Errorf("host %q: set sysctl %s=%s: %w", h.Name, key, value, err)
	}
	return nil
}

// Sysctl reads a /proc/sys value from inside h's namespace.
func (h *Host) Sysctl(key string) (string, error) {
	key = sysctlPath(key)
	var b []byte
	err := h.Do(func() (err error) {
		b, err = os.ReadFile("/proc/sys/" + key)
		return err
	})
	return strings.TrimSpace(string(b)), err
}

// Host returns the host with this logical name; it fails the test if there
// is none.
func (l *Lab) Host(name string) *Host {
	h := l.hosts[name]
	if h == nil {
		l.t.Fatalf("netlab: no host %q (have %s)", name, strings.Join(l.order, ", "))
	}
	return h
}

// Hosts returns the hosts in definition order.
func (l *Lab) Hosts() []*Host {
	out := make([]*Host, 0, len(l.order))
	for _, n := range l.order {
		out = append(out, l.hosts[n])
	}
	return out
}

// ID is the random part of this lab's namespace names.
func (l *Lab) ID() string { return l.id }

// OnCleanup registers fn to run at the lab's cleanup, before the namespaces
// are removed (later registrations run first).
func (l *Lab) OnCleanup(fn func() error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closers = append(l.closers, fn)
}

// NS is h's network namespace (an open descriptor, never Current), valid
// until cleanup.
func (h *Host) NS() nsdo.NS { return h.ns }

// Path is the file of h's network namespace (under RunDir unless adopted).
func (h *Host) Path() string { return h.path }

// Handle is a netlink handle inside h's namespace, valid until cleanup.
func (h *Host) Handle() *netlink.Handle { return h.handle }

// Lab returns the lab h belongs to.
func (h *Host) Lab() *Lab { return h.lab }

// Do runs fn on a locked OS thread inside h's namespace (nsdo.In). Sockets
// fn creates stay in that namespace.
func (h *Host) Do(fn func() error) error { return nsdo.In(h.ns, fn) }

// Listen opens a stream listener inside h.
func (h *Host) Listen(network, addr string) (net.Listener, error) {
	return nsdo.Listen(h.ns, network, addr)
}

// ListenPacket opens a packet listener inside h.
func (h *Host) ListenPacket(network, addr string) (net.PacketConn, error) {
	return nsdo.ListenPacket(h.ns, network, addr)
}

// Dial connects from inside h.
func (h *Host) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return nsdo.Dial(ctx, h.ns, network, addr)
}

// cleanup tears the lab down: registered closers (services, captures),
// processes left inside created namespaces, netlink handles, namespace
// files. It reports problems with t.Errorf and verifies the files are gone.
func (l *Lab) cleanup() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	closers := l.closers
	caps := l.captures
	l.mu.Unlock()
	for i := len(closers) - 1; i >= 0; i-- {
		if err := closers[i](); err != nil {
			l.t.Errorf("netlab cleanup: %v", err)
		}
	}
	for _, c := range caps {
		c.Close()
	}
	for i := len(l.order) - 1; i >= 0; i-- {
		h := l.hosts[l.order[i]]
		if h.handle != nil {
			h.handle.Close()
		}
		if h.adopted {
			h.ns.Close()
			continue
		}
		if id, err := nsOf(h.path); err == nil {
			if pids := killIn(id); len(pids) > 0 {
				l.t.Logf("netlab cleanup: killed processes %v left in host %q", pids, h.Name)
			}
		}
		h.ns.Close()
		if err := removeNamed(h.path); err != nil {
			l.t.Errorf("netlab cleanup: host %q: %v", h.Name, err)
		}
		if _, err := os.Lstat(h.path); !errors.Is(err, os.ErrNotExist) {
			l.t.Errorf("netlab cleanup: namespace file %s still exists (%v)", h.path, err)
		}
	}
}
