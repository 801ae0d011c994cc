package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/store"
)

// slotRunner refuses to start an experiment in a slot another one holds,
// as the gateway does (the slot names the veth and the addresses).
type slotRunner struct {
	*fakeRunner
	mu    sync.Mutex
	slots map[int]string
}

func (r *slotRunner) Start(ctx context.Context, eff *configs.Effective, slot int, dir string) (Instance, error) {
	r.mu.Lock()
	if other, ok := r.slots[slot]; ok {
		r.mu.Unlock()
		return nil, fmt.Errorf("slot %d is held by %s: add veth: file exists", slot, other)
	}
	r.slots[slot] = eff.ID
	r.mu.Unlock()
	return r.fakeRunner.Start(ctx, eff, slot, dir)
}

// Fifty submits at once through the API each get their own slot, and all
// of them start. Before slots were allocated and recorded in one store
// transaction, concurrent submits shared slots and the later ones were
// recorded as "refused at start".
func TestConcurrentSubmitsGetDistinctSlots(t *testing.T) {
	const n = 50
	r := &slotRunner{fakeRunner: newFakeRunner(), slots: map[int]string{}}
	pol := testPolicy(t, "")
	m := newTestManager(t, pol, r, nil)
	d := &Daemon{log: m.log, mgr: m, alertsPath: pol.AlertsFile()}
	srv := httptest.NewServer(d.apiHandler())
	defer srv.Close()

	body, _ := json.Marshal(SubmitRequest{Manifest: goodManifest, Name: "m.toml", Dir: "/tmp"})
	ids := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			resp, err := http.Post(srv.URL+pathExperiments, "application/json", bytes.NewReader(body))
			if err != nil {
				errs[i] = err
				return
			}
			defer resp.Body.Close()
			var x store.Experiment
			if err := json.NewDecoder(resp.Body).Decode(&x); err != nil || resp.StatusCode != http.StatusCreated {
				errs[i] = fmt.Errorf("submit: %s %v", resp.Status, err)
				return
			}
			ids[i] = x.ID
		}(i)
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
	}

	seenID := map[string]bool{}
	slotOf := map[int]string{}
	for _, id := range ids {
		x, err := m.store.Get(id)
		if err != nil {
			t.Fatalf("submitted %s not stored: %v", id, err)
		}
		if seenID[id] {
			t.Fatalf("id %s handed out twice", id)
		}
		seenID[id] = true
		if other, ok := slotOf[x.Slot]; ok {
			t.Errorf("slot %d given to both %s and %s", x.Slot, other, id)
		}
		slotOf[x.Slot] = id
		if x.Slot < 0 || x.Slot >= n {
			t.Errorf("%s: slot %d, want the lowest free ones (0..%d)", id, x.Slot, n-1)
		}
	}
	m.tick(context.Background())
	for _, id := range ids {
		if x := waitState(t, m, id, store.Running); x.Reason != "" {
			t.Fatalf("%s: %+v", id, x)
		}
	}
}
