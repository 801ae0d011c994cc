// Package quota keeps the nftables table "inet arkgw_acct": per experiment,
// named byte counters for upload and download, an optional named quota (the
// daily budget) that drops the experiment's traffic once exhausted, and the
// skb->priority marks that file its packets into its tc classes (package
// shape).
//
// The table is separate from the gateway's "inet arkgw" on purpose: the
// gateway replaces its table on every policy reload, and replacing a table
// loses the state of its counters and quotas. Nothing here is ever
// replaced wholesale; per-experiment parts are added and removed on their
// own, in one transaction each.
//
// Layout (nft syntax, experiment "e1" on veth "arke1", NFLOG group G):
//
//	table inet arkgw_acct {
//	  counter e1_up {}  counter e1_down {}  counter e1_drop {}
//	  quota e1_quota { over 2000000 bytes used 0 bytes }
//	  chain forward { type filter hook forward priority filter + 10; policy accept;
//	    iifname "arke1" jump exp_e1
//	    oifname "arke1" jump exp_e1 }
//	  chain exp_e1 {
//	    quota name "e1_quota" jump over_e1
//	    iifname "arke1" counter name "e1_up" meta priority set a4c1:2
//	    oifname "arke1" counter name "e1_down" meta priority set a4c2:2 }
//	  chain over_e1 {
//	    limit rate 5/second burst 10 packets log prefix "ark:e1:quota" group G
//	    counter name "e1_drop" drop }
//	}
//
// The forward chain runs after the gateway's filter (priority filter + 10),
// so only traffic the gateway admitted is counted; an accept verdict in the
// gateway's base chain does not stop this one. What counts: IP packets
// including their headers (skb->len in the forward hook), both directions
// against the one budget. The quota object also counts the packets it
// drops once over (the kernel adds every packet it evaluates); the counters
// count only what passed.
//
// Known limit: the kernel counts a GSO/GRO aggregate as one packet of
// skb->len bytes, so headers of the segments it stands for are not
// counted. Upload passes the experiment's shaper first, whose queue splits
// aggregates above 6 frames (package shape), so it counts (nearly) exactly;
// bulk TCP download that the uplink's GRO merged counts up to about 3%
// less than the wire carried.
package quota

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/arkgw/arkgw/gateway/nftgen"
	"github.com/arkgw/arkgw/nsdo"
)

// Names.
const (
	TableName    = "arkgw_acct"
	ForwardChain = "forward"
	// ChainPriority: after the gateway's filter (filter = 0).
	ChainPriority = 10
	// RuleLog is the rule name in NFLOG prefixes: "ark:<id>:quota".
	RuleLog = "quota"
	// LogRate is how many quota drops per second are logged per experiment
	// (the drop counter counts all of them).
	LogRate = 5
)

// Exp describes one experiment's accounting.
type Exp struct {
	ID     string
	HostIf string // host end of its veth
	// BudgetBytes is the daily budget (up + down); 0 = none.
	BudgetBytes uint64
	// UsedBytes is written into the quota's used bytes when the quota object
	// is (re)created: the value saved before a restart or reboot.
	UsedBytes uint64
	// UpPriority and DownPriority are the skb->priority values for the tc
	// classes (shape.Priorities); 0 = do not set.
	UpPriority, DownPriority uint32
}

// Counts are an experiment's kernel counters.
type Counts struct {
	Up, Down               uint64 // bytes that passed (IP packets incl. headers)
	UpPackets, DownPackets uint64
	Dropped                uint64 // bytes dropped by the quota
	QuotaUsed              uint64 // the quota's used bytes (includes dropped packets)
	Budget                 uint64 // the quota's limit; 0 = no quota
}

// Config of a Table.
type Config struct {
	NS         nsdo.NS // the node's netns; zero value = current
	NFLOGGroup uint16
	Logger     hclog.Logger
	// Ledger, when set, records the table's commits (share the
	// gateway's, so that they do not make it replace its table).
	Ledger *nftgen.Ledger
}

// Table manages inet arkgw_acct. Its methods are safe for concurrent use
// (each is one netlink transaction on a fresh connection).
type Table struct {
	cfg Config
	log hclog.Logger
	t   *nftables.Table

	// One lasting netlink connection: making one inside the node's netns
	// for every call (a thread that enters the netns, a new socket) was
	// most of an experiment start's accounting time. mu serialises its
	// users.
	mu sync.Mutex
	c  *nftables.Conn
}

// New returns a Table; nothing is changed in the kernel until Add.
func New(cfg Config) *Table {
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Table{cfg: cfg, log: log.Named("quota"), t: &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}}
}

// conn returns the table's connection, held until release.
func (t *Table) conn() (*nftables.Conn, error) {
	t.mu.Lock()
	if t.c != nil {
		return t.c, nil
	}
	opts := []nftables.ConnOption{nftables.AsLasting()}
	opts = append(opts, t.cfg.NS.NFTOptions()...)
	c, err := nftables.New(opts...)
	if err != nil {
		t.mu.Unlock()
		return nil, fmt.Errorf("quota: nftables connection: %w", err)
	}
	t.c = c
	return c, nil
}

// flush sends c's batch, through the ledger when there is one.
func (t *Table) flush(c *nftables.Conn) error {
	if t.cfg.Ledger == nil {
		return c.Flush()
	}
	return t.cfg.Ledger.Commit(c.Flush)
}

// release ends a use of the connection; after a failed call it is
// replaced, so that a reply left unread cannot confuse the next.
func (t *Table) release(err *error) {
	if *err != nil && t.c != nil {
		t.c.CloseLasting()
		t.c = nil
	}
	t.mu.Unlock()
}

// Close releases the netlink connection; the table stays in the kernel.
func (t *Table) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.c == nil {
		return nil
	}
	err := t.c.CloseLasting()
	t.c = nil
	return err
}

func objName(id, kind string) string { return id + "_" + kind }
func expChain(id string) string      { return "exp_" + id }
func overChain(id string) string     { return "over_" + id }

func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}

func validate(e Exp) error {
	if e.ID == "" || strings.ContainsAny(e.ID, "_ \"") || len(e.ID) > 32 {
		return fmt.Errorf("quota: experiment id %q: want [a-z0-9]", e.ID)
	}
	if e.HostIf == "" || len(e.HostIf) > 15 {
		return fmt.Errorf("quota: experiment %q: host interface %q: want 1-15 bytes", e.ID, e.HostIf)
	}
	return nil
}

// existing returns the names of the table's objects (nil map if the table
// does not exist).
func (t *Table) existing(c *nftables.Conn) (map[string]nftables.Obj, error) {
	if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, nil
		}
		return nil, fmt.Errorf("quota: look up table %s: %w", TableName, err)
	}
	objs, err := c.GetNamedObjects(t.t)
	if err != nil {
		return nil, fmt.Errorf("quota: list objects of %s: %w", TableName, err)
	}
	m := make(map[string]nftables.Obj, len(objs))
	for _, o := range objs {
		if no, ok := o.(*nftables.NamedObj); ok {
			m[no.Name] = o
		}
	}
	return m, nil
}

// objectsOf returns those of the experiment's objects that exist, each
// asked for by name (a dump of the whole table grows with the number of
// experiments).
func (t *Table) objectsOf(c *nftables.Conn, id string) (map[string]nftables.Obj, error) {
	m := map[string]nftables.Obj{}
	for _, k := range []string{"up", "down", "drop", "quota"} {
		typ := nftables.ObjTypeCounter
		if k == "quota" {
			typ = nftables.ObjTypeQuota
		}
		o, err := c.GetObject(&nftables.NamedObj{Table: t.t, Name: objName(id, k), Type: typ})
		if notExist(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("quota: look up %s in %s: %w", objName(id, k), TableName, err)
		}
		if o != nil {
			m[objName(id, k)] = o
		}
	}
	return m, nil
}

// notExist reports a missing object or table. google/nftables v0.3 formats
// the netlink error of a single-object lookup with %v, so the errno
// survives only as text.
func notExist(err error) bool {
	return err != nil && (errors.Is(err, unix.ENOENT) || strings.HasSuffix(err.Error(), unix.ENOENT.Error()))
}

// Add installs (or re-adopts) an experiment's counters, quota and rules in
// one transaction. Counters that already exist (the table survived a daemon
// restart) keep counting: created reports whether they were made new, in
// which case the caller's saved totals are the only record of today. The
// quota keeps its used bytes if it exists, else it starts at e.UsedBytes.
func (t *Table) Add(e Exp) (created bool, err error) {
	if err := validate(e); err != nil {
		return false, err
	}
	c, err := t.conn()
	if err != nil {
		return false, err
	}
	defer t.release(&err)
	have, err := t.objectsOf(c, e.ID)
	if err != nil {
		return false, err
	}
	created = have[objName(e.ID, "up")] == nil || have[objName(e.ID, "down")] == nil
	c.AddTable(t.t)
	t.addBase(c)
	for _, k := range []string{"up", "down", "drop"} {
		if have[objName(e.ID, k)] == nil {
			c.AddObj(&nftables.NamedObj{Table: t.t, Name: objName(e.ID, k), Type: nftables.ObjTypeCounter, Obj: &expr.Counter{}})
		}
	}
	t.unhook(c, e.ID)
	if have[objName(e.ID, "quota")] != nil && e.BudgetBytes == 0 {
		// Rules referring to it are gone once the chain is flushed.
		c.FlushChain(&nftables.Chain{Table: t.t, Name: expChain(e.ID)})
		c.DeleteObject(&nftables.NamedObj{Table: t.t, Name: objName(e.ID, "quota"), Type: nftables.ObjTypeQuota})
	}
	if e.BudgetBytes > 0 {
		q := &expr.Quota{Bytes: e.BudgetBytes, Over: true}
		if have[objName(e.ID, "quota")] == nil {
			q.Consumed = e.UsedBytes
		}
		// NEWOBJ on an existing quota updates its limit and keeps its used bytes.
		c.AddObj(&nftables.NamedObj{Table: t.t, Name: objName(e.ID, "quota"), Type: nftables.ObjTypeQuota, Obj: q})
	}
	t.addRules(c, e)
	if err := t.flush(c); err != nil {
		return false, fmt.Errorf("quota: add experiment %q to table %s: %w", e.ID, TableName, err)
	}
	t.log.Debug("accounting rules installed", "experiment", e.ID, "created", created, "budget", e.BudgetBytes)
	return created, nil
}

func (t *Table) addBase(c *nftables.Conn) *nftables.Chain {
	prio := nftables.ChainPriority(ChainPriority)
	pol := nftables.ChainPolicyAccept
	return c.AddChain(&nftables.Chain{Table: t.t, Name: ForwardChain, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: &prio, Policy: &pol})
}

func tag(id string) []byte { return []byte("arkgw:" + id) }

// unhook queues deletion of the experiment's jump rules in the base chain
// and of its own chains' rules (so they can be written afresh).
func (t *Table) unhook(c *nftables.Conn, id string) {
	base := &nftables.Chain{Table: t.t, Name: ForwardChain}
	if rules, err := c.GetRules(t.t, base); err == nil {
		for _, r := range rules {
			if string(r.UserData) == string(tag(id)) {
				_ = c.DelRule(r)
			}
		}
	}
	for _, n := range []string{expChain(id), overChain(id)} {
		if ch, err := c.ListChain(t.t, n); err == nil && ch != nil {
			c.FlushChain(&nftables.Chain{Table: t.t, Name: n})
		}
	}
}

func (t *Table) addRules(c *nftables.Conn, e Exp) {
	d := Compile(t.t, e, t.cfg.NFLOGGroup)
	c.AddChain(d.ExpChain)
	c.AddChain(d.OverChain)
	for _, r := range d.Base {
		c.AddRule(r)
	}
	for _, r := range d.Exp {
		c.AddRule(r)
	}
	for _, r := range d.Over {
		c.AddRule(r)
	}
}

// RestoreUsed sets the quota's used bytes to used, atomically: in one
// transaction the experiment's rules are flushed, the quota deleted and
// recreated with used, and the rules written again (the kernel cannot
// change a quota's used bytes in place). Counters are untouched.
func (t *Table) RestoreUsed(e Exp, used uint64) (err error) {
	if err := validate(e); err != nil {
		return err
	}
	if e.BudgetBytes == 0 {
		return nil
	}
	c, err := t.conn()
	if err != nil {
		return err
	}
	defer t.release(&err)
	have, err := t.existing(c)
	if err != nil {
		return err
	}
	if have[objName(e.ID, "up")] == nil {
		return fmt.Errorf("quota: restore used bytes of %q: experiment not in table %s (Add it first)", e.ID, TableName)
	}
	t.unhook(c, e.ID)
	if have[objName(e.ID, "quota")] != nil {
		c.DeleteObject(&nftables.NamedObj{Table: t.t, Name: objName(e.ID, "quota"), Type: nftables.ObjTypeQuota})
	}
	c.AddObj(&nftables.NamedObj{Table: t.t, Name: objName(e.ID, "quota"), Type: nftables.ObjTypeQuota,
		Obj: &expr.Quota{Bytes: e.BudgetBytes, Consumed: used, Over: true}})
	t.addRules(c, e)
	if err := t.flush(c); err != nil {
		return fmt.Errorf("quota: restore used bytes of %q: %w", e.ID, err)
	}
	return nil
}

// SetBudget changes the limit of an experiment's quota; used bytes stay.
// The quota must exist (Add with a budget); to add or drop a quota, Add.
func (t *Table) SetBudget(id string, bytes uint64) (err error) {
	c, err := t.conn()
	if err != nil {
		return err
	}
	defer t.release(&err)
	c.AddObj(&nftables.NamedObj{Table: t.t, Name: objName(id, "quota"), Type: nftables.ObjTypeQuota,
		Obj: &expr.Quota{Bytes: bytes, Over: true}})
	if err := t.flush(c); err != nil {
		return fmt.Errorf("quota: set budget of %q to %d bytes: %w", id, bytes, err)
	}
	return nil
}

// ResetQuota sets the quota's used bytes to zero (day rollover) and
// returns what it had used; read and reset are one atomic kernel operation.
func (t *Table) ResetQuota(id string) (_ uint64, err error) {
	c, err := t.conn()
	if err != nil {
		return 0, err
	}
	defer t.release(&err)
	o, err := c.ResetObject(&nftables.NamedObj{Table: t.t, Name: objName(id, "quota"), Type: nftables.ObjTypeQuota})
	if err != nil {
		return 0, fmt.Errorf("quota: reset quota of %q: %w", id, err)
	}
	if no, ok := o.(*nftables.NamedObj); ok {
		if q, ok := no.Obj.(*expr.Quota); ok {
			return q.Consumed, nil
		}
	}
	return 0, nil
}

// Read returns the counters of every experiment in the table.
func (t *Table) Read() (_ map[string]Counts, err error) {
	c, err := t.conn()
	if err != nil {
		return nil, err
	}
	defer t.release(&err)
	have, err := t.existing(c)
	if err != nil {
		return nil, err
	}
	return countsOf(have), nil
}

// ReadOne returns one experiment's counters (zero when it has none).
func (t *Table) ReadOne(id string) (_ Counts, err error) {
	c, err := t.conn()
	if err != nil {
		return Counts{}, err
	}
	defer t.release(&err)
	objs, err := t.objectsOf(c, id)
	if err != nil {
		return Counts{}, err
	}
	return countsOf(objs)[id], nil
}

// countsOf groups named counter and quota objects by experiment.
func countsOf(have map[string]nftables.Obj) map[string]Counts {
	out := map[string]Counts{}
	for name, o := range have {
		i := strings.LastIndexByte(name, '_')
		if i <= 0 {
			continue
		}
		id, kind := name[:i], name[i+1:]
		no, ok := o.(*nftables.NamedObj)
		if !ok {
			continue
		}
		cnt := out[id]
		switch v := no.Obj.(type) {
		case *expr.Counter:
			switch kind {
			case "up":
				cnt.Up, cnt.UpPackets = v.Bytes, v.Packets
			case "down":
				cnt.Down, cnt.DownPackets = v.Bytes, v.Packets
			case "drop":
				cnt.Dropped = v.Bytes
			default:
				continue
			}
		case *expr.Quota:
			if kind != "quota" {
				continue
			}
			cnt.QuotaUsed, cnt.Budget = v.Consumed, v.Bytes
		default:
			continue
		}
		out[id] = cnt
	}
	return out
}

// Remove deletes an experiment's rules, chains and objects (idempotent).
func (t *Table) Remove(id string) (err error) {
	c, err := t.conn()
	if err != nil {
		return err
	}
	defer t.release(&err)
	have, err := t.existing(c)
	if err != nil || have == nil {
		return err
	}
	t.unhook(c, id)
	for _, n := range []string{expChain(id), overChain(id)} {
		if ch, err := c.ListChain(t.t, n); err == nil && ch != nil {
			c.DelChain(&nftables.Chain{Table: t.t, Name: n})
		}
	}
	for _, k := range []string{"up", "down", "drop", "quota"} {
		if o := have[objName(id, k)]; o != nil {
			c.DeleteObject(o)
		}
	}
	if err := t.flush(c); err != nil {
		return fmt.Errorf("quota: remove experiment %q from %s: %w", id, TableName, err)
	}
	return nil
}

// IDs lists the experiments that have counters in the table (for a sweep).
func (t *Table) IDs() ([]string, error) {
	cs, err := t.Read()
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(cs))
	for id := range cs {
		ids = append(ids, id)
	}
	return ids, nil
}

// Delete removes the whole table (arkgw cleanup; loses all counters).
func (t *Table) Delete() (err error) {
	c, err := t.conn()
	if err != nil {
		return err
	}
	defer t.release(&err)
	if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet); err != nil {
		return nil
	}
	c.DelTable(t.t)
	if err := t.flush(c); err != nil {
		return fmt.Errorf("quota: delete table %s: %w", TableName, err)
	}
	return nil
}
