package alert

import (
	"testing"
	"time"
)

func TestFormatLine(t *testing.T) {
	typ, code := 13, 0
	cases := []struct {
		name string
		r    Record
		want string
	}{
		{"tcp", Record{Time: time.Date(2026, 11, 25, 18, 0, 0, 0, time.UTC), Experiment: "e1", Kind: KindPacket, Rule: "tcp-dst", Proto: "tcp", Src: "10.250.0.2", SrcPort: 40000, Dst: "198.51.100.1", DstPort: 25, Packets: 1, PID: 42, Command: "nc", Message: "m"},
			"2026-11-25T18:00:00Z e1 packet/tcp-dst tcp 10.250.0.2:40000 -> 198.51.100.1:25 x1 [pid 42 nc] m"},
		{"icmp6", Record{Time: time.Date(2026, 11, 25, 18, 0, 0, 0, time.UTC), Experiment: "e1", Kind: KindPacket, Rule: "icmp", Proto: "icmpv6", Src: "fd00::2", Dst: "2001:db8::1", ICMPType: &typ, ICMPCode: &code, Packets: 7},
			"2026-11-25T18:00:00Z e1 packet/icmp icmpv6 fd00::2 -> 2001:db8::1 type 13 code 0 x7"},
		{"v6 port", Record{Time: time.Date(2026, 11, 25, 18, 0, 0, 0, time.UTC), Experiment: "e1", Kind: KindPacket, Rule: "udp-dst", Proto: "udp", Src: "fd00::2", SrcPort: 5, Dst: "2001:db8::1", DstPort: 53},
			"2026-11-25T18:00:00Z e1 packet/udp-dst udp [fd00::2]:5 -> [2001:db8::1]:53"},
		{"dns", Record{Time: time.Date(2026, 11, 25, 18, 0, 0, 0, time.UTC), Experiment: "e2", Kind: KindDNS, Rule: "dns", Name: "evil.example.", QType: "A", Message: "refused"},
			"2026-11-25T18:00:00Z e2 dns/dns dns evil.example. A refused"},
		{"overrun", Record{Time: time.Date(2026, 11, 25, 18, 0, 0, 0, time.UTC), Kind: KindOverrun, Rule: "lost", Packets: 526, Message: "lost"},
			"2026-11-25T18:00:00Z - overrun/lost x526 lost"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := FormatLine(c.r); got != c.want {
				t.Fatalf("\n got %q\nwant %q", got, c.want)
			}
		})
	}
}

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 11, 25, 18, 0, 0, 0, time.UTC)
	cases := []struct {
		in   string
		want time.Time
		err  bool
	}{
		{"", time.Time{}, false},
		{"10m", now.Add(-10 * time.Minute), false},
		{"2026-11-25T17:00:00Z", now.Add(-time.Hour), false},
		{"2026-11-25T18:00:00+01:00", now.Add(-time.Hour), false},
		{"2026-11-24", time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC), false},
		{"yesterday", time.Time{}, true},
	}
	for _, c := range cases {
		got, err := ParseSince(c.in, now)
		if (err != nil) != c.err || !got.Equal(c.want) {
			t.Errorf("ParseSince(%q) = %v, %v; want %v err=%v", c.in, got, err, c.want, c.err)
		}
	}
}
