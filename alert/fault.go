package alert

import (
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// KindFault is the daemon's own machinery failing (the flow log cannot
// reach conntrack, a socket cannot accept): not an experiment's doing.
const KindFault = "fault"

// Faults reports the daemon's own faults, which may repeat for as long as
// their cause lasts (a missing kernel module, descriptors exhausted), so
// that they never flood: the alert stream of a fleet is read by people.
//
// A fault is identified by the Kind, Rule and Experiment of the record
// given to Report. Per fault:
//   - the log gets its first occurrence at once and later ones with an
//     exponential backoff (Min doubling to Max), each line carrying how many
//     occurrences it stands for;
//   - the sink gets at most one alert per Window: the first occurrence at
//     once, the ones after it summed into one record (Occurrences, Packets,
//     FirstSeen..LastSeen, the last Message) emitted by Flush once the
//     window has passed, or by Report of a later occurrence after it;
//   - Report returns the delay before a retry (the same backoff), for the
//     callers that retry.
//
// A fault quiet for twice Max starts again at Min. Faults is safe for
// concurrent use; its owner calls Flush periodically (its existing ticker)
// and Close when it stops, which emits what is pending so no count is lost.
type Faults struct {
	cfg FaultsConfig

	mu     sync.Mutex
	faults map[faultKey]*faultState
}

// FaultsConfig configures Faults. Zero values take the defaults.
type FaultsConfig struct {
	Sink   Sink         // alerts; nil = Discard
	Logger hclog.Logger // nil = no logging
	Node   string       // set on records that have none
	Window time.Duration
	Min    time.Duration // first backoff (default 100 ms)
	Max    time.Duration // backoff cap (default 1 min)
	Now    func() time.Time
}

// Defaults of FaultsConfig.
const (
	DefaultFaultWindow     = 10 * time.Minute
	DefaultFaultMinBackoff = 100 * time.Millisecond
	DefaultFaultMaxBackoff = time.Minute
)

type faultKey struct{ kind, rule, exp string }

type faultState struct {
	tmpl Record // the last occurrence

	last      time.Time     // last occurrence
	backoff   time.Duration // current delay (0: none yet)
	nextLog   time.Time
	unlogged  uint64 // occurrences since the last log line
	lastAlert time.Time

	// Since the last alert.
	pending        uint64
	pendingPackets uint64
	pendingBytes   uint64
	pendingFirst   time.Time
}

// NewFaults returns a reporter.
func NewFaults(cfg FaultsConfig) *Faults {
	if cfg.Sink == nil {
		cfg.Sink = Discard
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Window <= 0 {
		cfg.Window = DefaultFaultWindow
	}
	if cfg.Min <= 0 {
		cfg.Min = DefaultFaultMinBackoff
	}
	if cfg.Max <= 0 {
		cfg.Max = DefaultFaultMaxBackoff
	}
	if cfg.Max < cfg.Min {
		cfg.Max = cfg.Min
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Faults{cfg: cfg, faults: map[faultKey]*faultState{}}
}

// Report records one occurrence of the fault r describes (Kind, Rule,
// Experiment; Message says what happened and what to do; Packets and Bytes,
// if any, are summed) and returns how long a caller that retries should
// wait before the next attempt.
func (f *Faults) Report(r Record) time.Duration {
	now := f.cfg.Now()
	if r.Node == "" {
		r.Node = f.cfg.Node
	}
	k := faultKey{r.Kind, r.Rule, r.Experiment}
	var emit *Record
	var logLine *Record
	var logCount uint64
	f.mu.Lock()
	st := f.faults[k]
	if st == nil || (st.pending == 0 && now.Sub(st.last) >= 2*f.cfg.Max) {
		if st == nil {
			st = &faultState{}
			f.faults[k] = st
		}
		st.backoff, st.nextLog, st.unlogged = 0, time.Time{}, 0
	}
	st.tmpl, st.last = r, now
	if st.pending == 0 {
		st.pendingFirst = now
	}
	st.pending++
	st.pendingPackets += r.Packets
	st.pendingBytes += r.Bytes
	st.unlogged++
	if st.backoff == 0 {
		st.backoff = f.cfg.Min
	} else {
		st.backoff = min(2*st.backoff, f.cfg.Max)
	}
	if !now.Before(st.nextLog) {
		lr := r
		logLine, logCount = &lr, st.unlogged
		st.unlogged = 0
		st.nextLog = now.Add(st.backoff)
	}
	if st.lastAlert.IsZero() || now.Sub(st.lastAlert) >= f.cfg.Window {
		rec := f.summary(st, now)
		emit = &rec
	}
	delay := st.backoff
	f.mu.Unlock()
	if logLine != nil {
		f.cfg.Logger.Warn("daemon fault", "kind", logLine.Kind, "rule", logLine.Rule, "experiment", logLine.Experiment,
			"occurrences", logCount, "retry_in", delay, "message", logLine.Message)
	}
	if emit != nil {
		f.cfg.Sink.Emit(*emit)
	}
	return delay
}

// summary makes the alert for st's pending occurrences and resets them.
// Callers hold f.mu.
func (f *Faults) summary(st *faultState, now time.Time) Record {
	r := st.tmpl
	r.Time = now.UTC()
	r.Occurrences = st.pending
	r.Packets, r.Bytes = st.pendingPackets, st.pendingBytes
	r.FirstSeen, r.LastSeen = st.pendingFirst.UTC(), st.last.UTC()
	st.lastAlert = now
	st.pending, st.pendingPackets, st.pendingBytes = 0, 0, 0
	return r
}

// Flush emits the pending occurrences of every fault whose window has
// passed, and forgets faults that have been quiet for a window.
func (f *Faults) Flush() { f.flush(false) }

// Close emits everything pending regardless of the window (the reporter's
// owner is stopping).
func (f *Faults) Close() { f.flush(true) }

func (f *Faults) flush(all bool) {
	now := f.cfg.Now()
	var out []Record
	f.mu.Lock()
	for k, st := range f.faults {
		switch {
		case st.pending > 0 && (all || now.Sub(st.lastAlert) >= f.cfg.Window):
			out = append(out, f.summary(st, now))
		case st.pending == 0 && now.Sub(st.lastAlert) >= f.cfg.Window && now.Sub(st.last) >= 2*f.cfg.Max:
			delete(f.faults, k)
		}
	}
	f.mu.Unlock()
	for _, r := range out {
		f.cfg.Sink.Emit(r)
	}
}
