package dnsproxy

import (
	"sync"
	"time"

	"github.com/miekg/dns"
)

// cache is a small per-experiment answer cache. Entries live for the
// smallest TTL of the answer (negative answers: the SOA's TTL/MINIMUM, RFC
// 2308), at most maxTTL; answers with TTL 0, truncated answers and failures
// are not stored. When full, an arbitrary entry is evicted (Go map order),
// which keeps the cost constant and the size bounded.
type cache struct {
	mu     sync.Mutex
	max    int
	maxTTL time.Duration
	m      map[string]*cacheEntry
	now    func() time.Time
}

type cacheEntry struct {
	msg     *dns.Msg // as received from upstream; never modified
	stored  time.Time
	expires time.Time
}

func newCache(size int, maxTTL time.Duration) *cache {
	if size <= 0 {
		return nil
	}
	return &cache{max: size, maxTTL: maxTTL, m: make(map[string]*cacheEntry, size), now: time.Now}
}

// get returns a copy of the cached answer with TTLs reduced by its age.
func (c *cache) get(key string) *dns.Msg {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	e := c.m[key]
	now := c.now()
	if e != nil && !now.Before(e.expires) {
		delete(c.m, key)
		e = nil
	}
	c.mu.Unlock()
	if e == nil {
		return nil
	}
	age := uint32(now.Sub(e.stored) / time.Second)
	m := e.msg.Copy()
	for _, s := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range s {
			h := rr.Header()
			if h.Rrtype == dns.TypeOPT {
				continue
			}
			if h.Ttl > age {
				h.Ttl -= age
			} else {
				h.Ttl = 0
			}
		}
	}
	return m
}

// put stores a copy of m.
func (c *cache) put(key string, m *dns.Msg) {
	if c == nil || m.Truncated || (m.Rcode != dns.RcodeSuccess && m.Rcode != dns.RcodeNameError) {
		return
	}
	ttl, ok := cacheTTL(m)
	if !ok || ttl == 0 {
		return
	}
	d := time.Duration(ttl) * time.Second
	if d > c.maxTTL {
		d = c.maxTTL
	}
	cp := m.Copy()
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, exists := c.m[key]; !exists && len(c.m) >= c.max {
		for k := range c.m {
			delete(c.m, k)
			break
		}
	}
	c.m[key] = &cacheEntry{msg: cp, stored: now, expires: now.Add(d)}
}

func (c *cache) len() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// cacheTTL is the lifetime of an answer: the minimum TTL over answer and
// authority records; for a negative answer (no answer records) the SOA's
// min(TTL, MINIMUM). ok is false when nothing says how long to keep it.
func cacheTTL(m *dns.Msg) (ttl uint32, ok bool) {
	min := func(v uint32) {
		if !ok || v < ttl {
			ttl, ok = v, true
		}
	}
	for _, rr := range m.Answer {
		min(rr.Header().Ttl)
	}
	for _, rr := range m.Ns {
		min(rr.Header().Ttl)
		if soa, isSOA := rr.(*dns.SOA); isSOA && len(m.Answer) == 0 {
			min(soa.Minttl)
		}
	}
	if len(m.Answer) == 0 {
		hasSOA := false
		for _, rr := range m.Ns {
			if _, isSOA := rr.(*dns.SOA); isSOA {
				hasSOA = true
			}
		}
		if !hasSOA {
			return 0, false // negative answer without SOA: do not cache
		}
	}
	return ttl, ok
}
