// Package alert defines the violation alert record shared by every producer
// (the NFLOG alerter, the DNS proxy, bandwidth accounting) and the Sink they
// write to, plus the NFLOG prefix format that ties a kernel drop to an
// experiment and a rule.
package alert

import (
	"fmt"
	"strings"
	"time"
)

// Kinds of alert.
const (
	KindPacket   = "packet"   // a packet dropped by the gateway
	KindDNS      = "dns"      // a name refused by the DNS proxy
	KindQuota    = "quota"    // daily budget thresholds
	KindOverrun  = "overrun"  // the alert path itself lost or dropped records
	KindEnforced = "enforced" // arkgw stopped an experiment because of alerts
	KindFlood    = "flood"    // an experiment's violations exceed what is alerted one by one: they are summarised
	// KindFault (fault.go): the daemon's own machinery failed.
)

// Record is one alert, as written (one JSON object a line) to the alerts file.
// A record aggregates Packets packets seen between FirstSeen and LastSeen.
type Record struct {
	Time       time.Time `json:"time"`
	Node       string    `json:"node,omitempty"`
	Experiment string    `json:"experiment"`
	Title      string    `json:"title,omitempty"`
	Contacts   []string  `json:"contacts,omitempty"` // "Name <email>"
	Kind       string    `json:"kind"`
	Rule       string    `json:"rule"`

	Proto    string `json:"proto,omitempty"` // tcp, udp, icmp, icmpv6, gre, proto-N
	Src      string `json:"src,omitempty"`
	Dst      string `json:"dst,omitempty"`
	SrcPort  int    `json:"sport,omitempty"`
	DstPort  int    `json:"dport,omitempty"`
	ICMPType *int   `json:"icmp_type,omitempty"`
	ICMPCode *int   `json:"icmp_code,omitempty"`

	// DNS refusals.
	Name  string `json:"name,omitempty"`
	QType string `json:"qtype,omitempty"`

	Packets   uint64    `json:"packets,omitempty"`
	Bytes     uint64    `json:"bytes,omitempty"`
	FirstSeen time.Time `json:"first_seen,omitempty"`
	LastSeen  time.Time `json:"last_seen,omitempty"`
	// Occurrences counts how often a fault of the daemon's own (KindFault,
	// KindOverrun from Faults) happened between FirstSeen and LastSeen.
	Occurrences uint64 `json:"occurrences,omitempty"`

	// Attribution, when a live socket in the experiment owns the flow.
	PID     int    `json:"pid,omitempty"`
	Command string `json:"command,omitempty"`

	// Message says in words what happened and what to do about it.
	Message string `json:"message,omitempty"`
}

// Sink receives alerts. Emit must not block the caller for long: producers
// sit on packet and query paths. Implementations are safe for concurrent use.
type Sink interface {
	Emit(Record)
}

// SinkFunc adapts a function to Sink.
type SinkFunc func(Record)

// Emit calls f(r).
func (f SinkFunc) Emit(r Record) { f(r) }

// Discard is a Sink that drops everything.
var Discard Sink = SinkFunc(func(Record) {})

// PrefixTag starts every NFLOG prefix arkgw writes.
const PrefixTag = "ark"

// LogPrefix is the NFLOG prefix for drops of experiment id by rule:
// "ark:<id>:<rule>". The kernel limits prefixes to 127 bytes; ids are at most
// 10 characters and rule names short.
func LogPrefix(id, rule string) string {
	return PrefixTag + ":" + id + ":" + rule
}

// ParseLogPrefix splits an NFLOG prefix made by LogPrefix.
func ParseLogPrefix(p string) (id, rule string, err error) {
	p = strings.TrimRight(p, "\x00 ")
	parts := strings.SplitN(p, ":", 3)
	if len(parts) != 3 || parts[0] != PrefixTag || parts[1] == "" || parts[2] == "" {
		return "", "", fmt.Errorf("nflog prefix %q: not an arkgw prefix (want %s:<id>:<rule>)", p, PrefixTag)
	}
	return parts[1], parts[2], nil
}
