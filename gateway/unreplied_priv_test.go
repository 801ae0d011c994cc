package gateway

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/nsdo"
)

// TestPrivilegedRevokeUnreplied: the established fast path does not look
// at the conntrack state, so an admitted flow that conntrack still calls
// new (UDP that never got a reply) takes it after its first packet. Such
// a flow must still stop when Update revokes its destination (its
// conntrack entry is deleted and its next packet starts over), while an
// unreplied flow that stays allowed keeps flowing.
func TestPrivilegedRevokeUnreplied(t *testing.T) {
	l := newLab(t)
	eff := &configs.Effective{ID: "u" + randSuffix()[:4], IPv4: true, IPv6: true,
		UDP: []configs.Dest{dest("198.51.100.7/32", pr(9, 9)), dest("203.0.113.10/32", pr(9, 9))}}
	n, ns := l.add(t, eff, 6)
	// Unconnected sockets: an ICMP error from the far end must not stop
	// the sending.
	pc, err := nsdo.ListenPacket(ns, "udp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	cutAddr := &net.UDPAddr{IP: net.ParseIP("198.51.100.7"), Port: 9}
	keptAddr := &net.UDPAddr{IP: net.ParseIP("203.0.113.10"), Port: 9}
	send := func(a *net.UDPAddr) {
		t.Helper()
		if _, err := pc.WriteTo([]byte("probe"), a); err != nil {
			t.Fatal(err)
		}
	}
	cut, kept := to("198.51.100.7", 17, 9), to("203.0.113.10", 17, 9)
	for i := 0; i < 3; i++ {
		send(cutAddr)
		send(keptAddr)
	}
	deadline := time.Now().Add(3 * time.Second)
	for l.inetCp.Count(cut) < 3 || l.inetCp.Count(kept) < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("allowed unreplied UDP did not all arrive: %d and %d of 3", l.inetCp.Count(cut), l.inetCp.Count(kept))
		}
		time.Sleep(20 * time.Millisecond)
	}

	eff2 := *eff
	eff2.UDP = []configs.Dest{dest("203.0.113.10/32", pr(9, 9))}
	if err := l.g.Update(context.Background(), []*configs.Effective{&eff2}); err != nil {
		t.Fatal(err)
	}
	before, beforeCut, beforeKept := l.counter(t, n.ID, RuleUDPDst), l.inetCp.Count(cut), l.inetCp.Count(kept)
	for i := 0; i < 3; i++ {
		send(cutAddr)
		send(keptAddr)
	}
	l.waitCounter(t, n.ID, RuleUDPDst, before)
	deadline = time.Now().Add(3 * time.Second)
	for l.inetCp.Count(kept) < beforeKept+3 {
		if time.Now().After(deadline) {
			t.Fatalf("the still allowed unreplied flow stopped: %d of 3 arrived", l.inetCp.Count(kept)-beforeKept)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := l.inetCp.Count(cut) - beforeCut; got != 0 {
		t.Errorf("%d packets of the revoked unreplied flow arrived", got)
	}
	if got := l.counter(t, n.ID, RuleUDPDst) - before; got != 3 {
		t.Errorf("udp-dst counted %d drops, want 3", got)
	}
}
