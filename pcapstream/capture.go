package pcapstream

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/arkgw/arkgw/nsdo"
)

// Every reader has its own capture: an AF_PACKET socket with a TPACKET_V3
// receive ring, as tcpdump has one per process. The socket is created for
// protocol 0 (it receives nothing), gets the reader's filter as classic BPF
// (SO_ATTACH_FILTER; its accept value is the reader's snap length, so the
// kernel also cuts the frames), gets its ring, and only then is bound to
// ETH_P_ALL on the interface's index: no frame of another interface (of
// another experiment) can ever enter, and the kernel drops what the reader
// does not want without waking the daemon.
//
// gopacket/afpacket hands out one packet at a time; the daemon wants whole
// blocks (to frame the pcap records in place and send a block with one
// writev), so this is a small block walker over x/sys/unix. The ring's
// memory is the kernel's: only the reader's goroutine touches or unmaps it.
//
// Ring geometry. A block is handed over when full or after ringBlockTimeout,
// whichever comes first, so sparse traffic waits at most that long, and a
// busy capture costs one wake-up, one walk and one writev per block. On the
// benchmark's VM a wake-up of the daemon or the client costs far more than
// walking a block, so blocks are large: 1 MiB, 4 of them in 4 MiB (100
// Mbit/s fills one in 84 ms), and the timeout is 100 ms (tcpdump's is 1 s).
// With 128 KiB and 10 ms the CPU per packet was twice as high, with 512 KiB
// (libpcap's size for tcpdump -B 4096) about 13% higher; 64-byte packets
// at 145 kpps lost nothing with either. A block holds a whole 64 KiB GSO
// frame (V3 cuts frames at the block size) and fits in one P frame
// (wire.MaxFrame). Config.CaptureBuffer bytes in all.
const (
	ringBlockSize    = 1 << 20
	ringBlockTimeout = 100 * time.Millisecond
)

// Offsets in a TPACKET_V3 block (struct tpacket_block_desc with its
// tpacket_hdr_v1) and packet header (struct tpacket3_hdr), native endian.
const (
	bdBlockStatus = 8
	bdNumPkts     = 12
	bdFirstPkt    = 16

	tpNextOffset = 0
	tpSec        = 4
	tpNsec       = 8
	tpSnaplen    = 12
	tpLen        = 16
	tpMac        = 24
	tpHdrLen     = 48 // TPACKET_ALIGN(sizeof(struct tpacket3_hdr)); sockaddr_ll follows

	pcapRecordLen = 16
)

// ring is one reader's capture socket and its mapped ring.
type ring struct {
	f       *os.File // the socket, registered with the runtime's netpoller
	rc      syscall.RawConn
	mem     []byte
	bs      int // block size
	nblocks int
	cur     int // next block to read

	drops atomic.Uint64 // cumulative PACKET_STATISTICS drops
}

// openRing opens a capture of iface in ns that passes prog's verdicts.
func openRing(ns nsdo.NS, iface string, prog []bpf.Instruction, bytes int) (*ring, error) {
	raw, err := bpf.Assemble(prog)
	if err != nil {
		return nil, fmt.Errorf("assemble filter: %w", err)
	}
	sf := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		sf[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	nb := max(2, bytes/ringBlockSize)
	r := &ring{bs: ringBlockSize, nblocks: nb}
	fd := -1
	err = nsdo.In(ns, func() error {
		ifi, err := net.InterfaceByName(iface)
		if err != nil {
			return fmt.Errorf("find interface %q: %w (is the experiment's network up?)", iface, err)
		}
		// The socket is created in this namespace and stays bound to it.
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open packet socket: %w (the daemon needs CAP_NET_RAW)", err)
		}
		if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: uint16(len(sf)), Filter: &sf[0]}); err != nil {
			return fmt.Errorf("attach filter (%d BPF instructions): %w", len(sf), err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V3); err != nil {
			return fmt.Errorf("set TPACKET_V3: %w", err)
		}
		req := unix.TpacketReq3{
			Block_size: uint32(r.bs), Block_nr: uint32(nb),
			Frame_size: uint32(r.bs), Frame_nr: uint32(nb), // V3 packs frames; these only satisfy the checks
			Retire_blk_tov: uint32(ringBlockTimeout / time.Millisecond),
		}
		if err := unix.SetsockoptTpacketReq3(fd, unix.SOL_PACKET, unix.PACKET_RX_RING, &req); err != nil {
			return fmt.Errorf("set up a ring of %d blocks of %d bytes: %w", nb, r.bs, err)
		}
		r.mem, err = unix.Mmap(fd, 0, r.bs*nb, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			return fmt.Errorf("map the ring (%d bytes): %w", r.bs*nb, err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			return fmt.Errorf("bind packet socket to %q (index %d): %w", iface, ifi.Index, err)
		}
		return nil
	})
	if err != nil {
		if r.mem != nil {
			unix.Munmap(r.mem)
		}
		if fd >= 0 {
			unix.Close(fd)
		}
		return nil, err
	}
	// A non-blocking descriptor becomes pollable: waiting for a block is a
	// netpoller wait (POLLIN on a V3 ring: a block was retired), not a
	// thread parked in poll(2).
	r.f = os.NewFile(uintptr(fd), "packet:"+iface)
	if err := r.f.SetReadDeadline(time.Time{}); err != nil {
		r.close()
		return nil, fmt.Errorf("packet socket not pollable: %w", err)
	}
	if r.rc, err = r.f.SyscallConn(); err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

func (r *ring) word(b []byte, off int) uint32 { return *(*uint32)(unsafe.Pointer(&b[off])) }

func (r *ring) block() []byte { return r.mem[r.cur*r.bs : (r.cur+1)*r.bs] }

func (r *ring) status() *uint32 {
	return (*uint32)(unsafe.Pointer(&r.mem[r.cur*r.bs+bdBlockStatus]))
}

// ready reports whether the current block belongs to user space.
func (r *ring) ready() bool {
	return atomic.LoadUint32(r.status())&unix.TP_STATUS_USER != 0
}

// release hands the current block back to the kernel and moves on.
func (r *ring) release() {
	atomic.StoreUint32(r.status(), unix.TP_STATUS_KERNEL)
	r.cur = (r.cur + 1) % r.nblocks
}

// errRingLayout: the kernel laid a packet out where we cannot frame it in
// place (never seen; checked rather than trusted).
var errRingLayout = errors.New("unexpected TPACKET_V3 block layout")

// records walks the current block: it writes each packet's pcap record
// header (little endian, as the stream's global header) into the 16 bytes
// before the packet's data, which hold the tail of the sockaddr_ll the
// kernel wrote there, and appends each record (header and data, contiguous)
// to iov. It stops after limit records (0: no limit) and returns the
// number of packets in the block.
func (r *ring) records(iov [][]byte, limit int, nanos bool) ([][]byte, int, error) {
	b := r.block()
	num := int(r.word(b, bdNumPkts))
	off := int(r.word(b, bdFirstPkt))
	n := num
	if limit > 0 && limit < n {
		n = limit
	}
	for i := 0; i < n; i++ {
		if off < 0 || off+tpHdrLen > r.bs {
			return iov, num, errRingLayout
		}
		next := int(r.word(b, off+tpNextOffset))
		sec := r.word(b, off+tpSec)
		nsec := r.word(b, off+tpNsec)
		caplen := r.word(b, off+tpSnaplen)
		length := r.word(b, off+tpLen)
		mac := int(*(*uint16)(unsafe.Pointer(&b[off+tpMac])))
		start, end := off+mac-pcapRecordLen, off+mac+int(caplen)
		if mac < tpHdrLen+pcapRecordLen || end > r.bs {
			return iov, num, errRingLayout
		}
		if !nanos {
			nsec /= 1000
		}
		h := b[start : start+pcapRecordLen]
		binary.LittleEndian.PutUint32(h[0:], sec)
		binary.LittleEndian.PutUint32(h[4:], nsec)
		binary.LittleEndian.PutUint32(h[8:], caplen)
		binary.LittleEndian.PutUint32(h[12:], max(length, caplen))
		iov = append(iov, b[start:end])
		off += next
	}
	return iov, num, nil
}

// wait returns when a block may be ready, on an error, or when the read
// deadline passes (wake sets it to wake the waiter).
func (r *ring) wait() error {
	first := true
	return r.rc.Read(func(uintptr) bool {
		if first {
			first = false
			return r.ready()
		}
		return true
	})
}

// wake makes the current or next wait return os.ErrDeadlineExceeded; the
// waiter clears it with unwake. Safe from any goroutine.
func (r *ring) wake()   { r.f.SetReadDeadline(time.Unix(1, 0)) }
func (r *ring) unwake() { r.f.SetReadDeadline(time.Time{}) }

// sockErr returns the socket's pending error: ENETDOWN when the interface
// went down or away under the capture.
func (r *ring) sockErr() error {
	var v int
	var gerr error
	if err := r.rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR) }); err != nil {
		return err
	}
	if gerr != nil {
		return gerr
	}
	if v != 0 {
		return syscall.Errno(v)
	}
	return nil
}

// pollDrops adds the packets the ring lost since the last call (reading
// PACKET_STATISTICS resets them) to r.drops and returns that delta. Safe
// from any goroutine, also after close (then it does nothing).
func (r *ring) pollDrops() uint64 {
	var d uint64
	r.rc.Control(func(fd uintptr) {
		if st, err := unix.GetsockoptTpacketStatsV3(int(fd), unix.SOL_PACKET, unix.PACKET_STATISTICS); err == nil {
			d = uint64(st.Drops)
		}
	})
	if d != 0 {
		r.drops.Add(d)
	}
	return d
}

// close closes the socket and unmaps the ring; the reader's goroutine only.
func (r *ring) close() {
	r.f.Close()
	if r.mem != nil {
		unix.Munmap(r.mem)
		r.mem = nil
	}
}
