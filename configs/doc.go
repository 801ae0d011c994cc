// Package configs is arkgw's policy model: the node owner's policy
// (/etc/arkgw/node.toml, type NodePolicy), the experimenter's manifest
// (type Manifest), their TOML parsing with unknown keys rejected, validation
// with messages that name the file, the field, the index and the fix, and
// admission: Admit checks a manifest against a node policy, returns one
// Conflict per request that exceeds the owner's allowance, and computes the
// Effective policy the gateway, DNS proxy and sandbox enforce.
//
// The file formats are described field by field in POLICY.md (shared docs)
// and in the commented default node policy configs/node.toml.
//
// Everything here is pure Go and deterministic: no kernel, no network. The
// only file system access is in LoadNode and LoadManifest.
//
// Decisions worth knowing:
//   - Coverage is set arithmetic on (prefix x port range) boxes: a requested
//     TCP/UDP entry is admitted when every (address, port) of it, minus the
//     reserved ranges, lies in the union of the owner's entries, the
//     any-destination port lists and (port 53) dns_servers_any.
//   - Reserved destinations (RFC 1918, loopback-ish, link-local, multicast
//     and their IPv6 twins) are removed from the effective policy, except the
//     node's default routers (Env.DefaultRouters). An entry that lies entirely
//     in reserved ranges is a conflict, since it could never be used.
//   - The back channel is one TCP endpoint the experiment may always reach,
//     independent of the tcp allowlist, but only when the node permits back
//     channels ([permit] back_channel, default true), and it stays inside
//     all_packets when that is set and outside the reserved ranges.
//   - Absent manifest limits take the node's value; an explicit
//     max_mb_per_day = 0 ("no daily maximum") conflicts with an owner maximum.
package configs
