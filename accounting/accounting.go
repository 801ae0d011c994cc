// Package accounting turns the kernel's per-experiment byte counters
// (package quota's table inet arkgw_acct) into bytes per UTC day, persists
// them in the daemon's bbolt store, and enforces each experiment's daily
// budget in the style of PlanetLab's bandwidth monitor:
//
//   - at 80% of the budget one alert (alert.KindQuota, once per UTC day) and
//     the rate cap is throttled to what is left over the rest of the day:
//     bytes left x 8 / seconds left, never above the experiment's cap;
//   - at 100% the kernel quota drops the experiment's traffic (NFLOG prefix
//     "ark:<id>:quota") until the day rolls over;
//   - at 00:00 UTC the day's totals go to history, the quota is reset and
//     the cap restored.
//
// # Not losing and not double counting bytes
//
// The kernel counters are never reset by this package: they only grow. For
// each experiment the store keeps today's totals and the counter values
// they include (the baseline). Every poll adds (counter - baseline) to the
// totals and moves the baseline. A daemon restart reloads totals and
// baseline; if the table survived (quota.Table.Add reports the counters as
// not created) the counters kept counting while the daemon was down and the
// difference to the saved baseline is exactly what was missed. If the
// counters are new (node reboot, table deleted), the baseline is zero and
// at most the bytes since the last save (<= the persist interval, 10 s) are
// lost; the quota is recreated with today's saved total as its used bytes
// in the same transaction.
package accounting

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/gateway/quota"
	"github.com/hashicorp/go-hclog"
	"go.etcd.io/bbolt"
)

// Bucket is the bbolt bucket this package owns. Keys: "<id>" = the
// experiment's current state (JSON State), "<id>/<YYYY-MM-DD>" = its totals
// for that UTC day (JSON Day).
const Bucket = "bytes"

// Defaults.
const (
	DefaultPoll    = 2 * time.Second
	DefaultPersist = 10 * time.Second
	// AlertFraction of the budget raises the alert and starts throttling.
	AlertFraction = 0.8
	// RuleAlert80 and RuleExhausted name the alerts' rules.
	RuleAlert80   = "quota-80"
	RuleExhausted = "quota"
	// MinThrottleBps is the lowest throttled rate (tc needs a positive rate;
	// the kernel quota is what stops traffic at the budget).
	MinThrottleBps = 8_000
	// updateSlack: a throttled rate is re-applied only when it moves by more
	// than this fraction (avoid rewriting tc classes every poll).
	updateSlack = 0.05
)

// Kernel is what accounting needs from the counters (*quota.Table).
type Kernel interface {
	Add(e quota.Exp) (created bool, err error)
	Read() (map[string]quota.Counts, error)
	ReadOne(id string) (quota.Counts, error)
	ResetQuota(id string) (uint64, error)
	SetBudget(id string, bytes uint64) error
	Remove(id string) error
}

// Shaper changes an experiment's rate cap live (*shape.Shaper).
type Shaper interface {
	Update(ctx context.Context, id string, rateBps uint64) error
}

// Config of an Accountant.
type Config struct {
	DB      *bbolt.DB // the daemon's store; this package owns Bucket
	Kernel  Kernel
	Shaper  Shaper     // nil: no throttling
	Alerts  alert.Sink // nil: alert.Discard
	Node    string     // node name for alerts
	Clock   func() time.Time
	Poll    time.Duration // default DefaultPoll
	Persist time.Duration // default DefaultPersist (at most 10 s)
	Logger  hclog.Logger
}

// Exp is one experiment to account.
type Exp struct {
	ID       string
	HostIf   string
	Title    string
	Contacts []string
	// CapBps is its rate cap in bit/s (min of owner and experiment); 0 = none.
	CapBps uint64
	// BudgetBytes is its daily budget (MaxMBPerDay * 1e6); 0 = none.
	BudgetBytes uint64
	// UpPriority, DownPriority: skb->priority for its tc classes (shape.Priorities).
	UpPriority, DownPriority uint32
}

// State is what the store keeps per experiment.
type State struct {
	Day      string `json:"day"` // UTC, 2006-01-02
	Up       uint64 `json:"up"`
	Down     uint64 `json:"down"`
	BaseUp   uint64 `json:"base_up"` // kernel counter values included in Up/Down
	BaseDown uint64 `json:"base_down"`
	Alerted  bool   `json:"alerted,omitempty"`
	Emptied  bool   `json:"exhausted,omitempty"`
}

// Day is one day's totals in the history.
type Day struct {
	Day  string `json:"day"`
	Up   uint64 `json:"up"`
	Down uint64 `json:"down"`
}

// Status is what the daemon shows (arkgw list, the owner page).
type Status struct {
	ID          string `json:"id"`
	Day         string `json:"day"`
	UpBytes     uint64 `json:"up_bytes"`
	DownBytes   uint64 `json:"down_bytes"`
	BudgetBytes uint64 `json:"budget_bytes"` // 0 = none
	CapBps      uint64 `json:"cap_bps"`      // the experiment's cap; 0 = none
	RateBps     uint64 `json:"rate_bps"`     // the cap in force now (throttled or CapBps)
	Throttled   bool   `json:"throttled"`
	Exhausted   bool   `json:"exhausted"`
}

type entry struct {
	exp   Exp
	st    State
	rate  uint64 // applied rate cap; 0 = CapBps (not throttled)
	dirty bool
}

// Accountant polls the kernel counters. Safe for concurrent use.
type Accountant struct {
	cfg Config
	log hclog.Logger
	// faults reports polls that fail (every Poll while the cause lasts)
	// with backoff and at most one alert per window.
	faults *alert.Faults

	mu          sync.Mutex
	exps        map[string]*entry
	lastPersist time.Time
}

// New creates the bucket if needed.
func New(cfg Config) (*Accountant, error) {
	if cfg.DB == nil || cfg.Kernel == nil {
		return nil, errors.New("accounting: config needs DB and Kernel")
	}
	if cfg.Alerts == nil {
		cfg.Alerts = alert.Discard
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Poll <= 0 {
		cfg.Poll = DefaultPoll
	}
	if cfg.Persist <= 0 || cfg.Persist > DefaultPersist {
		cfg.Persist = DefaultPersist
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if err := cfg.DB.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists([]byte(Bucket))
		return err
	}); err != nil {
		return nil, fmt.Errorf("accounting: create bucket %q in the store: %w", Bucket, err)
	}
	log := cfg.Logger.Named("accounting")
	return &Accountant{cfg: cfg, log: log, exps: map[string]*entry{},
		faults: alert.NewFaults(alert.FaultsConfig{Sink: cfg.Alerts, Logger: log, Node: cfg.Node, Now: cfg.Clock})}, nil
}

// DayOf is the UTC day of t as stored ("2006-01-02").
func DayOf(t time.Time) string { return t.UTC().Format("2006-01-02") }

// SecondsLeft in t's UTC day (at least 1).
func SecondsLeft(t time.Time) float64 {
	t = t.UTC()
	end := time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, time.UTC)
	s := end.Sub(t).Seconds()
	if s < 1 {
		s = 1
	}
	return s
}

// ThrottleRate is PlanetLab's rule: spread the bytes left over the seconds
// left, never above capBps (0 = no cap), never below MinThrottleBps.
func ThrottleRate(left uint64, secondsLeft float64, capBps uint64) uint64 {
	if secondsLeft < 1 {
		secondsLeft = 1
	}
	r := float64(left) * 8 / secondsLeft
	if capBps > 0 && r > float64(capBps) {
		return capBps
	}
	if r < MinThrottleBps {
		r = MinThrottleBps
	}
	if r > 1e12 {
		r = 1e12
	}
	return uint64(r)
}

func (a *Accountant) load(id string) (State, bool, error) {
	var st State
	var ok bool
	err := a.cfg.DB.View(func(tx *bbolt.Tx) error {
		v := tx.Bucket([]byte(Bucket)).Get([]byte(id))
		if v == nil {
			return nil
		}
		ok = true
		return json.Unmarshal(v, &st)
	})
	if err != nil {
		return State{}, false, fmt.Errorf("accounting: load state of %q: %w", id, err)
	}
	return st, ok, nil
}

func (e *entry) qexp() quota.Exp {
	return quota.Exp{ID: e.exp.ID, HostIf: e.exp.HostIf, BudgetBytes: e.exp.BudgetBytes,
		UsedBytes: e.st.Up + e.st.Down, UpPriority: e.exp.UpPriority, DownPriority: e.exp.DownPriority}
}

// Track starts accounting an experiment (at start, or after a daemon
// restart): installs its counters/quota, reloads today's totals.
func (a *Accountant) Track(ctx context.Context, e Exp) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.cfg.Clock()
	today := DayOf(now)
	st, saved, err := a.load(e.ID)
	if err != nil {
		return err
	}
	ent := &entry{exp: e, st: st}
	if !saved || st.Day != today {
		// A new day (or a new experiment): today's totals start at zero;
		// keep the baselines, the counters may have survived. The rollover
		// of a saved older day happens in poll.
		if !saved {
			ent.st = State{Day: today}
		}
	}
	q := ent.qexp()
	if ent.st.Day != today {
		q.UsedBytes = 0
	}
	created, err := a.cfg.Kernel.Add(q)
	if err != nil {
		return fmt.Errorf("accounting: track %q: %w", e.ID, err)
	}
	c, err := a.cfg.Kernel.ReadOne(e.ID)
	if err != nil {
		return fmt.Errorf("accounting: track %q: %w", e.ID, err)
	}
	switch {
	case created:
		ent.st.BaseUp, ent.st.BaseDown = 0, 0
	case !saved:
		// Counters exist but we know nothing of them: do not attribute
		// bytes of unknown origin to today.
		ent.st.BaseUp, ent.st.BaseDown = c.Up, c.Down
	}
	ent.dirty = true
	a.exps[e.ID] = ent
	a.log.Info("accounting", "experiment", e.ID, "day", ent.st.Day, "up", ent.st.Up, "down", ent.st.Down,
		"counters_created", created, "budget", e.BudgetBytes)
	a.update(ctx, ent, c, now)
	// Only this experiment's record: the others are saved by the poll
	// (writing all of them made a start slower the more ran).
	return a.persistLocked(now, ent)
}

// Untrack reads the experiment's counters a last time, saves them and
// removes its kernel objects.
func (a *Accountant) Untrack(ctx context.Context, id string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	ent, ok := a.exps[id]
	if !ok {
		return a.cfg.Kernel.Remove(id)
	}
	now := a.cfg.Clock()
	if c, err := a.cfg.Kernel.ReadOne(id); err == nil {
		a.update(ctx, ent, c, now)
	}
	err := a.persistLocked(now, ent)
	delete(a.exps, id)
	return errors.Join(err, a.cfg.Kernel.Remove(id))
}

// SetBudget changes an experiment's daily budget (node policy reload).
func (a *Accountant) SetBudget(ctx context.Context, id string, budget uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	ent, ok := a.exps[id]
	if !ok {
		return fmt.Errorf("accounting: set budget of %q: not tracked", id)
	}
	old := ent.exp.BudgetBytes
	ent.exp.BudgetBytes = budget
	var err error
	if old > 0 && budget > 0 {
		err = a.cfg.Kernel.SetBudget(id, budget)
	} else {
		_, err = a.cfg.Kernel.Add(ent.qexp())
	}
	if err != nil {
		ent.exp.BudgetBytes = old
		return err
	}
	return nil
}

// SetCap records a new rate cap for an experiment (policy reload) after
// the daemon applied it with the shaper; if the experiment is throttled, the
// throttled rate (never above the new cap) is applied again at once.
func (a *Accountant) SetCap(ctx context.Context, id string, capBps uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	ent, ok := a.exps[id]
	if !ok {
		return fmt.Errorf("accounting: set cap of %q: not tracked", id)
	}
	ent.exp.CapBps = capBps
	if ent.rate != 0 {
		ent.rate = 0 // force re-evaluation against the new cap
		if cs, err := a.cfg.Kernel.Read(); err == nil {
			now := a.cfg.Clock()
			if c, ok := cs[id]; ok && DayOf(now) == ent.st.Day {
				a.enforce(ctx, ent, now, c)
			}
		}
	}
	return nil
}

// Poll reads the counters once, updates totals, budgets and throttling,
// and saves to the store when the persist interval has passed.
func (a *Accountant) Poll(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.exps) == 0 {
		return nil
	}
	now := a.cfg.Clock()
	cs, err := a.cfg.Kernel.Read()
	if err != nil {
		return fmt.Errorf("accounting: read counters: %w", err)
	}
	var errs []error
	for id, ent := range a.exps {
		c, ok := cs[id]
		if !ok {
			// The table or the experiment's objects vanished: re-add with
			// today's total as the quota's used bytes; counters restart.
			a.log.Warn("counters missing, re-adding", "experiment", id)
			if _, err := a.cfg.Kernel.Add(ent.qexp()); err != nil {
				errs = append(errs, err)
				continue
			}
			ent.st.BaseUp, ent.st.BaseDown = 0, 0
			continue
		}
		a.update(ctx, ent, c, now)
	}
	if now.Sub(a.lastPersist) >= a.cfg.Persist {
		errs = append(errs, a.persistLocked(now))
	}
	return errors.Join(errs...)
}

func delta(cur, base uint64) uint64 {
	if cur >= base {
		return cur - base
	}
	return cur // counter recreated since
}

// update folds counters c into ent at time now.
func (a *Accountant) update(ctx context.Context, ent *entry, c quota.Counts, now time.Time) {
	du, dd := delta(c.Up, ent.st.BaseUp), delta(c.Down, ent.st.BaseDown)
	ent.st.BaseUp, ent.st.BaseDown = c.Up, c.Down
	if du != 0 || dd != 0 {
		ent.dirty = true
	}
	today := DayOf(now)
	if ent.st.Day != today {
		// Bytes since the last poll belong mostly to the day that ended.
		ent.st.Up += du
		ent.st.Down += dd
		a.rollover(ctx, ent, today)
		return
	}
	ent.st.Up += du
	ent.st.Down += dd
	a.enforce(ctx, ent, now, c)
}

func (a *Accountant) rollover(ctx context.Context, ent *entry, today string) {
	id := ent.exp.ID
	old := ent.st
	if err := a.saveDay(id, Day{Day: old.Day, Up: old.Up, Down: old.Down}); err != nil {
		a.log.Error("save day", "experiment", id, "error", err)
	}
	ent.st = State{Day: today, BaseUp: old.BaseUp, BaseDown: old.BaseDown}
	ent.dirty = true
	if ent.exp.BudgetBytes > 0 {
		if _, err := a.cfg.Kernel.ResetQuota(id); err != nil {
			a.log.Error("reset quota at day rollover", "experiment", id, "error", err)
		}
	}
	if ent.rate != 0 {
		a.setRate(ctx, ent, 0)
	}
	a.log.Info("day rollover", "experiment", id, "day", old.Day, "up", old.Up, "down", old.Down)
}

func (a *Accountant) setRate(ctx context.Context, ent *entry, rate uint64) {
	if a.cfg.Shaper == nil {
		return
	}
	target := rate
	if target == 0 {
		target = ent.exp.CapBps
	}
	if err := a.cfg.Shaper.Update(ctx, ent.exp.ID, target); err != nil {
		a.log.Error("change rate cap", "experiment", ent.exp.ID, "rate_bps", target, "error", err)
		return
	}
	ent.rate = rate
}

func (a *Accountant) enforce(ctx context.Context, ent *entry, now time.Time, c quota.Counts) {
	b := ent.exp.BudgetBytes
	if b == 0 {
		return
	}
	used := ent.st.Up + ent.st.Down
	// The kernel quota also counts what it dropped and retransmissions of
	// it: once it is over, the budget is exhausted even if the bytes that
	// passed fall a little short of it.
	if c.Budget > 0 && c.QuotaUsed >= c.Budget && used < b {
		used = b
	}
	if float64(used) < AlertFraction*float64(b) {
		return
	}
	if !ent.st.Alerted {
		ent.st.Alerted, ent.dirty = true, true
		a.emit(ent, now, RuleAlert80, fmt.Sprintf("experiment %s used %d of its %d bytes today (%.0f%%): rate throttled to what is left over the rest of the UTC day", ent.exp.ID, used, b, 100*float64(used)/float64(b)))
	}
	if used >= b {
		if !ent.st.Emptied {
			ent.st.Emptied, ent.dirty = true, true
			a.emit(ent, now, RuleExhausted, fmt.Sprintf("experiment %s used its daily budget of %d bytes: its traffic is dropped until 00:00 UTC", ent.exp.ID, b))
		}
		return
	}
	r := ThrottleRate(b-used, SecondsLeft(now), ent.exp.CapBps)
	if ent.exp.CapBps > 0 && r >= ent.exp.CapBps {
		if ent.rate != 0 {
			a.setRate(ctx, ent, 0)
		}
		return
	}
	cur := ent.rate
	if cur == 0 || float64(r) < float64(cur)*(1-updateSlack) || float64(r) > float64(cur)*(1+updateSlack) {
		a.setRate(ctx, ent, r)
	}
}

func (a *Accountant) emit(ent *entry, now time.Time, rule, msg string) {
	a.cfg.Alerts.Emit(alert.Record{Time: now.UTC(), Node: a.cfg.Node, Experiment: ent.exp.ID, Title: ent.exp.Title,
		Contacts: ent.exp.Contacts, Kind: alert.KindQuota, Rule: rule, Bytes: ent.st.Up + ent.st.Down, Message: msg})
	a.log.Warn("daily budget", "experiment", ent.exp.ID, "rule", rule, "used", ent.st.Up+ent.st.Down, "budget", ent.exp.BudgetBytes)
}

func (a *Accountant) saveDay(id string, d Day) error {
	return a.cfg.DB.Update(func(tx *bbolt.Tx) error {
		v, _ := json.Marshal(d)
		return tx.Bucket([]byte(Bucket)).Put([]byte(id+"/"+d.Day), v)
	})
}

// Persist saves every experiment's state now.
func (a *Accountant) Persist() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.persistLocked(a.cfg.Clock())
}

// persistLocked saves the given entries, or all of them (and notes the
// time) when none are given.
func (a *Accountant) persistLocked(now time.Time, only ...*entry) error {
	ents := only
	if len(ents) == 0 {
		for _, ent := range a.exps {
			ents = append(ents, ent)
		}
	}
	err := a.cfg.DB.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte(Bucket))
		for _, ent := range ents {
			id := ent.exp.ID
			v, _ := json.Marshal(ent.st)
			if err := b.Put([]byte(id), v); err != nil {
				return err
			}
			d, _ := json.Marshal(Day{Day: ent.st.Day, Up: ent.st.Up, Down: ent.st.Down})
			if err := b.Put([]byte(id+"/"+ent.st.Day), d); err != nil {
				return err
			}
			ent.dirty = false
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("accounting: save counters to the store: %w", err)
	}
	if len(only) == 0 {
		a.lastPersist = now
	}
	return nil
}

// Run polls every Poll interval until ctx ends, then polls and saves a
// last time. It returns nil on a clean stop.
func (a *Accountant) Run(ctx context.Context) error {
	t := time.NewTicker(a.cfg.Poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			// The final read uses a fresh context: ours is done.
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			perr := a.Poll(fctx)
			a.faults.Close()
			return errors.Join(perr, a.Persist())
		case <-t.C:
			if err := a.Poll(ctx); err != nil {
				a.faults.Report(alert.Record{Kind: alert.KindFault, Rule: "accounting-poll",
					Message: fmt.Sprintf("byte accounting cannot poll the kernel counters: %v; daily budgets and throttling are not updated until it can", err)})
			}
			a.faults.Flush()
		}
	}
}

// Status of one tracked experiment.
func (a *Accountant) Status(id string) (Status, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ent, ok := a.exps[id]
	if !ok {
		return Status{}, false
	}
	rate := ent.rate
	if rate == 0 {
		rate = ent.exp.CapBps
	}
	return Status{ID: id, Day: ent.st.Day, UpBytes: ent.st.Up, DownBytes: ent.st.Down,
		BudgetBytes: ent.exp.BudgetBytes, CapBps: ent.exp.CapBps, RateBps: rate,
		Throttled: ent.rate != 0, Exhausted: ent.st.Emptied}, true
}

// History returns the saved daily totals of an experiment, oldest first
// (also for experiments no longer tracked).
func (a *Accountant) History(id string) ([]Day, error) {
	var out []Day
	prefix := []byte(id + "/")
	err := a.cfg.DB.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket([]byte(Bucket)).Cursor()
		for k, v := c.Seek(prefix); k != nil && strings.HasPrefix(string(k), string(prefix)); k, v = c.Next() {
			var d Day
			if err := json.Unmarshal(v, &d); err != nil {
				return fmt.Errorf("day %s: %w", k, err)
			}
			out = append(out, d)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("accounting: history of %q: %w", id, err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Day < out[j].Day })
	return out, nil
}
