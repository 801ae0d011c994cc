// Package nftgen reads the nftables ruleset generation of a network
// namespace and keeps a ledger of one process's own commits, so that a
// component that changes its table in place (gateway) can tell whether
// anything but this process committed since its last load.
package nftgen

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/arkgw/arkgw/nsdo"
)

// Read returns the nftables ruleset generation of ns (the zero NS = current):
// the kernel increments it by one with every committed nftables
// transaction in the netns, whoever makes it. google/nftables v0.3.0 has
// no call for NFT_MSG_GETGEN, so the request is made here.
func Read(ns nsdo.NS) (uint32, error) {
	cfg := &netlink.Config{NetNS: ns.NetlinkNetNS()}
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, cfg)
	if err != nil {
		return 0, fmt.Errorf("nftables generation: dial: %w", err)
	}
	defer c.Close()
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN),
			Flags: netlink.Request,
		},
		// nfgenmsg: family, version, resource id.
		Data: []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	})
	if err != nil {
		return 0, fmt.Errorf("nftables generation: %w", err)
	}
	for _, m := range msgs {
		if m.Header.Type != netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWGEN) || len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return 0, fmt.Errorf("nftables generation: %w", err)
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				return ad.Uint32(), nil
			}
		}
		if err := ad.Err(); err != nil {
			return 0, fmt.Errorf("nftables generation: %w", err)
		}
	}
	return 0, errors.New("nftables generation: no NFTA_GEN_ID in the kernel's answer")
}

// Ledger records the nftables commits of one process in one netns. Every
// commit of the process to nftables in that netns goes through Commit or
// Replace; then Clean tells whether any other commit happened since the
// last Replace. The zero value is not usable: see NewLedger. Safe for
// concurrent use; commits through one Ledger are serialised.
type Ledger struct {
	ns nsdo.NS

	mu    sync.Mutex
	gen   uint32 // generation after the last commit through the ledger
	clean bool   // no foreign commit since the last Replace
}

// NewLedger returns a ledger for ns (not clean until the first Replace).
func NewLedger(ns nsdo.NS) *Ledger { return &Ledger{ns: ns} }

// Commit runs commit, one nftables transaction of this process, and
// records it. A generation that moved before it, or by more than this
// one commit, means someone else committed: the ledger is no longer clean.
func (l *Ledger) Commit(commit func() error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, err := l.commitLocked(commit, false)
	return err
}

// CommitIfClean runs commit only if nothing but this process committed
// since the last Replace (ok reports whether it ran). A foreign commit in
// the moment between the check and commit is seen by the next call.
func (l *Ledger) CommitIfClean(commit func() error) (ok bool, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.clean {
		return false, nil
	}
	if gen, err := Read(l.ns); err != nil || gen != l.gen {
		l.clean = false
		return false, nil
	}
	_, err = l.commitLocked(commit, false)
	return true, err
}

// Replace runs commit, a transaction that makes the caller's table whole
// again (what others did to it is gone), and marks the ledger clean if no
// one else committed meanwhile.
func (l *Ledger) Replace(commit func() error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.clean = true
	_, err := l.commitLocked(commit, true)
	if err != nil {
		l.clean = false
	}
	return err
}

// commitLocked runs commit between two readings of the generation. For a
// replace, earlier foreign commits do not matter, only one in between.
func (l *Ledger) commitLocked(commit func() error, replace bool) (before uint32, err error) {
	before, berr := Read(l.ns)
	if replace {
		l.gen = before
	}
	err = commit()
	after, aerr := Read(l.ns)
	// A commit moves the generation by one; one that changes nothing (a
	// table added that exists) and a refused one do not move it.
	moved := after - before
	if berr != nil || aerr != nil || (before != l.gen && !replace) || moved > 1 || (err != nil && moved != 0) {
		l.clean = false
	}
	l.gen = after
	return before, err
}

// Clean reports whether every commit in the netns since the last Replace
// went through the ledger.
func (l *Ledger) Clean() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	gen, err := Read(l.ns)
	return err == nil && l.clean && gen == l.gen
}
