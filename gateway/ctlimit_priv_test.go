package gateway

import (
	"fmt"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/arkgw/arkgw/configs"
)

// TestPrivilegedCtLimit: ICMP echoes with distinct ids (each a new
// conntrack entry) from an experiment with MaxFlows = 20: at most 20 flows
// are tracked and reach inet, the rest are dropped as ct-limit, counted
// and logged to NFLOG; another experiment's flows are untouched.
func TestPrivilegedCtLimit(t *testing.T) {
	const limit, sent = 20, 60
	l := newLab(t)
	logs := l.nflog(t)
	mk := func(p string) *configs.Effective {
		e := &configs.Effective{ID: p + randSuffix()[:4], IPv4: true, IPv6: true, ICMPAny: true}
		e.Limits.MaxFlows = limit
		return e
	}
	effA, effB := mk("c"), mk("d")
	a, nsA := l.add(t, effA, 0)
	b, nsB := l.add(t, effB, 1)
	echo := func(t *testing.T, src string, id uint16) []byte {
		return serialize(t, ip4(src, "198.51.100.1", layers.IPProtocolICMPv4),
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: id, Seq: 1}, gopacket.Payload("ct"))
	}
	arrivedFrom := func(first, last uint16) int {
		return l.inetCp.Count(func(p gopacket.Packet) bool {
			ic, ok := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
			return ok && ic.TypeCode.Type() == 8 && ic.Id >= first && ic.Id <= last
		})
	}
	for i := range uint16(sent) {
		if err := sendRaw(nsA, echo(t, a.Addr4.String(), 1000+i), addr("198.51.100.1")); err != nil {
			t.Fatal(err)
		}
	}
	l.waitCounter(t, effA.ID, RuleCtLimit, 0)
	time.Sleep(300 * time.Millisecond)
	if got := arrivedFrom(1000, 1000+sent-1); got > limit || got < limit-2 {
		t.Errorf("%d of %d echoes arrived at inet, want the limit %d", got, sent, limit)
	}
	if flows := slotFlowCount(t, l, a.Slot); flows > limit {
		t.Errorf("%d conntrack entries of the experiment, limit %d", flows, limit)
	}
	if c := l.counter(t, effA.ID, RuleCtLimit); c < sent-limit {
		t.Errorf("ct-limit counted %d drops, want at least %d", c, sent-limit)
	}
	want := fmt.Sprintf("ark:%s:%s", effA.ID, RuleCtLimit)
	deadline := time.After(3 * time.Second)
	for found := false; !found; {
		select {
		case p := <-logs:
			found = p == want
		case <-deadline:
			t.Fatalf("no NFLOG message %q", want)
		}
	}
	// The other experiment has its own budget.
	for i := range uint16(5) {
		if err := sendRaw(nsB, echo(t, b.Addr4.String(), 5000+i), addr("198.51.100.1")); err != nil {
			t.Fatal(err)
		}
	}
	deadline2 := time.Now().Add(3 * time.Second)
	for arrivedFrom(5000, 5004) < 5 && time.Now().Before(deadline2) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := arrivedFrom(5000, 5004); got != 5 {
		t.Errorf("other experiment: %d of 5 echoes arrived", got)
	}
	if c := l.counter(t, effB.ID, RuleCtLimit); c != 0 {
		t.Errorf("other experiment: %d ct-limit drops", c)
	}
}
