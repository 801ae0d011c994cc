// Package nsdo runs code inside another network namespace: socket creation
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

	"github.com/vishvananda/netns"
)

// In runs fn with the calling OS thread in network namespace ns. A closed or
// zero handle (netns.None()) means the current namespace: fn runs directly.
func In(ns netns.NsHandle, fn func() error) error {
	if !ns.IsOpen() {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("nsdo: get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("nsdo: enter netns %s: %w", ns, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
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
func Listen(ns netns.NsHandle, network, addr string) (l net.Listener, err error) {
	err = In(ns, func() error {
		l, err = (&net.ListenConfig{}).Listen(context.Background(), network, addr)
		return err
	})
	return l, err
}

// ListenPacket opens a packet listener inside ns.
func ListenPacket(ns netns.NsHandle, network, addr string) (c net.PacketConn, err error) {
	err = In(ns, func() error {
		c, err = (&net.ListenConfig{}).ListenPacket(context.Background(), network, addr)
		return err
	})
	return c, err
}

// Dial connects from inside ns.
func Dial(ctx context.Context, ns netns.NsHandle, network, addr string) (c net.Conn, err error) {
	err = In(ns, func() error {
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}
