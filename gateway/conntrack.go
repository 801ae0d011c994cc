package gateway

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	ct "github.com/florianl/go-conntrack"
	"golang.org/x/sys/unix"

	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/nsdo"
)

// Revocation. Removing an allowlist entry does not stop a flow that is
// already established (the established accept admits it): its conntrack
// entry must go. After an Update, the flows of each changed experiment
// (found by the slot in the low 16 bits of the ct mark) are checked against
// the new policy with Admits, and those it no longer admits are deleted.
// The next packet of a deleted TCP flow is "new" and not a SYN, so the
// ruleset drops it (tcp-dst) instead of picking the flow up mid-stream.
// Flows still admitted are kept: deleting all of an experiment's flows on
// every reload would cut its legitimate long-running connections too.

// FlowKey is what the policy decides a flow on: its original direction.
type FlowKey struct {
	Proto    uint8
	Src, Dst netip.Addr
	DstPort  uint16 // TCP/UDP
	ICMPType uint8  // ICMP/ICMPv6 request type
	Mark     uint32
}

// Admits reports whether the policy would admit the flow now: the same
// decision the compiled ruleset makes on a flow's first packet.
// reserved are the node's reserved destinations (Config.Reserved).
func Admits(eff *configs.Effective, n *Net, reserved []netip.Prefix, routers []netip.Addr, f FlowKey) bool {
	dst, src := f.Dst.Unmap(), f.Src.Unmap()
	for _, p := range reserved {
		// An IPv6 flow to ::ffff:a.b.c.d is reserved as it stands
		// (::ffff:0:0/96), not as the IPv4 address it maps.
		if (p.Contains(dst) || p.Contains(f.Dst)) && !slices.Contains(routers, dst) {
			return false
		}
	}
	if f.Mark&MarkSpoofed != 0 || (src != n.Addr4 && src != n.Addr6) {
		return slices.Contains(eff.SpoofSources, src) && slices.Contains(eff.SpoofDestinations, dst)
	}
	if (dst.Is4() && !eff.IPv4) || (dst.Is6() && !eff.IPv6) {
		return false
	}
	if len(eff.AllPackets) > 0 && !slices.ContainsFunc(eff.AllPackets, func(p netip.Prefix) bool { return p.Contains(dst) }) {
		return false
	}
	inDests := func(ds []configs.Dest) bool {
		for _, d := range ds {
			if d.Prefix.Contains(dst) && portsContain(d.Ports, f.DstPort) {
				return true
			}
		}
		return false
	}
	switch f.Proto {
	case 6:
		if f.Mark&MarkSynOnly != 0 {
			return portsContain(eff.SynOnlyPorts, f.DstPort)
		}
		bc := eff.BackChannel
		return inDests(eff.TCP) || (!eff.DNSRestricted() && f.DstPort == 53) ||
			(bc.IsValid() && bc.Addr().Unmap() == dst && bc.Port() == f.DstPort)
	case 17:
		return inDests(eff.UDP) || (!eff.DNSRestricted() && f.DstPort == 53)
	case 1, 58:
		return eff.ICMPAny || slices.Contains(eff.ICMP, configs.ICMPType{V6: f.Proto == 58, Type: f.ICMPType})
	}
	return slices.Contains(eff.Protocols, f.Proto)
}

func portsContain(rs []configs.PortRange, p uint16) bool {
	for _, r := range rs {
		if r.Lo <= p && p <= r.Hi {
			return true
		}
	}
	return false
}

func openConntrack(ns nsdo.NS) (*ct.Nfct, error) {
	c, err := ct.Open(&ct.Config{NetNS: ns.NetlinkNetNS()})
	if err != nil {
		return nil, fmt.Errorf("open conntrack netlink socket: %w", err)
	}
	return c, nil
}

// slotFlows dumps the conntrack entries whose mark names slot.
func slotFlows(c *ct.Nfct, slot int) (map[ct.Family][]ct.Con, error) {
	mark := binary.BigEndian.AppendUint32(nil, MarkForSlot(slot))
	mask := binary.BigEndian.AppendUint32(nil, MarkSlotMask)
	out := map[ct.Family][]ct.Con{}
	for _, fam := range []ct.Family{ct.IPv4, ct.IPv6} {
		cons, err := c.Query(ct.Conntrack, fam, ct.FilterAttr{Mark: mark, MarkMask: mask})
		if err != nil {
			return nil, fmt.Errorf("dump conntrack flows of slot %d: %w", slot, err)
		}
		out[fam] = cons
	}
	return out, nil
}

func flowKey(c ct.Con) (FlowKey, bool) {
	if c.Origin == nil || c.Origin.Src == nil || c.Origin.Dst == nil || c.Origin.Proto == nil || c.Origin.Proto.Number == nil {
		return FlowKey{}, false
	}
	src, ok1 := netip.AddrFromSlice(*c.Origin.Src)
	dst, ok2 := netip.AddrFromSlice(*c.Origin.Dst)
	if !ok1 || !ok2 {
		return FlowKey{}, false
	}
	k := FlowKey{Proto: *c.Origin.Proto.Number, Src: src.Unmap(), Dst: dst.Unmap()}
	if p := c.Origin.Proto.DstPort; p != nil {
		k.DstPort = *p
	}
	if t := c.Origin.Proto.IcmpType; t != nil {
		k.ICMPType = *t
	}
	if c.Mark != nil {
		k.Mark = *c.Mark
	}
	return k, true
}

func deleteCon(c *ct.Nfct, fam ct.Family, con ct.Con) error {
	err := c.Delete(ct.Conntrack, fam, ct.Con{Origin: con.Origin})
	if err != nil && !isNotFound(err) {
		return err
	}
	return nil
}

func isNotFound(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) {
		err = op.Err
	}
	return err != nil && (errors.Is(err, errENOENT) || err.Error() == "no such file or directory")
}

// deleteFlows deletes every conntrack entry of slot; it returns how many.
func deleteFlows(ns nsdo.NS, slot int) (int, error) {
	return cutFlows(ns, slot, func(FlowKey) bool { return false })
}

// revokeFlows deletes the flows of n that eff no longer admits.
func revokeFlows(ns nsdo.NS, n *Net, eff *configs.Effective, reserved []netip.Prefix, routers []netip.Addr) (int, error) {
	return cutFlows(ns, n.Slot, func(k FlowKey) bool { return Admits(eff, n, reserved, routers, k) })
}

func cutFlows(ns nsdo.NS, slot int, keep func(FlowKey) bool) (int, error) {
	c, err := openConntrack(ns)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	flows, err := slotFlows(c, slot)
	if err != nil {
		return 0, err
	}
	var errs []error
	cut := 0
	for fam, cons := range flows {
		for _, con := range cons {
			k, ok := flowKey(con)
			if ok && keep(k) {
				continue
			}
			if err := deleteCon(c, fam, con); err != nil {
				errs = append(errs, fmt.Errorf("delete conntrack entry %+v: %w", k, err))
				continue
			}
			cut++
		}
	}
	return cut, errors.Join(errs...)
}

var errENOENT error = unix.ENOENT
