// Command pcap is placed at /usr/bin/pcap inside every sandbox. It connects
// to the daemon's pcap socket and copies the experiment's packets to stdout
// as a pcap stream (link type Ethernet), until the daemon ends it, COUNT
// packets were written, stdout is closed, or it gets SIGINT/SIGTERM. At exit
// it prints "pcap: N packets captured, M dropped" on stderr. It needs no
// privileges: the daemon captures, this program only copies.
//
// Usage:
//
//	pcap [-s SNAPLEN] [-c COUNT] [-nano] [-S SOCKET] [FILTER ...]
//
// FILTER is a small tcpdump-like expression (see pcapstream/README.md), e.g.
// `pcap icmp or tcp port 80 > /tmp/x.pcap`. The socket is /run/ark/pcap.sock
// unless $ARK_PCAP_SOCK or -S names another.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/arkgw/arkgw/pcapstream/wire"
)

const defaultSocket = "/run/ark/pcap.sock"

// stopWait is how long pcap waits for the daemon's last frames after it
// asked the daemon to stop.
const stopWait = 2 * time.Second

// readBuf holds two of the daemon's largest frames.
const readBuf = 2 * (wire.HeaderLen + wire.MaxFrame)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout io.Writer, stderr io.Writer) int {
	fs := flag.NewFlagSet("pcap", flag.ContinueOnError)
	fs.SetOutput(stderr)
	snaplen := fs.Uint("s", 0, "keep at most `SNAPLEN` bytes of each packet (0 = whole packets)")
	count := fs.Uint64("c", 0, "stop after `COUNT` packets (0 = no limit)")
	nanos := fs.Bool("nano", false, "nanosecond timestamps (pcap magic a1b23c4d) instead of microseconds")
	sock := fs.String("S", "", "pcap `SOCKET` (default $ARK_PCAP_SOCK or "+defaultSocket+")")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: pcap [-s SNAPLEN] [-c COUNT] [-nano] [-S SOCKET] [FILTER ...] > file.pcap\n"+
			"Writes this experiment's packets (both directions of its network interface,\n"+
			"its own addresses) to stdout as pcap; drop counts go to stderr at exit.\n"+
			"FILTER: tcpdump-like, e.g. \"icmp\", \"tcp port 80\", \"host 198.51.100.1 and not udp\".\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *snaplen > 1<<31 {
		fmt.Fprintf(stderr, "pcap: -s %d: too large\n", *snaplen)
		return 2
	}
	path := *sock
	if path == "" {
		path = os.Getenv("ARK_PCAP_SOCK")
	}
	if path == "" {
		path = defaultSocket
	}
	req, err := wire.Request{Snaplen: uint32(*snaplen), Count: *count, Nanos: *nanos, Filter: strings.Join(fs.Args(), " ")}.Marshal()
	if err != nil {
		fmt.Fprintf(stderr, "pcap: %v\n", err)
		return 2
	}

	// With SIGPIPE notified, a write to a closed stdout returns EPIPE
	// instead of killing us, so the counts still get printed.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGPIPE)

	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		fmt.Fprintf(stderr, "pcap: connect to %s: %v (is packet capture enabled for this experiment?)\n", path, err)
		return 1
	}
	defer conn.Close()
	if _, err := conn.Write(req); err != nil {
		fmt.Fprintf(stderr, "pcap: send request to %s: %v\n", path, err)
		return 1
	}

	// stop asks the daemon to end the stream: it then sends what it holds,
	// the last counts, and closes.
	stopping := false
	stop := func() {
		if !stopping {
			stopping = true
			conn.CloseWrite()
			conn.SetReadDeadline(time.Now().Add(stopWait))
		}
	}
	go func() {
		for s := range sigs {
			if s == syscall.SIGPIPE {
				continue // the failed write reports it
			}
			// Only sets a deadline and half-closes: safe concurrently
			// with the reading loop.
			conn.CloseWrite()
			conn.SetReadDeadline(time.Now().Add(stopWait))
		}
	}()

	var (
		stats    wire.Stats
		gotStats bool
		failed   string
		outOK    = true
		// Each P frame is a block of records the daemon framed: one read
		// takes it whole (usually), one write puts it out.
		frames = wire.NewFrameReader(conn, readBuf)
	)
	for {
		typ, payload, err := frames.Next()
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrDeadlineExceeded) && failed == "" {
				failed = fmt.Sprintf("reading from %s: %v", path, err)
			}
			break
		}
		switch typ {
		case wire.FramePcap:
			if !outOK {
				continue
			}
			if _, err := stdout.Write(payload); err != nil {
				outOK = false
				if !errors.Is(err, syscall.EPIPE) {
					failed = fmt.Sprintf("write stdout: %v", err)
				}
				stop()
			}
		case wire.FrameStats:
			if s, err := wire.ParseStats(payload); err == nil {
				stats, gotStats = s, true
			}
		case wire.FrameError:
			failed = sanitize(payload)
		}
	}
	if gotStats {
		fmt.Fprintf(stderr, "pcap: %d packets captured, %d dropped\n", stats.Packets, stats.Dropped+stats.KernelDropped)
	}
	if failed != "" {
		fmt.Fprintf(stderr, "pcap: %s\n", failed)
		return 1
	}
	return 0
}

// sanitize keeps a daemon message printable.
func sanitize(b []byte) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, string(b))
}
