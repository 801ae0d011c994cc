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

// serveUDP reads queries from uc. Refusals, errors and cache hits are
// answered inline; forwarded queries get a goroutine each (bounded by
// MaxInflight: beyond that queries are dropped and counted, as a loaded
// resolver would).
func (p *Proxy) serveUDP(ctx context.Context, uc *net.UDPConn) {
	buf := make([]byte, 65535)
	for {
		n, src, err := uc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			continue
		}
		if !p.clientOK(src.Addr()) {
			continue
		}
		resp, j := p.prepare(buf[:n], false)
		if resp != nil {
			_, _ = uc.WriteToUDPAddrPort(resp, src)
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
			if resp := p.forward(ctx, j); resp != nil {
				_, _ = uc.WriteToUDPAddrPort(resp, src)
			}
		}()
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
		wmu      sync.Mutex
		inflight sync.WaitGroup
		sem      = make(chan struct{}, tcpPipeline)
		werr     error
	)
	write := func(resp []byte) {
		if resp == nil {
			return
		}
		b := make([]byte, 2+len(resp))
		binary.BigEndian.PutUint16(b, uint16(len(resp)))
		copy(b[2:], resp)
		wmu.Lock()
		defer wmu.Unlock()
		if werr != nil {
			return
		}
		_ = c.SetWriteDeadline(time.Now().Add(p.cfg.TCPIdle))
		if _, err := c.Write(b); err != nil {
			werr = err
			c.Close() // unblocks the reader
		}
	}
	defer inflight.Wait()
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
			write(resp)
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
			write(p.forward(ctx, j))
		}()
	}
}
