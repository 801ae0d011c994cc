package dnsproxy

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// clientOK reports whether src may use the proxy (Config.Clients).
func (p *Proxy) clientOK(src netip.Addr) bool {
	if len(p.cfg.Clients) == 0 {
		return true
	}
	src = src.Unmap()
	for _, pr := range p.cfg.Clients {
		if pr.Contains(src) {
			return true
		}
	}
	p.stats.clientsRejected.Add(1)
	return false
}

// batchConn reads and writes several datagrams per system call
// (recvmmsg/sendmmsg): x/net's ipv4 and ipv6 PacketConn both have these
// methods (their Message types are the same type).
type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

func newBatchConn(c net.PacketConn, v6 bool) batchConn {
	if v6 {
		return ipv6.NewPacketConn(c)
	}
	return ipv4.NewPacketConn(c)
}

const (
	udpReaders  = 2    // sockets (each with one reader) per listening address
	udpBatch    = 32   // datagrams per recvmmsg
	udpQueryBuf = 4096 // bytes per query buffer: larger queries are dropped
)

// serveUDP reads queries from s, a batch per recvmmsg when several are
// waiting (the socket is watched for input only: see udpSock).
// Refusals, errors and cache hits are answered inline, together in one
// sendmmsg; forwarded queries get a goroutine each (bounded by MaxInflight:
// beyond that queries are dropped and counted, as a loaded resolver would).
func (p *Proxy) serveUDP(ctx context.Context, s *udpSock) {
	for {
		b, n, err := s.recvBatch()
		if err != nil {
			var errno unix.Errno
			if !errors.As(err, &errno) || ctx.Err() != nil {
				if ctx.Err() == nil && !s.isClosed() {
					p.log.Error("udp reader stopped", "addr", s.local.String(), "error", err)
				}
				return // closed
			}
			// A socket error (an ICMP error queued on it, ENOMEM): the
			// next read goes on.
			continue
		}
		p.answerBatch(ctx, s, b, n)
		udpBatches.Put(b)
	}
}

// udpBatchBufs is what a UDP reader needs while it answers one batch. A
// reader that waits holds none: they come from a pool shared by every
// proxy of the daemon, so that memory follows the queries in flight, not
// the number of experiments (about 170 KiB per listening socket, four per
// experiment, otherwise).
type udpBatchBufs struct {
	in, out *mmsgBatch
	buf     []byte // udpBatch queries of udpQueryBuf bytes, read into
	// ans holds immediate answers, one slot per datagram of the batch
	// (larger ones are allocated; the iovecs keep them alive).
	ans []byte
}

var udpBatches = sync.Pool{New: func() any {
	b := &udpBatchBufs{in: newMmsgBatch(udpBatch), out: newMmsgBatch(udpBatch),
		buf: make([]byte, udpBatch*udpQueryBuf), ans: make([]byte, udpBatch*serverUDPSize)}
	for i := 0; i < udpBatch; i++ {
		b.in.setBuf(i, b.buf[i*udpQueryBuf:(i+1)*udpQueryBuf:(i+1)*udpQueryBuf])
	}
	return b
}}

// answerBatch answers the n datagrams of b: immediate answers together in
// one sendmmsg, forwarded queries in goroutines of their own.
func (p *Proxy) answerBatch(ctx context.Context, s *udpSock, b *udpBatchBufs, n int) {
	in, out, buf, ans := b.in, b.out, b.buf, b.ans
	nout := 0
	for i := 0; i < n; i++ {
		h := &in.hdrs[i]
		src, ok := in.source(i)
		if !ok || h.Hdr.Flags&unix.MSG_TRUNC != 0 {
			p.stats.malformed.Add(1)
			continue
		}
		if !p.clientOK(src.Addr()) {
			continue
		}
		slot := ans[nout*serverUDPSize : nout*serverUDPSize : (nout+1)*serverUDPSize]
		resp, j := p.prepareInto(buf[i*udpQueryBuf:i*udpQueryBuf+int(h.Len)], false, slot)
		if resp != nil {
			if len(resp) == 0 {
				continue
			}
			out.setBuf(nout, resp)
			out.setDest(nout, in, i)
			nout++
			continue
		}
		if j == nil {
			continue
		}
		select {
		case p.inflight <- struct{}{}:
		default:
			p.stats.overload.Add(1)
			continue
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer func() { <-p.inflight }()
			if resp := p.forward(ctx, j); len(resp) > 0 {
				_ = s.sendTo(resp, src)
			}
		}()
	}
	for sent := 0; sent < nout; {
		k, err := s.sendmmsg(out, sent, nout)
		if err == unix.EAGAIN {
			// The send buffer stayed full (sendmmsg waited for it once):
			// drop the rest of the batch rather than stall the reader.
			p.stats.overload.Add(uint64(nout - sent))
			break
		}
		if err != nil || k <= 0 {
			k = 1 // skip the datagram that failed (e.g. EPERM from a firewall)
		}
		sent += k
	}
	for i := 0; i < nout; i++ {
		out.iovs[i].Base = nil // let allocated answers go
	}
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing || len(p.conns) >= p.cfg.MaxTCPConns {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

// serveTCP accepts client connections. miekg/dns's server answers the
// queries of one TCP connection one after another; this loop reads frames
// and answers pipelined queries concurrently, in whatever order they
// complete (RFC 7766 6.2.1.1), matched by the client through the ID.
func (p *Proxy) serveTCP(ctx context.Context, l *net.TCPListener) {
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			select { // e.g. EMFILE: do not spin
			case <-time.After(20 * time.Millisecond):
			case <-ctx.Done():
				return
			}
			continue
		}
		if src, ok := netip.AddrFromSlice(c.RemoteAddr().(*net.TCPAddr).IP); !ok || !p.clientOK(src) {
			c.Close()
			continue
		}
		if !p.track(c) {
			c.Close()
			continue
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.untrack(c)
			p.serveTCPConn(ctx, c)
		}()
	}
}

// tcpPipeline is how many queries of one connection are forwarded at once.
const tcpPipeline = 128

func (p *Proxy) serveTCPConn(ctx context.Context, c net.Conn) {
	var (
		inflight   sync.WaitGroup
		sem        = make(chan struct{}, tcpPipeline)
		out        = make(chan []byte, tcpPipeline+16)
		writerDone = make(chan struct{})
	)
	// One writer per connection: answers are framed into a buffer and
	// whatever is queued is flushed with one write, so a pipelining client
	// costs about one system call per batch of answers, not per answer.
	go func() {
		defer close(writerDone)
		bw := bufio.NewWriterSize(c, 16<<10)
		var lb [2]byte
		put := func(r []byte) {
			binary.BigEndian.PutUint16(lb[:], uint16(len(r)))
			_, _ = bw.Write(lb[:])
			_, _ = bw.Write(r)
		}
		failed := false
		for r := range out {
			if failed {
				continue // drain: the senders must never block on a dead client
			}
			put(r)
			open := true
		drain:
			for {
				select {
				case r2, ok := <-out:
					if !ok {
						open = false
						break drain
					}
					put(r2)
				default:
					break drain
				}
			}
			_ = c.SetWriteDeadline(time.Now().Add(p.cfg.TCPIdle))
			if err := bw.Flush(); err != nil {
				failed = true
				c.Close() // unblocks the reader
			}
			if !open {
				return
			}
		}
	}()
	defer func() {
		inflight.Wait()
		close(out)
		<-writerDone
	}()
	br := bufio.NewReaderSize(c, 8192)
	var lb [2]byte
	for i := 0; i < p.cfg.MaxTCPQueries; i++ {
		_ = c.SetReadDeadline(time.Now().Add(p.cfg.TCPIdle))
		if _, err := io.ReadFull(br, lb[:]); err != nil {
			return
		}
		msg := make([]byte, binary.BigEndian.Uint16(lb[:]))
		if _, err := io.ReadFull(br, msg); err != nil {
			return
		}
		resp, j := p.prepare(msg, true)
		if j == nil {
			if resp != nil {
				out <- resp
			}
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		select {
		case p.inflight <- struct{}{}:
		default:
			<-sem
			p.stats.overload.Add(1)
			continue
		}
		inflight.Add(1)
		go func() {
			defer inflight.Done()
			defer func() { <-p.inflight; <-sem }()
			if resp := p.forward(ctx, j); resp != nil {
				out <- resp
			}
		}()
	}
}
