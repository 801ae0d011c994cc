// Package flowlog records every connection an experiment makes (from
// conntrack DESTROY events, with kernel accounting and timestamps on) into a
// compact per-day store under the state directory, and answers "which
// experiment sent this?" from the inside or the NATed (public) side.
//
// Why DESTROY only: with nf_conntrack_acct and nf_conntrack_timestamp on, the
// kernel's DESTROY event carries the whole flow — both tuples, start and end
// time, packets and bytes both ways — so a flow that was open across a daemon
// restart is still recorded correctly when it ends, and short flows cost one
// event each. Flows still open are answered from a live conntrack dump.
package flowlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/arkgw/arkgw/alert"
)

// Flow is one finished (or, from a live dump, open) connection.
type Flow struct {
	Experiment string     `json:"experiment"`
	Proto      uint8      `json:"proto"`
	Src        netip.Addr `json:"src"` // the experiment's own address (inside)
	Dst        netip.Addr `json:"dst"`
	SPort      uint16     `json:"sport,omitempty"`
	DPort      uint16     `json:"dport,omitempty"`
	// NATSrc/NATSPort: the source as the far end saw it (after masquerade);
	// equal to Src/SPort for un-NATed (spoofed) flows.
	NATSrc   netip.Addr `json:"nat_src"`
	NATSPort uint16     `json:"nat_sport,omitempty"`
	Start    time.Time  `json:"start"`
	End      time.Time  `json:"end,omitempty"` // zero while open
	PktsOut  uint64     `json:"packets_out"`
	BytesOut uint64     `json:"bytes_out"`
	PktsIn   uint64     `json:"packets_in"`
	BytesIn  uint64     `json:"bytes_in"`
}

// ParseProto accepts a name or a number.
func ParseProto(s string) (uint8, error) {
	for p := 0; p < 256; p++ {
		if alert.ProtoName(uint8(p)) == s {
			return uint8(p), nil
		}
	}
	var n uint8
	if _, err := fmt.Sscanf(s, "%d", &n); err != nil {
		return 0, fmt.Errorf("protocol %q: use tcp, udp, icmp, icmpv6, gre or a number", s)
	}
	return n, nil
}

const recordVersion = 1

// encode is the stored value: a version byte, then fixed fields and uvarints
// (about 70 bytes for an IPv4 flow, so a day of 1,000,000 flows stays small on
// an SD card).
func (f *Flow) encode() []byte {
	b := make([]byte, 0, 96)
	b = append(b, recordVersion, f.Proto, byte(len(f.Experiment)))
	b = append(b, f.Experiment...)
	for _, a := range []netip.Addr{f.Src, f.Dst, f.NATSrc} {
		a16 := a.As16()
		if a.Is4() {
			b = append(b, 4)
			b = append(b, a16[12:]...)
		} else {
			b = append(b, 6)
			b = append(b, a16[:]...)
		}
	}
	b = binary.BigEndian.AppendUint16(b, f.SPort)
	b = binary.BigEndian.AppendUint16(b, f.DPort)
	b = binary.BigEndian.AppendUint16(b, f.NATSPort)
	b = binary.BigEndian.AppendUint64(b, uint64(f.Start.UnixNano()))
	b = binary.AppendUvarint(b, uint64(f.End.Sub(f.Start)))
	for _, v := range []uint64{f.PktsOut, f.BytesOut, f.PktsIn, f.BytesIn} {
		b = binary.AppendUvarint(b, v)
	}
	return b
}

var errCorrupt = errors.New("flowlog: corrupt record")

// decodeFlow parses a stored value. It never panics on bad input.
func decodeFlow(b []byte) (Flow, error) {
	var f Flow
	if len(b) < 3 || b[0] != recordVersion {
		return f, errCorrupt
	}
	f.Proto = b[1]
	n := int(b[2])
	b = b[3:]
	if len(b) < n {
		return f, errCorrupt
	}
	f.Experiment = string(b[:n])
	b = b[n:]
	addrs := make([]netip.Addr, 3)
	for i := range addrs {
		if len(b) < 1 {
			return f, errCorrupt
		}
		switch b[0] {
		case 4:
			if len(b) < 5 {
				return f, errCorrupt
			}
			addrs[i] = netip.AddrFrom4([4]byte(b[1:5]))
			b = b[5:]
		case 6:
			if len(b) < 17 {
				return f, errCorrupt
			}
			addrs[i] = netip.AddrFrom16([16]byte(b[1:17]))
			b = b[17:]
		default:
			return f, errCorrupt
		}
	}
	f.Src, f.Dst, f.NATSrc = addrs[0], addrs[1], addrs[2]
	if len(b) < 14 {
		return f, errCorrupt
	}
	f.SPort = binary.BigEndian.Uint16(b)
	f.DPort = binary.BigEndian.Uint16(b[2:])
	f.NATSPort = binary.BigEndian.Uint16(b[4:])
	f.Start = time.Unix(0, int64(binary.BigEndian.Uint64(b[6:]))).UTC()
	b = b[14:]
	vals := make([]uint64, 5)
	for i := range vals {
		v, k := binary.Uvarint(b)
		if k <= 0 {
			return f, errCorrupt
		}
		vals[i] = v
		b = b[k:]
	}
	f.End = f.Start.Add(time.Duration(vals[0]))
	f.PktsOut, f.BytesOut, f.PktsIn, f.BytesIn = vals[1], vals[2], vals[3], vals[4]
	return f, nil
}

// A segment (see store.go) holds the flows that ended in one 10-minute slot
// of the day, keyed destination | port | start | seq: a "who sent to dst:port"
// lookup is one seek per segment. Destinations are stored as 16 bytes (IPv4
// mapped) so a prefix is one contiguous key range.
const (
	slotLen   = 10 * time.Minute
	slotsADay = int(24 * time.Hour / slotLen)
	keyLen    = 16 + 2 + 8 + 4
)

func slotOf(t time.Time) int {
	t = t.UTC()
	return int(t.Sub(t.Truncate(24*time.Hour)) / slotLen)
}

// endOf is the time a flow is filed under: its end, or its start while open.
func endOf(f *Flow) time.Time {
	if f.End.IsZero() {
		return f.Start
	}
	return f.End
}

func indexKey(f *Flow, seq uint32) []byte {
	k := make([]byte, 0, keyLen)
	d := f.Dst.As16()
	k = append(k, d[:]...)
	k = binary.BigEndian.AppendUint16(k, f.DPort)
	k = binary.BigEndian.AppendUint64(k, uint64(f.Start.UnixNano()))
	k = binary.BigEndian.AppendUint32(k, seq)
	return k
}

// prefixRange is the first and last 16-byte address of a prefix.
func prefixRange(p netip.Prefix) (lo, hi [16]byte) {
	p = p.Masked()
	lo = p.Addr().As16()
	hi = lo
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	for i := bits; i < 128; i++ {
		hi[i/8] |= 1 << (7 - uint(i%8))
	}
	return lo, hi
}
