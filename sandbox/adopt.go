package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/nsholder"
)

// AdoptSpec names a run that a previous daemon process launched.
type AdoptSpec struct {
	ID           string
	CgroupParent string    // as in its Spec ("" = "arkgw")
	StatusFile   string    // as in its Spec (required)
	Deadline     time.Time // end of its wall-clock limit; zero = none
	Logger       hclog.Logger
}

// Adopt re-attaches to a run after a daemon restart. The run's holder kept
// monitoring it (output capture, exit status) while no daemon was there,
// and writes StatusFile when it ends; the returned Sandbox waits for that
// file, enforces Deadline and can be stopped (the cgroup is found by id).
// A run that already ended is returned done, its cgroup removed.
func Adopt(a AdoptSpec) (*Sandbox, error) {
	if err := configs.ValidID(a.ID); err != nil {
		return nil, fmt.Errorf("sandbox: adopt: %w", err)
	}
	if a.StatusFile == "" {
		return nil, fmt.Errorf("sandbox %s: adopt needs the run's status file", a.ID)
	}
	log := a.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	log = log.With("experiment", a.ID)
	rel := cgroupRel(a.CgroupParent, a.ID)
	cg, ok := loadCgroup(rel)
	if !ok {
		cg = goneCgroup{}
	}
	w := &statusWaiter{path: a.StatusFile, cg: cg, done: make(chan struct{})}
	sb := &Sandbox{ID: a.ID, log: log, proc: w, cg: cg, stop: make(chan struct{}), done: make(chan struct{})}
	if !a.Deadline.IsZero() {
		sb.timeout = time.Until(a.Deadline)
		if sb.timeout <= 0 {
			sb.timeout = -1 // already over: kill at once
		}
	}
	go w.poll()
	go sb.monitor()
	log.Info("sandbox adopted", "cgroup", rel, "cgroup_found", ok)
	return sb, nil
}

// Cleanup kills every process of an experiment's cgroup and removes it,
// for runs no daemon knows any more (startup sweep). Idempotent.
func Cleanup(id, cgroupParent string) error {
	cg, ok := loadCgroup(cgroupRel(cgroupParent, id))
	if !ok {
		return nil
	}
	return errors.Join(cg.Kill(), cg.Delete())
}

// DefaultCgroupParent holds the node daemon's experiment cgroups (a Spec's
// CgroupParent "").
const DefaultCgroupParent = "arkgw"

// RemoveParent deletes the cgroup parent itself (every hierarchy): `arkgw
// try` when it ends, `arkgw cleanup` when no experiment runs (the daemon
// keeps its parent across restarts and makes it again at start). It fails
// while an experiment's cgroup is still in it.
func RemoveParent(cgroupParent string) error {
	if cgroupParent == "" {
		cgroupParent = DefaultCgroupParent
	}
	cg, ok := loadCgroup("/" + strings.Trim(filepath.Clean("/"+cgroupParent), "/"))
	if !ok {
		return nil
	}
	if err := cg.Delete(); err != nil {
		return fmt.Errorf("remove cgroup parent %s: %w", cgroupParent, err)
	}
	return nil
}

func cgroupRel(parent, id string) string {
	if parent == "" {
		parent = DefaultCgroupParent
	}
	return "/" + strings.Trim(filepath.Clean("/"+parent), "/") + "/" + id
}

// statusWaiter polls the status file the holder writes when the run ends.
// If the cgroup is empty and no status appears within a grace period (the
// holder died too), the run counts as ended with an error.
type statusWaiter struct {
	path string
	cg   cgroupCtl
	done chan struct{}
	st   nsholder.ExitStatus
	err  error
}

func (w *statusWaiter) Done() <-chan struct{}              { return w.done }
func (w *statusWaiter) Wait() (nsholder.ExitStatus, error) { <-w.done; return w.st, w.err }

func (w *statusWaiter) poll() {
	defer close(w.done)
	var emptySince time.Time
	for {
		st, err := nsholder.ReadStatus(w.path)
		if err == nil {
			w.st = st
			return
		}
		if !errors.Is(err, os.ErrNotExist) {
			w.err = err
			return
		}
		if w.cg.Empty() {
			if emptySince.IsZero() {
				emptySince = time.Now()
			} else if time.Since(emptySince) > 5*time.Second {
				w.st = nsholder.ExitStatus{Code: -1}
				w.err = fmt.Errorf("run ended without a status in %s (its holder is gone)", w.path)
				return
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// goneCgroup stands in for a cgroup that no longer exists.
type goneCgroup struct{}

func (goneCgroup) Add(int) error                     { return errors.New("cgroup gone") }
func (goneCgroup) Delegate(int, int, []string) error { return errors.New("cgroup gone") }
func (goneCgroup) Kill() error                       { return nil }
func (goneCgroup) Stats() cgStats                    { return cgStats{} }
func (goneCgroup) Delete() error                     { return nil }
func (goneCgroup) Missing() []string                 { return nil }
func (goneCgroup) Empty() bool                       { return true }
