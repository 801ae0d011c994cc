package store

import (
	"errors"
	"strings"
	"sync"
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
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	id, slot := create(t, s, Planned, now)
	if id != "x1" || slot != 0 {
		t.Fatalf("first id/slot = %s/%d, want x1/0", id, slot)
	}
	id2, slot2 := create(t, s, Planned, now)
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
	// x2 still holds slot 1.
	id3, slot3 := create(t, s, Planned, now)
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
		create(t, s, st, now.Add(time.Duration(i)*time.Minute))
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
	if _, slot := create(t, s, Planned, now); slot != 1 {
		t.Errorf("next slot %d, want 1", slot)
	}
}

// create stores a new experiment through Create and moves it to state.
func create(t *testing.T, s *Store, state string, submitted time.Time) (string, int) {
	t.Helper()
	x, err := s.Create(func(id string, slot int) (*Experiment, error) {
		return &Experiment{ID: id, Slot: slot, Title: "t", State: Planned, Submitted: submitted}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if state != Planned {
		if _, err := s.Update(x.ID, func(e *Experiment) error { e.State = state; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	return x.ID, x.Slot
}

// A refused build stores nothing and uses up no id; concurrent Creates
// never share a slot.
func TestCreateIsAtomic(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Create(func(id string, slot int) (*Experiment, error) {
		return nil, errors.New("refused")
	}); err == nil || err.Error() != "refused" {
		t.Fatalf("refused build: %v", err)
	}
	if xs, _ := s.List(); len(xs) != 0 {
		t.Fatalf("refused build stored %+v", xs[0])
	}
	const n = 50
	var wg sync.WaitGroup
	slots := make(chan int, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			x, err := s.Create(func(id string, slot int) (*Experiment, error) {
				return &Experiment{ID: id, Slot: slot, State: Planned}, nil
			})
			if err != nil {
				t.Error(err)
				return
			}
			slots <- x.Slot
		}()
	}
	wg.Wait()
	close(slots)
	seen := map[int]bool{}
	for sl := range slots {
		if seen[sl] || sl >= n {
			t.Errorf("slot %d given twice or beyond %d", sl, n-1)
		}
		seen[sl] = true
	}
	if x, err := s.Get("x1"); err != nil || x.Slot != 0 {
		t.Fatalf("the first id after a refusal is x1 in slot 0: %+v %v", x, err)
	}
}
