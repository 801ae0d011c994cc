package nflog

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/arkgw/arkgw/alert"
	"github.com/prometheus/client_golang/prometheus"
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
