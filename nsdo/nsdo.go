// Package nsdo is how arkgw names and works in a network namespace. NS is
// "the namespace to work in": Current() (the zero value) or one opened from
// a namespace file; every package that takes a namespace takes an NS, and
// converts it with NS's methods for the library at hand (netlink handles,
// nftables options, go-conntrack/go-nflog NetNS).
//
// In runs code inside a namespace: socket creation
// (listeners, NFLOG, conntrack, AF_PACKET) binds a socket to the namespace
// of the thread that creates it, so a socket made in fn keeps working in that
// namespace after the thread returns.
//
// Threads: fn runs on a fresh goroutine locked to its OS thread. After fn the
// thread switches back; if it cannot, the goroutine exits still locked, and
// the Go runtime then terminates that thread instead of reusing it in the
// wrong namespace.
package nsdo

import (
	"context"
	"fmt"
	"net"
	"runtime"

	"golang.org/x/sys/unix"
)

// In runs fn with the calling OS thread in network namespace ns. For
// Current() fn runs directly on the calling goroutine.
func In(ns NS, fn func() error) error {
	if ns.IsCurrent() {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("nsdo: get current netns: %w", err)
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(ns.fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("nsdo: enter netns %s: %w", ns, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			// Stay locked: the thread dies with this goroutine.
			errc <- fmt.Errorf("nsdo: return from netns %s: %w (thread discarded)", ns, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Listen opens a stream listener inside ns.
func Listen(ns NS, network, addr string) (l net.Listener, err error) {
	err = In(ns, func() error {
		l, err = (&net.ListenConfig{}).Listen(context.Background(), network, addr)
		return err
	})
	return l, err
}

// ListenPacket opens a packet listener inside ns.
func ListenPacket(ns NS, network, addr string) (c net.PacketConn, err error) {
	err = In(ns, func() error {
		c, err = (&net.ListenConfig{}).ListenPacket(context.Background(), network, addr)
		return err
	})
	return c, err
}

// Dial connects from inside ns.
func Dial(ctx context.Context, ns NS, network, addr string) (c net.Conn, err error) {
	err = In(ns, func() error {
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}
