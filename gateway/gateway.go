// Package gateway builds each experiment's network and enforces the node
// owner's egress policy on the host side of the experiment's veth.
//
// Per experiment, in the namespaces the caller made (the runner: a user
// namespace and a network namespace owned by it, see nsholder): a veth pair "ark<id>" (host)
// / "eth0" (inside), addresses from the pools (a /30 and a /64 per slot),
// default routes via the host end, and the experiment's chains in the one
// nftables table "inet arkgw".
//
// Deciding is separate from doing: Compile turns effective policies into a
// plain Ruleset (ruleset.go, compile.go; golden files in testdata/), and
// the applier (apply.go) loads it with google/nftables as one atomic
// transaction that replaces the whole table. Stateful accounting (quotas)
// lives in "inet arkgw_acct" (package gateway/quota), which reloads never
// touch. See README.md for the chain layout, rule names and ct marks.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/hashicorp/go-hclog"
	"github.com/vishvananda/netlink"

	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/gateway/nftgen"
	"github.com/arkgw/arkgw/nsdo"
)

// Config configures a Gateway. Zero values take the documented defaults.
type Config struct {
	HostNS         nsdo.NS      // the node's netns; zero value = current
	Uplink         string       // "" = interface of the default route
	DefaultRouters []netip.Addr // nil = gateways of the default routes
	// Reserved destinations are dropped (rule "reserved") unless they are
	// a default router; nil = configs.ReservedPrefixes(configs.LabPolicy{}).
	// Pass configs.ReservedPrefixes(node.Lab).
	Reserved []netip.Prefix
	// Ledger records this process's nftables commits in HostNS; share it
	// with gateway/quota so that its commits do not force a replace of
	// the whole table. nil = the gateway's own.
	Ledger *nftgen.Ledger
	// MaxFlows limits each experiment's tracked flows when its policy
	// does not (configs.Limits.MaxFlows = 0); 0 = an eighth of the
	// kernel's net.netfilter.nf_conntrack_max (DefaultMaxFlows if that
	// cannot be read).
	MaxFlows   uint32
	Pool4      netip.Prefix // default 10.250.0.0/16: a /30 per slot
	Pool6      netip.Prefix // default fd00:a4c::/48: a /64 per slot
	NFLOGGroup uint16       // drops are logged here with prefix alert.LogPrefix(id, rule)
	UIDBase    uint32       // slot s maps uid 0..65535 to UIDBase+s*65536.. (default 1<<30)
	Logger     hclog.Logger
}

// Defaults.
var (
	DefaultPool4   = netip.MustParsePrefix("10.250.0.0/16")
	DefaultPool6   = netip.MustParsePrefix("fd00:a4c::/48")
	DefaultUIDBase = uint32(1 << 30)
)

// Net is an experiment's network as built by Add.
type Net struct {
	ID     string
	Slot   int
	HostIf string // "ark<id>" in HostNS

	Addr4, Addr6 netip.Addr // the experiment's own addresses (inside eth0)
	GW4, GW6     netip.Addr // host end = default routes inside = DNS proxy addresses

	NetNSPath, UserNSPath string
	HostUID, HostGID      uint32
}

// ExpNS is the experiment's namespaces, made by the caller (namespaces are
// the runner's business; the gateway wires links and rules into them).
type ExpNS struct {
	NetNSPath  string // the experiment's network namespace file
	UserNSPath string // the user namespace owning it
	// Wait, if set, blocks until the namespaces exist, so the caller can
	// make them while Add loads the rules; an error aborts Add. Add calls
	// it at most once.
	Wait func() error
}

type expState struct {
	eff *configs.Effective
	net *Net
}

// Gateway owns the experiment networks and the arkgw table in HostNS.
// Methods are safe for concurrent use; each runs under one lock.
type Gateway struct {
	cfg Config
	log hclog.Logger
	// no6: the host has IPv6 disabled; experiments get IPv4 only.
	no6 bool
	// flowtable: the kernel can make nftables flowtables (detected at
	// start; not used, see flowtable.go).
	flowtable bool

	mu   sync.Mutex
	exps map[string]*expState
	// applied is the ruleset currently in the kernel (nil = no table).
	applied *Ruleset
	// ledger follows the nftables generation: an in-place diff needs
	// no foreign commit since our last load.
	ledger *nftgen.Ledger
	// cache keeps compiled experiments between reloads (under mu).
	cache CompileCache
	// nft is a lasting nftables connection in HostNS, host a netlink
	// handle there (nil until needed).
	nft  *nftables.Conn
	host *netlink.Handle
	// mutate, when set (tests), edits each compiled ruleset before it is
	// applied.
	mutate func(*Ruleset)
}

// New checks cfg, fills defaults, resolves the uplink and default routers
// from HostNS's routes, detects whether the kernel has nftables flowtables
// (with a scratch table, removed again), and returns a Gateway. It
// changes nothing.
func New(cfg Config) (*Gateway, error) {
	if !cfg.Pool4.IsValid() {
		cfg.Pool4 = DefaultPool4
	}
	if !cfg.Pool6.IsValid() {
		cfg.Pool6 = DefaultPool6
	}
	if !cfg.Pool4.Addr().Is4() || cfg.Pool4.Bits() > 30 {
		return nil, fmt.Errorf("gateway: Pool4 %s must be an IPv4 prefix of /30 or shorter", cfg.Pool4)
	}
	if !cfg.Pool6.Addr().Is6() || cfg.Pool6.Bits() > 64 {
		return nil, fmt.Errorf("gateway: Pool6 %s must be an IPv6 prefix of /64 or shorter", cfg.Pool6)
	}
	cfg.Pool4, cfg.Pool6 = cfg.Pool4.Masked(), cfg.Pool6.Masked()
	if cfg.UIDBase == 0 {
		cfg.UIDBase = DefaultUIDBase
	}
	if cfg.Reserved == nil {
		cfg.Reserved = configs.ReservedPrefixes(configs.LabPolicy{})
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Uplink == "" || cfg.DefaultRouters == nil {
		up, routers, err := defaultRoutes(cfg.HostNS)
		if err != nil {
			return nil, fmt.Errorf("gateway: find default route: %w", err)
		}
		if cfg.Uplink == "" {
			cfg.Uplink = up
		}
		if cfg.DefaultRouters == nil {
			cfg.DefaultRouters = routers
		}
	}
	g := &Gateway{cfg: cfg, log: cfg.Logger.Named("gateway"), exps: map[string]*expState{}, ledger: cfg.Ledger}
	if g.ledger == nil {
		g.ledger = nftgen.NewLedger(cfg.HostNS)
	}
	if g.cfg.MaxFlows == 0 {
		g.cfg.MaxFlows = DefaultMaxFlows
		v, err := readSysctl(cfg.HostNS, "net.netfilter.nf_conntrack_max")
		if n, perr := strconv.ParseUint(v, 10, 32); err == nil && perr == nil && n >= 8 {
			g.cfg.MaxFlows = uint32(n / 8)
		} else {
			g.log.Warn("cannot read net.netfilter.nf_conntrack_max; experiments may track the default number of flows", "max_flows", DefaultMaxFlows, "error", err)
		}
	}
	if v, err := readSysctl(cfg.HostNS, "net.ipv6.conf.all.disable_ipv6"); err != nil || v == "1" {
		g.no6 = true
		g.log.Warn("ipv6 is disabled on this node: experiments get ipv4 only")
	}
	switch ok, err := probeFlowtable(cfg.HostNS, g.ledger); {
	case err != nil:
		g.log.Warn("cannot tell whether the kernel has nftables flowtables; not using them", "error", err)
	case ok:
		g.flowtable = true
		g.log.Info("the kernel has nftables flowtables; not offloading experiment flows: offloaded packets would skip the forward hook's byte counters, daily quota and shaping marks; established flows take the forward chain's one-lookup fast path")
	default:
		g.log.Info("the kernel has no nftables flowtables (CONFIG_NF_FLOW_TABLE_INET); established flows take the forward chain's one-lookup fast path")
	}
	return g, nil
}

// Close releases the gateway's netlink connection. Kernel state stays:
// experiments keep running, fail-closed, until a restarted daemon adopts
// or sweeps them.
func (g *Gateway) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	var err error
	// With no experiment and no "ark*" link left the table goes too (with
	// links left, for example ones a sweep kept for a later adoption, it
	// stays and drops their traffic).
	if links, lerr := arkLinks(g.cfg.HostNS); len(g.exps) == 0 && lerr == nil && len(links) == 0 {
		if err = deleteTable(g.cfg.HostNS, TableName); err == nil {
			g.applied = nil
		}
	}
	g.closeNFT()
	if g.host != nil {
		g.host.Close()
		g.host = nil
	}
	return err
}

// Uplink is the interface experiments are masqueraded out of.
func (g *Gateway) Uplink() string { return g.cfg.Uplink }

// MaxSlots is the number of slots the pools hold.
func (g *Gateway) MaxSlots() int {
	n4 := 1 << min(30, 30-g.cfg.Pool4.Bits())
	n6 := 1 << min(30, 64-g.cfg.Pool6.Bits())
	return min(n4, n6, int(MarkSlotMask)-1)
}

// Addresses returns the addresses of a slot: the experiment's and the host
// end's, v4 and v6.
func (g *Gateway) Addresses(slot int) (addr4, gw4, addr6, gw6 netip.Addr, err error) {
	if slot < 0 || slot >= g.MaxSlots() {
		return addr4, gw4, addr6, gw6, fmt.Errorf("slot %d out of range 0..%d of pools %s, %s", slot, g.MaxSlots()-1, g.cfg.Pool4, g.cfg.Pool6)
	}
	b4 := g.cfg.Pool4.Addr().As4()
	v := uint32(b4[0])<<24 | uint32(b4[1])<<16 | uint32(b4[2])<<8 | uint32(b4[3])
	v += uint32(slot) * 4
	mk4 := func(x uint32) netip.Addr {
		return netip.AddrFrom4([4]byte{byte(x >> 24), byte(x >> 16), byte(x >> 8), byte(x)})
	}
	gw4, addr4 = mk4(v+1), mk4(v+2)
	b6 := g.cfg.Pool6.Addr().As16()
	// slot goes into bits 32..63 (the /64 index).
	hi := uint64(b6[0])<<56 | uint64(b6[1])<<48 | uint64(b6[2])<<40 | uint64(b6[3])<<32 | uint64(b6[4])<<24 | uint64(b6[5])<<16 | uint64(b6[6])<<8 | uint64(b6[7])
	hi += uint64(slot)
	var a [16]byte
	for i := 0; i < 8; i++ {
		a[i] = byte(hi >> (56 - 8*i))
	}
	a[15] = 1
	gw6 = netip.AddrFrom16(a)
	a[15] = 2
	addr6 = netip.AddrFrom16(a)
	return addr4, gw4, addr6, gw6, nil
}

// HostID is the first host uid (and gid) of slot's experiment: its user
// namespace maps 0..65535 to HostID(slot).. (UIDBase + slot*65536).
func (g *Gateway) HostID(slot int) uint32 { return g.cfg.UIDBase + uint32(slot)*65536 }

// Add builds experiment eff.ID's network in slot, inside the namespaces
// ns (whose user namespace maps from HostID(slot)), and loads the ruleset
// with its policy. On any error everything Add did is undone; the
// namespaces stay the caller's.
func (g *Gateway) Add(ctx context.Context, eff *configs.Effective, slot int, ns ExpNS) (n *Net, err error) {
	if eff == nil {
		return nil, errors.New("gateway add: nil policy")
	}
	id := eff.ID
	if err := configs.ValidID(id); err != nil {
		return nil, fmt.Errorf("gateway add: %w", err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.exps[id]; ok {
		return nil, fmt.Errorf("gateway add %q: experiment already has a network (remove it first)", id)
	}
	for oid, st := range g.exps {
		if st.net.Slot == slot {
			return nil, fmt.Errorf("gateway add %q: slot %d is used by experiment %q", id, slot, oid)
		}
	}
	addr4, gw4, addr6, gw6, err := g.Addresses(slot)
	if err != nil {
		return nil, fmt.Errorf("gateway add %q: %w", id, err)
	}
	log := g.log.With("experiment", id)
	uid := g.HostID(slot)
	n = &Net{ID: id, Slot: slot, HostIf: HostIfName(id), Addr4: addr4, Addr6: addr6, GW4: gw4, GW6: gw6,
		NetNSPath: ns.NetNSPath, UserNSPath: ns.UserNSPath, HostUID: uid, HostGID: uid}
	if g.no6 {
		n.Addr6, n.GW6 = netip.Addr{}, netip.Addr{}
	}

	t0 := time.Now()
	// A leftover veth of an earlier run of this id would make the kernel
	// refuse (only arkgw's: a foreign link of the name makes Add fail).
	deleteLink(g.cfg.HostNS, id)
	tSwept := time.Now()

	// The caller makes the namespaces while the rules load: neither needs
	// the other (the rules name the interface, which plumb creates after
	// both, so they hold from the first packet the veth carries).
	g.exps[id] = &expState{eff: eff, net: n}
	rulesErr := g.reload()
	tRules := time.Now()
	var nsErr error
	if ns.Wait != nil {
		nsErr = ns.Wait()
	}
	tHolder := time.Now()
	defer func() {
		if err != nil {
			deleteLink(g.cfg.HostNS, id)
		}
	}()
	if rulesErr != nil {
		delete(g.exps, id)
		return nil, fmt.Errorf("gateway add %q: %w", id, rulesErr)
	}
	if nsErr == nil {
		nsErr = ctx.Err()
	}
	if nsErr != nil {
		delete(g.exps, id)
		if rerr := g.reload(); rerr != nil {
			g.log.Error("restore ruleset after failed add", "experiment", id, "error", rerr)
		}
		return nil, fmt.Errorf("gateway add %q: experiment namespaces: %w", id, nsErr)
	}
	if err := g.plumb(n); err != nil {
		delete(g.exps, id)
		if rerr := g.reload(); rerr != nil {
			g.log.Error("restore ruleset after failed add", "experiment", id, "error", rerr)
		}
		return nil, fmt.Errorf("gateway add %q: %w", id, err)
	}
	log.Debug("experiment network up", "slot", slot, "addr4", addr4, "addr6", addr6, "if", n.HostIf,
		"leftovers_ms", ms(tSwept.Sub(t0)), "rules_ms", ms(tRules.Sub(tSwept)), "namespaces_ms", ms(tHolder.Sub(tSwept)), "plumb_ms", ms(time.Since(tHolder)))
	return n, nil
}

// Adopt takes over the network of an experiment that a previous run of the
// daemon built (after a restart): the persisted namespaces ns (Wait is not
// used) and the veth "ark<id>" must exist. The ruleset is reloaded with
// eff; nothing is changed on error.
func (g *Gateway) Adopt(ctx context.Context, eff *configs.Effective, slot int, ns ExpNS) (*Net, error) {
	if eff == nil {
		return nil, errors.New("gateway adopt: nil policy")
	}
	id := eff.ID
	if err := configs.ValidID(id); err != nil {
		return nil, fmt.Errorf("gateway adopt: %w", err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.exps[id]; ok {
		return nil, fmt.Errorf("gateway adopt %q: already known", id)
	}
	addr4, gw4, addr6, gw6, err := g.Addresses(slot)
	if err != nil {
		return nil, fmt.Errorf("gateway adopt %q: %w", id, err)
	}
	userNS, netNS := ns.UserNSPath, ns.NetNSPath
	h, err := nsdo.Open(netNS)
	if err != nil {
		return nil, fmt.Errorf("gateway adopt %q: persisted netns: %w (start the experiment anew)", id, err)
	}
	h.Close()
	// The store says id is arkgw's: its veth is tagged if an older
	// arkgw left it untagged.
	if err := tagLink(g.cfg.HostNS, id); err != nil {
		return nil, fmt.Errorf("gateway adopt %q: veth %s: %w (start the experiment anew)", id, HostIfName(id), err)
	}
	uid := g.HostID(slot)
	n := &Net{ID: id, Slot: slot, HostIf: HostIfName(id), Addr4: addr4, Addr6: addr6, GW4: gw4, GW6: gw6,
		NetNSPath: netNS, UserNSPath: userNS, HostUID: uid, HostGID: uid}
	if g.no6 {
		n.Addr6, n.GW6 = netip.Addr{}, netip.Addr{}
	}
	g.exps[id] = &expState{eff: eff, net: n}
	if err := g.reload(); err != nil {
		delete(g.exps, id)
		return nil, fmt.Errorf("gateway adopt %q: %w", id, err)
	}
	return n, nil
}

// reload compiles every known experiment and loads the result. With no
// experiment left the table stays, empty of experiments (an empty ruleset
// drops everything from and to "ark*" links, fail-closed): making it anew
// for the next start costs more than keeping it. Close removes it.
func (g *Gateway) reload() error {
	rs, err := Compile(g.compileInput(g.exps))
	if err != nil {
		return err
	}
	if g.mutate != nil {
		g.mutate(rs)
	}
	if err := g.load(rs); err != nil {
		return err
	}
	g.applied = rs
	return nil
}

// load makes rs the table: changed in place from the applied one (only
// what differs, in one batch), or replaced whole when there is no applied
// table, the change needs it, or the kernel refused the change (its table
// may have been altered behind our back). Either way it is atomic.
func (g *Gateway) load(rs *Ruleset) error {
	if g.nft == nil {
		c, err := nftLasting(g.cfg.HostNS)
		if err != nil {
			return fmt.Errorf("nftables connection: %w", err)
		}
		g.nft = c
	}
	// A diff is only valid against the table we last loaded. The ledger
	// follows the nftables ruleset generation, which moves with every
	// commit in the netns: if anything but this process's own commits
	// through the ledger (ours, gateway/quota's when it shares it) moved
	// it, something may have changed our table (nft by hand, another
	// firewall tool), and the table is replaced whole.
	if p, ok := Diff(g.applied, rs); ok {
		applied, err := g.ledger.CommitIfClean(func() error { return applyPlanWith(g.nft, p, rs) })
		switch {
		case applied && err == nil:
			return nil
		case applied:
			g.log.Warn("changing the ruleset in place failed; replacing the table", "error", err)
			g.closeNFT() // a reply left unread must not confuse the next batch
			if g.nft, err = nftLasting(g.cfg.HostNS); err != nil {
				return fmt.Errorf("nftables connection: %w", err)
			}
		default:
			g.log.Debug("nftables changed behind the gateway's back since its last load; replacing the table")
		}
	}
	err := g.ledger.Replace(func() error { return applyRulesetWith(g.nft, g.cfg.HostNS, rs) })
	if err != nil {
		g.closeNFT()
	}
	return err
}

// closeNFT drops the lasting nftables connection (made again when needed).
func (g *Gateway) closeNFT() {
	if g.nft != nil {
		g.nft.CloseLasting()
		g.nft = nil
	}
}

func (g *Gateway) compileInput(exps map[string]*expState) CompileInput {
	in := CompileInput{Uplink: g.cfg.Uplink, DefaultRouters: g.cfg.DefaultRouters, Reserved: g.cfg.Reserved, NFLOGGroup: g.cfg.NFLOGGroup, MaxFlows: g.cfg.MaxFlows}
	if g.mutate == nil { // a test's mutation must not reach cached objects
		in.Cache = &g.cache
	}
	for _, st := range exps {
		in.Exps = append(in.Exps, CompileExp{Eff: st.eff, Net: st.net})
	}
	return in
}

// Update replaces the policies of the experiments in effs (all must have
// been added; experiments not named keep their policy) in one transaction,
// then cuts the conntrack flows the new policies no longer admit. If the
// kernel refuses the new ruleset, the old one stays in force.
func (g *Gateway) Update(ctx context.Context, effs []*configs.Effective) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	next := make(map[string]*expState, len(g.exps))
	for id, st := range g.exps {
		next[id] = st
	}
	var changed []*expState
	for _, eff := range effs {
		if eff == nil {
			return errors.New("gateway update: nil policy")
		}
		st, ok := g.exps[eff.ID]
		if !ok {
			return fmt.Errorf("gateway update: experiment %q has no network (Add it first)", eff.ID)
		}
		ns := &expState{eff: eff, net: st.net}
		next[eff.ID] = ns
		changed = append(changed, ns)
	}
	rs, err := Compile(g.compileInput(next))
	if err != nil {
		return fmt.Errorf("gateway update: %w", err)
	}
	if g.mutate != nil {
		g.mutate(rs)
	}
	if err := g.load(rs); err != nil {
		return fmt.Errorf("gateway update: %w (previous ruleset kept)", err)
	}
	g.exps, g.applied = next, rs
	var errs []error
	for _, st := range changed {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := revokeFlows(g.cfg.HostNS, st.net, st.eff, g.cfg.Reserved, g.cfg.DefaultRouters)
		if err != nil {
			errs = append(errs, fmt.Errorf("gateway update %q: cut revoked flows: %w", st.eff.ID, err))
			continue
		}
		if n > 0 {
			g.log.With("experiment", st.eff.ID).Info("revoked flows cut", "flows", n)
		}
	}
	return errors.Join(errs...)
}

// Remove deletes the experiment's rules, conntrack entries and veth (its
// namespaces are the caller's). Idempotent; unknown ids still get their
// leftover veth removed.
func (g *Gateway) Remove(ctx context.Context, id string) error {
	if err := configs.ValidID(id); err != nil {
		return fmt.Errorf("gateway remove: %w", err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.removeLocked(id)
}

func (g *Gateway) removeLocked(id string) error {
	var errs []error
	st, ok := g.exps[id]
	if ok {
		delete(g.exps, id)
		if err := g.reload(); err != nil {
			errs = append(errs, fmt.Errorf("gateway remove %q: rules: %w", id, err))
		}
		if _, err := deleteFlows(g.cfg.HostNS, st.net.Slot); err != nil {
			errs = append(errs, fmt.Errorf("gateway remove %q: conntrack: %w", id, err))
		}
	}
	if err := deleteLink(g.cfg.HostNS, id); err != nil {
		errs = append(errs, fmt.Errorf("gateway remove %q: %w", id, err))
	}
	return errors.Join(errs...)
}

// Sweep removes arkgw kernel objects of ids not in keep: networks this
// Gateway knows, "ark<id>" veths in HostNS, and their rules (the table is
// reloaded from what remains); namespaces are the caller's to sweep.
// Kept experiments this Gateway does not know (after a restart) stay, and
// their traffic is dropped until Adopt. Idempotent.
func (g *Gateway) Sweep(ctx context.Context, keep map[string]bool) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	var errs []error
	for id := range g.exps {
		if !keep[id] {
			if err := g.removeLocked(id); err != nil {
				errs = append(errs, err)
			}
		}
	}
	links, err := arkLinks(g.cfg.HostNS)
	if err != nil {
		errs = append(errs, fmt.Errorf("gateway sweep: %w", err))
	}
	for _, id := range links {
		if !keep[id] && g.exps[id] == nil {
			if err := deleteLink(g.cfg.HostNS, id); err != nil {
				errs = append(errs, fmt.Errorf("gateway sweep: %w", err))
			}
		}
	}
	// A scratch table left by an interrupted diagnosis (see apply.go).
	if err := g.ledger.Commit(func() error { return deleteTable(g.cfg.HostNS, TableName+"_probe") }); err != nil {
		errs = append(errs, fmt.Errorf("gateway sweep: %w", err))
	}
	// Rules of ids not known go with the reload; kept links that are not
	// adopted yet are dropped until they are.
	if err := g.reload(); err != nil {
		errs = append(errs, fmt.Errorf("gateway sweep: rules: %w", err))
	}
	return errors.Join(errs...)
}

// Ruleset returns the ruleset currently loaded (nil when none).
func (g *Gateway) Ruleset() *Ruleset {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.applied
}

// Nets returns the networks of the known experiments, sorted by id.
func (g *Gateway) Nets() []*Net {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []*Net
	for _, st := range g.exps {
		out = append(out, st.net)
	}
	slices.SortFunc(out, func(a, b *Net) int {
		if a.ID < b.ID {
			return -1
		}
		if a.ID > b.ID {
			return 1
		}
		return 0
	})
	return out
}

// DropCounter reads the named drop counter of experiment id and rule from
// the kernel (packets, bytes). Counters restart at zero on every reload.
func (g *Gateway) DropCounter(id, rule string) (packets, bytes uint64, err error) {
	return readCounter(g.cfg.HostNS, TableName, CounterName(id, rule))
}

// DefaultRouters are the node's default routers (from New's Config or the
// routes), which stay reachable although they lie in reserved ranges.
func (g *Gateway) DefaultRouters() []netip.Addr {
	return append([]netip.Addr(nil), g.cfg.DefaultRouters...)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
