// Package daemon is arkgw's node daemon: it admits experiments against the
// node policy, schedules them (planned -> running -> completed), persists
// every transition before acting on it, re-adopts running experiments after
// a crash, and serves the API that the CLI and the owner's page use.
//
// Deciding is here; doing is behind Runner (network, rules, DNS proxy,
// sandbox, capture, accounting).
package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/store"
)

// Manager owns the experiments of one node.
type Manager struct {
	log    hclog.Logger
	store  *store.Store
	runner Runner
	clock  Clock
	alerts alert.Sink
	ship   Outputs // nil = results stay on the node

	mu      sync.Mutex
	policy  *Policy
	running map[string]*live
	wake    chan struct{}
	wg      sync.WaitGroup // per-experiment watchers
	// quit ends the watchers when Run returns: experiments outlive the
	// daemon, so a shutdown never waits for them.
	quit     chan struct{}
	quitOnce sync.Once
}

type live struct {
	inst   Instance
	eff    *configs.Effective
	reason string // set when arkgw stops it, before Stop
}

// Options configure a Manager.
type Options struct {
	Logger hclog.Logger
	Store  *store.Store
	Runner Runner
	Policy *Policy
	Clock  Clock
	Alerts alert.Sink
	// Outputs ships results off the node (nil = off).
	Outputs Outputs
}

// NewManager makes a Manager; call Recover, then Run.
func NewManager(o Options) *Manager {
	if o.Clock == nil {
		o.Clock = realClock{}
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	if o.Alerts == nil {
		o.Alerts = alert.Discard
	}
	return &Manager{
		log: o.Logger.Named("manager"), store: o.Store, runner: o.Runner, clock: o.Clock,
		alerts: o.Alerts, ship: o.Outputs, policy: o.Policy, running: map[string]*live{}, wake: make(chan struct{}, 1),
		quit: make(chan struct{}),
	}
}

// ExperimentDir is where an experiment's output and sockets live.
func (m *Manager) ExperimentDir(id string) string {
	return filepath.Join(m.Policy().StateDir(), "experiments", id)
}

// Policy is the node policy in force.
func (m *Manager) Policy() *Policy {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.policy
}

// RefusedError carries one line per conflict.
type RefusedError struct{ Conflicts []string }

func (e *RefusedError) Error() string {
	return "refused by node policy:\n  " + strings.Join(e.Conflicts, "\n  ")
}

// Submit admits a manifest and schedules it. It returns the stored record.
func (m *Manager) Submit(manifest []byte, name, dir string) (*store.Experiment, error) {
	pol := m.Policy()
	id, slot, err := m.store.NewID()
	if err != nil {
		return nil, fmt.Errorf("allocate experiment id: %w", err)
	}
	eff, conflicts, err := pol.Admit(manifest, name, dir, id, m.runner.DefaultRouters())
	if err != nil {
		return nil, err
	}
	if len(conflicts) > 0 {
		return nil, &RefusedError{Conflicts: conflicts}
	}
	now := m.clock.Now().UTC()
	start := eff.Start
	if start.IsZero() || start.Before(now) {
		start = now
	}
	x := &store.Experiment{
		ID: id, Slot: slot, Title: eff.Title, Manifest: string(manifest), ManifestName: name, ManifestDir: dir,
		State: store.Planned, Submitted: now, Start: start,
	}
	for _, c := range eff.Experimenters {
		x.Experimenters = append(x.Experimenters, store.Contact{Name: c.Name, Email: c.Email})
	}
	if err := m.store.Put(x); err != nil {
		return nil, fmt.Errorf("record experiment %s: %w", id, err)
	}
	m.log.Info("experiment submitted", "experiment", id, "title", x.Title, "start", start)
	m.poke()
	return x, nil
}

func (m *Manager) poke() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// Recover re-adopts experiments that were running when the daemon stopped.
// First it sweeps kernel state that no running experiment owns (a crash can
// leave a half-built experiment behind); then it adopts each running one,
// and records those it cannot adopt as lost (a failed Adopt removes what it
// found).
func (m *Manager) Recover(ctx context.Context) error {
	list, err := m.store.Active()
	if err != nil {
		return err
	}
	keep := map[string]bool{}
	for _, x := range list {
		if x.State == store.Running {
			keep[x.ID] = true
		}
	}
	if err := m.runner.Sweep(ctx, keep); err != nil {
		m.log.Warn("sweep of stale kernel state incomplete", "error", err)
	}
	for _, x := range list {
		if x.State != store.Running {
			continue
		}
		log := m.log.With("experiment", x.ID)
		eff, err := m.effective(x)
		if err == nil {
			var inst Instance
			inst, err = m.runner.Adopt(ctx, eff, x.Slot, m.ExperimentDir(x.ID))
			if err == nil {
				m.track(x.ID, eff, inst)
				log.Info("experiment re-adopted")
				continue
			}
		}
		log.Error("cannot re-adopt experiment; it is stopped", "error", err)
		m.complete(x.ID, store.ReasonLost, err.Error(), Result{})
	}
	return nil
}

// effective re-admits a stored experiment under the current policy.
func (m *Manager) effective(x *store.Experiment) (*configs.Effective, error) {
	eff, conflicts, err := m.Policy().Admit([]byte(x.Manifest), x.ManifestName, x.ManifestDir, x.ID, m.runner.DefaultRouters())
	if err != nil {
		return nil, err
	}
	if len(conflicts) > 0 {
		return nil, &RefusedError{Conflicts: conflicts}
	}
	return eff, nil
}

// Run schedules experiments until ctx ends, then stops watching (running
// experiments keep running: a daemon restart re-adopts them).
func (m *Manager) Run(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		m.tick(ctx)
		select {
		case <-ctx.Done():
			m.quitOnce.Do(func() { close(m.quit) })
			m.wg.Wait()
			return nil
		case <-t.C:
		case <-m.wake:
		}
	}
}

func (m *Manager) tick(ctx context.Context) {
	now := m.clock.Now()
	list, err := m.store.Active()
	if err != nil {
		m.log.Error("read state", "error", err)
		return
	}
	paused, _ := m.store.Paused()
	for _, x := range list {
		switch x.State {
		case store.Planned:
			if !paused && !now.Before(x.Start) {
				m.start(ctx, x)
			}
		case store.Running:
			if !x.Deadline.IsZero() && now.After(x.Deadline) {
				m.Stop(ctx, x.ID, store.ReasonTimeout)
			}
		}
	}
}

func (m *Manager) start(ctx context.Context, x *store.Experiment) {
	log := m.log.With("experiment", x.ID)
	eff, err := m.effective(x)
	if err != nil {
		log.Warn("experiment refused at start", "error", err)
		m.complete(x.ID, store.ReasonRefused, err.Error(), Result{})
		return
	}
	now := m.clock.Now().UTC()
	// Persist before acting: a crash between here and the runner leaves a
	// "running" record that Recover either adopts or cleans up.
	if _, err := m.store.Update(x.ID, func(e *store.Experiment) error {
		e.State = store.Running
		e.Started = now
		e.Deadline = now.Add(time.Duration(eff.Limits.MaxHours * float64(time.Hour)))
		return nil
	}); err != nil {
		log.Error("record start", "error", err)
		return
	}
	dir := m.ExperimentDir(x.ID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		m.complete(x.ID, store.ReasonRefused, err.Error(), Result{})
		return
	}
	inst, err := m.runner.Start(ctx, eff, x.Slot, dir)
	if err != nil {
		log.Error("experiment failed to start", "error", err)
		m.complete(x.ID, store.ReasonRefused, err.Error(), Result{})
		return
	}
	log.Info("experiment started", "title", eff.Title, "deadline", now.Add(time.Duration(eff.Limits.MaxHours*float64(time.Hour))))
	m.track(x.ID, eff, inst)
}

func (m *Manager) track(id string, eff *configs.Effective, inst Instance) {
	l := &live{inst: inst, eff: eff}
	m.mu.Lock()
	m.running[id] = l
	m.mu.Unlock()
	if m.ship != nil {
		if err := m.ship.Track(id, m.ExperimentDir(id)); err != nil {
			m.log.Error("results will not be shipped while it runs", "experiment", id, "error", err)
		}
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		select {
		case <-inst.Done():
		case <-m.quit:
			return // the daemon stops; the experiment runs on
		}
		m.mu.Lock()
		reason := l.reason
		m.mu.Unlock()
		if reason == "" {
			reason = store.ReasonFinished
			if inst.Result().TimedOut {
				reason = store.ReasonTimeout
			}
		}
		// The command exited on its own (or was killed): remove the rest.
		if err := inst.Stop(context.Background()); err != nil {
			m.log.Warn("cleanup after exit incomplete", "experiment", id, "error", err)
		}
		m.finish(id, reason, inst)
	}()
}

func (m *Manager) finish(id, reason string, inst Instance) {
	st := inst.Status()
	r := inst.Result()
	m.mu.Lock()
	delete(m.running, id)
	m.mu.Unlock()
	m.completeWith(id, reason, r.Err, r, st)
}

func (m *Manager) complete(id, reason, detail string, r Result) {
	m.completeWith(id, reason, detail, r, Status{})
}

func (m *Manager) completeWith(id, reason, detail string, r Result, st Status) {
	now := m.clock.Now().UTC()
	x, err := m.store.Update(id, func(e *store.Experiment) error {
		if e.State == store.Completed {
			return nil
		}
		e.State = store.Completed
		e.Reason = reason
		if detail != "" {
			e.Detail = detail
		}
		e.Ended = now
		e.ExitCode, e.Signal, e.OOM, e.CPUSecs = r.ExitCode, r.Signal, r.OOM, r.CPUSecs
		e.BytesUp += st.BytesUpToday
		e.BytesDown += st.BytesDownToday
		return nil
	})
	if err != nil {
		m.log.Error("record completion", "experiment", id, "error", err)
		return
	}
	m.log.Info("experiment completed", "experiment", id, "reason", reason, "exit", r.ExitCode)
	if m.ship != nil {
		if err := m.ship.Finish(x, m.ExperimentDir(id)); err != nil {
			m.log.Error("results not queued for shipping", "experiment", id, "error", err)
		}
	}
}

// Stop stops an experiment now: a planned one is cancelled, a running one
// is killed and everything it had is removed. reason is recorded.
func (m *Manager) Stop(ctx context.Context, id, reason string) error {
	x, err := m.store.Get(id)
	if err != nil {
		return err
	}
	switch x.State {
	case store.Completed:
		return nil
	case store.Planned:
		m.complete(id, reason, "", Result{})
		return nil
	}
	m.mu.Lock()
	l := m.running[id]
	if l != nil && l.reason == "" {
		l.reason = reason
	}
	m.mu.Unlock()
	if l == nil {
		// Running in the store but not here: a start in flight or a failed
		// adoption. Record it; Sweep removes leftovers.
		m.complete(id, reason, "", Result{})
		return nil
	}
	m.log.Info("stopping experiment", "experiment", id, "reason", reason)
	if err := l.inst.Stop(ctx); err != nil {
		return fmt.Errorf("stop experiment %s: %w", id, err)
	}
	// The watcher records completion once Done closes.
	select {
	case <-l.inst.Done():
	case <-ctx.Done():
		return ctx.Err()
	}
	return m.waitCompleted(ctx, id)
}

func (m *Manager) waitCompleted(ctx context.Context, id string) error {
	for {
		x, err := m.store.Get(id)
		if err != nil {
			return err
		}
		if x.State == store.Completed {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// StopAll stops every running and planned experiment and pauses the node
// (the owner's switch); Resume lifts the pause.
func (m *Manager) StopAll(ctx context.Context, reason string) error {
	if err := m.store.SetPaused(true); err != nil {
		return err
	}
	list, err := m.store.Active()
	if err != nil {
		return err
	}
	var errs []error
	for _, x := range list {
		if x.State != store.Completed {
			errs = append(errs, m.Stop(ctx, x.ID, reason))
		}
	}
	return errors.Join(errs...)
}

// Resume lets planned experiments start again.
func (m *Manager) Resume() error {
	err := m.store.SetPaused(false)
	m.poke()
	return err
}

// Reload puts a new node policy in force: running experiments are
// re-admitted; those now in conflict are stopped with the reason recorded;
// the rules of the others are replaced in one transaction.
func (m *Manager) Reload(ctx context.Context, p *Policy) error {
	m.mu.Lock()
	m.policy = p
	ids := make([]string, 0, len(m.running))
	for id := range m.running {
		ids = append(ids, id)
	}
	m.mu.Unlock()
	sort.Strings(ids)
	var keep []*configs.Effective
	for _, id := range ids {
		x, err := m.store.Get(id)
		if err != nil {
			continue
		}
		eff, err := m.effective(x)
		if err != nil {
			m.log.Warn("experiment no longer admitted; stopping it", "experiment", id, "error", err)
			m.store.Update(id, func(e *store.Experiment) error { e.Detail = err.Error(); return nil })
			go m.Stop(context.Background(), id, store.ReasonPolicy)
			continue
		}
		m.mu.Lock()
		if l := m.running[id]; l != nil {
			l.eff = eff
		}
		m.mu.Unlock()
		keep = append(keep, eff)
	}
	if err := m.runner.Update(ctx, keep); err != nil {
		return fmt.Errorf("apply reloaded policy: %w", err)
	}
	m.log.Info("node policy reloaded", "running", len(keep))
	m.poke()
	return nil
}

// Status of a running experiment, if it runs here.
func (m *Manager) Status(id string) (Status, bool) {
	m.mu.Lock()
	l := m.running[id]
	m.mu.Unlock()
	if l == nil {
		return Status{}, false
	}
	return l.inst.Status(), true
}

// Effective policy of a running experiment.
func (m *Manager) Effective(id string) (*configs.Effective, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if l := m.running[id]; l != nil {
		return l.eff, true
	}
	return nil, false
}

// CountAlert records one more alert against an experiment.
func (m *Manager) CountAlert(id string, n uint64) {
	m.store.Update(id, func(e *store.Experiment) error { e.Alerts += n; return nil })
}
