package netlab

import (
	"testing"
	"time"
)

// The standard world: the node (the arkgw host) with uplink eth0 behind its
// default router, which is the fake Internet host "inet".
const (
	NodeUplinkIf = "eth0" // the node's uplink interface
	InetIf       = "eth0" // inet's interface towards the node

	NodeUplink4    = "192.168.77.2" // node's own uplink address (masquerade source)
	NodeUplink6    = "fd77::2"
	DefaultRouter4 = "192.168.77.1" // the node's default router (on inet)
	DefaultRouter6 = "fd77::1"
	UplinkNet4     = "192.168.77.0/24"
	UplinkNet6     = "fd77::/64"

	// Prefixes the fake Internet answers on every address (local routes on
	// inet's lo), so any destination in them replies to ping, TCP and UDP.
	InetPrefix4a = "198.51.100.0/24"
	InetPrefix4b = "203.0.113.0/24"
	InetPrefix6  = "2001:db8:100::/48"

	DNS4      = "198.51.100.53" // authoritative DNS, UDP+TCP port 53
	DNS6      = "2001:db8:100::53"
	WWW4      = "198.51.100.80" // www.arkgw.test (HTTP on port 80 answers on every address)
	WWW6      = "2001:db8:100::80"
	Echo4     = "198.51.100.7" // echo.arkgw.test (echo on port 7 answers on every address)
	Echo6     = "2001:db8:100::7"
	Mail4     = "198.51.100.25" // mail.arkgw.test
	Denied4   = "203.0.113.80"  // www.denied.test
	Denied6   = "2001:db8:100:dead::80"
	Other4    = "203.0.113.10" // other.arkgw.test: a second allowed-looking host
	Other6    = "2001:db8:100:1::10"
	Wildcard4 = "198.51.100.99" // *.wild.arkgw.test

	// Experiment pools, routed from inet back via the node so replies to
	// un-NATed (for example spoofed) sources find their way.
	Pool4 = "10.250.0.0/16"
	Pool6 = "fd00:a4c::/48"

	Zone       = "arkgw.test."  // the test zone
	DeniedZone = "denied.test." // names a policy can deny
	BigName    = "big.arkgw.test."
	// BigTXTSize is the total TXT payload of BigName (> 1232 bytes: UDP
	// answers are truncated with TC and clients retry over TCP).
	BigTXTSize = 2000

	DNSPort  = 53
	EchoPort = 7
	HTTPPort = 80
)

// World is the standard topology: Node (Forward on, default routes via
// inet) linked by eth0 to Inet, the fake Internet with DNS, echo and HTTP
// services whose connections are logged (see Log, Seen).
type World struct {
	*Lab
	Node, Inet *Host
	inet       *Internet
}

// WorldTopology is the topology NewWorld builds (without the services).
func WorldTopology() Topology {
	return Topology{
		Hosts: []HostSpec{
			{Name: "node", Forward: true, Routes: []RouteSpec{
				{Dst: "default", Via: DefaultRouter4},
				{Dst: "default6", Via: DefaultRouter6},
			}},
			{Name: "inet", Forward: true,
				LocalPrefixes: []string{InetPrefix4a, InetPrefix4b, InetPrefix6},
				Routes: []RouteSpec{
					{Dst: Pool4, Via: NodeUplink4},
					{Dst: Pool6, Via: NodeUplink6},
				}},
		},
		Links: []LinkSpec{{
			A: "node", AIf: NodeUplinkIf, AAddrs: []string{NodeUplink4 + "/24", NodeUplink6 + "/64"},
			B: "inet", BIf: InetIf, BAddrs: []string{DefaultRouter4 + "/24", DefaultRouter6 + "/64"},
		}},
	}
}

// NewWorld builds the standard world and starts the fake Internet's
// services in inet. Everything is removed at t's cleanup.
func NewWorld(t testing.TB) *World {
	t.Helper()
	return newWorld(t, WorldTopology())
}

func newWorld(t testing.TB, topo Topology) *World {
	t.Helper()
	l := Build(t, topo)
	w := &World{Lab: l, Node: l.Host("node"), Inet: l.Host("inet")}
	in, err := StartInternet(w.Inet)
	if err != nil {
		t.Fatalf("netlab: start fake internet: %v", err)
	}
	w.inet = in
	return w
}

// Internet returns the running fake Internet services.
func (w *World) Internet() *Internet { return w.inet }

// Log returns a copy of the services' connection/datagram log.
func (w *World) Log() []Record { return w.inet.Log() }

// Seen reports whether a logged record satisfies cond.
func (w *World) Seen(cond func(Record) bool) bool { return w.inet.Seen(cond) }

// WaitSeen waits up to timeout for a logged record satisfying cond.
func (w *World) WaitSeen(cond func(Record) bool, timeout time.Duration) bool {
	return w.inet.WaitSeen(cond, timeout)
}
