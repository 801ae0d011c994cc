package store

import (
	"errors"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestLifecycleSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	id, slot, err := s.NewID()
	if err != nil {
		t.Fatal(err)
	}
	if id != "x1" || slot != 0 {
		t.Fatalf("first id/slot = %s/%d, want x1/0", id, slot)
	}
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	if err := s.Put(&Experiment{ID: id, Slot: slot, Title: "t", State: Planned, Submitted: now}); err != nil {
		t.Fatal(err)
	}
	id2, slot2, _ := s.NewID()
	if id2 != "x2" || slot2 != 1 {
		t.Fatalf("second id/slot = %s/%d, want x2/1 (slot 0 is in use)", id2, slot2)
	}
	if _, err := s.Update(id, func(e *Experiment) error { e.State = Running; e.Started = now; return nil }); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	e, err := s.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if e.State != Running || !e.Started.Equal(now) {
		t.Fatalf("after reopen: %+v", e)
	}
	// A completed experiment frees its slot; ids never repeat.
	s.Update(id, func(e *Experiment) error { e.State = Completed; return nil })
	id3, slot3, _ := s.NewID()
	if id3 != "x3" || slot3 != 0 {
		t.Fatalf("third id/slot = %s/%d, want x3/0", id3, slot3)
	}
	if _, err := s.Get("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(nope) = %v, want ErrNotFound", err)
	}
}

func TestListOrderAndPause(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	base := time.Unix(1_800_000_000, 0)
	for i, st := range []string{Completed, Planned, Running, Completed} {
		s.Put(&Experiment{ID: string(rune('a' + i)), State: st, Submitted: base.Add(time.Duration(i) * time.Minute)})
	}
	l, _ := s.List()
	var got string
	for _, e := range l {
		got += e.ID
	}
	if got != "cbda" {
		t.Fatalf("order = %q, want running, planned, completed newest first (cbda)", got)
	}
	if p, _ := s.Paused(); p {
		t.Fatal("new store is paused")
	}
	s.SetPaused(true)
	if p, _ := s.Paused(); !p {
		t.Fatal("pause not recorded")
	}
}

func TestOpenLockedGivesClearError(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "another arkgw") {
		t.Fatalf("second Open = %v, want a message naming the lock", err)
	}
}

// Active holds the planned and running experiments only, and a state file
// written before the index existed gets it built on open.
func TestActiveIndex(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	for i, st := range []string{Planned, Running, Completed, Running} {
		id, slot, _ := s.NewID()
		if err := s.Put(&Experiment{ID: id, Slot: slot, State: st, Submitted: now.Add(time.Duration(i) * time.Minute)}); err != nil {
			t.Fatal(err)
		}
	}
	ids := func() string {
		t.Helper()
		xs, err := s.Active()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, x := range xs {
			out = append(out, x.ID+":"+x.State)
		}
		return strings.Join(out, " ")
	}
	want := "x4:running x2:running x1:planned"
	if got := ids(); got != want {
		t.Fatalf("Active = %q, want %q", got, want)
	}
	if _, err := s.Update("x2", func(e *Experiment) error { e.State = Completed; return nil }); err != nil {
		t.Fatal(err)
	}
	if got := ids(); got != "x4:running x1:planned" {
		t.Fatalf("after x2 completed: Active = %q", got)
	}
	// An old file: no index bucket.
	if err := s.DB().Update(func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketActive) }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = Open(dir); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := ids(); got != "x4:running x1:planned" {
		t.Fatalf("rebuilt index: Active = %q", got)
	}
	// x2's slot (1) is free again; x1 holds 0, x4 holds 2 (x3 completed
	// with slot 2 before x4 took it).
	if _, slot, _ := s.NewID(); slot != 1 {
		t.Errorf("next slot %d, want 1", slot)
	}
}
