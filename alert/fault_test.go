package alert

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type recSink struct {
	mu   sync.Mutex
	recs []Record
}

func (s *recSink) Emit(r Record) { s.mu.Lock(); s.recs = append(s.recs, r); s.mu.Unlock() }
func (s *recSink) all() []Record {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Record(nil), s.recs...)
}

func newTestFaults() (*Faults, *fakeClock, *recSink, *bytes.Buffer) {
	clk := &fakeClock{t: time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)}
	sink := &recSink{}
	var logs bytes.Buffer
	f := NewFaults(FaultsConfig{Sink: sink, Node: "n1", Now: clk.now,
		Logger: hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Warn})})
	return f, clk, sink, &logs
}

var flowFault = Record{Kind: KindFault, Rule: "flowlog", Message: "open conntrack netlink: setns: bad file descriptor"}

// The flood of the flow log on a real node: a fault every 100 ms for an
// hour gives one alert per 10 minutes with the count, and a log that backs
// off to one line a minute.
func TestFaultsRepeatingFault(t *testing.T) {
	f, clk, sink, logs := newTestFaults()
	const every = 100 * time.Millisecond
	n := int(time.Hour / every)
	var delays []time.Duration
	for i := 0; i < n; i++ {
		d := f.Report(flowFault)
		if i < 12 {
			delays = append(delays, d)
		}
		clk.add(every)
		if i%10 == 0 {
			f.Flush()
		}
	}
	f.Flush()
	recs := sink.all()
	// First at once, then one per window: 0, 10, 20, ..., 50 min, and the
	// pending ones at 60 min by the last Flush.
	if len(recs) != 7 {
		t.Fatalf("%d alerts in an hour, want 7: %+v", len(recs), recs)
	}
	var total uint64
	for i, r := range recs {
		total += r.Occurrences
		if r.Kind != KindFault || r.Rule != "flowlog" || r.Node != "n1" || r.Message != flowFault.Message {
			t.Errorf("alert %d: %+v", i, r)
		}
		if i > 0 && r.Time.Sub(recs[i-1].Time) < DefaultFaultWindow {
			t.Errorf("alerts %d and %d only %s apart", i-1, i, r.Time.Sub(recs[i-1].Time))
		}
		if r.LastSeen.Before(r.FirstSeen) {
			t.Errorf("alert %d: first %v last %v", i, r.FirstSeen, r.LastSeen)
		}
	}
	if recs[0].Occurrences != 1 || total != uint64(n) {
		t.Errorf("first alert counts %d, all count %d; want 1 and %d", recs[0].Occurrences, total, n)
	}
	if !strings.Contains(FormatLine(recs[1]), "(6000 times)") {
		t.Errorf("summary line lacks the count: %s", FormatLine(recs[1]))
	}
	// Backoff: 100 ms doubling, capped at a minute.
	want := []time.Duration{100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 51200, 60000, 60000}
	for i, d := range delays {
		if d != want[i]*time.Millisecond {
			t.Fatalf("retry delays %v, want %v ms", delays, want)
		}
	}
	lines := strings.Count(logs.String(), "daemon fault")
	// The ramp (about 10 lines in the first ~100 s) then one a minute.
	if lines < 55 || lines > 80 {
		t.Errorf("%d log lines in an hour:\n%s", lines, logs.String())
	}
	if !strings.Contains(logs.String(), "occurrences=") {
		t.Errorf("log lines lack the count: %s", logs.String())
	}
}

func TestFaultsKeysAndRecovery(t *testing.T) {
	for _, tc := range []struct {
		name   string
		run    func(f *Faults, clk *fakeClock)
		alerts []uint64 // Occurrences of each alert, in order
	}{
		{"distinct faults alert separately", func(f *Faults, clk *fakeClock) {
			f.Report(flowFault)
			f.Report(Record{Kind: KindFault, Rule: "pcap-accept", Experiment: "e1"})
			f.Report(Record{Kind: KindFault, Rule: "pcap-accept", Experiment: "e2"})
			f.Report(Record{Kind: KindOverrun, Rule: "flowlog"})
		}, []uint64{1, 1, 1, 1}},
		{"repeats within the window wait for it", func(f *Faults, clk *fakeClock) {
			for i := 0; i < 5; i++ {
				f.Report(flowFault)
				clk.add(time.Minute)
				f.Flush()
			}
		}, []uint64{1}},
		{"flush after the window reports the count", func(f *Faults, clk *fakeClock) {
			for i := 0; i < 5; i++ {
				f.Report(flowFault)
				clk.add(time.Minute)
			}
			clk.add(6 * time.Minute)
			f.Flush()
			f.Flush()
		}, []uint64{1, 4}},
		{"close reports what is pending", func(f *Faults, clk *fakeClock) {
			f.Report(flowFault)
			f.Report(flowFault)
			f.Report(flowFault)
			f.Close()
			f.Close()
		}, []uint64{1, 2}},
		{"a fault back after a quiet window alerts at once", func(f *Faults, clk *fakeClock) {
			f.Report(flowFault)
			clk.add(11 * time.Minute)
			f.Flush()
			f.Report(flowFault)
		}, []uint64{1, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, clk, sink, _ := newTestFaults()
			tc.run(f, clk)
			var got []uint64
			for _, r := range sink.all() {
				got = append(got, r.Occurrences)
			}
			if len(got) != len(tc.alerts) {
				t.Fatalf("alerts with counts %v, want %v", got, tc.alerts)
			}
			for i := range got {
				if got[i] != tc.alerts[i] {
					t.Fatalf("alerts with counts %v, want %v", got, tc.alerts)
				}
			}
		})
	}
}

// After a quiet spell the backoff starts over; packets are summed.
func TestFaultsBackoffResetAndSums(t *testing.T) {
	f, clk, sink, _ := newTestFaults()
	for i := 0; i < 8; i++ {
		f.Report(Record{Kind: KindOverrun, Rule: "lost", Packets: 10})
	}
	clk.add(DefaultFaultWindow)
	f.Flush()
	clk.add(3 * DefaultFaultMaxBackoff)
	if d := f.Report(Record{Kind: KindOverrun, Rule: "lost", Packets: 1}); d != DefaultFaultMinBackoff {
		t.Errorf("delay after a quiet spell %v, want %v", d, DefaultFaultMinBackoff)
	}
	if n := len(sink.all()); n != 2 { // within the window of the second alert
		t.Fatalf("%d alerts, want 2 before the window ends", n)
	}
	clk.add(DefaultFaultWindow)
	f.Flush()
	recs := sink.all()
	if len(recs) != 3 || recs[0].Packets != 10 || recs[1].Packets != 70 || recs[1].Occurrences != 7 || recs[2].Packets != 1 {
		t.Fatalf("alerts %+v", recs)
	}
}
