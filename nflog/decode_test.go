package nflog

import (
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

func serialize(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func ip4(proto layers.IPProtocol) *layers.IPv4 {
	return &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: proto, SrcIP: net.IP{10, 250, 0, 2}, DstIP: net.IP{198, 51, 100, 7}}
}

func ip6(next layers.IPProtocol) *layers.IPv6 {
	return &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: next, SrcIP: net.ParseIP("fd00:a4c::2"), DstIP: net.ParseIP("2001:db8:100::7")}
}

func samplePackets(t testing.TB) map[string][]byte {
	tcp := &layers.TCP{SrcPort: 40000, DstPort: 25, SYN: true, Seq: 1, Window: 1000}
	ipt := ip4(layers.IPProtocolTCP)
	tcp.SetNetworkLayerForChecksum(ipt)
	udp := &layers.UDP{SrcPort: 5353, DstPort: 9999}
	ipu := ip4(layers.IPProtocolUDP)
	udp.SetNetworkLayerForChecksum(ipu)
	tcp6 := &layers.TCP{SrcPort: 40001, DstPort: 443, SYN: true, ACK: true, Window: 1000}
	ipt6 := ip6(layers.IPProtocolTCP)
	tcp6.SetNetworkLayerForChecksum(ipt6)
	icmp6 := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(128, 0)}
	ipi6 := ip6(layers.IPProtocolICMPv6)
	icmp6.SetNetworkLayerForChecksum(ipi6)
	return map[string][]byte{
		"tcp4":  serialize(t, ipt, tcp),
		"udp4":  serialize(t, ipu, udp, gopacket.Payload("hello")),
		"icmp4": serialize(t, ip4(layers.IPProtocolICMPv4), &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(13, 0)}, gopacket.Payload("12345678901234567890")),
		"gre4":  serialize(t, ip4(layers.IPProtocolGRE), gopacket.Payload("\x00\x00\x08\x00")),
		"tcp6":  serialize(t, ipt6, tcp6),
		"icmp6": serialize(t, ipi6, icmp6, gopacket.Payload("ping")),
		"sctp6": serialize(t, ip6(layers.IPProtocolSCTP), gopacket.Payload("x")),
	}
}

func TestDecode(t *testing.T) {
	pk := samplePackets(t)
	a4s, a4d := netip.MustParseAddr("10.250.0.2"), netip.MustParseAddr("198.51.100.7")
	a6s, a6d := netip.MustParseAddr("fd00:a4c::2"), netip.MustParseAddr("2001:db8:100::7")
	cases := []struct {
		name  string
		want  Packet
		proto string
	}{
		{"tcp4", Packet{ProtoNum: 6, Src: a4s, Dst: a4d, SrcPort: 40000, DstPort: 25, TCPFlags: 2, Len: 40}, "tcp"},
		{"udp4", Packet{ProtoNum: 17, Src: a4s, Dst: a4d, SrcPort: 5353, DstPort: 9999, Len: 33}, "udp"},
		{"icmp4", Packet{ProtoNum: 1, Src: a4s, Dst: a4d, HasICMP: true, ICMPType: 13, Len: 48}, "icmp"},
		{"gre4", Packet{ProtoNum: 47, Src: a4s, Dst: a4d, Len: 24}, "gre"},
		{"tcp6", Packet{ProtoNum: 6, Src: a6s, Dst: a6d, SrcPort: 40001, DstPort: 443, TCPFlags: 18, Len: 60}, "tcp"},
		{"icmp6", Packet{ProtoNum: 58, Src: a6s, Dst: a6d, HasICMP: true, ICMPType: 128, Len: 48}, "icmpv6"},
		{"sctp6", Packet{ProtoNum: 132, Src: a6s, Dst: a6d, Len: 41}, "sctp"},
	}
	d := NewDecoder()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := d.Decode(pk[c.name])
			if err != nil {
				t.Fatal(err)
			}
			if got != c.want {
				t.Fatalf("decode:\n got %+v\nwant %+v", got, c.want)
			}
			if got.Proto() != c.proto {
				t.Fatalf("proto %q, want %q", got.Proto(), c.proto)
			}
		})
	}
	// Truncated to the IP header (a small copy range): addresses and protocol remain.
	got, err := d.Decode(pk["tcp4"][:20])
	if err != nil || got.ProtoNum != 6 || got.Dst != a4d || got.DstPort != 0 || got.Len != 40 {
		t.Fatalf("truncated: %v %+v", err, got)
	}
	for _, bad := range [][]byte{nil, {0x45}, {0x00, 1, 2}, {0x60, 0}} {
		if _, err := d.Decode(bad); err == nil {
			t.Errorf("decode(%x) succeeded", bad)
		}
	}
}

func FuzzDecode(f *testing.F) {
	for _, b := range samplePackets(f) {
		f.Add(b)
	}
	f.Add([]byte{0x45, 0, 0, 20})
	d := NewDecoder()
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := d.Decode(b)
		if err == nil && !p.Src.IsValid() {
			t.Fatalf("decoded without a source address: %+v", p)
		}
		_ = describe(p)
	})
}
