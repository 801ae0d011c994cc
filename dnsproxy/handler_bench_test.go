package dnsproxy

import (
	"context"
	"testing"

	"github.com/miekg/dns"
)

// answerExchanger answers every query itself (no sockets): it measures the
// proxy's own per-query work.
type answerExchanger struct{ ttl uint32 }

func (a answerExchanger) exchange(_ context.Context, query, _ []byte) ([]byte, error) {
	q := new(dns.Msg)
	if err := q.Unpack(query); err != nil {
		return nil, err
	}
	b, err := bigAnswer(q, 1, a.ttl).Pack()
	return b, err
}

// benchProxy is a proxy answering from ex (nil: no upstream) and a query
// for name; the proxy is closed when the benchmark ends.
func benchProxy(b *testing.B, name string, ex exchanger) (*Proxy, []byte) {
	p, err := New(Config{Experiment: "b1", Listen: []string{"127.0.0.1:0"}, Upstreams: []string{"127.0.0.1:9"}, Names: []string{"example.org."},
		AlertRate: 1e9, AlertBurst: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	p.ex = ex
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.SetEdns0(1232, false)
	raw, _ := m.Pack()
	go func() { // drain alerts as Run would
		for range p.alerts {
		}
	}()
	return p, raw
}

func benchHandle(b *testing.B, name string, ex exchanger) {
	p, raw := benchProxy(b, name, ex)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if p.handle(context.Background(), raw, false) == nil {
			b.Fatal("no answer")
		}
	}
}

func BenchmarkHandleRefused(b *testing.B) { benchHandle(b, "www.denied.test.", nil) }
func BenchmarkHandleCached(b *testing.B) {
	benchHandle(b, "www.example.org.", answerExchanger{ttl: 3600})
}
func BenchmarkHandleForwarded(b *testing.B) {
	benchHandle(b, "www.example.org.", answerExchanger{ttl: 0})
}

// benchPrepareInto measures the UDP loop's inline path: the answer is
// written into the slot buffer the loop owns.
func benchPrepareInto(b *testing.B, name string, ex exchanger) {
	p, raw := benchProxy(b, name, ex)
	if ex != nil { // fill the cache
		p.handle(context.Background(), raw, false)
	}
	slot := make([]byte, 0, serverUDPSize)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if resp, _ := p.prepareInto(raw, false, slot); resp == nil {
			b.Fatal("no answer")
		}
	}
}

func BenchmarkPrepareIntoRefused(b *testing.B) { benchPrepareInto(b, "www.denied.test.", nil) }
func BenchmarkPrepareIntoCached(b *testing.B) {
	benchPrepareInto(b, "www.example.org.", answerExchanger{ttl: 3600})
}
