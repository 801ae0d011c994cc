package dnsproxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/arkgw/arkgw/nsdo"
)

// Upstream transport. Queries are multiplexed over a few long-lived sockets
// per upstream server instead of one socket per query: udpSockets connected
// UDP sockets and up to tcpConns persistent TCP connections on which queries
// are pipelined (RFC 7766). Each socket has one reader goroutine that hands
// each answer to the query waiting for its message ID, after checking that
// the answer's question is the one asked. IDs are drawn from crypto/rand.
// UDP sockets are replaced after udpMaxUses queries or udpMaxAge so the
// source port changes too (port + ID entropy against off-path spoofing).
const (
	udpSockets = 4
	tcpConns   = 2
	udpMaxUses = 20000
	udpMaxAge  = 2 * time.Minute
	// upstreamUDPSize is the EDNS buffer size advertised upstream (the DNS
	// flag day 2020 value: no IP fragmentation).
	upstreamUDPSize = 1232
	// downTime is how long an upstream that timed out is tried last.
	downTime = 5 * time.Second
	// upstreamBatch answers are read per recvmmsg into upstreamBuf-byte
	// buffers (we ask for at most upstreamUDPSize; a larger datagram is
	// dropped and the query retried).
	upstreamBatch = 8
	upstreamBuf   = 4096
)

var (
	errConnClosed = errors.New("upstream connection closed")
	errTimeout    = errors.New("upstream did not answer in time")
)

// exchanger sends a packed query (ID to be chosen) and returns the packed
// answer. question is the expected question section in lowercase wire form
// (name, type, class). The answer has the upstream's ID, not the client's.
type exchanger interface {
	exchange(ctx context.Context, query, question []byte) ([]byte, error)
}

// pool is the set of upstream servers with their sockets.
type pool struct {
	ns      nsdo.NS
	timeout time.Duration // per attempt
	total   time.Duration // per query, all attempts
	maxUses int           // udpMaxUses; tests lower it
	ups     []*upstream
	stats   *counters

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // reader goroutines
}

type upstream struct {
	addr      string
	downUntil atomic.Int64 // unix nanoseconds

	mu  sync.Mutex
	udp [udpSockets]*muxConn
	tcp [tcpConns]*muxConn
	rr  atomic.Uint32
}

func newPool(ns nsdo.NS, addrs []string, timeout, total time.Duration, st *counters) *pool {
	ctx, cancel := context.WithCancel(context.Background())
	p := &pool{ns: ns, timeout: timeout, total: total, stats: st, ctx: ctx, cancel: cancel, maxUses: udpMaxUses}
	for _, a := range addrs {
		p.ups = append(p.ups, &upstream{addr: a})
	}
	return p
}

// close closes every socket and waits for the readers.
func (p *pool) close() {
	p.cancel()
	for _, u := range p.ups {
		u.mu.Lock()
		for _, c := range u.udp {
			if c != nil {
				c.fail(errConnClosed)
			}
		}
		for _, c := range u.tcp {
			if c != nil {
				c.fail(errConnClosed)
			}
		}
		u.mu.Unlock()
	}
	p.wg.Wait()
}

// exchange tries the upstreams in order (healthy ones first), each over UDP
// and, when the UDP answer is truncated, over TCP. An upstream that times out
// or fails is marked down for a while; SERVFAIL, REFUSED and NOTIMP answers
// make it try the next upstream, and are returned if no other upstream gives
// a better answer.
func (p *pool) exchange(ctx context.Context, query, question []byte) ([]byte, error) {
	n := len(p.ups)
	if n == 0 {
		return nil, errors.New("no upstream resolvers configured")
	}
	start := 0
	now := time.Now().UnixNano()
	for i, u := range p.ups {
		if u.downUntil.Load() < now {
			start = i
			break
		}
	}
	attempts := n
	if attempts < 2 {
		attempts = 2
	}
	var lastErr error
	var fallback []byte
	// The query's deadline is kept here rather than in a context: one timer
	// per attempt is enough.
	deadline := time.Now().Add(p.total)
	for a := 0; a < attempts; a++ {
		left := time.Until(deadline)
		if ctx.Err() != nil || left <= 0 {
			break
		}
		u := p.ups[(start+a)%n]
		resp, err := p.try(ctx, u, query, question, min(left, p.timeout))
		if err != nil {
			lastErr = fmt.Errorf("upstream %s: %w", u.addr, err)
			p.stats.upstreamErrors.Add(1)
			if errors.Is(err, errTimeout) {
				u.downUntil.Store(time.Now().Add(downTime).UnixNano())
			}
			continue
		}
		switch resp[3] & 0x0f { // rcode
		case 2, 4, 5: // SERVFAIL, NOTIMP, REFUSED: another upstream may do better
			fallback = resp
			continue
		}
		u.downUntil.Store(0)
		return resp, nil
	}
	if fallback != nil {
		return fallback, nil
	}
	if lastErr == nil {
		lastErr = ctx.Err()
	}
	if lastErr == nil {
		lastErr = errTimeout
	}
	return nil, lastErr
}

// try asks one upstream: UDP, then TCP if the answer is truncated.
func (p *pool) try(ctx context.Context, u *upstream, query, question []byte, timeout time.Duration) ([]byte, error) {
	c, err := p.conn(ctx, u, false)
	if err != nil {
		return nil, err
	}
	resp, err := c.exchange(ctx, query, question, timeout)
	if err != nil {
		return nil, err
	}
	if resp[2]&0x02 == 0 { // TC clear
		return resp, nil
	}
	p.stats.tcpFallbacks.Add(1)
	for i := 0; i < 2; i++ { // a reused TCP connection may have been closed by the server
		c, err = p.conn(ctx, u, true)
		if err != nil {
			return nil, err
		}
		resp, err = c.exchange(ctx, query, question, timeout)
		if !errors.Is(err, errConnClosed) {
			break
		}
	}
	return resp, err
}

// conn returns a live multiplexed socket to u, dialing a new one if needed.
// The dial happens outside u.mu so a slow TCP connect does not hold up the
// UDP sockets of the same upstream.
func (p *pool) conn(ctx context.Context, u *upstream, tcp bool) (*muxConn, error) {
	i := int(u.rr.Add(1))
	slot := func() **muxConn {
		if tcp {
			return &u.tcp[i%tcpConns]
		}
		return &u.udp[i%udpSockets]
	}
	u.mu.Lock()
	if c := *slot(); c != nil && c.usable(tcp) {
		u.mu.Unlock()
		return c, nil
	}
	u.mu.Unlock()
	if p.ctx.Err() != nil {
		return nil, errConnClosed
	}
	network := "udp"
	if tcp {
		network = "tcp"
	}
	dctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	nc, err := nsdo.Dial(dctx, p.ns, network, u.addr)
	if err != nil {
		u.downUntil.Store(time.Now().Add(downTime).UnixNano())
		return nil, fmt.Errorf("dial %s %s: %w", network, u.addr, err)
	}
	c := &muxConn{c: nc, tcp: tcp, born: time.Now(), pending: map[uint16]*pending{}, stats: p.stats, maxUses: p.maxUses}
	u.mu.Lock()
	defer u.mu.Unlock()
	if old := *slot(); old != nil && old.usable(tcp) { // another query dialed meanwhile
		nc.Close()
		return old, nil
	} else if old != nil {
		old.retire(p.timeout)
	}
	if p.ctx.Err() != nil { // closing: pool.close has already swept the slots
		nc.Close()
		return nil, errConnClosed
	}
	*slot() = c
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		c.read()
	}()
	return c, nil
}

type pending struct {
	question []byte
	ch       chan []byte // closed without a value when the connection dies
}

// muxConn is one upstream socket shared by many queries.
type muxConn struct {
	c       net.Conn
	tcp     bool
	born    time.Time
	stats   *counters
	maxUses int // UDP: queries before the socket is replaced

	mu       sync.Mutex
	pending  map[uint16]*pending
	uses     int
	dead     bool
	retiring bool

	wmu sync.Mutex // TCP writes
}

func (m *muxConn) usable(tcp bool) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.dead || m.retiring {
		return false
	}
	if !tcp && (m.uses >= m.maxUses || time.Since(m.born) > udpMaxAge) {
		return false
	}
	return true
}

// retire stops new queries on m; the reader ends once the queries in flight
// had their chance to be answered.
func (m *muxConn) retire(timeout time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.dead || m.retiring {
		return
	}
	m.retiring = true
	_ = m.c.SetReadDeadline(time.Now().Add(timeout + 100*time.Millisecond))
}

// fail closes the socket and wakes every waiting query.
func (m *muxConn) fail(error) {
	m.mu.Lock()
	if m.dead {
		m.mu.Unlock()
		return
	}
	m.dead = true
	ps := m.pending
	m.pending = nil
	m.mu.Unlock()
	_ = m.c.Close()
	for _, p := range ps {
		close(p.ch)
	}
}

func randomID() uint16 {
	var b [2]byte
	_, _ = rand.Read(b[:]) // never fails since Go 1.24
	return binary.BigEndian.Uint16(b[:])
}

func (m *muxConn) exchange(ctx context.Context, query, question []byte, timeout time.Duration) ([]byte, error) {
	p := &pending{question: question, ch: make(chan []byte, 1)}
	m.mu.Lock()
	if m.dead {
		m.mu.Unlock()
		return nil, errConnClosed
	}
	var id uint16
	for {
		id = randomID()
		if _, busy := m.pending[id]; !busy {
			break
		}
	}
	m.pending[id] = p
	m.uses++
	m.mu.Unlock()

	var err error
	if m.tcp {
		buf := make([]byte, 2+len(query))
		binary.BigEndian.PutUint16(buf, uint16(len(query)))
		copy(buf[2:], query)
		binary.BigEndian.PutUint16(buf[2:], id)
		m.wmu.Lock()
		_ = m.c.SetWriteDeadline(time.Now().Add(timeout))
		_, err = m.c.Write(buf)
		m.wmu.Unlock()
	} else {
		// query belongs to this one forwarded query and its attempts run
		// one after another: the ID goes in place.
		binary.BigEndian.PutUint16(query, id)
		_, err = m.c.Write(query)
	}
	if err != nil {
		m.drop(id, p)
		if m.tcp {
			m.fail(err)
			return nil, errConnClosed
		}
		return nil, fmt.Errorf("send query: %w", err)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case resp, ok := <-p.ch:
		if !ok {
			return nil, errConnClosed
		}
		return resp, nil
	case <-t.C:
		m.drop(id, p)
		return nil, errTimeout
	case <-ctx.Done():
		m.drop(id, p)
		return nil, ctx.Err()
	}
}

func (m *muxConn) drop(id uint16, p *pending) {
	m.mu.Lock()
	if m.pending[id] == p {
		delete(m.pending, id)
	}
	m.mu.Unlock()
}

// read dispatches answers until the socket fails or is closed.
func (m *muxConn) read() {
	var err error
	if m.tcp {
		br := bufio.NewReaderSize(m.c, 4096)
		var lb [2]byte
		for {
			if _, err = io.ReadFull(br, lb[:]); err != nil {
				break
			}
			msg := make([]byte, binary.BigEndian.Uint16(lb[:]))
			if _, err = io.ReadFull(br, msg); err != nil {
				break
			}
			m.deliver(msg, false)
		}
	} else {
		bc := newBatchConn(m.c.(net.PacketConn), m.c.RemoteAddr().(*net.UDPAddr).IP.To4() == nil)
		ms := make([]ipv4.Message, upstreamBatch)
		for i := range ms {
			ms[i].Buffers = [][]byte{make([]byte, upstreamBuf)}
		}
		for {
			var n int
			n, err = bc.ReadBatch(ms, 0)
			if err != nil {
				if errors.Is(err, syscall.ECONNREFUSED) {
					continue // ICMP port unreachable: the query times out and retries elsewhere
				}
				break
			}
			for i := 0; i < n; i++ {
				if ms[i].Flags&unix.MSG_TRUNC != 0 {
					m.stats.mismatched.Add(1)
					continue
				}
				m.deliver(ms[i].Buffers[0][:ms[i].N], true)
			}
		}
	}
	m.fail(err)
}

// deliver hands msg to the query waiting for its ID if it answers that
// query's question; anything else is dropped and counted.
func (m *muxConn) deliver(msg []byte, copyMsg bool) {
	if len(msg) < 12 || msg[2]&0x80 == 0 || binary.BigEndian.Uint16(msg[4:]) != 1 {
		m.stats.mismatched.Add(1)
		return
	}
	id := binary.BigEndian.Uint16(msg)
	m.mu.Lock()
	p := m.pending[id]
	if p == nil || !sameQuestion(msg[12:], p.question) {
		m.mu.Unlock()
		m.stats.mismatched.Add(1)
		return
	}
	delete(m.pending, id)
	m.mu.Unlock()
	if copyMsg {
		msg = append([]byte(nil), msg...)
	}
	p.ch <- msg
}

// sameQuestion compares the start of an answer's question section with the
// expected lowercase question. The question name directly follows the header,
// so it cannot be compressed: a byte comparison (ASCII case folded) is exact.
//
// want is the name followed by 4 bytes of type and class, which are compared
// exactly (type 65, HTTPS, has a byte that looks like 'A').
func sameQuestion(got, want []byte) bool {
	if len(got) < len(want) || len(want) < 5 {
		return false
	}
	n := len(want) - 4
	for i, w := range want[:n] {
		g := got[i]
		if g >= 'A' && g <= 'Z' {
			g += 'a' - 'A'
		}
		if g != w {
			return false
		}
	}
	return string(got[n:len(want)]) == string(want[n:])
}
