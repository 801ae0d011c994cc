package daemon

import (
	"context"
	"net/netip"
	"time"

	"github.com/arkgw/arkgw/configs"
)

// Runner is the kernel side of experiments: network and rules, DNS proxy,
// sandbox, capture, accounting. The daemon decides what runs; the Runner
// does it. Implementations: kernelRunner (the real one) and fakes in tests.
type Runner interface {
	// Start brings up everything for an admitted experiment and starts its
	// command. On error nothing of the experiment is left in the kernel.
	Start(ctx context.Context, eff *configs.Effective, slot int, dir string) (Instance, error)
	// Adopt re-attaches to an experiment that was running when the daemon
	// last stopped (its namespaces, rules and processes survived).
	Adopt(ctx context.Context, eff *configs.Effective, slot int, dir string) (Instance, error)
	// Update replaces the rules of all running experiments in one
	// transaction (policy reload) and cuts flows no longer allowed.
	Update(ctx context.Context, effs []*configs.Effective) error
	// Sweep removes kernel state of experiments whose ids are not in keep.
	Sweep(ctx context.Context, keep map[string]bool) error
	// DefaultRouters are the node's default routers (reachable although
	// they lie in reserved ranges).
	DefaultRouters() []netip.Addr
}

// Instance is one running experiment as the Runner holds it.
type Instance interface {
	// Done is closed when the experiment's command has exited; Result is
	// valid after that.
	Done() <-chan struct{}
	Result() Result
	// Stop kills the experiment's processes and removes everything it had
	// in the kernel. Idempotent; safe after Done.
	Stop(ctx context.Context) error
	// Status is the live view for list, page and metrics.
	Status() Status
}

// Result is how an experiment's command ended.
type Result struct {
	ExitCode int
	Signal   string
	OOM      bool
	TimedOut bool
	CPUSecs  float64
	Err      string
}

// Status is the live state of a running experiment.
type Status struct {
	BytesUpToday   uint64  `json:"bytes_up_today"`
	BytesDownToday uint64  `json:"bytes_down_today"`
	BudgetBytes    uint64  `json:"budget_bytes"` // 0 = no daily maximum
	RateMbps       float64 `json:"rate_mbps"`    // current cap
	Addr4          string  `json:"addr4,omitempty"`
	Addr6          string  `json:"addr6,omitempty"`
	DNSAllowed     uint64  `json:"dns_allowed"`
	DNSRefused     uint64  `json:"dns_refused"`
	// CPUSeconds is the CPU time the experiment's processes used so far;
	// MemoryBytes what its cgroup is charged now, MemoryLimit its limit
	// (0 = none or unknown).
	CPUSeconds  float64 `json:"cpu_seconds,omitempty"`
	MemoryBytes uint64  `json:"memory_bytes,omitempty"`
	MemoryLimit uint64  `json:"memory_limit,omitempty"`
}

// Clock is time, injectable in tests.
type Clock interface{ Now() time.Time }

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }
