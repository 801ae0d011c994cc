package nflog

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/arkgw/arkgw/alert"
)

// Packet is what the alerter keeps of a logged (dropped) packet.
type Packet struct {
	ProtoNum uint8
	Src, Dst netip.Addr
	SrcPort  uint16 // TCP/UDP
	DstPort  uint16
	HasICMP  bool
	ICMPType uint8
	ICMPCode uint8
	TCPFlags uint8 // FIN=1 SYN=2 RST=4 PSH=8 ACK=16
	Len      int   // IP total length in bytes (not the copied length)
}

// Proto names the protocol as in alert.Record.Proto.
func (p Packet) Proto() string { return alert.ProtoName(p.ProtoNum) }

// Decoder decodes IP packets as NFLOG delivers them (the network header
// first, possibly truncated to the copy range). Reuse one per goroutine: it
// keeps its gopacket layers to decode without allocating. Not safe for
// concurrent use.
type Decoder struct {
	ip4   layers.IPv4
	ip6   layers.IPv6
	ext   layers.IPv6ExtensionSkipper
	tcp   layers.TCP
	udp   layers.UDP
	icmp4 layers.ICMPv4
	icmp6 layers.ICMPv6
	pay   gopacket.Payload
	p4    *gopacket.DecodingLayerParser
	p6    *gopacket.DecodingLayerParser
	out   []gopacket.LayerType
}

// NewDecoder returns a Decoder.
func NewDecoder() *Decoder {
	d := &Decoder{}
	d.p4 = gopacket.NewDecodingLayerParser(layers.LayerTypeIPv4, &d.ip4, &d.tcp, &d.udp, &d.icmp4, &d.pay)
	d.p6 = gopacket.NewDecodingLayerParser(layers.LayerTypeIPv6, &d.ip6, &d.ext, &d.tcp, &d.udp, &d.icmp6, &d.pay)
	d.p4.IgnoreUnsupported = true
	d.p6.IgnoreUnsupported = true
	d.out = make([]gopacket.LayerType, 0, 8)
	return d
}

// ErrNotIP is returned for data that is not an IPv4 or IPv6 packet.
var ErrNotIP = errors.New("not an ip packet")

// Decode decodes one packet (untrusted bytes: never panics). The transport
// header is optional: a truncated or fragmented packet still yields
// addresses and protocol.
func Decode(b []byte) (Packet, error) { return NewDecoder().Decode(b) }

// Decode decodes b; see the package function.
func (d *Decoder) Decode(b []byte) (p Packet, err error) {
	defer func() {
		// gopacket is fuzzed upstream, but a decoder bug must cost one
		// alert's details, not the daemon.
		if r := recover(); r != nil {
			p, err = Packet{}, fmt.Errorf("decode packet: panic: %v", r)
		}
	}()
	if len(b) < 1 {
		return p, ErrNotIP
	}
	d.out = d.out[:0]
	switch b[0] >> 4 {
	case 4:
		_ = d.p4.DecodeLayers(b, &d.out)
	case 6:
		_ = d.p6.DecodeLayers(b, &d.out)
	default:
		return p, ErrNotIP
	}
	if len(d.out) == 0 {
		return p, fmt.Errorf("decode packet: %w: truncated or malformed network header", ErrNotIP)
	}
	for _, lt := range d.out {
		switch lt {
		case layers.LayerTypeIPv4:
			p.Src, _ = netip.AddrFromSlice(d.ip4.SrcIP.To4())
			p.Dst, _ = netip.AddrFromSlice(d.ip4.DstIP.To4())
			p.ProtoNum = uint8(d.ip4.Protocol)
			p.Len = int(d.ip4.Length)
		case layers.LayerTypeIPv6:
			p.Src, _ = netip.AddrFromSlice(d.ip6.SrcIP)
			p.Dst, _ = netip.AddrFromSlice(d.ip6.DstIP)
			p.ProtoNum = uint8(d.ip6.NextHeader)
			p.Len = int(d.ip6.Length) + 40
			if d.ip6.Length == 0 { // jumbogram or bogus: use what we have
				p.Len = len(b)
			}
		case layers.LayerTypeIPv6HopByHop, layers.LayerTypeIPv6Routing, layers.LayerTypeIPv6Destination, layers.LayerTypeIPv6Fragment:
			p.ProtoNum = uint8(d.ext.NextHeader)
			if lt == layers.LayerTypeIPv6Fragment {
				// Ports are only in the first fragment, and the
				// skipper does not tell which one this is.
				return p, nil
			}
		case layers.LayerTypeTCP:
			p.ProtoNum = 6
			p.SrcPort, p.DstPort = uint16(d.tcp.SrcPort), uint16(d.tcp.DstPort)
			p.TCPFlags = tcpFlags(&d.tcp)
		case layers.LayerTypeUDP:
			p.ProtoNum = 17
			p.SrcPort, p.DstPort = uint16(d.udp.SrcPort), uint16(d.udp.DstPort)
		case layers.LayerTypeICMPv4:
			p.ProtoNum = 1
			p.HasICMP = true
			p.ICMPType, p.ICMPCode = d.icmp4.TypeCode.Type(), d.icmp4.TypeCode.Code()
		case layers.LayerTypeICMPv6:
			p.ProtoNum = 58
			p.HasICMP = true
			p.ICMPType, p.ICMPCode = d.icmp6.TypeCode.Type(), d.icmp6.TypeCode.Code()
		}
	}
	return p, nil
}

func tcpFlags(t *layers.TCP) uint8 {
	var f uint8
	if t.FIN {
		f |= 1
	}
	if t.SYN {
		f |= 2
	}
	if t.RST {
		f |= 4
	}
	if t.PSH {
		f |= 8
	}
	if t.ACK {
		f |= 16
	}
	return f
}
