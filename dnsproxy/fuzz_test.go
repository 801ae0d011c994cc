package dnsproxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// fuzzExchanger records what would be sent upstream and answers with the
// fuzzer's bytes (with the query's ID, so they reach the answer path).
type fuzzExchanger struct {
	t     *testing.T
	m     *Matcher
	resp  []byte
	calls atomic.Int64
}

func (f *fuzzExchanger) exchange(_ context.Context, query, question []byte) ([]byte, error) {
	f.calls.Add(1)
	q := new(dns.Msg)
	if err := q.Unpack(query); err != nil {
		f.t.Fatalf("proxy sent an unparseable query upstream: %v", err)
	}
	if len(q.Question) != 1 || !f.m.Allowed(q.Question[0].Name) {
		f.t.Fatalf("upstream query for a name outside the allowlist: %v", q.Question)
	}
	if !f.m.allowedWire(question[:len(question)-4]) {
		f.t.Fatalf("expected question outside the allowlist: %q", question)
	}
	r := append([]byte(nil), f.resp...)
	if len(r) >= 2 {
		binary.BigEndian.PutUint16(r, binary.BigEndian.Uint16(query))
	}
	if len(r) < 12 {
		return nil, errTimeout
	}
	return r, nil
}

func FuzzHandler(f *testing.F) {
	seed := func(name string, qt uint16, edns bool) []byte {
		m := new(dns.Msg)
		m.SetQuestion(name, qt)
		if edns {
			m.SetEdns0(1232, true)
		}
		b, _ := m.Pack()
		return b
	}
	ans := func(name string) []byte {
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		m := bigAnswer(q, 3, 60)
		b, _ := m.Pack()
		return b
	}
	f.Add(seed("www.example.org.", dns.TypeA, false), ans("www.example.org."), false)
	cname := func(name, target string) []byte {
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		m := new(dns.Msg)
		m.SetReply(q)
		m.Answer = []dns.RR{
			&dns.CNAME{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 60}, Target: target},
			&dns.A{Hdr: dns.RR_Header{Name: target, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: []byte{198, 51, 100, 7}},
		}
		b, _ := m.Pack()
		return b
	}
	f.Add(seed("alias.example.org.", dns.TypeA, false), cname("alias.example.org.", "cn.blocked.test."), false)
	f.Add(seed("alias.example.org.", dns.TypeA, true), cname("alias.example.org.", "www.example.org."), true)
	f.Add(seed("evil-example.org.", dns.TypeA, true), ans("evil-example.org."), true)
	f.Add(seed("evil\\.example.org.", dns.TypeTXT, true), ans("x.example.org."), false)
	f.Add(seed("example.org.", dns.TypeANY, true), []byte{}, true)
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1}, []byte{1, 2, 3}, false)
	f.Add([]byte{0xab, 0xcd, 0x28, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1}, ans("."), false)

	m, err := CompileMatcher(false, []string{"example.org."})
	if err != nil {
		f.Fatal(err)
	}
	p, err := New(Config{Experiment: "fuzz", Listen: []string{"127.0.0.1:0"}, Upstreams: []string{"127.0.0.1:9"}, Names: []string{"example.org."}, CacheSize: -1})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(p.Close)
	f.Fuzz(func(t *testing.T, req, resp []byte, tcp bool) {
		ex := &fuzzExchanger{t: t, m: m, resp: resp}
		p.ex = ex
		out := p.handle(context.Background(), req, tcp)
		if out == nil {
			return
		}
		r := new(dns.Msg)
		if err := r.Unpack(out); err != nil {
			t.Fatalf("proxy produced an unparseable answer: %v", err)
		}
		if !r.Response || r.Id != binary.BigEndian.Uint16(req) {
			t.Fatalf("answer is not a response to the query: %v", r)
		}
		if !tcp && len(out) > serverUDPSize {
			t.Fatalf("UDP answer of %d bytes", len(out))
		}
		// No name outside the allowlist reaches the client in an answer.
		for _, rr := range append(append([]dns.RR(nil), r.Answer...), r.Extra...) {
			if _, opt := rr.(*dns.OPT); opt {
				continue
			}
			if !m.Allowed(rr.Header().Name) {
				t.Fatalf("answer carries a record of a denied name: %v", rr)
			}
			if c, ok := rr.(*dns.CNAME); ok && !m.Allowed(c.Target) {
				t.Fatalf("answer carries a CNAME to a denied name: %v", rr)
			}
		}
	})
}

// FuzzPrepareInto checks the UDP loop's allocation-free answers against
// the allocating path: prepareInto, writing into a reused (dirty) slot,
// must answer exactly as prepare does, cache hits included.
func FuzzPrepareInto(f *testing.F) {
	seed := func(name string, qt uint16, edns bool) []byte {
		m := new(dns.Msg)
		m.SetQuestion(name, qt)
		if edns {
			m.SetEdns0(1232, true)
		}
		b, _ := m.Pack()
		return b
	}
	f.Add(seed("www.example.org.", dns.TypeA, false))
	f.Add(seed("WWW.Example.org.", dns.TypeA, true))
	f.Add(seed("evil-example.org.", dns.TypeA, true))
	f.Add(seed("evil-example.org.", dns.TypeAAAA, false))
	f.Add(seed("example.org.", dns.TypeAXFR, true))
	f.Add([]byte{0xab, 0xcd, 0x28, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1})

	p, err := New(Config{Experiment: "fuzz", Listen: []string{"127.0.0.1:0"}, Upstreams: []string{"127.0.0.1:9"},
		Names: []string{"example.org."}})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(p.Close)
	now := time.Now()
	p.cache.now = func() time.Time { return now } // the same TTLs in both answers
	p.ex = answerExchanger{ttl: 3600}
	for _, edns := range []bool{false, true} {
		if p.handle(context.Background(), seed("www.example.org.", dns.TypeA, edns), false) == nil {
			f.Fatal("no answer to fill the cache")
		}
	}
	slot := make([]byte, serverUDPSize)
	f.Fuzz(func(t *testing.T, req []byte) {
		want, wj := p.prepare(req, false)
		for i := range slot {
			slot[i] = 0xee
		}
		got, gj := p.prepareInto(req, false, slot[:0])
		if !bytes.Equal(got, want) || (gj == nil) != (wj == nil) {
			t.Fatalf("prepareInto answered %x (job %v), prepare %x (job %v)", got, gj != nil, want, wj != nil)
		}
	})
}
