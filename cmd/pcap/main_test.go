package main

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"os"
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

// With a file or a pipe as stdout the records are spliced, not copied
// through the process: the bytes must come out the same.
func TestRunSplicesToFileAndPipe(t *testing.T) {
	big := make([]byte, 700<<10)
	rand.Read(big)
	frames := func(c net.Conn) {
		wire.WriteFrame(c, wire.FramePcap, []byte("HEADER"))
		wire.WriteFrame(c, wire.FrameStats, wire.Stats{Packets: 1}.Marshal())
		wire.WriteFrame(c, wire.FramePcap, big)
		wire.WriteFrame(c, wire.FramePcap, nil)
		wire.WriteFrame(c, wire.FramePcap, []byte("TAIL"))
		wire.WriteFrame(c, wire.FrameStats, wire.Stats{Packets: 9}.Marshal())
	}
	want := append(append([]byte("HEADER"), big...), "TAIL"...)

	f, err := os.Create(filepath.Join(t.TempDir(), "out.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var errb bytes.Buffer
	if code := run([]string{"-S", fakeDaemon(t, wire.Request{}, frames)}, f, &errb); code != 0 || errb.String() != "pcap: 9 packets captured, 0 dropped\n" {
		t.Fatalf("to a file: exit %d, stderr %q", code, errb.String())
	}
	if got, _ := os.ReadFile(f.Name()); !bytes.Equal(got, want) {
		t.Fatalf("file holds %d bytes, want %d (equal: %v)", len(got), len(want), bytes.Equal(got, want))
	}

	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	got := make(chan []byte)
	go func() { b, _ := io.ReadAll(pr); got <- b }()
	errb.Reset()
	code := run([]string{"-S", fakeDaemon(t, wire.Request{}, frames)}, pw, &errb)
	pw.Close()
	if b := <-got; code != 0 || !bytes.Equal(b, want) {
		t.Fatalf("to a pipe: exit %d, %d bytes (want %d), stderr %q", code, len(b), len(want), errb.String())
	}
}
