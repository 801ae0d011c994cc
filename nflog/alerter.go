package nflog

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/nsdo"
	gonflog "github.com/florianl/go-nflog/v2"
	"github.com/hashicorp/go-hclog"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Config configures an Alerter. Zero values take the defaults shown.
type Config struct {
	Group uint16  // NFLOG group the gateway logs drops to ([alerts].nflog_group)
	NS    nsdo.NS // netns where the drops are logged (NFLOG instances are per netns); zero value = current
	Node  string  // node name put in every record

	Sink   alert.Sink // where records go (a Tee of file, syslog, metrics); required
	Logger hclog.Logger

	// Lookup gives an experiment's title and contacts for the records.
	Lookup func(id string) (title string, contacts []string, ok bool)
	// NetNSPath gives the path of an experiment's netns file, for
	// attributing a dropped TCP/UDP packet to a process. Nil: no attribution.
	NetNSPath func(id string) (string, bool)
	// AttributeBudget bounds the time an alert waits for attribution (300 ms).
	AttributeBudget time.Duration

	Window   time.Duration // aggregation window (60 s)
	MaxOpen  int           // aggregates with their own lines open per experiment (DefaultMaxOpen, 64); beyond: summarised
	QueueLen int           // events between the netlink reader and the aggregator (65536)

	ReadBuffer int    // netlink socket receive buffer in bytes (16 MiB; SO_RCVBUFFORCE)
	CopyRange  uint32 // bytes of each packet copied from the kernel (256: headers)
	// FlushTimeout is how long the kernel may batch log messages before
	// sending them (20 ms; in 10 ms steps).
	FlushTimeout time.Duration

	// Enforcement: stop an experiment after StopAfter alerts within
	// StopWindow (10 min); 0 = never. Stop is called once per experiment,
	// from its own goroutine.
	StopAfter  int
	StopWindow time.Duration
	Stop       func(id, reason string)

	// Now is the clock (time.Now); tests inject one.
	Now func() time.Time
}

// Stats are the alerter's counters since New.
type Stats struct {
	Received     uint64 // log messages read from the kernel
	Foreign      uint64 // messages whose prefix is not arkgw's (ignored)
	DecodeErrors uint64 // packets that did not decode (alerted without details)
	SeqLost      uint64 // packets the kernel logged but we never received (NFLOG sequence gaps)
	NoBufs       uint64 // ENOBUFS: the socket overran (the loss shows in SeqLost)
	QueueDrops   uint64 // events dropped because the aggregator was behind
	Records      uint64 // alert records emitted
	Open         int    // open aggregates now
}

// Alerter reads an NFLOG group and emits alert records. Create it with New,
// run it with Run. Sink() accepts records of other producers (the DNS proxy)
// into the same stream and enforcement.
type Alerter struct {
	cfg Config
	log hclog.Logger
	// faults reports the alert path's own losses: logged with backoff,
	// at most one alert per window carrying the summed packets.
	faults *alert.Faults

	queue chan Event
	ext   chan alert.Record
	attr  chan alert.Record // records waiting for attribution

	received, foreign, decodeErrs, seqLost, noBufs, queueDrops, extDrops, records atomic.Uint64
	open                                                                          atomic.Int64
	maxOpen                                                                       atomic.Int64

	seqMu   sync.Mutex
	seqNext uint32

	wg       sync.WaitGroup
	running  atomic.Bool
	prefix   sync.Map // prefix string -> [2]string{id, rule}
	prefixes atomic.Int64
	enfMu    sync.Mutex
	enf      *Enforcer

	testHookHandle func() // called by the reader for every message (tests slow it down)

	// hookMu orders the reader's enqueue against shutdown: once closing is
	// set (under the write lock) nothing more enters the queue, so the final
	// drain sees everything; later messages count as queue drops.
	hookMu  sync.RWMutex
	closing bool
}

// New checks cfg and returns an Alerter; nothing touches the kernel before
// Run.
func New(cfg Config) (*Alerter, error) {
	if cfg.Sink == nil {
		return nil, errors.New("nflog alerter: no sink configured")
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Window <= 0 {
		cfg.Window = 60 * time.Second
	}
	if cfg.MaxOpen <= 0 {
		cfg.MaxOpen = DefaultMaxOpen
	}
	if cfg.QueueLen <= 0 {
		cfg.QueueLen = 65536
	}
	if cfg.ReadBuffer <= 0 {
		cfg.ReadBuffer = 16 << 20
	}
	if cfg.CopyRange == 0 {
		cfg.CopyRange = 256
	}
	if cfg.FlushTimeout <= 0 {
		cfg.FlushTimeout = 20 * time.Millisecond
	}
	if cfg.AttributeBudget <= 0 {
		cfg.AttributeBudget = 300 * time.Millisecond
	}
	if cfg.StopWindow <= 0 {
		cfg.StopWindow = 10 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	a := &Alerter{
		cfg:   cfg,
		log:   cfg.Logger.With("nflog_group", cfg.Group),
		queue: make(chan Event, cfg.QueueLen),
		ext:   make(chan alert.Record, 4096),
		attr:  make(chan alert.Record, 64),
		enf:   NewEnforcer(cfg.StopAfter, cfg.StopWindow),
	}
	a.faults = alert.NewFaults(alert.FaultsConfig{
		Sink:   alert.SinkFunc(func(r alert.Record) { a.emit(r, a.cfg.Now()) }),
		Logger: a.log, Node: cfg.Node, Now: cfg.Now,
	})
	return a, nil
}

// Stats returns the counters.
func (a *Alerter) Stats() Stats {
	return Stats{
		Received: a.received.Load(), Foreign: a.foreign.Load(), DecodeErrors: a.decodeErrs.Load(),
		SeqLost: a.seqLost.Load(), NoBufs: a.noBufs.Load(), QueueDrops: a.queueDrops.Load() + a.extDrops.Load(),
		Records: a.records.Load(), Open: int(a.open.Load()),
	}
}

// MaxOpenSeen is the largest number of open aggregates seen (tests check the
// memory bound with it).
func (a *Alerter) MaxOpenSeen() int { return int(a.maxOpen.Load()) }

// Sink returns a Sink that feeds records of other producers (DNS refusals)
// through this alerter: node, title and contacts are filled in, enforcement
// counts them, and they go to the configured sink. Never blocks; drops are
// counted and alerted as overrun.
func (a *Alerter) Sink() alert.Sink {
	return alert.SinkFunc(func(r alert.Record) {
		select {
		case a.ext <- r:
		default:
			a.extDrops.Add(1)
		}
	})
}

// Forget re-arms enforcement for id (call when an experiment run ends).
func (a *Alerter) Forget(id string) {
	a.enfMu.Lock()
	a.enf.Forget(id)
	a.enfMu.Unlock()
}

// ErrGroupTaken is wrapped by Run's error when another process (ulogd2?)
// already reads the NFLOG group.
var ErrGroupTaken = errors.New("nflog group taken")

// Run binds the NFLOG group and alerts until ctx ends. On return everything
// received has been aggregated and flushed to the sink.
func (a *Alerter) Run(ctx context.Context) error {
	if !a.running.CompareAndSwap(false, true) {
		return errors.New("nflog alerter: already running")
	}
	defer a.running.Store(false)
	a.seqMu.Lock()
	a.seqNext = 0
	a.seqMu.Unlock()
	a.hookMu.Lock()
	a.closing = false
	a.hookMu.Unlock()
	timeout := uint32(a.cfg.FlushTimeout / (10 * time.Millisecond))
	if timeout == 0 {
		timeout = 1
	}
	nf, err := gonflog.Open(&gonflog.Config{
		NetNS:    a.cfg.NS.NetlinkNetNS(),
		Group:    a.cfg.Group,
		Copymode: gonflog.CopyPacket,
		Bufsize:  a.cfg.CopyRange,
		Flags:    gonflog.FlagSeq,
		Timeout:  timeout,
		Logger:   nflogLogger{a.log},
	})
	if err != nil {
		return fmt.Errorf("open nflog socket for group %d: %w", a.cfg.Group, err)
	}
	closeOnce := sync.OnceFunc(func() { nf.Close() })
	defer closeOnce()
	a.raiseBuffer(nf)

	readCtx, cancelRead := context.WithCancel(ctx)
	defer cancelRead()
	var fatal atomic.Pointer[error]
	dec := NewDecoder()
	hook := func(attr gonflog.Attribute) int {
		a.handle(dec, attr)
		return 0
	}
	errfn := func(err error) int {
		if errors.Is(err, unix.ENOBUFS) {
			// The kernel dropped messages for us; the sequence gap
			// tells how many. Keep reading.
			a.noBufs.Add(1)
			return 0
		}
		if readCtx.Err() != nil {
			return 1
		}
		var oe *netlink.OpError
		if errors.As(err, &oe) && (oe.Timeout() || oe.Temporary()) {
			return 0
		}
		e := fmt.Errorf("read nflog group %d: %w", a.cfg.Group, err)
		fatal.Store(&e)
		cancelRead()
		return 1
	}
	if err := nf.RegisterWithErrorFunc(readCtx, hook, errfn); err != nil {
		return a.bindError(err)
	}
	a.log.Info("reading nflog group", "copy_range", a.cfg.CopyRange, "read_buffer", a.cfg.ReadBuffer)

	attrCtx, stopAttr := context.WithCancel(context.Background())
	if a.cfg.NetNSPath != nil {
		a.wg.Add(1)
		go a.attributor(attrCtx)
	}
	a.process(readCtx, closeOnce)
	stopAttr()
	a.wg.Wait()
	if e := fatal.Load(); e != nil && ctx.Err() == nil {
		return *e
	}
	return nil
}

func (a *Alerter) bindError(err error) error {
	msg := err.Error()
	if strings.Contains(msg, "requested group") && (strings.Contains(msg, "operation not permitted") || strings.Contains(msg, "resource busy")) {
		if unix.Geteuid() != 0 {
			return fmt.Errorf("bind nflog group %d: %s: binding NFLOG needs CAP_NET_ADMIN (run arkgw as root)", a.cfg.Group, msg)
		}
		return fmt.Errorf("nflog group %d is taken by another process (ulogd2?); set [alerts].nflog_group to a free group: %w (%s)", a.cfg.Group, ErrGroupTaken, msg)
	}
	return fmt.Errorf("bind nflog group %d: %s", a.cfg.Group, msg)
}

// raiseBuffer sets the socket receive buffer, past net.core.rmem_max with
// SO_RCVBUFFORCE when we may (root), so that bursts wait in the kernel
// instead of overrunning.
func (a *Alerter) raiseBuffer(nf *gonflog.Nflog) {
	rc, err := nf.Con.SyscallConn()
	if err == nil {
		var serr error
		err = rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, a.cfg.ReadBuffer)
		})
		if err == nil && serr == nil {
			return
		}
	}
	if err := nf.Con.SetReadBuffer(a.cfg.ReadBuffer); err != nil {
		a.log.Warn("cannot raise nflog socket receive buffer; bursts may overrun", "bytes", a.cfg.ReadBuffer, "error", err)
	}
}

// handle runs on the netlink reader goroutine for every log message: it
// checks the sequence, decodes and queues. It never blocks.
func (a *Alerter) handle(dec *Decoder, attr gonflog.Attribute) {
	a.received.Add(1)
	if a.testHookHandle != nil {
		a.testHookHandle()
	}
	if attr.Seq != nil {
		s := *attr.Seq
		a.seqMu.Lock()
		// The instance is created by our bind, so its sequence starts at
		// 0: a first message with a higher number reveals early losses.
		if s != a.seqNext {
			if gap := s - a.seqNext; gap < 1<<31 {
				a.seqLost.Add(uint64(gap))
			}
		}
		a.seqNext = s + 1
		a.seqMu.Unlock()
	}
	if attr.Prefix == nil {
		a.foreign.Add(1)
		return
	}
	id, rule, ok := a.parsePrefix(*attr.Prefix)
	if !ok {
		a.foreign.Add(1)
		return
	}
	ev := Event{Time: a.cfg.Now(), Experiment: id, Rule: rule}
	if attr.Payload != nil {
		p, err := dec.Decode(*attr.Payload)
		if err != nil {
			a.decodeErrs.Add(1)
		}
		ev.Packet = p
	}
	a.hookMu.RLock()
	if a.closing {
		a.queueDrops.Add(1)
	} else {
		select {
		case a.queue <- ev:
		default:
			a.queueDrops.Add(1)
		}
	}
	a.hookMu.RUnlock()
}

func (a *Alerter) parsePrefix(p string) (id, rule string, ok bool) {
	if v, hit := a.prefix.Load(p); hit {
		ir := v.([2]string)
		return ir[0], ir[1], true
	}
	id, rule, err := alert.ParseLogPrefix(p)
	if err != nil {
		return "", "", false
	}
	// Prefixes come from our own rules: few distinct values. Bound the
	// cache anyway.
	if a.prefixes.Add(1) < 1<<16 {
		a.prefix.Store(p, [2]string{id, rule})
	}
	return id, rule, true
}

// process is the aggregator loop: it owns the Aggregator and the Enforcer.
func (a *Alerter) process(ctx context.Context, closeReader func()) {
	agg := NewAggregator(a.cfg.Window, a.cfg.MaxOpen)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var reported struct{ seq, drops, nobufs uint64 }
	reportLoss := func(final bool) {
		seq, drops, nob := a.seqLost.Load(), a.queueDrops.Load()+a.extDrops.Load(), a.noBufs.Load()
		if seq != reported.seq || drops != reported.drops || nob != reported.nobufs {
			dSeq, dDrops, dNob := seq-reported.seq, drops-reported.drops, nob-reported.nobufs
			reported.seq, reported.drops, reported.nobufs = seq, drops, nob
			a.faults.Report(alert.Record{
				Kind: alert.KindOverrun, Rule: RuleLost, Packets: dSeq + dDrops,
				Message: fmt.Sprintf("the alert path lost details of packets (nflog group %d; latest loss: %d never received from the kernel, %d socket overruns, %d dropped because the alerter was behind); they were still dropped by the gateway, whose counters have the exact totals", a.cfg.Group, dSeq, dNob, dDrops),
			})
		}
		if final {
			a.faults.Close()
		} else {
			a.faults.Flush()
		}
	}
	handleEv := func(ev Event) {
		r, ok := agg.Add(ev)
		n := int64(agg.Open() + agg.OpenOverflow())
		a.open.Store(n)
		if n > a.maxOpen.Load() {
			a.maxOpen.Store(n)
		}
		if !ok {
			return
		}
		if a.cfg.NetNSPath != nil && r.Kind == alert.KindPacket && (ev.ProtoNum == 6 || ev.ProtoNum == 17) {
			select {
			case a.attr <- r:
				return
			default: // attribution is behind: alert without it
			}
		}
		a.emit(r, ev.Time)
	}
	for {
		select {
		case ev := <-a.queue:
			handleEv(ev)
		case r := <-a.ext:
			a.emit(r, a.cfg.Now())
		case <-tick.C:
			now := a.cfg.Now()
			for _, r := range agg.Due(now) {
				a.emit(r, now)
			}
			a.open.Store(int64(agg.Open() + agg.OpenOverflow()))
			reportLoss(false)
		case <-ctx.Done():
			// Stop the reader, then take what it queued.
			closeReader()
			a.hookMu.Lock()
			a.closing = true
			a.hookMu.Unlock()
			for {
				select {
				case ev := <-a.queue:
					handleEv(ev)
					continue
				case r := <-a.ext:
					a.emit(r, a.cfg.Now())
					continue
				default:
				}
				break
			}
			now := a.cfg.Now()
			for _, r := range agg.FlushAll(now) {
				a.emit(r, now)
			}
			a.open.Store(0)
			reportLoss(true)
			// Records still in attribution are emitted by the
			// attributor as it stops (Run waits for it).
			return
		}
	}
}

// emit fills in node, title and contacts, sends r to the sink and applies
// enforcement. Called from the processor and the attributor.
func (a *Alerter) emit(r alert.Record, now time.Time) {
	if r.Node == "" {
		r.Node = a.cfg.Node
	}
	if r.Time.IsZero() {
		r.Time = now
	}
	if r.Experiment != "" && r.Title == "" && a.cfg.Lookup != nil {
		if title, contacts, ok := a.cfg.Lookup(r.Experiment); ok {
			r.Title, r.Contacts = title, contacts
		}
	}
	a.cfg.Sink.Emit(r)
	a.records.Add(1)
	a.enfMu.Lock()
	reason, stop := a.enf.Observe(r, now)
	a.enfMu.Unlock()
	if !stop {
		return
	}
	a.log.Warn("stopping experiment: too many alerts", "experiment", r.Experiment, "reason", reason)
	e := alert.Record{
		Time: now, Node: a.cfg.Node, Experiment: r.Experiment, Title: r.Title, Contacts: r.Contacts,
		Kind: alert.KindEnforced, Rule: "stop_after",
		Message: "arkgw stops experiment " + r.Experiment + ": " + reason,
	}
	if a.cfg.Stop == nil {
		e.Message = "experiment " + r.Experiment + " reached the alert limit but no stop function is configured: " + reason
	}
	a.cfg.Sink.Emit(e)
	a.records.Add(1)
	if a.cfg.Stop != nil {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.cfg.Stop(r.Experiment, reason)
		}()
	}
}

// attributor fills PID/Command of immediate TCP/UDP alerts within the
// budget, then emits them.
func (a *Alerter) attributor(ctx context.Context) {
	defer a.wg.Done()
	do := func(r alert.Record) {
		// Never hold an alert long: in a burst of new keys only the
		// first ones are attributed, the rest go out as they are.
		fresh := a.cfg.Now().Sub(r.Time) < 3*a.cfg.AttributeBudget
		if path, ok := a.cfg.NetNSPath(r.Experiment); ok && fresh {
			p := recordPacket(r)
			if o, err := Attribute(path, p, time.Now().Add(a.cfg.AttributeBudget)); err == nil {
				r.PID, r.Command = o.PID, o.Command
			} else {
				a.log.Debug("no attribution", "experiment", r.Experiment, "error", err)
			}
		}
		a.emit(r, a.cfg.Now())
	}
	for {
		select {
		case r := <-a.attr:
			do(r)
		case <-ctx.Done():
			for {
				select {
				case r := <-a.attr:
					a.emit(r, a.cfg.Now()) // shutting down: no lookups
				default:
					return
				}
			}
		}
	}
}

func recordPacket(r alert.Record) Packet {
	p := Packet{SrcPort: uint16(r.SrcPort), DstPort: uint16(r.DstPort)}
	switch r.Proto {
	case "tcp":
		p.ProtoNum = 6
	case "udp":
		p.ProtoNum = 17
	}
	p.Src, _ = netip.ParseAddr(r.Src)
	p.Dst, _ = netip.ParseAddr(r.Dst)
	return p
}

type nflogLogger struct{ l hclog.Logger }

func (n nflogLogger) Debugf(format string, args ...interface{}) {
	n.l.Debug(fmt.Sprintf(format, args...))
}
func (n nflogLogger) Errorf(format string, args ...interface{}) {
	n.l.Debug(fmt.Sprintf(format, args...)) // go-nflog reports shutdown noise as errors
}
