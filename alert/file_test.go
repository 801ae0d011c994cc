package alert

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func rec(i int) Record {
	return Record{
		Time:       time.Date(2026, 11, 25, 18, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Second),
		Experiment: "e1", Kind: KindPacket, Rule: "tcp-dst", Proto: "tcp",
		Src: "10.250.0.2", Dst: "198.51.100.9", SrcPort: 40000 + i, DstPort: 25, Packets: 1, Bytes: 60,
		Message: fmt.Sprintf("record %d", i),
	}
}

func readAllRecords(t *testing.T, path string) []Record {
	t.Helper()
	var out []Record
	if err := ReadFile(path, time.Time{}, func(r Record, _ []byte) error { out = append(out, r); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestFileSinkConcurrentEmitAndClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "alerts.jsonl")
	s, err := NewFileSink(path, FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 500
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				s.Emit(rec(w*each + i))
			}
		}(w)
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	got := readAllRecords(t, path)
	if len(got) != writers*each {
		t.Fatalf("file has %d records, want %d", len(got), writers*each)
	}
	seen := map[string]bool{}
	for _, r := range got {
		seen[r.Message] = true
	}
	if len(seen) != writers*each {
		t.Fatalf("%d distinct records, want %d", len(seen), writers*each)
	}
	if s.Syncs() >= s.Written() {
		t.Logf("no group commit happened (%d syncs for %d records)", s.Syncs(), s.Written())
	}
	s.Emit(rec(0)) // after close: dropped, not a panic
	if s.Dropped() != 1 {
		t.Fatalf("dropped = %d after emit on closed sink, want 1", s.Dropped())
	}
}

func TestFileSinkSurvivesCrash(t *testing.T) {
	path := filepath.Join(t.TempDir(), "alerts.jsonl")
	s1, err := NewFileSink(path, FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100; i++ {
		s1.Emit(rec(i))
	}
	if err := s1.Sync(); err != nil {
		t.Fatal(err)
	}
	// "Crash": abandon s1 without Close; a new instance appends.
	s2, err := NewFileSink(path, FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := 100; i < 110; i++ {
		s2.Emit(rec(i))
	}
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	got := readAllRecords(t, path)
	if len(got) != 110 {
		t.Fatalf("after restart the file has %d records, want 110", len(got))
	}
	for i, r := range got {
		if r.Message != fmt.Sprintf("record %d", i) {
			t.Fatalf("record %d is %q", i, r.Message)
		}
	}
}

func TestFileSinkRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "alerts.jsonl")
	s, err := NewFileSink(path, FileOptions{MaxBytes: 2000, Keep: 3})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 200; i++ {
		s.Emit(rec(i))
		if i%10 == 0 {
			s.Sync()
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(RotatedName(path, 3)); err != nil {
		t.Fatalf("want 3 rotated files: %v", err)
	}
	if _, err := os.Stat(RotatedName(path, 4)); err == nil {
		t.Fatalf("kept more than 3 rotated files")
	}
	got := readAllRecords(t, path)
	if len(got) == 0 || len(got) >= 200 {
		t.Fatalf("read %d records, want some but fewer than 200 (oldest rotated away)", len(got))
	}
	// In order and the newest is last.
	last := got[len(got)-1]
	if last.Message != "record 199" {
		t.Fatalf("last record %q, want record 199", last.Message)
	}
	for i := 1; i < len(got); i++ {
		if !got[i].Time.After(got[i-1].Time) {
			t.Fatalf("records out of order at %d: %v then %v", i, got[i-1].Time, got[i].Time)
		}
	}
	// since filters.
	var n int
	ReadFile(path, last.Time.Add(-4*time.Second), func(Record, []byte) error { n++; return nil })
	if n != 5 {
		t.Fatalf("since filter gave %d records, want 5", n)
	}
}

func TestFollowAcrossRotation(t *testing.T) {
	old := FollowInterval
	FollowInterval = 10 * time.Millisecond
	defer func() { FollowInterval = old }()

	path := filepath.Join(t.TempDir(), "alerts.jsonl")
	s, err := NewFileSink(path, FileOptions{MaxBytes: 1500, Keep: 100})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		s.Emit(rec(i))
	}
	s.Sync()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var mu sync.Mutex
	var got []string
	done := make(chan error, 1)
	go func() {
		done <- Follow(ctx, path, time.Time{}, func(r Record, line []byte) error {
			if !json.Valid(line) {
				return fmt.Errorf("invalid line %q", line)
			}
			mu.Lock()
			got = append(got, r.Message)
			n := len(got)
			mu.Unlock()
			if n == 300 {
				cancel()
			}
			return nil
		})
	}()
	for i := 20; i < 300; i++ {
		s.Emit(rec(i))
		if i%7 == 0 {
			s.Sync()
			time.Sleep(time.Millisecond)
		}
	}
	s.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 300 {
		seen := map[string]int{}
		for _, m := range got {
			seen[m]++
		}
		var miss []int
		for i := 0; i < 300; i++ {
			if seen[fmt.Sprintf("record %d", i)] != 1 {
				miss = append(miss, i)
			}
		}
		t.Fatalf("follow saw %d records, want 300; wrong count for %v (dropped by sink: %d)", len(got), miss, s.Dropped())
	}
	for i, m := range got {
		if m != fmt.Sprintf("record %d", i) {
			t.Fatalf("follow record %d is %q (duplicates or loss across rotation)", i, m)
		}
	}
}

func TestFollowWaitsForFileAndSkipsTornLine(t *testing.T) {
	old := FollowInterval
	FollowInterval = 10 * time.Millisecond
	defer func() { FollowInterval = old }()
	path := filepath.Join(t.TempDir(), "alerts.jsonl")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ch := make(chan Record, 10)
	go Follow(ctx, path, time.Time{}, func(r Record, _ []byte) error { ch <- r; return nil })
	time.Sleep(50 * time.Millisecond)
	b, _ := json.Marshal(rec(1))
	// A torn line (crash mid-write) followed by a good one.
	if err := os.WriteFile(path, append(append([]byte(`{"time":"2026-`), '\n'), append(b, '\n')...), 0o600); err != nil {
		t.Fatal(err)
	}
	// A line written in two parts is delivered once, whole.
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	b2, _ := json.Marshal(rec(2))
	f.Write(b2[:10])
	time.Sleep(50 * time.Millisecond)
	f.Write(append(b2[10:], '\n'))
	f.Close()
	for _, want := range []string{"record 1", "record 2"} {
		select {
		case r := <-ch:
			if r.Message != want {
				t.Fatalf("got %q, want %q", r.Message, want)
			}
		case <-ctx.Done():
			t.Fatalf("follow did not deliver %q", want)
		}
	}
}

func TestRecordJSONShape(t *testing.T) {
	typ, code := 8, 0
	r := Record{
		Time: time.Date(2026, 11, 25, 18, 0, 0, 0, time.UTC), Node: "n1", Experiment: "e1",
		Title: "T", Contacts: []string{"A <a@example.org>"}, Kind: KindPacket, Rule: "icmp",
		Proto: "icmp", Src: "10.250.0.2", Dst: "198.51.100.1", ICMPType: &typ, ICMPCode: &code,
		Packets: 3, Bytes: 252, FirstSeen: time.Date(2026, 11, 25, 18, 0, 0, 0, time.UTC),
		LastSeen: time.Date(2026, 11, 25, 18, 0, 1, 0, time.UTC), PID: 42, Command: "ping",
	}
	b, err := Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"time":"2026-11-25T18:00:00Z","node":"n1","experiment":"e1","title":"T","contacts":["A <a@example.org>"],"kind":"packet","rule":"icmp","proto":"icmp","src":"10.250.0.2","dst":"198.51.100.1","icmp_type":8,"icmp_code":0,"packets":3,"bytes":252,"first_seen":"2026-11-25T18:00:00Z","last_seen":"2026-11-25T18:00:01Z","pid":42,"command":"ping"}`
	if string(b) != want {
		t.Fatalf("json:\n got %s\nwant %s", b, want)
	}
	var back Record
	if err := json.Unmarshal(b, &back); err != nil || *back.ICMPType != 8 || back.Packets != 3 {
		t.Fatalf("round trip: %v %+v", err, back)
	}
	if !strings.Contains(string(b), `"icmp_code":0`) {
		t.Fatal("icmp code 0 must be present")
	}
}

func TestTee(t *testing.T) {
	var a, b []Record
	s := Tee(SinkFunc(func(r Record) { a = append(a, r) }), nil, SinkFunc(func(r Record) { b = append(b, r) }))
	s.Emit(rec(1))
	if len(a) != 1 || len(b) != 1 {
		t.Fatalf("tee delivered %d and %d", len(a), len(b))
	}
}

func TestFileSinkCollector(t *testing.T) {
	s, err := NewFileSink(filepath.Join(t.TempDir(), "a.jsonl"), FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Emit(rec(1))
	s.Close()
	s.Emit(rec(2))
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(s.Collector()); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		got[mf.GetName()] = mf.GetMetric()[0].GetCounter().GetValue()
	}
	if got["arkgw_alerts_file_written_total"] != 1 || got["arkgw_alerts_file_dropped_total"] != 1 || got["arkgw_alerts_file_fsyncs_total"] < 1 {
		t.Fatalf("metrics %v", got)
	}
}
