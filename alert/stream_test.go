package alert

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStream(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	path := filepath.Join(t.TempDir(), "alerts.jsonl")
	s, err := OpenStream(StreamConfig{File: path, Syslog: "udp://" + pc.LocalAddr().String(), Node: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	s.Emit(rec(1))
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	n, _, err := pc.ReadFrom(buf)
	if err != nil || !strings.Contains(string(buf[:n]), " n1 arkgw ") {
		t.Fatalf("syslog: %v %q", err, buf[:n])
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := readAllRecords(t, path); len(got) != 1 {
		t.Fatalf("file has %d records", len(got))
	}
	if len(s.Collectors()) != 2 {
		t.Fatal("collectors")
	}
	if _, err := OpenStream(StreamConfig{File: path, Syslog: "bogus"}); err == nil || !strings.Contains(err.Error(), "[alerts].syslog") {
		t.Fatalf("bad syslog target: %v", err)
	}
}
