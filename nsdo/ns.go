package nsdo

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NS is the network namespace to work in: either the current one (the
// namespace the process runs in, which is how the daemon runs on a node:
// started in the node's namespace with no handle) or one reached through an
// open namespace file descriptor.
//
// The zero value NS{} is the current namespace, exactly like Current(); it
// never means fd 0 or -1 (the libraries' own conventions differ: go-conntrack
// and go-nflog take 0 as "the calling thread's" and setns(-1) fails with
// EBADF, vishvananda/netns treats -1 as closed and 0 as an fd). Convert with
// the methods below, never with an integer cast.
//
// An NS from Open owns its descriptor until Close; copies share it. Current
// owns nothing; its Close is a no-op.
type NS struct {
	fd   int // > 0 when open; 0 = current (Open never yields fd 0, see Open)
	path string
}

// nsGetNSType is NS_GET_NSTYPE (_IO(0xb7, 0x3)), absent from x/sys/unix.
const nsGetNSType = 0xb703

// Current is the namespace the calling process runs in. Sockets and handles
// made for it are made by the calling thread without switching namespaces;
// the daemon never leaves a thread in another namespace (In switches back or
// lets the thread die), so every thread of the process is in it.
func Current() NS { return NS{} }

// Open opens the network namespace file at path (a bind mount under
// /run/netns, /proc/PID/ns/net, ...). The caller closes it.
func Open(path string) (NS, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return NS{}, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	if fd == 0 {
		// A process started with stdin closed can get fd 0 here, which the
		// netlink libraries would take for "current": move it up.
		nfd, derr := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3)
		unix.Close(fd)
		if derr != nil {
			return NS{}, fmt.Errorf("open network namespace %s: move fd 0: %w", path, derr)
		}
		fd = nfd
	}
	// NS_GET_NSTYPE (Linux 4.11) says what the fd is; anything but a
	// network namespace would make every later setns fail far from here.
	if t, err := unix.IoctlRetInt(fd, nsGetNSType); err != nil || t != unix.CLONE_NEWNET {
		unix.Close(fd)
		return NS{}, fmt.Errorf("open network namespace %s: not a network namespace file (bind mount of /proc/PID/ns/net expected)", path)
	}
	return NS{fd: fd, path: path}, nil
}

// IsCurrent reports whether ns is the current namespace.
func (ns NS) IsCurrent() bool { return ns.fd <= 0 }

// Fd returns the namespace's descriptor; ok=false for the current
// namespace (which has none). Use it only where an API wants a namespace
// fd (netlink.NsFd for moving a link); the methods below cover the rest.
func (ns NS) Fd() (fd int, ok bool) {
	if ns.IsCurrent() {
		return 0, false
	}
	return ns.fd, true
}

// Path is the file ns was opened from ("" for Current).
func (ns NS) Path() string { return ns.path }

// String names ns for messages: "current" or its path.
func (ns NS) String() string {
	if ns.IsCurrent() {
		return "current"
	}
	if ns.path != "" {
		return ns.path
	}
	return fmt.Sprintf("fd %d", ns.fd)
}

// Close releases the descriptor of an opened namespace (a no-op for
// Current). The namespace lives on while anything else holds it.
func (ns NS) Close() error {
	if ns.IsCurrent() {
		return nil
	}
	return unix.Close(ns.fd)
}

// NetlinkNetNS is the value for the NetNS field of mdlayher/netlink based
// configs (go-conntrack Config.NetNS, go-nflog Config.NetNS): 0 for the
// current namespace (the socket is made by the calling thread), the fd
// otherwise (the library enters it on a locked thread to make the socket).
func (ns NS) NetlinkNetNS() int {
	if ns.IsCurrent() {
		return 0
	}
	return ns.fd
}

// NFTOptions are the google/nftables connection options that reach ns:
// none for the current namespace, WithNetNSFd otherwise.
func (ns NS) NFTOptions() []nftables.ConnOption {
	if ns.IsCurrent() {
		return nil
	}
	return []nftables.ConnOption{nftables.WithNetNSFd(ns.fd)}
}

// NetlinkHandle opens a vishvananda/netlink handle (rtnetlink, tc, ...) in
// ns for the given netlink families (none: all the library supports). The
// caller deletes it (Handle.Close).
func (ns NS) NetlinkHandle(families ...int) (*netlink.Handle, error) {
	if ns.IsCurrent() {
		return netlink.NewHandle(families...)
	}
	return netlink.NewHandleAt(netns.NsHandle(ns.fd), families...)
}

// LinkNS is how netlink link attributes name ns (LinkAttrs.Namespace,
// Veth.PeerNamespace): the fd, or for the current namespace this process's
// pid (its main thread's namespace, which is every thread's here).
func (ns NS) LinkNS() any {
	if ns.IsCurrent() {
		return netlink.NsPid(unix.Getpid())
	}
	return netlink.NsFd(ns.fd)
}
