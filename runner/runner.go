// Package runner is the kernel side of arkgw's experiments: for each one it
// builds the network and rules (gateway), the DNS proxy, the pcap service and
// the sandbox, and tears all of it down again; node-wide it runs the NFLOG
// alerter and the conntrack flow recorder. The daemon decides; this package
// does, behind daemon.Runner.
package runner

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/arkgw/arkgw/accounting"
	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/container"
	"github.com/arkgw/arkgw/daemon"
	"github.com/arkgw/arkgw/dnsproxy"
	"github.com/arkgw/arkgw/flowlog"
	"github.com/arkgw/arkgw/gateway"
	"github.com/arkgw/arkgw/gateway/nftgen"
	"github.com/arkgw/arkgw/gateway/quota"
	"github.com/arkgw/arkgw/gateway/shape"
	"github.com/arkgw/arkgw/nflog"
	"github.com/arkgw/arkgw/nsdo"
	"github.com/arkgw/arkgw/nsholder"
	"github.com/arkgw/arkgw/pcapstream"
	"github.com/arkgw/arkgw/sandbox"
	"github.com/arkgw/arkgw/store"
)

// Options are the node-level settings the daemon's policy does not carry.
type Options struct {
	// HostNS is the node's network namespace: the zero value is the
	// current one (a node: the daemon runs in it); netlab's node in tests
	// and the demo.
	HostNS nsdo.NS
	// RunDir holds runtime state that must not outlive a reboot
	// (namespace bind mounts). Default /run/arkgw.
	RunDir string
	// PcapBinary is the host path of the sandbox's /usr/bin/pcap client;
	// "" = "pcap" beside the running arkgw binary, if it exists.
	PcapBinary string
	// HelperBinary is the small binary started as each experiment's
	// namespace holder and sandbox init (cmd/arkgw-init); "" =
	// "arkgw-init" beside the running arkgw binary, if it exists, else
	// arkgw re-executes itself (the same code, slower to start).
	HelperBinary string
	// CgroupParent holds one cgroup per experiment ("" = "arkgw").
	CgroupParent string
}

// Runner implements daemon.Runner.
type Runner struct {
	deps daemon.RunnerDeps
	opt  Options
	log  hclog.Logger
	gw   *gateway.Gateway

	flowStore *flowlog.Store
	flows     *flowlog.Recorder
	alerter   *nflog.Alerter
	shaper    *shape.Shaper
	quota     *quota.Table
	acct      *accounting.Accountant
	// alerts is where per-experiment producers (the DNS proxy) send
	// records: through the alerter, which enriches them and counts them for
	// enforcement.
	alerts alert.Sink

	mu        sync.Mutex
	instances map[string]*instance
	// slots maps slot -> experiment id, also for recently stopped
	// experiments whose conntrack DESTROY events are still arriving.
	slots map[int]string
}

// New builds a Runner. Nothing in the kernel changes until Start, Adopt,
// Sweep or Run.
func New(deps daemon.RunnerDeps, opt Options) (*Runner, error) {
	if opt.RunDir == "" {
		opt.RunDir = "/run/arkgw"
	}
	opt.PcapBinary = besideSelf(opt.PcapBinary, "pcap")
	opt.HelperBinary = besideSelf(opt.HelperBinary, "arkgw-init")
	log := deps.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	if opt.HelperBinary == "" {
		log.Info("no arkgw-init beside the arkgw binary: holders and sandbox inits re-execute arkgw, which starts slower")
	}
	node := deps.Policy.Node
	// The gateway and the accounting table share one record of this
	// process's nftables commits: the gateway changes its table in place
	// only while nothing else has committed.
	ledger := nftgen.NewLedger(opt.HostNS)
	gw, err := gateway.New(gateway.Config{
		Ledger: ledger,
		HostNS: opt.HostNS, Uplink: node.Uplink,
		Reserved:   configs.ReservedPrefixes(node.Lab),
		NFLOGGroup: node.Alerts.NFLOGGroup, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	fs, err := flowlog.OpenStore(filepath.Join(node.StateDir, "flows"), node.Flows.RetentionDays)
	if err != nil {
		return nil, err
	}
	r := &Runner{deps: deps, opt: opt, log: log.Named("runner"), gw: gw, flowStore: fs,
		instances: map[string]*instance{}, slots: map[int]string{}}
	r.flows = flowlog.NewRecorder(flowlog.Config{
		NS: opt.HostNS, Store: fs, Attribute: r.attribute, Alerts: deps.Alerts,
		Logger: log, Node: deps.Policy.NodeName(),
	})
	sink := deps.Alerts
	if sink == nil {
		sink = alert.Discard
	}
	r.alerter, err = nflog.New(nflog.Config{
		Group: node.Alerts.NFLOGGroup, NS: opt.HostNS, Node: deps.Policy.NodeName(),
		Sink: sink, Logger: log, Lookup: deps.Lookup,
		NetNSPath: func(id string) (string, bool) {
			_, p := nsholder.Paths(r.nsDir(id))
			return p, true
		},
		StopAfter: node.Alerts.StopAfter, StopWindow: node.Alerts.Window,
		Stop: func(id, reason string) {
			if deps.Stop != nil {
				deps.Stop(id, store.ReasonViolations+": "+reason)
			}
		},
	})
	if err != nil {
		fs.Close()
		return nil, err
	}
	r.alerts = r.alerter.Sink()
	if deps.Registry != nil {
		deps.Registry.MustRegister(r.alerter.Collector())
	}
	// Bandwidth: tc shaping both ways (and the node-wide cap) plus byte
	// counters and the daily quota in their own table, which reloads of the
	// policy table never replace.
	r.shaper, err = shape.NewShaper(shape.ShaperConfig{
		NS: opt.HostNS, Uplinks: []string{gw.Uplink()}, NodeBps: uint64(node.Limits.NodeMbps * 1e6), Logger: log,
	})
	if err != nil {
		fs.Close()
		return nil, err
	}
	r.quota = quota.New(quota.Config{NS: opt.HostNS, NFLOGGroup: node.Alerts.NFLOGGroup, Logger: log, Ledger: ledger})
	if deps.Store != nil {
		r.acct, err = accounting.New(accounting.Config{
			DB: deps.Store.DB(), Kernel: r.quota, Shaper: r.shaper, Alerts: r.alerts,
			Node: deps.Policy.NodeName(), Logger: log,
		})
		if err != nil {
			r.shaper.Close()
			fs.Close()
			return nil, err
		}
	}
	return r, nil
}

// attribute maps a conntrack mark to the experiment that owns its slot.
func (r *Runner) attribute(mark uint32, _ netip.Addr) (string, bool) {
	slot, ok := gateway.SlotFromMark(mark)
	if !ok {
		return "", false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	id, ok := r.slots[slot]
	return id, ok
}

// FlowsHandler serves the flow log to the API.
func (r *Runner) FlowsHandler() http.Handler { return flowlog.Handler(r.flowStore, r.flows) }

// FindFlows answers a query of the flow log (the results shipper's flow
// summary).
func (r *Runner) FindFlows(q flowlog.Query) ([]flowlog.Flow, error) { return r.flowStore.Find(q) }

// DefaultRouters are the node's default routers.
func (r *Runner) DefaultRouters() []netip.Addr { return r.gw.DefaultRouters() }

// Run runs the node-wide loops (alerter, flow recorder) until ctx ends. An
// alerter that cannot bind its NFLOG group stops the daemon: running
// experiments without violation alerts would break the platform's promise
// to staff.
func (r *Runner) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := r.flows.Run(ctx); err != nil {
			// The flow log is not worth stopping the node for: say so.
			r.log.Error("flow log unavailable", "error", err)
		}
	}()
	if r.acct != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.acct.Run(ctx); err != nil {
				r.log.Error("byte accounting stopped", "error", err)
			}
		}()
	}
	err := r.alerter.Run(ctx)
	wg.Wait()
	if err != nil {
		return fmt.Errorf("violation alerter: %w", err)
	}
	return nil
}

// Close releases node-wide resources (the experiments keep running).
func (r *Runner) Close() error {
	r.mu.Lock()
	idle := len(r.instances) == 0
	r.mu.Unlock()
	var errs []error
	if idle {
		// No experiment left to keep counting: the accounting table goes
		// (the gateway's Close does the same for its own).
		errs = append(errs, r.quota.Delete())
	}
	return errors.Join(append(errs, r.shaper.Close(), r.flowStore.Close(), r.quota.Close(), r.gw.Close())...)
}

// Update replaces all rules in one transaction (policy reload) and applies
// the new rate caps and daily budgets.
func (r *Runner) Update(ctx context.Context, effs []*configs.Effective) error {
	if err := r.gw.Update(ctx, effs); err != nil {
		return err
	}
	var errs []error
	for _, eff := range effs {
		cap, budget := limitsOf(eff)
		if err := r.shaper.Update(ctx, eff.ID, cap); err != nil {
			errs = append(errs, err)
		}
		if r.acct != nil {
			errs = append(errs, r.acct.SetCap(ctx, eff.ID, cap), r.acct.SetBudget(ctx, eff.ID, budget))
		}
	}
	return errors.Join(errs...)
}

// limitsOf is an experiment's rate cap (bit/s) and daily budget (bytes;
// MB = 10^6 bytes, like Mbit/s).
func limitsOf(eff *configs.Effective) (capBps, budget uint64) {
	return uint64(eff.Limits.MaxMbps * 1e6), uint64(eff.Limits.MaxMBPerDay) * 1_000_000
}

// startBandwidth shapes and accounts an experiment's veth (also after a
// restart: both are idempotent and keep the kernel's counters).
func (r *Runner) startBandwidth(ctx context.Context, eff *configs.Effective, net *gateway.Net) error {
	cap, budget := limitsOf(eff)
	t0 := time.Now()
	if err := r.shaper.Apply(ctx, shape.Spec{ID: eff.ID, HostIf: net.HostIf, Slot: net.Slot, RateBps: cap}); err != nil {
		return fmt.Errorf("experiment %s: rate limit: %w", eff.ID, err)
	}
	tShaped := time.Now()
	defer func() {
		r.log.Debug("bandwidth set up", "experiment", eff.ID, "shaping_ms", ms(tShaped.Sub(t0)), "accounting_ms", ms(time.Since(tShaped)))
	}()
	if r.acct == nil {
		return nil
	}
	up, down := shape.Priorities(net.Slot)
	var contacts []string
	for _, c := range eff.Experimenters {
		contacts = append(contacts, fmt.Sprintf("%s <%s>", c.Name, c.Email))
	}
	if err := r.acct.Track(ctx, accounting.Exp{
		ID: eff.ID, HostIf: net.HostIf, Title: eff.Title, Contacts: contacts,
		CapBps: cap, BudgetBytes: budget, UpPriority: up, DownPriority: down,
	}); err != nil {
		return fmt.Errorf("experiment %s: byte accounting: %w", eff.ID, err)
	}
	return nil
}

// Sweep removes kernel state of experiments not in keep: their processes
// (cgroups), then their network, namespaces and rules.
func (r *Runner) Sweep(ctx context.Context, keep map[string]bool) error {
	var errs []error
	dirs, _ := os.ReadDir(filepath.Join(r.opt.RunDir, "ns"))
	for _, d := range dirs {
		if id := d.Name(); !keep[id] && configs.ValidID(id) == nil {
			if err := sandbox.Cleanup(id, r.opt.CgroupParent); err != nil {
				errs = append(errs, fmt.Errorf("experiment %s: kill leftover processes: %w", id, err))
			}
		}
	}
	if ids, err := r.quota.IDs(); err == nil {
		for _, id := range ids {
			if !keep[id] {
				errs = append(errs, r.quota.Remove(id))
			}
		}
	}
	var hostIfs []string
	for id := range keep {
		hostIfs = append(hostIfs, gateway.HostIfName(id))
	}
	errs = append(errs, shape.Sweep(r.opt.HostNS, []string{r.gw.Uplink()}, hostIfs, keep))
	errs = append(errs, r.gw.Sweep(ctx, keep))
	// The namespaces last: their veths are gone with the network.
	for _, d := range dirs {
		if id := d.Name(); !keep[id] && configs.ValidID(id) == nil {
			if err := nsholder.RemoveDir(r.nsDir(id)); err != nil {
				errs = append(errs, fmt.Errorf("experiment %s: namespaces: %w", id, err))
			}
		}
	}
	return errors.Join(errs...)
}

// nsDir holds experiment id's persisted namespaces (nsholder).
func (r *Runner) nsDir(id string) string { return filepath.Join(r.opt.RunDir, "ns", id) }

// makeNamespaces starts making experiment id's namespaces (an nsholder:
// a user namespace mapping from the gateway's host ids for slot, and a
// network namespace it owns) and returns them for gateway.Add, whose Wait
// blocks until they exist, and done, which reaps the maker (call it once
// Add returned) and returns the holder (nil if it failed).
func (r *Runner) makeNamespaces(id string, slot int) (ns gateway.ExpNS, done func() *nsholder.Holder) {
	type made struct {
		h   *nsholder.Holder
		err error
	}
	c := make(chan made, 1)
	uid := r.gw.HostID(slot)
	go func() {
		h, err := nsholder.Create(nsholder.Config{Dir: r.nsDir(id), HostUID: uid, HostGID: uid, Binary: r.opt.HelperBinary})
		c <- made{h, err}
	}()
	var once sync.Once
	var m made
	wait := func() made { once.Do(func() { m = <-c }); return m }
	user, net := nsholder.Paths(r.nsDir(id))
	ns = gateway.ExpNS{NetNSPath: net, UserNSPath: user, Wait: func() error { return wait().err }}
	return ns, func() *nsholder.Holder { return wait().h }
}

// Start brings up an experiment: network and rules, DNS proxy, pcap
// service, sandbox. On error everything done so far is undone.
func (r *Runner) Start(ctx context.Context, eff *configs.Effective, slot int, dir string) (daemon.Instance, error) {
	log := r.log.With("experiment", eff.ID)
	t0 := time.Now()
	// Namespaces are the runner's; the gateway wires the network into
	// them while they are made (leftovers of an earlier run go first).
	nsholder.RemoveDir(r.nsDir(eff.ID))
	ens, made := r.makeNamespaces(eff.ID, slot)
	net, err := r.gw.Add(ctx, eff, slot, ens)
	holder := made()
	if err != nil {
		if holder != nil {
			err = errors.Join(err, holder.Remove())
		}
		return nil, err
	}
	tNet := time.Now()
	r.mu.Lock()
	r.slots[slot] = eff.ID
	r.mu.Unlock()
	in := newInstance(r, eff, net, dir)
	in.holder = holder
	ok := false
	defer func() {
		if !ok {
			in.teardown(context.WithoutCancel(ctx))
		}
	}()
	// The DNS proxy and pcap service first (the sandbox binds the pcap
	// socket); then the sandbox is prepared while shaping and accounting
	// are set up, and its command starts once both are in place.
	if err := in.startServices(); err != nil {
		return nil, err
	}
	tSvc := time.Now()
	node := r.deps.Policy.Node
	// An image is loop-mounted read-only at containers/<version> once
	// (its sha256 checked first); a plain directory root is used as it is.
	if _, err := container.Mount(filepath.Join(node.StateDir, "containers"), eff.Container); err != nil {
		return nil, fmt.Errorf("experiment %s: %w", eff.ID, err)
	}
	spec := sandbox.Spec{
		ID: eff.ID, Holder: holder,
		ContainersDir: filepath.Join(node.StateDir, "containers"), Version: eff.Container,
		FilesDir: eff.FilesDir, Command: eff.Command, Limits: eff.Limits,
		AllowMissing: node.Limits.AllowMissingControllers, CgroupParent: r.opt.CgroupParent,
		Stdout: filepath.Join(dir, "stdout"), Stderr: filepath.Join(dir, "stderr"),
		StatusFile: filepath.Join(dir, "status.json"),
		PcapBinary: r.opt.PcapBinary, PcapSocket: in.pcapSocket(),
		Logger: r.log,
	}
	for _, a := range []netip.Addr{net.GW4, net.GW6} {
		if a.IsValid() {
			spec.Nameservers = append(spec.Nameservers, a)
		}
	}
	type prepared struct {
		pd  *sandbox.Pending
		err error
	}
	prep := make(chan prepared, 1)
	go func() {
		pd, err := sandbox.Prepare(ctx, spec)
		prep <- prepared{pd, err}
	}()
	bwErr := r.startBandwidth(ctx, eff, net)
	tBW := time.Now()
	pr := <-prep
	tPrep := time.Now()
	if err := errors.Join(bwErr, pr.err); err != nil {
		if pr.pd != nil {
			pr.pd.Abort()
		}
		return nil, err
	}
	sb, err := pr.pd.Start(ctx)
	if err != nil {
		return nil, err
	}
	in.sb = sb
	ok = true
	r.mu.Lock()
	r.instances[eff.ID] = in
	r.mu.Unlock()
	go in.watch()
	// Where start-up time goes (bench-start): network and rules, DNS
	// proxy and pcap service, shaping and accounting, the sandbox's
	// preparation (alongside) and its start.
	log.Info("experiment is up", "addr4", net.Addr4, "addr6", net.Addr6, "if", net.HostIf,
		"net_ms", ms(tNet.Sub(t0)), "services_ms", ms(tSvc.Sub(tNet)), "bandwidth_ms", ms(tBW.Sub(tSvc)),
		"sandbox_prepared_ms", ms(tPrep.Sub(tSvc)), "sandbox_started_ms", ms(time.Since(tPrep)))
	return in, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Adopt re-attaches to an experiment that survived a daemon restart: its
// namespaces, veth and processes lived on (and its rules stayed in the
// kernel, fail-closed); the DNS proxy and pcap service, which died with the
// old daemon, start again. On error the caller stops the experiment and the
// sweep removes what is left.
func (r *Runner) Adopt(ctx context.Context, eff *configs.Effective, slot int, dir string) (_ daemon.Instance, err error) {
	user, netns := nsholder.Paths(r.nsDir(eff.ID))
	net, err := r.gw.Adopt(ctx, eff, slot, gateway.ExpNS{NetNSPath: netns, UserNSPath: user})
	if err != nil {
		// What is left of it (processes, network, namespaces) goes.
		return nil, errors.Join(err, sandbox.Cleanup(eff.ID, r.opt.CgroupParent), r.gw.Remove(context.WithoutCancel(ctx), eff.ID),
			nsholder.RemoveDir(r.nsDir(eff.ID)))
	}
	r.mu.Lock()
	r.slots[slot] = eff.ID
	r.mu.Unlock()
	in := newInstance(r, eff, net, dir)
	defer func() {
		if err != nil {
			err = errors.Join(err, sandbox.Cleanup(eff.ID, r.opt.CgroupParent), in.teardown(context.WithoutCancel(ctx)))
		}
	}()
	if err := r.startBandwidth(ctx, eff, net); err != nil {
		return nil, err
	}
	if err := in.startServices(); err != nil {
		return nil, err
	}
	sb, err := sandbox.Adopt(sandbox.AdoptSpec{ID: eff.ID, CgroupParent: r.opt.CgroupParent, StatusFile: filepath.Join(dir, "status.json"), Logger: r.log})
	if err != nil {
		return nil, err
	}
	in.sb = sb
	r.mu.Lock()
	r.instances[eff.ID] = in
	r.mu.Unlock()
	go in.watch()
	in.log.Info("experiment re-adopted", "addr4", net.Addr4, "if", net.HostIf)
	return in, nil
}

// instance is one experiment's kernel side.
type instance struct {
	r   *Runner
	eff *configs.Effective
	net *gateway.Net
	// holder keeps the namespaces alive; nil when re-adopted after a
	// restart (the bind mounts under nsDir do).
	holder *nsholder.Holder
	dir    string
	log    hclog.Logger

	cancel context.CancelFunc // ends the proxy and pcap server
	wg     sync.WaitGroup
	sb     *sandbox.Sandbox
	proxy  *dnsproxy.Proxy

	collectors []prometheus.Collector

	stopOnce sync.Once
	stopErr  error
	done     chan struct{}
	result   daemon.Result
}

func newInstance(r *Runner, eff *configs.Effective, net *gateway.Net, dir string) *instance {
	return &instance{r: r, eff: eff, net: net, dir: dir, done: make(chan struct{}),
		log: r.log.With("experiment", eff.ID)}
}

func (in *instance) pcapSocket() string { return filepath.Join(in.dir, "pcap.sock") }

// startServices starts the per-experiment DNS proxy and pcap server.
func (in *instance) startServices() error {
	ctx, cancel := context.WithCancel(context.Background())
	in.cancel = cancel
	node := in.r.deps.Policy.Node
	pc := dnsproxy.ConfigFromEffective(in.eff)
	pc.NS = in.r.opt.HostNS
	pc.Alerts = in.r.alerts
	pc.Logger = in.r.log
	for _, u := range node.DNS.Upstreams {
		pc.Upstreams = append(pc.Upstreams, u.String())
	}
	if len(pc.Upstreams) == 0 {
		ups, err := dnsproxy.UpstreamsFromResolvConf("/etc/resolv.conf")
		if err != nil {
			return fmt.Errorf("experiment %s: dns upstreams: %w (set [dns].upstreams in node.toml)", in.eff.ID, err)
		}
		pc.Upstreams = ups
	}
	for _, gwp := range []struct{ gw, addr netip.Addr }{{in.net.GW4, in.net.Addr4}, {in.net.GW6, in.net.Addr6}} {
		if gwp.gw.IsValid() {
			pc.Listen = append(pc.Listen, netip.AddrPortFrom(gwp.gw, 53).String())
			pc.Clients = append(pc.Clients, netip.PrefixFrom(gwp.addr, gwp.addr.BitLen()))
		}
	}
	proxy, err := dnsproxy.New(pc)
	if err != nil {
		return fmt.Errorf("experiment %s: dns proxy: %w", in.eff.ID, err)
	}
	in.proxy = proxy
	in.register(proxy.Collector())
	ps, err := pcapstream.New(pcapstream.Config{
		Experiment: in.eff.ID, NS: in.r.opt.HostNS, Iface: in.net.HostIf,
		SocketPath: in.pcapSocket(), SocketUID: int(in.net.HostUID) + 1000, SocketGID: int(in.net.HostGID) + 1000,
		Alerts: in.r.deps.Alerts, Node: in.r.deps.Policy.NodeName(),
		Logger: in.r.log,
	})
	if err != nil {
		return fmt.Errorf("experiment %s: pcap service: %w", in.eff.ID, err)
	}
	in.register(ps)
	in.serve(ctx, proxy.Run)
	psDone := in.serve(ctx, ps.Run)
	// The sandbox binds the pcap socket: it must exist first.
	select {
	case <-ps.Ready():
	case err := <-psDone:
		if err == nil {
			err = errors.New("stopped before its socket was ready")
		}
		return fmt.Errorf("experiment %s: pcap service: %w", in.eff.ID, err)
	case <-time.After(10 * time.Second):
		return fmt.Errorf("experiment %s: pcap service: socket %s not ready after 10 s", in.eff.ID, in.pcapSocket())
	}
	return nil
}

// serve runs a per-experiment service until ctx ends; the returned channel
// gets its result. teardown waits for it.
func (in *instance) serve(ctx context.Context, run func(context.Context) error) <-chan error {
	done := make(chan error, 1)
	in.wg.Add(1)
	go func() {
		defer in.wg.Done()
		err := run(ctx)
		if err != nil {
			in.log.Error("experiment service stopped", "error", err)
		}
		done <- err
	}()
	return done
}

// register adds a per-experiment collector to the daemon's registry until
// teardown.
func (in *instance) register(c prometheus.Collector) {
	reg := in.r.deps.Registry
	if reg == nil {
		return
	}
	if err := reg.Register(c); err != nil {
		in.log.Warn("metrics not registered", "error", err)
		return
	}
	in.collectors = append(in.collectors, c)
}

// watch waits for the sandbox to end and records the result.
func (in *instance) watch() {
	res, _ := in.sb.Wait(context.Background())
	in.result = daemon.Result{
		ExitCode: res.Code, OOM: res.OOMKilled, TimedOut: res.TimedOut,
		CPUSecs: res.CPUTime.Seconds(), Err: res.Err,
	}
	if res.Signal != 0 {
		in.result.Signal = fmt.Sprint(res.Signal)
	}
	close(in.done)
}

func (in *instance) Done() <-chan struct{} { return in.done }
func (in *instance) Result() daemon.Result { return in.result }

func (in *instance) Status() daemon.Status {
	st := daemon.Status{Addr4: addrText(in.net.Addr4), Addr6: addrText(in.net.Addr6), RateMbps: in.eff.Limits.MaxMbps}
	if in.proxy != nil {
		ps := in.proxy.Stats()
		st.DNSAllowed, st.DNSRefused = ps.Allowed, ps.Refused
	}
	if in.r.acct != nil {
		if a, ok := in.r.acct.Status(in.eff.ID); ok {
			st.BytesUpToday, st.BytesDownToday, st.BudgetBytes = a.UpBytes, a.DownBytes, a.BudgetBytes
			st.RateMbps = float64(a.RateBps) / 1e6
		}
	}
	if u, err := sandbox.ReadUsage(in.eff.ID, in.r.opt.CgroupParent); err == nil {
		st.CPUSeconds, st.MemoryBytes, st.MemoryLimit = u.CPU.Seconds(), u.MemoryBytes, u.MemoryLimit
	}
	return st
}

func addrText(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// Stop kills the sandbox and removes everything. Idempotent.
func (in *instance) Stop(ctx context.Context) error {
	in.stopOnce.Do(func() {
		if in.sb != nil {
			if _, err := in.sb.Stop(ctx); err != nil {
				in.stopErr = err
			}
		}
		in.stopErr = errors.Join(in.stopErr, in.teardown(ctx))
		in.r.mu.Lock()
		delete(in.r.instances, in.eff.ID)
		in.r.mu.Unlock()
	})
	return in.stopErr
}

// teardown removes the services and the network.
func (in *instance) teardown(ctx context.Context) error {
	if in.cancel != nil {
		in.cancel()
	}
	in.wg.Wait()
	for _, c := range in.collectors {
		in.r.deps.Registry.Unregister(c)
	}
	in.r.alerter.Forget(in.eff.ID)
	os.Remove(in.pcapSocket())
	var errs []error
	if in.r.acct != nil {
		errs = append(errs, in.r.acct.Untrack(ctx, in.eff.ID))
	}
	errs = append(errs, in.r.quota.Remove(in.eff.ID), in.r.shaper.Remove(ctx, in.eff.ID))
	errs = append(errs, in.r.gw.Remove(ctx, in.eff.ID))
	if in.holder != nil {
		errs = append(errs, in.holder.Remove())
	} else {
		errs = append(errs, nsholder.RemoveDir(in.r.nsDir(in.eff.ID)))
	}
	return errors.Join(errs...)
}

// besideSelf returns path, or when it is empty the file name beside the
// running binary if that exists, else "".
func besideSelf(path, name string) string {
	if path != "" {
		return path
	}
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	p := filepath.Join(filepath.Dir(exe), name)
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}
