package nflog

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/arkgw/arkgw/nsdo"
)

// Owner is the process found to own the socket that sent a packet.
type Owner struct {
	PID     int
	Command string
}

// errNoSocket: no live socket in the experiment matches the packet (it was
// spoofed, or the socket is gone).
var errNoSocket = errors.New("no matching socket")

// Attribute looks for the live TCP or UDP socket that sent p in the network
// namespace at nsPath (sock_diag over a netlink socket opened in that netns)
// and then for a process holding it (a scan of /proc/*/fd), giving up at
// deadline. It is best effort: a packet with a spoofed source, a socket
// already closed or a scan out of time yield an error.
func Attribute(nsPath string, p Packet, deadline time.Time) (Owner, error) {
	if p.ProtoNum != 6 && p.ProtoNum != 17 {
		return Owner{}, fmt.Errorf("attribute %s packet: only tcp and udp sockets are looked up", p.Proto())
	}
	ns, err := nsdo.Open(nsPath)
	if err != nil {
		return Owner{}, err
	}
	defer ns.Close()
	h, err := ns.NetlinkHandle(unix.NETLINK_INET_DIAG)
	if err != nil {
		return Owner{}, fmt.Errorf("sock_diag handle in netns %s: %w", nsPath, err)
	}
	defer h.Close()
	family := uint8(unix.AF_INET)
	if p.Src.Is6() && !p.Src.Is4In6() {
		family = unix.AF_INET6
	}
	var socks []*netlink.Socket
	if p.ProtoNum == 6 {
		socks, err = h.SocketDiagTCP(family)
	} else {
		socks, err = h.SocketDiagUDP(family)
	}
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return Owner{}, fmt.Errorf("sock_diag dump in netns %s: %w", nsPath, err)
	}
	inode := matchSocket(socks, p)
	if inode == 0 {
		return Owner{}, errNoSocket
	}
	return findInode(inode, deadline)
}

// matchSocket picks the socket that sent p: exact 4-tuple first, then a
// socket bound to the source port on the source address or the wildcard
// (an unconnected UDP socket).
func matchSocket(socks []*netlink.Socket, p Packet) uint32 {
	src, dst := net.IP(p.Src.AsSlice()), net.IP(p.Dst.AsSlice())
	var loose uint32
	for _, s := range socks {
		if s.ID.SourcePort != p.SrcPort || s.INode == 0 {
			continue
		}
		if s.ID.Source.Equal(src) && s.ID.DestinationPort == p.DstPort && s.ID.Destination.Equal(dst) {
			return s.INode
		}
		if loose == 0 && (s.ID.Source.Equal(src) || s.ID.Source.IsUnspecified()) && (s.ID.DestinationPort == 0 || s.ID.Destination.IsUnspecified()) {
			loose = s.INode
		}
	}
	return loose
}

// procRoot is /proc (a variable for tests).
var procRoot = "/proc"

// findInode scans /proc/<pid>/fd for "socket:[inode]" until deadline.
func findInode(inode uint32, deadline time.Time) (Owner, error) {
	want := "socket:[" + strconv.FormatUint(uint64(inode), 10) + "]"
	d, err := os.Open(procRoot)
	if err != nil {
		return Owner{}, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return Owner{}, err
	}
	// Newest processes first: an offending program is usually young.
	pids := make([]int, 0, len(names))
	for _, n := range names {
		if pid, err := strconv.Atoi(n); err == nil {
			pids = append(pids, pid)
		}
	}
	for i := len(pids) - 1; i >= 0; i-- {
		if time.Now().After(deadline) {
			return Owner{}, fmt.Errorf("socket inode %d: /proc scan out of time", inode)
		}
		pid := pids[i]
		fdDir := procRoot + "/" + strconv.Itoa(pid) + "/fd"
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			l, err := os.Readlink(fdDir + "/" + fd.Name())
			if err == nil && l == want {
				comm, _ := os.ReadFile(procRoot + "/" + strconv.Itoa(pid) + "/comm")
				return Owner{PID: pid, Command: strings.TrimSpace(string(comm))}, nil
			}
		}
	}
	return Owner{}, fmt.Errorf("socket inode %d: no process holds it", inode)
}
