package netlab

import (
	"fmt"
	"strings"

	"github.com/miekg/dns"
)

// zoneText is the fake Internet's authoritative data. Names are lowercase
// and fully qualified.
func zoneText() []string {
	rr := []string{
		"arkgw.test. 300 IN SOA ns.arkgw.test. hostmaster.arkgw.test. 1 3600 600 86400 60",
		"arkgw.test. 300 IN NS ns.arkgw.test.",
		"arkgw.test. 300 IN MX 10 mail.arkgw.test.",
		"arkgw.test. 300 IN TXT \"v=spf1 -all\"",
		"ns.arkgw.test. 300 IN A " + DNS4,
		"ns.arkgw.test. 300 IN AAAA " + DNS6,
		"www.arkgw.test. 300 IN A " + WWW4,
		"www.arkgw.test. 300 IN AAAA " + WWW6,
		"echo.arkgw.test. 300 IN A " + Echo4,
		"echo.arkgw.test. 300 IN AAAA " + Echo6,
		"mail.arkgw.test. 300 IN A " + Mail4,
		"other.arkgw.test. 300 IN A " + Other4,
		"other.arkgw.test. 300 IN AAAA " + Other6,
		"v4only.arkgw.test. 300 IN A 198.51.100.4",
		"v6only.arkgw.test. 300 IN AAAA 2001:db8:100::6",
		"txt.arkgw.test. 300 IN TXT \"hello from netlab\"",
		"_echo._tcp.arkgw.test. 300 IN SRV 0 0 7 echo.arkgw.test.",
		"_http._tcp.arkgw.test. 300 IN SRV 10 5 80 www.arkgw.test.",
		"a.arkgw.test. 300 IN CNAME b.arkgw.test.",
		"b.arkgw.test. 300 IN CNAME www.arkgw.test.",
		"alias-out.arkgw.test. 300 IN CNAME www.denied.test.",
		"dangling.arkgw.test. 300 IN CNAME nothing.arkgw.test.",
		"*.wild.arkgw.test. 300 IN A " + Wildcard4,

		"denied.test. 300 IN SOA ns.arkgw.test. hostmaster.arkgw.test. 1 3600 600 86400 60",
		"denied.test. 300 IN NS ns.arkgw.test.",
		"www.denied.test. 300 IN A " + Denied4,
		"www.denied.test. 300 IN AAAA " + Denied6,
		"alias-in.denied.test. 300 IN CNAME www.arkgw.test.",

		"100.51.198.in-addr.arpa. 300 IN SOA ns.arkgw.test. hostmaster.arkgw.test. 1 3600 600 86400 60",
		"113.0.203.in-addr.arpa. 300 IN SOA ns.arkgw.test. hostmaster.arkgw.test. 1 3600 600 86400 60",
		"0.0.1.0.8.b.d.0.1.0.0.2.ip6.arpa. 300 IN SOA ns.arkgw.test. hostmaster.arkgw.test. 1 3600 600 86400 60",
	}
	for i := 0; i < 16; i++ {
		rr = append(rr, fmt.Sprintf("many.arkgw.test. 300 IN A 198.51.100.%d", 200+i))
	}
	ptr := map[string]string{WWW4: "www.arkgw.test.", WWW6: "www.arkgw.test.", DNS4: "ns.arkgw.test.",
		DNS6: "ns.arkgw.test.", Echo4: "echo.arkgw.test.", Denied4: "www.denied.test."}
	for ip, name := range ptr {
		rev, err := dns.ReverseAddr(ip)
		if err != nil {
			panic(err)
		}
		rr = append(rr, rev+" 300 IN PTR "+name)
	}
	// big: BigTXTSize bytes of TXT in strings of 200.
	var big strings.Builder
	big.WriteString(BigName + " 300 IN TXT")
	for i := 0; i < BigTXTSize/200; i++ {
		fmt.Fprintf(&big, " \"%03d%s\"", i, strings.Repeat("x", 197))
	}
	rr = append(rr, big.String())
	return rr
}

// zoneDB is an authoritative answerer for a few zones.
type zoneDB struct {
	apex  []string                   // zone apexes, lowercase
	names map[string][]dns.RR        // owner -> records
	soa   map[string]dns.RR          // apex -> SOA
	types map[string]map[uint16]bool // owner -> present types (for NODATA)
}

func newZoneDB() *zoneDB {
	z := &zoneDB{names: map[string][]dns.RR{}, soa: map[string]dns.RR{}, types: map[string]map[uint16]bool{}}
	for _, s := range zoneText() {
		r, err := dns.NewRR(s)
		if err != nil {
			panic(fmt.Sprintf("netlab zone: %q: %v", s, err))
		}
		name := strings.ToLower(r.Header().Name)
		if r.Header().Rrtype == dns.TypeSOA {
			z.apex = append(z.apex, name)
			z.soa[name] = r
		}
		z.names[name] = append(z.names[name], r)
		if z.types[name] == nil {
			z.types[name] = map[uint16]bool{}
		}
		z.types[name][r.Header().Rrtype] = true
	}
	return z
}

// zoneOf returns the apex of the longest zone containing name, or "".
func (z *zoneDB) zoneOf(name string) string {
	best := ""
	for _, a := range z.apex {
		if dns.IsSubDomain(a, name) && len(a) > len(best) {
			best = a
		}
	}
	return best
}

// lookup returns the records owned by name, synthesizing them from the
// wildcard "*.<closest encloser>" when name has none (RFC 4592, simplified).
func (z *zoneDB) lookup(name string) []dns.RR {
	if rrs, ok := z.names[name]; ok {
		return rrs
	}
	if z.hasDescendant(name) {
		return nil // empty non-terminal: no wildcard applies
	}
	labels := dns.SplitDomainName(name)
	for i := 1; i < len(labels); i++ {
		parent := strings.Join(labels[i:], ".") + "."
		if wild, ok := z.names["*."+parent]; ok {
			out := make([]dns.RR, 0, len(wild))
			for _, r := range wild {
				c := dns.Copy(r)
				c.Header().Name = name
				out = append(out, c)
			}
			return out
		}
		if _, ok := z.names[parent]; ok || z.hasDescendant(parent) {
			return nil // the closest encloser has no wildcard
		}
	}
	return nil
}

// answer fills m (a reply to q) authoritatively: CNAME chains are followed
// through all zones served here, NXDOMAIN/NODATA carry the SOA, names
// outside the zones are REFUSED.
func (z *zoneDB) answer(q dns.Question, m *dns.Msg) {
	name := strings.ToLower(q.Name)
	if z.zoneOf(name) == "" {
		m.Rcode = dns.RcodeRefused
		return
	}
	m.Authoritative = true
	for hop := 0; hop < 8; hop++ {
		apex := z.zoneOf(name)
		if apex == "" {
			return // chain left our zones: the resolver continues elsewhere
		}
		rrs := z.lookup(name)
		if len(rrs) == 0 {
			if !z.hasDescendant(name) {
				m.Rcode = dns.RcodeNameError
			}
			m.Ns = append(m.Ns, z.soa[apex])
			return
		}
		var cname *dns.CNAME
		matched := false
		for _, r := range rrs {
			t := r.Header().Rrtype
			if t == q.Qtype || q.Qtype == dns.TypeANY {
				m.Answer = append(m.Answer, r)
				matched = true
			}
			if c, ok := r.(*dns.CNAME); ok {
				cname = c
			}
		}
		if matched {
			return
		}
		if cname == nil {
			m.Ns = append(m.Ns, z.soa[apex])
			return
		}
		m.Answer = append(m.Answer, cname)
		name = strings.ToLower(cname.Target)
	}
}

// hasDescendant reports whether some owner lies below name (an empty
// non-terminal answers NODATA, not NXDOMAIN).
func (z *zoneDB) hasDescendant(name string) bool {
	for n := range z.names {
		if n != name && dns.IsSubDomain(name, n) {
			return true
		}
	}
	return false
}
