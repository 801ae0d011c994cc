package dnsproxy

import (
	"encoding/binary"
	"sync"
	"time"
)

// cache is a small per-experiment answer cache of complete client answers
// (wire bytes). Entries live for the smallest TTL of the answer and
// authority records (negative answers: also the SOA's MINIMUM, RFC 2308), at
// most maxTTL; answers with TTL 0, truncated answers, negative answers
// without SOA and failures are not stored. When full, an arbitrary entry is evicted (Go map order),
// which keeps the cost constant and the size bounded.
type cache struct {
	mu     sync.Mutex
	max    int
	maxTTL time.Duration
	m      map[string]*cacheEntry
	now    func() time.Time
}

type cacheEntry struct {
	packed  []byte // the complete answer (ID and question case to be patched)
	ttlOffs []int  // where the TTLs are in packed
	stored  time.Time
	expires time.Time
}

func newCache(size int, maxTTL time.Duration) *cache {
	if size <= 0 {
		return nil
	}
	// The map grows with what is cached: sized up front it cost every
	// experiment's proxy a quarter megabyte, used or not.
	return &cache{max: size, maxTTL: maxTTL, m: map[string]*cacheEntry{}, now: time.Now}
}

// getInto returns a copy of the cached answer with TTLs reduced by its
// age, appended to dst (normally empty, for its memory), or nil.
func (c *cache) getInto(key, dst []byte) []byte {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	e := c.m[string(key)]
	now := c.now()
	if e != nil && !now.Before(e.expires) {
		delete(c.m, string(key))
		e = nil
	}
	c.mu.Unlock()
	if e == nil {
		return nil
	}
	age := uint32(now.Sub(e.stored) / time.Second)
	out := append(dst[:0], e.packed...)
	for _, off := range e.ttlOffs {
		ttl := binary.BigEndian.Uint32(out[off:])
		if ttl > age {
			ttl -= age
		} else {
			ttl = 0
		}
		binary.BigEndian.PutUint32(out[off:], ttl)
	}
	return out
}

// put stores a copy of the answer packed for ttl seconds (at most maxTTL).
func (c *cache) put(key string, packed []byte, ttl uint32, ttlOffs []int) {
	if c == nil || ttl == 0 {
		return
	}
	d := time.Duration(ttl) * time.Second
	if d > c.maxTTL {
		d = c.maxTTL
	}
	e := &cacheEntry{packed: append([]byte(nil), packed...), ttlOffs: ttlOffs}
	now := c.now()
	e.stored, e.expires = now, now.Add(d)
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, exists := c.m[key]; !exists && len(c.m) >= c.max {
		for k := range c.m {
			delete(c.m, k)
			break
		}
	}
	c.m[key] = e
}

func (c *cache) len() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
