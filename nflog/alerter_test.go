package nflog

import (
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/arkgw/arkgw/alert"
	gonflog "github.com/florianl/go-nflog/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
)

func TestAlerterEnforcementAndEnrichment(t *testing.T) {
	var mu sync.Mutex
	var got []alert.Record
	stopped := make(chan string, 4)
	a, err := New(Config{
		Node: "n1",
		Sink: alert.SinkFunc(func(r alert.Record) { mu.Lock(); got = append(got, r); mu.Unlock() }),
		Lookup: func(id string) (string, []string, bool) {
			return "T", []string{"A <a@example.org>"}, true
		},
		StopAfter: 3, StopWindow: time.Minute,
		Stop: func(id, reason string) { stopped <- id + ": " + reason },
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		a.emit(alert.Record{Experiment: "e1", Kind: alert.KindPacket, Rule: "tcp-dst", Message: "m"}, t0.Add(time.Duration(i)*time.Second))
	}
	select {
	case s := <-stopped:
		if !strings.HasPrefix(s, "e1: 3 alerts within 1m0s") {
			t.Fatalf("stop reason %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("experiment not stopped")
	}
	a.wg.Wait()
	if len(stopped) != 0 {
		t.Fatal("stopped twice")
	}
	mu.Lock()
	defer mu.Unlock()
	var enforced int
	for _, r := range got {
		if r.Node != "n1" || r.Title != "T" || len(r.Contacts) != 1 {
			t.Fatalf("record not enriched: %+v", r)
		}
		if r.Kind == alert.KindEnforced {
			enforced++
			if !strings.Contains(r.Message, "stop_after = 3") {
				t.Fatalf("enforced record without reason: %+v", r)
			}
		}
	}
	if enforced != 1 || len(got) != 6 {
		t.Fatalf("%d records, %d enforced; want 6 and 1", len(got), enforced)
	}
}

func TestCollector(t *testing.T) {
	a, _ := New(Config{Group: 100, Sink: alert.Discard})
	a.received.Add(7)
	a.seqLost.Add(2)
	m := alert.NewMetrics()
	m.Emit(alert.Record{Kind: alert.KindPacket, Rule: "icmp", Packets: 5})
	m.Emit(alert.Record{Kind: alert.KindPacket, Rule: "icmp", Packets: 1})
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(a.Collector()); err != nil {
		t.Fatal(err)
	}
	if err := reg.Register(m); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range mt.GetLabel() {
				name += "," + l.GetName() + "=" + l.GetValue()
			}
			if c := mt.GetCounter(); c != nil {
				got[name] = c.GetValue()
			}
		}
	}
	for k, v := range map[string]float64{
		"arkgw_nflog_messages_total,group=100":               7,
		"arkgw_nflog_lost_total,group=100,reason=seq_gap":    2,
		"arkgw_nflog_lost_total,group=100,reason=queue_full": 0,
		"arkgw_alerts_total,kind=packet,rule=icmp":           2,
		"arkgw_alert_packets_total,kind=packet,rule=icmp":    6,
	} {
		if got[k] != v {
			t.Errorf("%s = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
}

func TestHandleSeqGapsAndPrefixes(t *testing.T) {
	a, _ := New(Config{Sink: alert.Discard, QueueLen: 4})
	dec := NewDecoder()
	pk := samplePackets(t)["tcp4"]
	msg := func(seq uint32, prefix string) gonflog.Attribute {
		s, p, b := seq, prefix, pk
		return gonflog.Attribute{Seq: &s, Prefix: &p, Payload: &b}
	}
	a.handle(dec, msg(2, "ark:e1:tcp-dst")) // 0 and 1 never arrived
	a.handle(dec, msg(3, "ark:e1:tcp-dst"))
	a.handle(dec, msg(7, "other-prefix")) // 4..6 lost; foreign prefix
	a.handle(dec, msg(8, "ark:e2:udp-dst\x00"))
	a.handle(dec, msg(9, "ark:e2:udp-dst"))
	a.handle(dec, msg(10, "ark:e2:udp-dst")) // queue (4) full: dropped, counted
	st := a.Stats()
	if st.Received != 6 || st.SeqLost != 5 || st.Foreign != 1 || st.QueueDrops != 1 {
		t.Fatalf("stats %+v", st)
	}
	ev := <-a.queue
	if ev.Experiment != "e1" || ev.Rule != "tcp-dst" || ev.DstPort != 25 {
		t.Fatalf("event %+v", ev)
	}
	for range 2 {
		<-a.queue
	}
	if ev := <-a.queue; ev.Experiment != "e2" || ev.Rule != "udp-dst" {
		t.Fatalf("event %+v", ev)
	}
}

func TestMatchSocket(t *testing.T) {
	mk := func(src string, sport uint16, dst string, dport uint16, inode uint32) *netlink.Socket {
		s := &netlink.Socket{INode: inode}
		s.ID.Source, s.ID.SourcePort = net.ParseIP(src), sport
		s.ID.Destination, s.ID.DestinationPort = net.ParseIP(dst), dport
		return s
	}
	socks := []*netlink.Socket{
		mk("0.0.0.0", 5353, "0.0.0.0", 0, 10),           // unconnected UDP on the wildcard
		mk("10.250.0.2", 40000, "198.51.100.1", 25, 20), // connected
		mk("10.250.0.2", 40001, "198.51.100.1", 25, 30), // other source port
		mk("10.250.0.2", 40000, "198.51.100.2", 25, 40), // same sport, other destination
		mk("10.250.0.2", 6000, "198.51.100.1", 9999, 0), // no inode (time-wait)
	}
	p := func(sport uint16, dst string, dport uint16) Packet {
		return Packet{ProtoNum: 6, Src: netip.MustParseAddr("10.250.0.2"), Dst: netip.MustParseAddr(dst), SrcPort: sport, DstPort: dport}
	}
	cases := []struct {
		name string
		p    Packet
		want uint32
	}{
		{"exact 4-tuple", p(40000, "198.51.100.1", 25), 20},
		{"exact beats loose", p(40000, "198.51.100.2", 25), 40},
		{"wildcard-bound udp", p(5353, "198.51.100.1", 53), 10},
		{"no socket", p(1, "198.51.100.1", 25), 0},
		{"no inode", p(6000, "198.51.100.1", 9999), 0},
	}
	for _, c := range cases {
		if got := matchSocket(socks, c.p); got != c.want {
			t.Errorf("%s: inode %d, want %d", c.name, got, c.want)
		}
	}
}
