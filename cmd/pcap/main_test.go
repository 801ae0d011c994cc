package main

import (
	"bytes"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/arkgw/arkgw/pcapstream/wire"
)

// fakeDaemon accepts one connection, checks the request, and answers with
// the given frames.
func fakeDaemon(t *testing.T, want wire.Request, frames func(c net.Conn)) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "pcap.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	done := make(chan struct{})
	t.Cleanup(func() { <-done })
	go func() {
		defer close(done)
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		req, err := wire.ReadRequest(c)
		if err != nil || req != want {
			wire.WriteFrame(c, wire.FrameError, []byte("unexpected request"))
			t.Errorf("request %+v, %v; want %+v", req, err, want)
			return
		}
		frames(c)
	}()
	return sock
}

func TestRunCopiesPcapAndPrintsCounts(t *testing.T) {
	sock := fakeDaemon(t, wire.Request{Snaplen: 96, Count: 5, Filter: "tcp port 80"}, func(c net.Conn) {
		wire.WriteFrame(c, wire.FramePcap, []byte("HEADER"))
		wire.WriteFrame(c, wire.FrameStats, wire.Stats{Packets: 1}.Marshal())
		wire.WriteFrame(c, wire.FramePcap, []byte("RECORDS"))
		wire.WriteFrame(c, wire.FrameStats, wire.Stats{Packets: 5, Dropped: 2, KernelDropped: 1}.Marshal())
	})
	var out, errb bytes.Buffer
	code := run([]string{"-S", sock, "-s", "96", "-c", "5", "tcp", "port", "80"}, &out, &errb)
	if code != 0 || out.String() != "HEADERRECORDS" || errb.String() != "pcap: 5 packets captured, 3 dropped\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
}

func TestRunReportsDaemonError(t *testing.T) {
	sock := fakeDaemon(t, wire.Request{}, func(c net.Conn) {
		wire.WriteFrame(c, wire.FrameError, []byte("too many pcap readers\x1b[31m"))
	})
	t.Setenv("ARK_PCAP_SOCK", sock)
	var out, errb bytes.Buffer
	if code := run(nil, &out, &errb); code != 1 || out.Len() != 0 || errb.String() != "pcap: too many pcap readers [31m\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
}

type brokenWriter struct{}

func (brokenWriter) Write([]byte) (int, error) { return 0, io.ErrClosedPipe }

func TestRunStopsWhenStdoutFails(t *testing.T) {
	sock := fakeDaemon(t, wire.Request{}, func(c net.Conn) {
		wire.WriteFrame(c, wire.FramePcap, []byte("HEADER"))
		// The client must half-close; then the daemon sends its counts.
		io.Copy(io.Discard, c)
		wire.WriteFrame(c, wire.FrameStats, wire.Stats{Packets: 1}.Marshal())
	})
	var errb bytes.Buffer
	code := run([]string{"-S", sock}, brokenWriter{}, &errb)
	if code != 1 || !strings.Contains(errb.String(), "pcap: 1 packets captured, 0 dropped\n") || !strings.Contains(errb.String(), "write stdout") {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
}

func TestRunUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"-x"}, &out, &errb); code != 2 {
		t.Fatalf("bad flag: exit %d", code)
	}
	if code := run([]string{"-S", filepath.Join(t.TempDir(), "none.sock")}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "connect to") {
		t.Fatalf("no socket: exit %d, %q", code, errb.String())
	}
}
