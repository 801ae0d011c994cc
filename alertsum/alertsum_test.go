package alertsum

import (
	"fmt"
	"testing"
	"time"

	"github.com/arkgw/arkgw/alert"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func dnsRefused(exp, name string, at time.Duration) alert.Record {
	return alert.Record{Time: t0.Add(at), Experiment: exp, Kind: alert.KindDNS, Rule: "dns-refused", Name: name, QType: "A", Message: "refused " + name}
}

func TestGroupsByExperimentRuleDestination(t *testing.T) {
	s := New()
	// Ten refusals of the same name are one row with count 10.
	for i := 0; i < 10; i++ {
		s.Add(dnsRefused("e1", "blocked.test.", time.Duration(i)*time.Second))
	}
	s.Add(dnsRefused("e1", "other.test.", 20*time.Second))
	s.Add(dnsRefused("e2", "blocked.test.", 5*time.Second))
	s.Add(alert.Record{Time: t0.Add(30 * time.Second), Experiment: "e1", Kind: alert.KindPacket, Rule: "tcp-dst", Proto: "tcp",
		Dst: "198.51.100.1", DstPort: 22, Packets: 3, FirstSeen: t0.Add(25 * time.Second), LastSeen: t0.Add(29 * time.Second)})
	s.Add(alert.Record{Time: t0.Add(40 * time.Second), Experiment: "e1", Kind: alert.KindPacket, Rule: "tcp-dst", Proto: "tcp",
		Dst: "2001:db8::1", DstPort: 22, Packets: 1})

	got := s.Groups("", 0)
	want := []struct {
		exp, rule, dst string
		count          uint64
		first, last    time.Duration
	}{
		{"e1", "packet/tcp-dst", "tcp [2001:db8::1]:22", 1, 40 * time.Second, 40 * time.Second},
		{"e1", "packet/tcp-dst", "tcp 198.51.100.1:22", 3, 25 * time.Second, 29 * time.Second},
		{"e1", "dns/dns-refused", "dns other.test.", 1, 20 * time.Second, 20 * time.Second},
		{"e1", "dns/dns-refused", "dns blocked.test.", 10, 0, 9 * time.Second},
		{"e2", "dns/dns-refused", "dns blocked.test.", 1, 5 * time.Second, 5 * time.Second},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d groups: %+v", len(got), got)
	}
	for i, w := range want {
		g := got[i]
		if g.Experiment != w.exp || g.Rule != w.rule || g.Destination != w.dst || g.Count != w.count ||
			!g.First.Equal(t0.Add(w.first)) || !g.Last.Equal(t0.Add(w.last)) {
			t.Errorf("group %d = %+v, want %+v", i, g, w)
		}
	}
	if e2 := s.Groups("e2", 0); len(e2) != 1 || e2[0].Experiment != "e2" {
		t.Errorf("e2 groups %+v", e2)
	}
	if top := s.Groups("", 2); len(top) != 2 {
		t.Errorf("max 2: %d", len(top))
	}
	hours := s.PerHour(t0.Add(time.Hour), 3)
	if len(hours) != 3 || hours[1].Count != 14 || hours[2].Count != 0 || !hours[1].Start.Equal(t0) {
		t.Errorf("per hour %+v", hours)
	}
}

func TestBoundedAndNothingUncounted(t *testing.T) {
	s := New()
	var total uint64
	for i := 0; i < MaxGroups+500; i++ {
		s.Add(alert.Record{Time: t0.Add(time.Duration(i) * time.Millisecond), Experiment: fmt.Sprintf("e%d", i%3), Kind: alert.KindPacket,
			Rule: "udp-dst", Proto: "udp", Dst: fmt.Sprintf("198.51.%d.%d", i/256%256, i%256), DstPort: 53, Packets: 2})
		total += 2
	}
	gs := s.Groups("", 0)
	if len(gs) > MaxGroups {
		t.Fatalf("%d groups", len(gs))
	}
	var sum uint64
	others := 0
	for _, g := range gs {
		sum += g.Count
		if g.Destination == Other {
			others++
		}
	}
	if sum != total || others != 3 {
		t.Errorf("counted %d of %d, %d other groups", sum, total, others)
	}
	// An old record beyond the hour ring is grouped but not counted per hour.
	s.Add(dnsRefused("e1", "x.", -10*24*time.Hour))
	if h := s.PerHour(t0, 1); h[0].Count != uint64(MaxGroups+500) {
		t.Errorf("per hour %+v", h)
	}
}
