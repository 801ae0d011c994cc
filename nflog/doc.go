// Package nflog is arkgw's violation alerter: it reads the NFLOG group the
// gateway logs its drops to (github.com/florianl/go-nflog/v2), decodes each
// packet with gopacket, maps the prefix "ark:<id>:<rule>" to the experiment
// and the rule, and turns the packets into alert records: one at once for the
// first packet of a (experiment, rule, destination, protocol, port) key, then
// one aggregate with exact counts per window.
//
// The kernel path is never blocked: the netlink reader only decodes and
// hands events to a bounded queue; anything lost on the way (NFLOG sequence
// gaps, socket overruns, a full queue, the aggregate cap) is counted and
// itself alerted as alert.KindOverrun, so counts are never lost silently.
//
// The pure parts (Decoder, Aggregator, Enforcer) are table-tested; Alerter
// wires them to the kernel.
package nflog
