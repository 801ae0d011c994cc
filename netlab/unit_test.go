package netlab

import (
	"os"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func TestParseName(t *testing.T) {
	for _, tc := range []struct {
		name string
		pid  int
		ok   bool
	}{
		{"nl123xabc123-node", 123, true},
		{"nl1x0-a-b", 1, true},
		{"nl123xabc-", 0, false},
		{"nl0xabc-node", 0, false},
		{"nlxabc-node", 0, false},
		{"nl12a3xabc-node", 0, false},
		{"arkabc", 0, false},
		{"nl123xABC-node", 0, false},
		{"nl99999999999999999999999xa-b", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pid, ok := parseName(tc.name)
			if pid != tc.pid || ok != tc.ok {
				t.Errorf("parseName(%q) = %d, %v; want %d, %v", tc.name, pid, ok, tc.pid, tc.ok)
			}
		})
	}
	// Our own names parse back to our pid.
	if pid, ok := parseName(nsName(randID(6), "node")); !ok || pid != os.Getpid() {
		t.Errorf("own name: %d %v", pid, ok)
	}
}

func TestInterfaceAndSysctlNames(t *testing.T) {
	if got := defaultIf("a-very-long-host-name"); len(got) != 15 || got != "v-a-very-long-h" {
		t.Errorf("defaultIf = %q", got)
	}
	for in, want := range map[string]string{
		"net.ipv4.ip_forward":                 "net/ipv4/ip_forward",
		"net/ipv6/conf/eth0.100/accept_dad":   "net/ipv6/conf/eth0.100/accept_dad",
		"/proc/sys/net/ipv4/conf/all/forward": "net/ipv4/conf/all/forward",
	} {
		if got := sysctlPath(in); got != want {
			t.Errorf("sysctlPath(%q) = %q, want %q", in, got, want)
		}
	}
	for _, n := range []string{"node", "exp-1", "a.b_c"} {
		if !validHostName(n) {
			t.Errorf("%q rejected", n)
		}
	}
	for _, n := range []string{"", "a/b", "a b", strings.Repeat("x", 41)} {
		if validHostName(n) {
			t.Errorf("%q accepted", n)
		}
	}
}

func TestZone(t *testing.T) {
	z := newZoneDB()
	rev80, _ := dns.ReverseAddr(WWW6)
	for _, tc := range []struct {
		name   string
		qtype  uint16
		rcode  int
		answer []string // "owner TYPE" of each answer record, in order
		ns     int      // authority records (SOA for negative answers)
	}{
		{"www.arkgw.test.", dns.TypeA, dns.RcodeSuccess, []string{"www.arkgw.test. A"}, 0},
		{"WWW.Arkgw.Test.", dns.TypeAAAA, dns.RcodeSuccess, []string{"www.arkgw.test. AAAA"}, 0},
		{"arkgw.test.", dns.TypeMX, dns.RcodeSuccess, []string{"arkgw.test. MX"}, 0},
		{"_echo._tcp.arkgw.test.", dns.TypeSRV, dns.RcodeSuccess, []string{"_echo._tcp.arkgw.test. SRV"}, 0},
		{"txt.arkgw.test.", dns.TypeTXT, dns.RcodeSuccess, []string{"txt.arkgw.test. TXT"}, 0},
		{rev80, dns.TypePTR, dns.RcodeSuccess, []string{rev80 + " PTR"}, 0},
		{"80.100.51.198.in-addr.arpa.", dns.TypePTR, dns.RcodeSuccess, []string{"80.100.51.198.in-addr.arpa. PTR"}, 0},
		{"a.arkgw.test.", dns.TypeA, dns.RcodeSuccess, []string{"a.arkgw.test. CNAME", "b.arkgw.test. CNAME", "www.arkgw.test. A"}, 0},
		{"a.arkgw.test.", dns.TypeCNAME, dns.RcodeSuccess, []string{"a.arkgw.test. CNAME"}, 0},
		{"alias-out.arkgw.test.", dns.TypeAAAA, dns.RcodeSuccess, []string{"alias-out.arkgw.test. CNAME", "www.denied.test. AAAA"}, 0},
		{"alias-in.denied.test.", dns.TypeA, dns.RcodeSuccess, []string{"alias-in.denied.test. CNAME", "www.arkgw.test. A"}, 0},
		{"dangling.arkgw.test.", dns.TypeA, dns.RcodeNameError, []string{"dangling.arkgw.test. CNAME"}, 1},
		{"www.denied.test.", dns.TypeA, dns.RcodeSuccess, []string{"www.denied.test. A"}, 0},
		{"x.y.wild.arkgw.test.", dns.TypeA, dns.RcodeSuccess, []string{"x.y.wild.arkgw.test. A"}, 0},
		{"v4only.arkgw.test.", dns.TypeAAAA, dns.RcodeSuccess, nil, 1},
		{"_tcp.arkgw.test.", dns.TypeA, dns.RcodeSuccess, nil, 1}, // empty non-terminal
		{"nope.arkgw.test.", dns.TypeA, dns.RcodeNameError, nil, 1},
		{"nope.denied.test.", dns.TypeA, dns.RcodeNameError, nil, 1},
		{"example.com.", dns.TypeA, dns.RcodeRefused, nil, 0},
		{".", dns.TypeNS, dns.RcodeRefused, nil, 0},
	} {
		t.Run(tc.name+"/"+dns.TypeToString[tc.qtype], func(t *testing.T) {
			m := new(dns.Msg)
			q := dns.Question{Name: tc.name, Qtype: tc.qtype, Qclass: dns.ClassINET}
			m.SetQuestion(tc.name, tc.qtype)
			r := new(dns.Msg)
			r.SetReply(m)
			z.answer(q, r)
			var got []string
			for _, a := range r.Answer {
				got = append(got, a.Header().Name+" "+dns.TypeToString[a.Header().Rrtype])
			}
			if r.Rcode != tc.rcode || strings.Join(got, ",") != strings.Join(tc.answer, ",") || len(r.Ns) != tc.ns {
				t.Errorf("rcode %s answer %v ns %d; want %s %v %d", dns.RcodeToString[r.Rcode], got, len(r.Ns),
					dns.RcodeToString[tc.rcode], tc.answer, tc.ns)
			}
		})
	}
}

func TestZoneBigTXT(t *testing.T) {
	z := newZoneDB()
	m := new(dns.Msg)
	m.SetQuestion(BigName, dns.TypeTXT)
	r := new(dns.Msg)
	r.SetReply(m)
	z.answer(m.Question[0], r)
	if len(r.Answer) != 1 {
		t.Fatalf("answers: %v", r.Answer)
	}
	total := 0
	for _, s := range r.Answer[0].(*dns.TXT).Txt {
		total += len(s)
	}
	if total != BigTXTSize || r.Len() <= 1232 {
		t.Errorf("TXT payload %d bytes, message %d bytes; want %d and > 1232", total, r.Len(), BigTXTSize)
	}
	r.Truncate(1232)
	if !r.Truncated {
		t.Error("not truncated at 1232")
	}
}
