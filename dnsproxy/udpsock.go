package dnsproxy

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// udpSock is a listening UDP socket that Go's network poller watches for
// input only.
//
// Why not a net.UDPConn: the poller registers every socket for EPOLLOUT
// too, and the kernel signals write space each time a sent datagram is
// freed, so every batch of answers woke the poller's thread for nothing
// (a thread wake-up and a context switch: more CPU than the answers
// themselves on the refused and cached paths). Here the socket is
// registered, for EPOLLIN only, in an epoll instance of its own, and that
// epoll descriptor is what the Go poller waits on (an epoll descriptor is
// readable when something in it is ready): write space never wakes
// anything, datagrams wake one waiting reader, as in unbound's and
// dnsmasq's event loops. Reads and writes are non-blocking system calls on
// the socket itself.
//
// Lifetime: shutdown closes the epoll descriptor (waiting readers return
// os.ErrClosed); close releases the socket once nothing uses it any more
// (the proxy's goroutines have been waited for).
type udpSock struct {
	fd    int
	v6    bool
	local netip.AddrPort
	ep    *os.File        // epoll instance watching fd for input
	rc    syscall.RawConn // ep's, for waiting on it in Go's poller

	mu     sync.Mutex
	closed bool // shutdown called: readers return
	freed  bool // fd closed
}

// udpRcvBuf is the receive buffer asked for a listening socket (bytes of
// queued datagrams, counted with their kernel overhead).
const udpRcvBuf = 1 << 20

// listenUDPSock opens a non-blocking UDP socket bound to ap (IP_FREEBIND, so a
// tentative IPv6 gateway address can be bound). It must run in the target
// network namespace (nsdo.In).
func listenUDPSock(ap netip.AddrPort, reusePort bool) (*udpSock, error) {
	a := ap.Addr()
	v6 := a.Is6() && !a.Is4In6()
	family := unix.AF_INET
	if v6 {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("udp socket: %w", err)
	}
	fail := func(what string, err error) (*udpSock, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("listen udp %s: %s: %w", ap, what, err)
	}
	var sa unix.Sockaddr
	if v6 {
		// As the net package does: an explicit IPv6 address is IPv6 only,
		// the unspecified address takes both families.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, boolInt(!a.IsUnspecified())); err != nil {
			return fail("IPV6_V6ONLY", err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_FREEBIND, 1); err != nil {
			return fail("IPV6_FREEBIND", err)
		}
		if a.Zone() != "" {
			return fail("zone", fmt.Errorf("scoped address %q: give a global or unique-local address", a))
		}
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: a.As16()}
	} else {
		if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_FREEBIND, 1); err != nil {
			return fail("IP_FREEBIND", err)
		}
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.Unmap().As4()}
	}
	// A burst of queries (a client with many outstanding) must not
	// overflow the default buffer (about 200 small datagrams) while the
	// readers are busy answering the previous batch. Beyond rmem_max only
	// with CAP_NET_ADMIN; otherwise the kernel's cap applies.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, udpRcvBuf) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, udpRcvBuf)
	}
	if reusePort {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return fail("SO_REUSEPORT", err)
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fail("bind", err)
	}
	bound, err := unix.Getsockname(fd)
	if err != nil {
		return fail("getsockname", err)
	}
	s := &udpSock{fd: fd, v6: v6}
	switch b := bound.(type) {
	case *unix.SockaddrInet4:
		s.local = netip.AddrPortFrom(netip.AddrFrom4(b.Addr), uint16(b.Port))
	case *unix.SockaddrInet6:
		s.local = netip.AddrPortFrom(netip.AddrFrom16(b.Addr), uint16(b.Port))
	default:
		return fail("getsockname", fmt.Errorf("unexpected address %T", bound))
	}
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fail("epoll_create1", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		unix.Close(epfd)
		return fail("epoll_ctl", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil { // os.NewFile then puts it in the poller
		unix.Close(epfd)
		return fail("epoll nonblock", err)
	}
	s.ep = os.NewFile(uintptr(epfd), fmt.Sprintf("epoll-udp-%s", s.local))
	if s.rc, err = s.ep.SyscallConn(); err != nil {
		s.ep.Close()
		return fail("epoll descriptor", err)
	}
	if err := s.ep.SetReadDeadline(time.Time{}); err != nil {
		// Not in Go's poller: a read would block a thread, not wait.
		s.ep.Close()
		return fail("epoll descriptor not pollable", err)
	}
	return s, nil
}

// listenUDPGroup opens n sockets on ap (the same port when ap's is 0),
// each to be read by its own goroutine. With n > 1 they form a SO_REUSEPORT
// group whose datagrams are spread by the CPU that received them (a
// classic BPF program), not by a hash of the source: one client with a
// single socket is served by as many readers as the CPUs it sends from,
// and the readers never contend for one socket. Other processes can join
// the group only with the same user id (root, for port 53).
func listenUDPGroup(ap netip.AddrPort, n int) ([]*udpSock, error) {
	first, err := listenUDPSock(ap, n > 1)
	if err != nil {
		return nil, err
	}
	group := []*udpSock{first}
	fail := func(err error) ([]*udpSock, error) {
		for _, s := range group {
			s.close()
		}
		return nil, err
	}
	for i := 1; i < n; i++ {
		s, err := listenUDPSock(netip.AddrPortFrom(ap.Addr(), first.local.Port()), true)
		if err != nil {
			return fail(err)
		}
		group = append(group, s)
	}
	if n > 1 {
		prog, err := bpf.Assemble([]bpf.Instruction{
			bpf.LoadExtension{Num: bpf.ExtCPUID},
			bpf.ALUOpConstant{Op: bpf.ALUOpMod, Val: uint32(n)},
			bpf.RetA{},
		})
		if err != nil {
			return fail(fmt.Errorf("reuseport program: %w", err))
		}
		filter := make([]unix.SockFilter, len(prog))
		for i, ins := range prog {
			filter[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
		}
		fprog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
		// Without the program the kernel spreads by a hash of the source:
		// still correct, only less even for a single client.
		_ = unix.SetsockoptSockFprog(first.fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &fprog)
	}
	return group, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// shutdown stops the readers: the epoll descriptor is closed, which wakes
// those waiting on it. Idempotent.
func (s *udpSock) shutdown() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	s.ep.Close()
}

// isClosed reports whether shutdown was called.
func (s *udpSock) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// close shuts the socket down and releases the descriptor. Only call it
// when no reader or sender can still use it. Idempotent.
func (s *udpSock) close() {
	s.shutdown()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.freed {
		s.freed = true
		unix.Close(s.fd)
	}
}

// sendTo sends one datagram (a forwarded query's answer).
func (s *udpSock) sendTo(b []byte, to netip.AddrPort) error {
	var sa unix.Sockaddr
	if s.v6 {
		sa = &unix.SockaddrInet6{Port: int(to.Port()), Addr: to.Addr().As16()}
	} else {
		sa = &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().Unmap().As4()}
	}
	for try := 0; ; try++ {
		err := unix.Sendto(s.fd, b, 0, sa)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN && try == 0 {
			s.waitWritable()
			continue
		}
		return err
	}
}

// waitWritable waits a little for send buffer space. The socket is not in
// Go's poller for output (see udpSock), and a full UDP send buffer is rare
// and short (the device queue is draining): a bounded poll(2) is enough.
func (s *udpSock) waitWritable() {
	pfd := []unix.PollFd{{Fd: int32(s.fd), Events: unix.POLLOUT}}
	for {
		if _, err := unix.Poll(pfd, 100); err != unix.EINTR {
			return
		}
	}
}

// mmsgBatch is the memory of one recvmmsg or sendmmsg call: headers,
// iovecs and source addresses, allocated once per reader.
type mmsgBatch struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // large enough for either family
}

func newMmsgBatch(n int) *mmsgBatch {
	b := &mmsgBatch{
		hdrs:  make([]unix.Mmsghdr, n),
		iovs:  make([]unix.Iovec, n),
		names: make([]unix.RawSockaddrInet6, n),
	}
	for i := range b.hdrs {
		b.hdrs[i].Hdr.Iov = &b.iovs[i]
		b.hdrs[i].Hdr.SetIovlen(1)
	}
	return b
}

// setBuf points message i at buf (the whole buffer: read into, or sent).
func (b *mmsgBatch) setBuf(i int, buf []byte) {
	b.iovs[i].Base = unsafe.SliceData(buf)
	b.iovs[i].SetLen(len(buf))
}

// recvBatch waits (in Go's poller, on the epoll descriptor) until at
// least one datagram is queued, then reads up to udpBatch of them into
// buffers taken from the pool only then; the caller puts them back. After
// shutdown it returns os.ErrClosed (or another error of a closed file).
func (s *udpSock) recvBatch() (*udpBatchBufs, int, error) {
	var (
		b     *udpBatchBufs
		n     uintptr
		errno unix.Errno
	)
	err := s.rc.Read(func(uintptr) bool {
		if b == nil {
			b = udpBatches.Get().(*udpBatchBufs)
		}
		for i := range b.in.hdrs {
			h := &b.in.hdrs[i].Hdr
			h.Name = (*byte)(unsafe.Pointer(&b.in.names[i]))
			h.Namelen = unix.SizeofSockaddrInet6
			h.Flags = 0
			b.in.hdrs[i].Len = 0
		}
		for {
			n, _, errno = unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(s.fd), uintptr(unsafe.Pointer(&b.in.hdrs[0])),
				uintptr(len(b.in.hdrs)), unix.MSG_DONTWAIT, 0, 0)
			if errno != unix.EINTR {
				break
			}
		}
		if errno == unix.EAGAIN {
			// Nothing yet: wait without the buffers.
			udpBatches.Put(b)
			b = nil
			return false
		}
		return true
	})
	if err == nil && errno != 0 {
		err = errno
	}
	if err != nil {
		if b != nil {
			udpBatches.Put(b)
		}
		return nil, 0, err
	}
	return b, int(n), nil
}

// source returns the sender of datagram i of the last recvmmsg.
func (b *mmsgBatch) source(i int) (netip.AddrPort, bool) {
	h := &b.hdrs[i].Hdr
	sa := &b.names[i]
	switch {
	case sa.Family == unix.AF_INET && h.Namelen >= unix.SizeofSockaddrInet4:
		s4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(s4.Addr), portOf(s4.Port)), true
	case sa.Family == unix.AF_INET6 && h.Namelen >= unix.SizeofSockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), portOf(sa.Port)), true
	}
	return netip.AddrPort{}, false
}

// portOf converts a sockaddr port (network byte order) to a number.
func portOf(p uint16) uint16 {
	return binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&p))[:])
}

// setDest makes message i of b an answer to the sender of message j of in.
func (b *mmsgBatch) setDest(i int, in *mmsgBatch, j int) {
	b.hdrs[i].Hdr.Name = (*byte)(unsafe.Pointer(&in.names[j]))
	b.hdrs[i].Hdr.Namelen = in.hdrs[j].Hdr.Namelen
}

// sendmmsg sends messages [from,to) of b; it returns how many were sent
// (an error only when the first of them failed).
func (s *udpSock) sendmmsg(b *mmsgBatch, from, to int) (int, error) {
	for try := 0; ; try++ {
		r, _, errno := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(s.fd), uintptr(unsafe.Pointer(&b.hdrs[from])),
			uintptr(to-from), unix.MSG_DONTWAIT, 0, 0)
		switch {
		case errno == unix.EINTR:
			continue
		case errno == unix.EAGAIN && try == 0:
			s.waitWritable()
			continue
		case errno != 0:
			return 0, errno
		}
		return int(r), nil
	}
}
