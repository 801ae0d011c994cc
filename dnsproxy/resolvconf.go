package dnsproxy

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/miekg/dns"
)

// DefaultResolvConf is where the host's resolvers are read from when the node
// policy names none.
const DefaultResolvConf = "/etc/resolv.conf"

// UpstreamsFromResolvConf returns the nameservers of a resolv.conf file as
// "ip:port" strings. Loopback resolvers (systemd-resolved's 127.0.0.53) are
// kept: the proxy's upstream sockets live in the node's namespace, where
// they are reachable.
func UpstreamsFromResolvConf(path string) ([]string, error) {
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("read upstream resolvers from %s: %w", path, err)
	}
	var out []string
	for _, s := range cc.Servers {
		if _, err := netip.ParseAddr(s); err != nil {
			continue // e.g. a hostname: resolv.conf only allows addresses
		}
		out = append(out, net.JoinHostPort(s, cc.Port))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("read upstream resolvers from %s: no nameserver lines (add one, or set the upstreams in the node policy)", path)
	}
	return out, nil
}
