package gateway

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/nsdo"
)

// handleAt opens a netlink handle in ns.
func handleAt(ns nsdo.NS) (*netlink.Handle, error) {
	return ns.NetlinkHandle()
}

// writeSysctl writes /proc/sys/<key> (dots as slashes) from a thread in ns:
// /proc/sys/net resolves to the namespace of the thread that opens it.
// writeSysctls writes several in one visit of ns (entering a netns costs a
// thread switch and two setns calls).
func writeSysctls(ns nsdo.NS, kvs [][2]string) error {
	return nsdo.In(ns, func() error {
		for _, kv := range kvs {
			p := filepath.Join("/proc/sys", strings.ReplaceAll(kv[0], ".", "/"))
			if err := os.WriteFile(p, []byte(kv[1]), 0o644); err != nil {
				return fmt.Errorf("sysctl %s=%s: %w", kv[0], kv[1], err)
			}
		}
		return nil
	})
}

// procSysctl reads a sysctl of the calling thread's netns ("" if
// unreadable).
func procSysctl(key string) string {
	b, _ := os.ReadFile(filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/")))
	return strings.TrimSpace(string(b))
}

func readSysctl(ns nsdo.NS, key string) (string, error) {
	var out string
	err := nsdo.In(ns, func() error {
		b, err := os.ReadFile(filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/")))
		out = strings.TrimSpace(string(b))
		return err
	})
	return out, err
}

func prefixOf(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, a.BitLen())}
}

// hostHandle is the gateway's netlink handle in HostNS, kept (each handle
// made in a netns costs a thread switch per socket). Callers hold g.mu.
func (g *Gateway) hostHandle() (*netlink.Handle, error) {
	if g.host == nil {
		h, err := handleAt(g.cfg.HostNS)
		if err != nil {
			return nil, fmt.Errorf("netlink handle in host netns: %w", err)
		}
		g.host = h
	}
	return g.host, nil
}

// plumb creates the veth pair (peer made directly inside the experiment
// netns as eth0), addresses, routes and sysctls on both sides.
func (g *Gateway) plumb(n *Net) error {
	expNS, err := nsdo.Open(n.NetNSPath)
	if err != nil {
		return err
	}
	defer expNS.Close()
	host, err := g.hostHandle()
	if err != nil {
		return err
	}
	inside, err := expNS.NetlinkHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", n.NetNSPath, err)
	}
	defer inside.Close()

	// Node-wide forwarding. Enabling IPv6 forwarding makes the kernel
	// ignore router advertisements unless accept_ra is 2: keep an uplink
	// that learns its IPv6 route by SLAAC working. Read and written in one
	// visit of the host netns.
	has6 := n.Addr6.IsValid()
	if err := nsdo.In(g.cfg.HostNS, func() error {
		var kvs [][2]string
		if has6 && g.cfg.Uplink != "" && procSysctl("net.ipv6.conf.all.forwarding") != "1" &&
			procSysctl("net.ipv6.conf."+g.cfg.Uplink+".accept_ra") == "1" {
			kvs = append(kvs, [2]string{"net.ipv6.conf." + g.cfg.Uplink + ".accept_ra", "2"})
		}
		kvs = append(kvs, [2]string{"net.ipv4.ip_forward", "1"})
		if has6 {
			kvs = append(kvs, [2]string{"net.ipv6.conf.all.forwarding", "1"})
		}
		for _, kv := range kvs {
			if procSysctl(kv[0]) == kv[1] {
				continue
			}
			p := filepath.Join("/proc/sys", strings.ReplaceAll(kv[0], ".", "/"))
			if err := os.WriteFile(p, []byte(kv[1]), 0o644); err != nil {
				return fmt.Errorf("sysctl %s=%s: %w", kv[0], kv[1], err)
			}
		}
		return nil
	}); err != nil {
		return err
	}

	// Inside first: no DAD on the new link, ICMP datagram sockets for the
	// experiment's gids (written from the host user namespace, so in host
	// gids).
	inKVs := [][2]string{{"net.ipv4.ping_group_range", fmt.Sprintf("%d %d", n.HostGID, n.HostGID+65535)}}
	if has6 {
		inKVs = append(inKVs, [2]string{"net.ipv6.conf.default.accept_dad", "0"}, [2]string{"net.ipv6.conf.default.accept_ra", "0"})
	}
	if err := writeSysctls(expNS, inKVs); err != nil {
		return fmt.Errorf("experiment netns: %w", err)
	}

	la := netlink.NewLinkAttrs()
	la.Name = n.HostIf
	// The alias marks the link as arkgw's: the sweep deletes only links
	// that carry it.
	la.Alias = LinkAlias(n.ID)
	veth := &netlink.Veth{LinkAttrs: la, PeerName: "eth0", PeerNamespace: expNS.LinkNS()}
	if err := host.LinkAdd(veth); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add veth %s: a link of that name exists and is not arkgw's; rename or remove it", n.HostIf)
		}
		return fmt.Errorf("add veth %s (peer eth0 in %s): %w", n.HostIf, n.NetNSPath, err)
	}
	hl, err := host.LinkByName(n.HostIf)
	if err != nil {
		return fmt.Errorf("find %s: %w", n.HostIf, err)
	}
	if hl.Attrs().Alias != la.Alias {
		// Kernels that ignore IFLA_IFALIAS on creation.
		if err := host.LinkSetAlias(hl, la.Alias); err != nil {
			return fmt.Errorf("set alias of %s: %w", n.HostIf, err)
		}
	}
	// Spoofed sources are checked by the ruleset; strict reverse-path
	// filtering would drop the declared ones before it.
	// ARP: answer only for the address of this link (arp_ignore=1; by
	// default Linux answers for every local address on every link, so an
	// experiment learnt the uplink address and other experiments'
	// gateways), only where the route back leaves through this link
	// (arp_filter=1), and ask with this link's own address as the source
	// (arp_announce=2). IPv6 needs nothing: the kernel answers a
	// neighbour solicitation only for addresses of the link it came in on.
	hostKVs := [][2]string{
		{"net.ipv4.conf." + n.HostIf + ".rp_filter", "0"},
		{"net.ipv4.conf." + n.HostIf + ".arp_ignore", "1"},
		{"net.ipv4.conf." + n.HostIf + ".arp_filter", "1"},
		{"net.ipv4.conf." + n.HostIf + ".arp_announce", "2"},
	}
	if has6 {
		hostKVs = append(hostKVs, [2]string{"net.ipv6.conf." + n.HostIf + ".accept_dad", "0"}, [2]string{"net.ipv6.conf." + n.HostIf + ".accept_ra", "0"})
	}
	if err := writeSysctls(g.cfg.HostNS, hostKVs); err != nil {
		return err
	}
	for _, a := range []struct {
		addr netip.Addr
		bits int
	}{{n.GW4, 30}, {n.GW6, 64}} {
		if !a.addr.IsValid() {
			continue
		}
		if err := host.AddrAdd(hl, &netlink.Addr{IPNet: prefixOf(a.addr, a.bits), Flags: unix.IFA_F_NODAD}); err != nil {
			return fmt.Errorf("address %s/%d on %s: %w", a.addr, a.bits, n.HostIf, err)
		}
	}
	if err := host.LinkSetUp(hl); err != nil {
		return fmt.Errorf("set %s up: %w", n.HostIf, err)
	}

	lo, err := inside.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("experiment lo: %w", err)
	}
	if err := inside.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set experiment lo up: %w", err)
	}
	el, err := inside.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("experiment eth0: %w", err)
	}
	for _, a := range []struct {
		addr netip.Addr
		bits int
	}{{n.Addr4, 30}, {n.Addr6, 64}} {
		if !a.addr.IsValid() {
			continue
		}
		if err := inside.AddrAdd(el, &netlink.Addr{IPNet: prefixOf(a.addr, a.bits), Flags: unix.IFA_F_NODAD}); err != nil {
			return fmt.Errorf("address %s/%d on experiment eth0: %w", a.addr, a.bits, err)
		}
	}
	if err := inside.LinkSetUp(el); err != nil {
		return fmt.Errorf("set experiment eth0 up: %w", err)
	}
	for _, gw := range []netip.Addr{n.GW4, n.GW6} {
		if !gw.IsValid() {
			continue
		}
		r := &netlink.Route{LinkIndex: el.Attrs().Index, Gw: gw.AsSlice()}
		if gw.Is6() {
			r.Family = netlink.FAMILY_V6
		} else {
			r.Family = netlink.FAMILY_V4
		}
		if err := inside.RouteAdd(r); err != nil {
			return fmt.Errorf("default route via %s in experiment: %w", gw, err)
		}
	}
	return nil
}

// deleteLink deletes experiment id's veth "ark<id>" in ns if it is
// arkgw's (it carries LinkAlias(id)); a missing link is not an error, a
// link of that name that is not arkgw's is left alone and reported.
func deleteLink(ns nsdo.NS, id string) error {
	name := HostIfName(id)
	h, err := handleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink handle: %w", err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("find link %s: %w", name, err)
	}
	if l.Attrs().Alias != LinkAlias(id) {
		return fmt.Errorf("link %s is not arkgw's (its alias is %q, not %q): left in place; rename or remove it", name, l.Attrs().Alias, LinkAlias(id))
	}
	if err := h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}

// arkLinks lists the experiment ids of arkgw's veths "ark<id>" in ns:
// those carrying LinkAlias(id). Links of that name without it are some
// other program's and are never touched.
func arkLinks(ns nsdo.NS) ([]string, error) {
	h, err := handleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink handle: %w", err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var ids []string
	for _, l := range links {
		name := l.Attrs().Name
		if l.Type() != "veth" || !strings.HasPrefix(name, LinkPrefix) {
			continue
		}
		id := strings.TrimPrefix(name, LinkPrefix)
		if configs.ValidID(id) == nil && l.Attrs().Alias == LinkAlias(id) {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// tagLink gives an existing veth "ark<id>" arkgw's alias (Adopt: the store
// says the experiment is arkgw's; an older arkgw made it untagged).
func tagLink(ns nsdo.NS, id string) error {
	h, err := handleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink handle: %w", err)
	}
	defer h.Close()
	l, err := h.LinkByName(HostIfName(id))
	if err != nil {
		return fmt.Errorf("find link %s: %w", HostIfName(id), err)
	}
	if l.Type() != "veth" {
		return fmt.Errorf("link %s is a %s, not arkgw's veth", HostIfName(id), l.Type())
	}
	if l.Attrs().Alias == LinkAlias(id) {
		return nil
	}
	if err := h.LinkSetAlias(l, LinkAlias(id)); err != nil {
		return fmt.Errorf("set alias of %s: %w", HostIfName(id), err)
	}
	return nil
}

// defaultRoutes finds the uplink (interface of the IPv4 default route, else
// IPv6) and the gateways of the default routes in ns.
func defaultRoutes(ns nsdo.NS) (uplink string, routers []netip.Addr, err error) {
	h, err := handleAt(ns)
	if err != nil {
		return "", nil, err
	}
	defer h.Close()
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := h.RouteList(nil, fam)
		if err != nil {
			return "", nil, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range rs {
			if r.Dst != nil {
				if ones, _ := r.Dst.Mask.Size(); ones != 0 {
					continue
				}
			}
			if a, ok := netip.AddrFromSlice(r.Gw); ok {
				routers = append(routers, a.Unmap())
			}
			for _, nh := range r.MultiPath {
				if a, ok := netip.AddrFromSlice(nh.Gw); ok {
					routers = append(routers, a.Unmap())
				}
			}
			if uplink == "" && r.LinkIndex > 0 {
				if l, err := h.LinkByIndex(r.LinkIndex); err == nil {
					uplink = l.Attrs().Name
				}
			}
		}
	}
	return uplink, routers, nil
}
