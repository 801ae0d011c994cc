package gateway

import (
	"github.com/google/nftables"

	"github.com/arkgw/arkgw/gateway/nftgen"
	"github.com/arkgw/arkgw/nsdo"
)

// An nftables flowtable takes a flow's packets off the netfilter hooks once
// it is offloaded: they skip the forward hook, with gateway/quota's byte
// counters, its daily quota and the skb->priority marks that file packets
// into gateway/shape's classes. Offloading experiment flows would make the
// accounting miss their bytes and let them run past an exhausted quota, so
// the gateway detects whether the kernel could (and says so at start) but
// does not offload; established flows take the forward chain's one-lookup
// fast path instead. Using it would take accounting from conntrack's own
// counters (nf_conntrack_acct), the quota enforced by deleting a
// quota-tripped experiment's conntrack entries, and tc classifying by
// conntrack mark.

// probeFlowtable reports whether the kernel in ns can make an nftables
// flowtable (CONFIG_NF_FLOW_TABLE_INET): it makes one, without devices, in
// the scratch table inet arkgw_probe and removes the table again. Both
// commits go through ledger (they are this process's own).
func probeFlowtable(ns nsdo.NS, ledger *nftgen.Ledger) (bool, error) {
	c, err := nftConn(ns)
	if err != nil {
		return false, err
	}
	name := TableName + "_probe"
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: name}
	ok := true
	err = ledger.Commit(func() error {
		c.AddTable(t)
		c.DelTable(t)
		c.AddTable(t)
		c.AddFlowtable(&nftables.Flowtable{Table: t, Name: "probe"})
		if ferr := c.Flush(); ferr != nil {
			ok = false // the batch was refused whole: nothing was made
		}
		return nil
	})
	if err != nil || !ok {
		return false, err
	}
	err = ledger.Commit(func() error {
		c.DelTable(t)
		return c.Flush()
	})
	return true, err
}
