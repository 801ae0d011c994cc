package dnsproxy

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// chainAnswer answers like a recursive resolver that followed the chains
// of the zone below: alias.example.org -> cn.blocked.test -> A;
// in.example.org -> www.example.org -> A; dn.example.org DNAME to
// blocked.test; mx.example.org MX with glue for a denied and an allowed
// host.
func chainAnswer(_ dns.ResponseWriter, r *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(r)
	q := r.Question[0]
	hdr := func(name string, t uint16) dns.RR_Header {
		return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: 60}
	}
	a := func(name string) dns.RR { return &dns.A{Hdr: hdr(name, dns.TypeA), A: net.IPv4(198, 51, 100, 7)} }
	cname := func(name, target string) dns.RR { return &dns.CNAME{Hdr: hdr(name, dns.TypeCNAME), Target: target} }
	switch strings.ToLower(q.Name) {
	case "alias.example.org.":
		m.Answer = []dns.RR{cname(q.Name, "cn.blocked.test."), a("cn.blocked.test.")}
	case "long.example.org.":
		m.Answer = []dns.RR{cname(q.Name, "x.example.org."), cname("x.example.org.", "cn.BLOCKED.test."), a("cn.BLOCKED.test.")}
	case "in.example.org.":
		m.Answer = []dns.RR{cname(q.Name, "www.example.org."), a("www.example.org.")}
	case "host.dn.example.org.":
		m.Answer = []dns.RR{&dns.DNAME{Hdr: hdr("dn.example.org.", dns.TypeDNAME), Target: "blocked.test."},
			cname(q.Name, "host.blocked.test."), a("host.blocked.test.")}
	case "mx.example.org.":
		m.Answer = []dns.RR{&dns.MX{Hdr: hdr(q.Name, dns.TypeMX), Preference: 10, Mx: "mail.blocked.test."},
			&dns.MX{Hdr: hdr(q.Name, dns.TypeMX), Preference: 20, Mx: "mail.example.org."}}
		m.Extra = []dns.RR{a("mail.blocked.test."), a("mail.example.org.")}
	}
	if o := r.IsEdns0(); o != nil {
		m.SetEdns0(1232, o.Do())
	}
	return m
}

// Every name in an answer is checked against the allowlist: a CNAME or
// DNAME chain into a denied name is refused (NXDOMAIN when so configured)
// with an alert naming both names; glue for denied names is stripped;
// chains inside the allowlist and proxies allowing any name are untouched.
func TestAnswerNamesChecked(t *testing.T) {
	for _, nx := range []bool{false, true} {
		up := startUpstream(t, chainAnswer)
		al := &alertLog{}
		p := startProxy(t, Config{Names: []string{"example.org"}, Upstreams: []string{up.addr}, Alerts: al, DenyNXDomain: nx})
		deny := dns.RcodeRefused
		if nx {
			deny = dns.RcodeNameError
		}
		for _, network := range []string{"udp", "tcp"} {
			for _, tc := range []struct {
				name   string
				qtype  uint16
				rcode  int
				answer int
				extra  int // without OPT
			}{
				{"alias.example.org.", dns.TypeA, deny, 0, 0},
				{"ALIAS.Example.org.", dns.TypeA, deny, 0, 0},
				{"long.example.org.", dns.TypeA, deny, 0, 0},
				{"host.dn.example.org.", dns.TypeA, deny, 0, 0},
				{"in.example.org.", dns.TypeA, dns.RcodeSuccess, 2, 0},
				{"mx.example.org.", dns.TypeMX, dns.RcodeSuccess, 2, 1},
			} {
				r := query(t, p, network, tc.name, tc.qtype, 1232)
				extra := 0
				for _, rr := range r.Extra {
					if _, ok := rr.(*dns.OPT); !ok {
						extra++
						if !strings.HasSuffix(rr.Header().Name, "example.org.") {
							t.Errorf("%s: denied glue %v kept", tc.name, rr)
						}
					}
				}
				if r.Rcode != tc.rcode || len(r.Answer) != tc.answer || extra != tc.extra {
					t.Errorf("nx=%v %s %s: rcode %s, %d answers, %d extra; want %s, %d, %d:\n%v", nx, network, tc.name,
						dns.RcodeToString[r.Rcode], len(r.Answer), extra, dns.RcodeToString[tc.rcode], tc.answer, tc.extra, r)
				}
			}
		}
		deadline := time.Now().Add(3 * time.Second)
		for len(al.records()) < 2 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		recs := al.records()
		// cn.blocked.test A (long.example.org's chain to it is a repeat
		// within AlertInterval), the DNAME target blocked.test A.
		if len(recs) != 2 || recs[1].Name != "blocked.test." {
			t.Errorf("alerts %+v", recs)
		}
		if len(recs) > 0 && (recs[0].Name != "cn.blocked.test." || !strings.Contains(recs[0].Message, "alias.example.org")) {
			t.Errorf("first alert %+v", recs[0])
		}
	}
	// With every name allowed, the answer passes unchanged.
	up := startUpstream(t, chainAnswer)
	p := startProxy(t, Config{Any: true, Upstreams: []string{up.addr}})
	if r := query(t, p, "udp", "alias.example.org.", dns.TypeA, 1232); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 2 {
		t.Errorf("any: %v", r)
	}
}
