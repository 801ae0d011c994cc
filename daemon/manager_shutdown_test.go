package daemon

import (
	"context"
	"testing"
	"time"

	"github.com/arkgw/arkgw/store"
)

// A stop the daemon decided on by itself (here: a reload that no longer
// admits an experiment) is owned by the Manager: a shutdown in the middle
// of it waits for it to finish and record the completion, instead of
// returning while a goroutine still kills the experiment. Stops requested
// after shutdown are refused (the experiment is re-admitted at the next
// start).
func TestShutdownWaitsForBackgroundStops(t *testing.T) {
	r := newFakeRunner()
	gate := make(chan struct{})
	r.stopGate = gate
	m, a, b := twoRunning(t, r)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()

	p2 := &Policy{Node: mustNode(t, m.Policy().StateDir(), "[permit]\ntcp = [\"203.0.113.0/24:*\"]\n")}
	if err := m.Reload(context.Background(), p2); err != nil {
		t.Fatal(err)
	}
	// a's stop is now held inside the runner.
	cancel()
	select {
	case <-done:
		t.Fatal("Run returned while a stop it started was still under way")
	case <-time.After(300 * time.Millisecond):
	}
	close(gate)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after the stop finished")
	}
	if got, _ := m.store.Get(a.ID); got.State != store.Completed || got.Reason != store.ReasonPolicy {
		t.Fatalf("stopped experiment after shutdown: %+v", got)
	}
	// After shutdown: refused, b keeps running.
	m.StopAsync(b.ID, store.ReasonViolations)
	time.Sleep(50 * time.Millisecond)
	if got, _ := m.store.Get(b.ID); got.State != store.Running {
		t.Fatalf("stop after shutdown ran: %+v", got)
	}
}
