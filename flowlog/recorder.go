package flowlog

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	ct "github.com/florianl/go-conntrack"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/nsdo"
)

// MarkMask selects the experiment's slot+1 from a conntrack mark (the
// gateway's layout; higher bits are its flags).
const MarkMask = 0xffff

// Config configures a Recorder.
type Config struct {
	NS    nsdo.NS // the node's netns (where experiments' flows are tracked); zero value = current
	Store *Store
	// Attribute names the experiment of a flow from its conntrack mark's
	// slot bits and inside source. ok=false: not an experiment's flow.
	Attribute func(mark uint32, src netip.Addr) (id string, ok bool)
	Alerts    alert.Sink
	Logger    hclog.Logger
	// FlushEvery bounds how long a finished flow waits in memory before it
	// is written (default 1 s); writes are batched to spare SD cards.
	FlushEvery time.Duration
	// MaxPending bounds flows waiting to be written (default 200,000);
	// beyond it flows are dropped and counted as lost.
	MaxPending int
	Node       string
}

// Recorder subscribes to conntrack DESTROY events and records experiments'
// flows.
type Recorder struct {
	cfg Config
	log hclog.Logger

	mu      sync.Mutex
	pending []Flow

	// faults reports the recorder's own failures (subscribe, lost
	// events) with backoff and at most one alert per window.
	faults *alert.Faults
	// subscribeHook replaces subscribe in tests.
	subscribeHook func(context.Context) error
	// openHook replaces opening the conntrack socket in tests.
	openHook func() (*ct.Nfct, error)

	recorded, lost, resubscribes, unattributed atomic.Uint64
	writeNanos                                 atomic.Int64
}

// NewRecorder makes a Recorder; Run starts it.
func NewRecorder(cfg Config) *Recorder {
	if cfg.FlushEvery <= 0 {
		cfg.FlushEvery = time.Second
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 200_000
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Alerts == nil {
		cfg.Alerts = alert.Discard
	}
	log := cfg.Logger.Named("flowlog")
	return &Recorder{cfg: cfg, log: log,
		faults: alert.NewFaults(alert.FaultsConfig{Sink: cfg.Alerts, Logger: log, Node: cfg.Node})}
}

// Stats are the recorder's counters.
type Stats struct {
	Recorded, Lost, Resubscribes, Unattributed uint64
	WriteTime                                  time.Duration // spent writing batches to the store
}

// Stats returns the counters so far.
func (r *Recorder) Stats() Stats {
	return Stats{r.recorded.Load(), r.lost.Load(), r.resubscribes.Load(), r.unattributed.Load(), time.Duration(r.writeNanos.Load())}
}

// EnableAccounting turns on per-flow byte counters and timestamps in the
// namespace's conntrack (both are per network namespace and off by default).
// The nf_conntrack module must be loaded (the gateway's rules load it).
func EnableAccounting(ns nsdo.NS) error {
	return nsdo.In(ns, func() error {
		for _, k := range []string{"nf_conntrack_acct", "nf_conntrack_timestamp"} {
			p := "/proc/sys/net/netfilter/" + k
			if err := os.WriteFile(p, []byte("1"), 0); err != nil {
				return fmt.Errorf("enable conntrack %s (%s): %w; is nf_conntrack loaded?", k, p, err)
			}
		}
		return nil
	})
}

// Run records until ctx ends, then writes what is pending.
func (r *Recorder) Run(ctx context.Context) error {
	if err := EnableAccounting(r.cfg.NS); err != nil {
		return err
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.flushLoop(ctx)
	}()
	defer wg.Wait()
	subscribe := r.subscribe
	if r.subscribeHook != nil {
		subscribe = r.subscribeHook
	}
	for ctx.Err() == nil {
		err := subscribe(ctx)
		if ctx.Err() != nil {
			break
		}
		r.resubscribes.Add(1)
		rec := alert.Record{Kind: alert.KindOverrun, Rule: "flowlog",
			Message: fmt.Sprintf("conntrack events lost (%v); some flows may be missing from the flow log", err)}
		if errors.Is(err, errSubscribe) {
			// Nothing to read at all: the flow log is down until this
			// works, which a retry every 100 ms will not hasten.
			rec.Kind = alert.KindFault
			rec.Message = fmt.Sprintf("flow log down: %v; flows are not recorded until it works (is nf_conntrack loaded, and is the netns right?)", err)
		} else {
			// The library stops reading after an error such as ENOBUFS
			// (the kernel dropped events because we fell behind):
			// count it, say it, subscribe again.
			r.lost.Add(1)
		}
		delay := r.faults.Report(rec)
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
	}
	return nil
}

// errSubscribe marks a failure to open or subscribe (as opposed to an
// interruption of a working event stream).
var errSubscribe = errors.New("cannot subscribe to conntrack events")

func (r *Recorder) subscribe(ctx context.Context) error {
	nfct, err := r.openConntrack()
	if err != nil {
		return fmt.Errorf("%w: open conntrack netlink in netns %s: %w", errSubscribe, r.cfg.NS, err)
	}
	defer nfct.Close()
	// A deep receive buffer rides out bursts (a flush of 50,000 flows
	// arrives at once). SO_RCVBUF is capped by net.core.rmem_max; root may
	// force past it.
	if err := forceReadBuffer(nfct, 64<<20); err != nil {
		r.log.Warn("cannot raise the conntrack socket buffer; bursts may lose events", "error", err)
	}
	errc := nfct.AttachErrChan()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Only marked (experiment) flows reach us: the kernel-side BPF filter
	// drops the node's own flows before they cost a copy.
	filter := []ct.ConnAttr{{Type: ct.AttrMark, Data: []byte{0, 0, 0, 0}, Mask: []byte{0, 0, 0xff, 0xff}, Negate: true}}
	if err := nfct.RegisterFiltered(sctx, ct.Conntrack, ct.NetlinkCtDestroy, filter, r.onEvent); err != nil {
		return fmt.Errorf("%w: destroy events in netns %s: %w", errSubscribe, r.cfg.NS, err)
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}

func forceReadBuffer(nfct *ct.Nfct, n int) error {
	rc, err := nfct.Con.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n)
	})
	if err != nil {
		return err
	}
	return serr
}

func (r *Recorder) onEvent(c ct.Con) int {
	f, ok := toFlow(&c)
	if !ok {
		return 0
	}
	mark := uint32(0)
	if c.Mark != nil {
		mark = *c.Mark
	}
	id, ok := r.cfg.Attribute(mark&MarkMask, f.Src)
	if !ok {
		r.unattributed.Add(1)
		return 0
	}
	f.Experiment = id
	r.mu.Lock()
	if len(r.pending) >= r.cfg.MaxPending {
		r.mu.Unlock()
		r.lost.Add(1)
		return 0
	}
	r.pending = append(r.pending, f)
	r.mu.Unlock()
	return 0
}

// expireEvery is how often day files past the retention are deleted.
const expireEvery = time.Hour

func (r *Recorder) flushLoop(ctx context.Context) {
	t := time.NewTicker(r.cfg.FlushEvery)
	defer t.Stop()
	r.expire()
	lastExpire := time.Now()
	for {
		select {
		case <-ctx.Done():
			r.flush()
			r.faults.Close()
			return
		case <-t.C:
			r.flush()
			r.faults.Flush()
			if time.Since(lastExpire) >= expireEvery {
				r.expire()
				lastExpire = time.Now()
			}
		}
	}
}

func (r *Recorder) expire() {
	if err := r.cfg.Store.Expire(time.Now()); err != nil {
		r.log.Warn("delete flow log days past the retention", "error", err)
	}
}

func (r *Recorder) flush() {
	r.mu.Lock()
	batch := r.pending
	r.pending = nil
	r.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	t0 := time.Now()
	err := r.cfg.Store.Append(batch)
	r.writeNanos.Add(int64(time.Since(t0)))
	if errors.Is(err, errCompacting) {
		// Stored; merging the store's segments failed (retried next time).
		r.log.Warn("compact flow store", "error", err)
		err = nil
	}
	if err != nil {
		r.lost.Add(uint64(len(batch)))
		r.log.Error("write flows", "flows", len(batch), "error", err)
		return
	}
	r.recorded.Add(uint64(len(batch)))
}

// Flush writes pending flows now (tests, shutdown).
func (r *Recorder) Flush() { r.flush() }

func ipOf(p *net.IP) (netip.Addr, bool) {
	if p == nil {
		return netip.Addr{}, false
	}
	a, ok := netip.AddrFromSlice(*p)
	return a.Unmap(), ok
}

// toFlow converts a conntrack entry; ok=false when it lacks the tuples.
func toFlow(c *ct.Con) (Flow, bool) {
	var f Flow
	if c.Origin == nil || c.Reply == nil {
		return f, false
	}
	var ok1, ok2, ok3 bool
	f.Src, ok1 = ipOf(c.Origin.Src)
	f.Dst, ok2 = ipOf(c.Origin.Dst)
	f.NATSrc, ok3 = ipOf(c.Reply.Dst)
	if !ok1 || !ok2 || !ok3 {
		return f, false
	}
	if p := c.Origin.Proto; p != nil {
		if p.Number != nil {
			f.Proto = *p.Number
		}
		if p.SrcPort != nil {
			f.SPort = *p.SrcPort
		}
		if p.DstPort != nil {
			f.DPort = *p.DstPort
		}
	}
	if p := c.Reply.Proto; p != nil && p.DstPort != nil {
		f.NATSPort = *p.DstPort
	}
	if c.Timestamp != nil {
		if c.Timestamp.Start != nil {
			f.Start = c.Timestamp.Start.UTC()
		}
		if c.Timestamp.Stop != nil {
			f.End = c.Timestamp.Stop.UTC()
		}
	}
	now := time.Now().UTC()
	if f.End.IsZero() && c.Info != nil && c.Info.NetlinkGroup == ct.NetlinkCtDestroy {
		f.End = now
	}
	if f.Start.IsZero() {
		f.Start = f.End
		if f.Start.IsZero() {
			f.Start = now
		}
	}
	f.PktsOut, f.BytesOut = counter(c.CounterOrigin)
	f.PktsIn, f.BytesIn = counter(c.CounterReply)
	return f, true
}

func counter(c *ct.Counter) (pkts, bytes uint64) {
	if c == nil {
		return 0, 0
	}
	if c.Packets != nil {
		pkts = *c.Packets
	} else if c.Packets32 != nil {
		pkts = uint64(*c.Packets32)
	}
	if c.Bytes != nil {
		bytes = *c.Bytes
	} else if c.Bytes32 != nil {
		bytes = uint64(*c.Bytes32)
	}
	return pkts, bytes
}

// openConntrack opens a conntrack netlink socket in the recorder's netns.
func (r *Recorder) openConntrack() (*ct.Nfct, error) {
	if r.openHook != nil {
		return r.openHook()
	}
	return ct.Open(&ct.Config{NetNS: r.cfg.NS.NetlinkNetNS()})
}

// Open lists flows still open, from a live conntrack dump (flows have no
// end yet, so they are not in the store).
func (r *Recorder) Open(q Query) ([]Flow, error) {
	nfct, err := r.openConntrack()
	if err != nil {
		return nil, fmt.Errorf("open conntrack netlink in netns %s: %w", r.cfg.NS, err)
	}
	defer nfct.Close()
	var out []Flow
	for _, fam := range []ct.Family{ct.IPv4, ct.IPv6} {
		cons, err := nfct.Dump(ct.Conntrack, fam)
		if err != nil {
			return nil, fmt.Errorf("dump conntrack: %w", err)
		}
		for i := range cons {
			c := &cons[i]
			if c.Mark == nil || *c.Mark&MarkMask == 0 {
				continue
			}
			f, ok := toFlow(c)
			if !ok {
				continue
			}
			f.End = time.Time{}
			id, ok := r.cfg.Attribute(*c.Mark&MarkMask, f.Src)
			if !ok {
				continue
			}
			f.Experiment = id
			if q.match(&f) {
				out = append(out, f)
			}
		}
	}
	return out, nil
}
