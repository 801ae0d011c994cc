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
	// stops owns the stops the daemon decided on by itself (policy
	// reload, violations, quota): Run waits for them before it returns,
	// so a shutdown never leaves an experiment half stopped with its
	// completion unrecorded. closed (under mu) refuses new ones.
	stops  sync.WaitGroup
	closed bool
	// applyMu orders the kernel-facing changes of the policy: a reload
	// (compile, apply, commit) and an experiment's start (admit under the
	// policy in force, start under it) never interleave, so no experiment
	// starts under a policy that a reload is replacing.
	applyMu sync.Mutex
}

// stopTimeout bounds one stop the daemon starts by itself.
const stopTimeout = time.Minute

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
	routers := m.runner.DefaultRouters()
	// Admission, id and slot in one store transaction: a slot picked here
	// is recorded before any other submit can pick it.
	x, err := m.store.Create(func(id string, slot int) (*store.Experiment, error) {
		eff, conflicts, err := pol.Admit(manifest, name, dir, id, routers)
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
		return x, nil
	})
	if err != nil {
		return nil, err // names the manifest, the conflicts or the state file
	}
	m.log.Info("experiment submitted", "experiment", x.ID, "title", x.Title, "start", x.Start)
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
	return m.admitUnder(m.Policy(), x)
}

// admitUnder re-admits a stored experiment under pol.
func (m *Manager) admitUnder(pol *Policy, x *store.Experiment) (*configs.Effective, error) {
	eff, conflicts, err := pol.Admit([]byte(x.Manifest), x.ManifestName, x.ManifestDir, x.ID, m.runner.DefaultRouters())
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
			m.mu.Lock()
			m.closed = true
			m.mu.Unlock()
			// Stops under way finish first (each within stopTimeout): the
			// watchers record their completion.
			m.stops.Wait()
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
	m.applyMu.Lock()
	defer m.applyMu.Unlock()
	log := m.log.With("experiment", x.ID)
	eff, err := m.effective(x)
	if err != nil {
		m.failStart(x.ID, err)
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
		m.failStart(x.ID, fmt.Errorf("make experiment directory: %w", err))
		return
	}
	inst, err := m.runner.Start(ctx, eff, x.Slot, dir)
	if err != nil {
		m.failStart(x.ID, err)
		return
	}
	log.Info("experiment started", "title", eff.Title, "deadline", now.Add(time.Duration(eff.Limits.MaxHours*float64(time.Hour))))
	m.track(x.ID, eff, inst)
}

// ExitStartFailed is the exit code recorded for an experiment whose command
// never ran (refused or failed at start), as container runtimes use 125 for
// "the container could not be started": never 0, never a code the
// experiment's own command could be blamed for.
const ExitStartFailed = 125

// failStart records why an experiment could not start where every view
// finds it: the record (reason, detail, exit 125) and the experiment's own
// stderr file, so `arkgw logs ID --stderr` says it too.
func (m *Manager) failStart(id string, cause error) {
	m.log.Error("experiment failed to start", "experiment", id, "error", cause)
	dir := m.ExperimentDir(id)
	if err := os.MkdirAll(dir, 0o755); err == nil {
		f, err := os.OpenFile(filepath.Join(dir, "stderr"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err == nil {
			fmt.Fprintf(f, "arkgw: experiment %s failed to start: %v\n", id, cause)
			f.Close()
		}
	}
	m.complete(id, store.ReasonRefused, cause.Error(), Result{ExitCode: ExitStartFailed})
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

// StopAsync stops an experiment in the background, for components that
// decide on a stop on a path that must not wait (the alerter's
// enforcement, the quota, a policy reload). The Manager owns the stop: Run
// waits for it before returning. After Run has returned it is refused (and
// logged): the experiment keeps running and the next daemon re-admits it.
func (m *Manager) StopAsync(id, reason string) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		m.log.Warn("daemon shutting down; stop not started", "experiment", id, "reason", reason)
		return
	}
	m.stops.Add(1)
	m.mu.Unlock()
	go func() {
		defer m.stops.Done()
		ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		defer cancel()
		if err := m.Stop(ctx, id, reason); err != nil {
			m.log.Error("stop failed", "experiment", id, "reason", reason, "error", err)
		}
	}()
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

// Reload puts a new node policy in force, all or nothing:
//
//  1. keys that only take effect at start (Policy.RestartKeys) refuse the
//     whole reload, naming them;
//  2. every running experiment is re-admitted under the new policy (not
//     yet in force): those admitted get their new rules compiled, those in
//     conflict are set aside;
//  3. the runner applies the new rules of the admitted ones in one
//     transaction (and their new rate caps and budgets); if that fails, the
//     previous rules are re-applied and the previous policy stays in force
//     for admission too;
//  4. only then the new policy is committed, and the experiments in
//     conflict are stopped with the reason recorded.
//
// Everything else in node.toml applies: [permit] and the per-experiment
// rate and budget to running experiments at once; [dns] allow, qps and
// deny_answer and the other [limits] to experiments started after the
// reload (a running one that no longer fits them is stopped).
func (m *Manager) Reload(ctx context.Context, p *Policy) error {
	m.applyMu.Lock()
	defer m.applyMu.Unlock()
	old := m.Policy()
	if keys := old.RestartKeys(p); len(keys) > 0 {
		return &ReloadError{RestartKeys: keys}
	}
	m.mu.Lock()
	ids := make([]string, 0, len(m.running))
	prev := make([]*configs.Effective, 0, len(m.running))
	for id, l := range m.running {
		ids = append(ids, id)
		prev = append(prev, l.eff)
	}
	m.mu.Unlock()
	sort.Strings(ids)
	sort.Slice(prev, func(i, j int) bool { return prev[i].ID < prev[j].ID })

	var keep []*configs.Effective
	refused := map[string]error{}
	for _, id := range ids {
		x, err := m.store.Get(id)
		if err != nil {
			return &ReloadError{Err: fmt.Errorf("read experiment %s: %w", id, err)}
		}
		eff, err := m.admitUnder(p, x)
		if err != nil {
			refused[id] = err
			continue
		}
		keep = append(keep, eff)
	}
	if err := m.runner.Update(ctx, keep); err != nil {
		// The gateway keeps its previous ruleset when the kernel refuses
		// the new one, but rate caps, budgets or a cut of flows may have
		// gone through: put the previous policies back everywhere.
		if rerr := m.runner.Update(context.WithoutCancel(ctx), prev); rerr != nil {
			err = errors.Join(err, fmt.Errorf("restore the previous rules: %w", rerr))
		}
		return &ReloadError{Err: fmt.Errorf("apply reloaded policy: %w", err)}
	}
	m.mu.Lock()
	m.policy = p
	for _, eff := range keep {
		if l := m.running[eff.ID]; l != nil {
			l.eff = eff
		}
	}
	m.mu.Unlock()
	for _, id := range ids {
		err, ok := refused[id]
		if !ok {
			continue
		}
		m.log.Warn("experiment no longer admitted; stopping it", "experiment", id, "error", err)
		m.store.Update(id, func(e *store.Experiment) error { e.Detail = err.Error(); return nil })
		m.StopAsync(id, store.ReasonPolicy)
	}
	m.log.Info("node policy reloaded", "running", len(keep), "stopping", len(refused))
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
