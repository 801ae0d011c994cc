package daemon

import (
	"errors"
	"os"
	"time"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/flowlog"
	"github.com/arkgw/arkgw/outputs"
	"github.com/arkgw/arkgw/store"
)

// Outputs ships experiments' results off the node (package outputs). The
// Manager tells it when an experiment starts (or is re-adopted) and when
// it has completed; nil when [outputs] is off.
type Outputs interface {
	// Track ships a running experiment's output at each interval.
	Track(id, dir string) error
	// Finish queues the rest of a completed experiment's results.
	// Idempotent.
	Finish(x *store.Experiment, dir string) error
}

// newShipper builds the results shipper when [outputs] push is set (nil,
// nil when it is not: nothing changes).
func (d *Daemon) newShipper(pol *Policy, st *store.Store, sink alert.Sink, runner Runner) (*outputs.Shipper, error) {
	o := pol.Node.Outputs
	if o.Push == "" {
		return nil, nil
	}
	cfg := outputs.Config{
		Policy: o, Node: pol.NodeName(), DB: st.DB(), Alerts: sink, Logger: d.log,
		// The flow recorder stores an experiment's last flows within a
		// second or two of its network's removal.
		SummaryDelay: 5 * time.Second,
		AlertsOf: func(id string, since time.Time, each func(alert.Record) error) error {
			err := alert.ReadFile(d.alertsPath, since, func(r alert.Record, _ []byte) error {
				if r.Experiment != id {
					return nil
				}
				return each(r)
			})
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		},
	}
	if f, ok := runner.(interface {
		FindFlows(flowlog.Query) ([]flowlog.Flow, error)
	}); ok {
		cfg.FlowsOf = func(id string, since, until time.Time) ([]flowlog.Flow, error) {
			return f.FindFlows(flowlog.Query{Experiment: id, Since: since, Until: until, Limit: 1 << 30})
		}
	}
	return outputs.New(cfg)
}

// finishCompleted finishes the experiments the shipper still counts as
// running although the store has them completed (the daemon stopped
// between the two).
func (d *Daemon) finishCompleted(st *store.Store) {
	ids, err := d.ship.Unfinished()
	if err != nil {
		d.log.Error("read results queue", "error", err)
		return
	}
	for _, id := range ids {
		x, err := st.Get(id)
		if err != nil || x.State != store.Completed {
			continue
		}
		if err := d.ship.Finish(x, d.mgr.ExperimentDir(id)); err != nil {
			d.log.Error("queue results", "experiment", id, "error", err)
		}
	}
}

// outputsOf is an experiment's shipping state for the API (nil when off).
func (d *Daemon) outputsOf(id string) *outputs.Progress {
	if d.ship == nil {
		return nil
	}
	p, ok := d.ship.Progress(id)
	if !ok {
		return nil
	}
	return &p
}
