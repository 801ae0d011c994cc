package gateway

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/netlab"
	"github.com/arkgw/arkgw/nsdo"
)

// neighbourAnswered sends an ARP request (IPv4) or a neighbour
// solicitation (IPv6) for target out of eth0 in ns, from src, and reports
// whether an answer for target came back within wait.
func neighbourAnswered(t *testing.T, ns nsdo.NS, src, target netip.Addr, wait time.Duration) bool {
	t.Helper()
	answered := false
	err := nsdo.In(ns, func() error {
		ifc, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		proto := uint16(unix.ETH_P_ALL)
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(proto)))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		defer unix.Close(fd)
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(proto), Ifindex: ifc.Index}); err != nil {
			return err
		}
		tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		frame := neighbourRequest(t, ifc.HardwareAddr, src, target)
		if err := unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: ifc.Index, Halen: 6}); err != nil {
			return fmt.Errorf("send: %w", err)
		}
		buf := make([]byte, 2048)
		for deadline := time.Now().Add(wait); time.Now().Before(deadline); {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				continue // timeout: look at the clock again
			}
			p := gopacket.NewPacket(buf[:n], layers.LayerTypeEthernet, gopacket.NoCopy)
			if a, ok := p.Layer(layers.LayerTypeARP).(*layers.ARP); ok && a.Operation == layers.ARPReply {
				if got, ok := netip.AddrFromSlice(a.SourceProtAddress); ok && got == target {
					answered = true
					return nil
				}
			}
			if na, ok := p.Layer(layers.LayerTypeICMPv6NeighborAdvertisement).(*layers.ICMPv6NeighborAdvertisement); ok {
				if got, ok := netip.AddrFromSlice(na.TargetAddress); ok && got == target {
					answered = true
					return nil
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return answered
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// neighbourRequest is a broadcast ARP request or a neighbour solicitation
// to target's solicited-node group.
func neighbourRequest(t *testing.T, mac net.HardwareAddr, src, target netip.Addr) []byte {
	if target.Is4() {
		eth := &layers.Ethernet{SrcMAC: mac, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP}
		arp := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: layers.ARPRequest, SourceHwAddress: mac, SourceProtAddress: src.AsSlice(),
			DstHwAddress: make([]byte, 6), DstProtAddress: target.AsSlice()}
		return serialize(t, eth, arp)
	}
	t16 := target.As16()
	group := netip.AddrFrom16([16]byte{0xff, 0x02, 11: 1, 12: 0xff, 13: t16[13], 14: t16[14], 15: t16[15]})
	g16 := group.As16()
	eth := &layers.Ethernet{SrcMAC: mac, DstMAC: net.HardwareAddr{0x33, 0x33, g16[12], g16[13], g16[14], g16[15]}, EthernetType: layers.EthernetTypeIPv6}
	ip := &layers.IPv6{Version: 6, HopLimit: 255, NextHeader: layers.IPProtocolICMPv6, SrcIP: src.AsSlice(), DstIP: group.AsSlice()}
	ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeNeighborSolicitation, 0)}
	ic.SetNetworkLayerForChecksum(ip)
	ns := &layers.ICMPv6NeighborSolicitation{TargetAddress: target.AsSlice(), Options: layers.ICMPv6Options{
		{Type: layers.ICMPv6OptSourceAddress, Data: mac}}}
	return serialize(t, eth, ip, ic, ns)
}

// TestPrivilegedNeighbours: the node answers an experiment's ARP requests
// and neighbour solicitations only for that experiment's own gateway
// address: not for the node's uplink address, not for another
// experiment's gateway.
func TestPrivilegedNeighbours(t *testing.T) {
	l := newLab(t)
	a, nsA := l.add(t, &configs.Effective{ID: "n" + randSuffix()[:4], IPv4: true, IPv6: true}, 0)
	b, _ := l.add(t, &configs.Effective{ID: "m" + randSuffix()[:4], IPv4: true, IPv6: true}, 1)
	for _, tc := range []struct {
		target netip.Addr
		want   bool
	}{
		{a.GW4, true},
		{addr(netlab.NodeUplink4), false},
		{b.GW4, false},
		{a.GW6, true},
		{addr(netlab.NodeUplink6), false},
		{b.GW6, false},
	} {
		t.Run(tc.target.String(), func(t *testing.T) {
			src := a.Addr4
			if tc.target.Is6() {
				src = a.Addr6
			}
			if got := neighbourAnswered(t, nsA, src, tc.target, time.Second); got != tc.want {
				t.Errorf("answered = %v, want %v", got, tc.want)
			}
		})
	}
}
