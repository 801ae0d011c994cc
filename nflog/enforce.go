package nflog

import (
	"fmt"
	"time"

	"github.com/arkgw/arkgw/alert"
)

// Enforcer decides when an experiment has had too many alerts: StopAfter
// alert records (kinds packet and dns) within Window. Zero StopAfter turns
// it off. It is pure (time is passed in) and not safe for concurrent use.
// An experiment is stopped once; Forget re-arms it (a new run of the id).
type Enforcer struct {
	StopAfter int
	Window    time.Duration

	hist    map[string][]time.Time
	stopped map[string]bool
}

// NewEnforcer returns an Enforcer; window defaults to 10 minutes.
func NewEnforcer(stopAfter int, window time.Duration) *Enforcer {
	if window <= 0 {
		window = 10 * time.Minute
	}
	return &Enforcer{StopAfter: stopAfter, Window: window, hist: map[string][]time.Time{}, stopped: map[string]bool{}}
}

// Counts reports whether r counts towards enforcement.
func Counts(r alert.Record) bool {
	return r.Experiment != "" && (r.Kind == alert.KindPacket || r.Kind == alert.KindDNS || r.Kind == alert.KindFlood)
}

// Observe accounts r at now. It returns a reason when the experiment must be
// stopped now (exactly once per experiment).
func (e *Enforcer) Observe(r alert.Record, now time.Time) (reason string, stop bool) {
	if e.StopAfter <= 0 || !Counts(r) || e.stopped[r.Experiment] {
		return "", false
	}
	id := r.Experiment
	h := e.hist[id]
	cut := now.Add(-e.Window)
	i := 0
	for i < len(h) && !h[i].After(cut) {
		i++
	}
	h = append(h[i:], now)
	if len(h) > e.StopAfter { // keep memory at StopAfter entries
		h = h[len(h)-e.StopAfter:]
	}
	if len(h) >= e.StopAfter {
		delete(e.hist, id)
		e.stopped[id] = true
		return fmt.Sprintf("%d alerts within %s (node policy [alerts] stop_after = %d, window = %s); last: %s", len(h), e.Window, e.StopAfter, e.Window, r.Message), true
	}
	e.hist[id] = h
	return "", false
}

// Forget drops what the Enforcer knows of id (the experiment ended or is
// started again).
func (e *Enforcer) Forget(id string) {
	delete(e.hist, id)
	delete(e.stopped, id)
}
