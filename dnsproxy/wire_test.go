package dnsproxy

import (
	"bytes"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// FuzzParseQuery checks the fast query parser against miekg/dns: whatever
// both accept must be read the same way.
func FuzzParseQuery(f *testing.F) {
	for _, s := range []struct {
		name string
		edns bool
	}{{"www.example.org.", false}, {"a\\.b.example.", true}, {".", true}} {
		m := new(dns.Msg)
		m.SetQuestion(s.name, dns.TypeAAAA)
		if s.edns {
			m.SetEdns0(4096, true)
		}
		b, _ := m.Pack()
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		q, ok := parseQuery(raw)
		_, _ = walkAnswer(raw, true)
		if !ok {
			return
		}
		m := new(dns.Msg)
		if m.Unpack(raw) != nil {
			return
		}
		if len(m.Question) != 1 || m.Opcode != dns.OpcodeQuery || m.Response {
			t.Fatalf("fast parser took %v", m)
		}
		var nb [256]byte
		n, err := dns.PackDomainName(m.Question[0].Name, nb[:], 0, nil, false)
		if err != nil || !bytes.Equal(nb[:n], q.question[:q.nameLen]) || m.Question[0].Qtype != q.qtype || m.Question[0].Qclass != q.qclass {
			t.Fatalf("question differs: %v vs %q", m.Question, q.question)
		}
		o := m.IsEdns0()
		if (o != nil) != q.hasOPT || (o != nil && (o.Do() != q.do || o.UDPSize() != q.udpSize)) {
			t.Fatalf("EDNS differs")
		}
	})
}

// Messages the fast parser declines go the general way and still work.
func TestGeneralPath(t *testing.T) {
	up := startUpstream(t, func(w dns.ResponseWriter, r *dns.Msg) *dns.Msg {
		m := defaultAnswer(r)
		if o := m.IsEdns0(); o != nil { // an option: answers take the general path too
			o.Option = append(o.Option, &dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeStaleAnswer, ExtraText: "test"})
			m.Answer[0].Header().Ttl = 60
		}
		return m
	})
	p := startProxy(t, Config{Names: []string{"example.org"}, Upstreams: []string{up.addr}})
	c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
	ask := func(name string, edit func(m *dns.Msg)) *dns.Msg {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		m.SetEdns0(1232, false)
		edit(m)
		if _, ok := parseQuery(mustPack(t, m)); ok {
			t.Fatalf("query takes the fast path; the test wants the general one")
		}
		r, _, err := c.Exchange(m, p.Addrs()[0].String())
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	extra := func(m *dns.Msg) {
		m.Extra = append([]dns.RR{&dns.TXT{Hdr: dns.RR_Header{Name: "x.", Rrtype: dns.TypeTXT, Class: dns.ClassINET}, Txt: []string{"x"}}}, m.Extra...)
	}
	r := ask("Www.Example.org.", extra)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Question[0].Name != "Www.Example.org." {
		t.Fatalf("allowed via general path: %v", r)
	}
	if o := r.IsEdns0(); o == nil || len(o.Option) != 1 || o.UDPSize() != serverUDPSize {
		t.Errorf("upstream extended error not passed through, or our size not set: %v", r)
	}
	r = ask("denied.test.", extra)
	if r.Rcode != dns.RcodeRefused || up.queries.Load() != 1 {
		t.Errorf("denied via general path: %v", r)
	}
	r = ask("example.org.", func(m *dns.Msg) { m.IsEdns0().SetVersion(1) })
	if r.Rcode != dns.RcodeBadVers {
		t.Errorf("EDNS version 1: %s", dns.RcodeToString[r.Rcode])
	}
	// Cached (TTL 60) general-path answer served to a fast-path query with
	// the same key.
	m := new(dns.Msg)
	m.SetQuestion("www.example.org.", dns.TypeA)
	m.SetEdns0(1232, false)
	r, _, err := c.Exchange(m, p.Addrs()[0].String())
	if err != nil || len(r.Answer) != 1 || p.Stats().CacheHits != 1 || r.Question[0].Name != "www.example.org." {
		t.Errorf("cache hit: %v %v %+v", r, err, p.Stats())
	}
}

func mustPack(t *testing.T, m *dns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}
