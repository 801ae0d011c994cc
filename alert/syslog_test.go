package alert

import (
	"bufio"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestFormatRFC5424(t *testing.T) {
	r := rec(0)
	r.Rule = `we"ird]`
	got := string(FormatRFC5424(SyslogHeader{Facility: FacilityLocal0, Hostname: "node 1", ProcID: "77"}, r))
	wantHead := `<132>1 2026-11-25T18:00:00.000000Z node_1 arkgw 77 packet [arkgw@32473 exp="e1" rule="we\"ird\]"] ` + "\xef\xbb\xbf{"
	if !strings.HasPrefix(got, wantHead) {
		t.Fatalf("syslog message:\n got %q\nwant prefix %q", got, wantHead)
	}
	if !strings.HasSuffix(got, `"message":"record 0"}`) {
		t.Fatalf("syslog message does not end with the JSON record: %q", got)
	}
	for _, tc := range []struct {
		kind string
		pri  string
	}{{KindOverrun, "<27>"}, {KindEnforced, "<29>"}, {KindDNS, "<28>"}} {
		r.Kind = tc.kind
		if m := string(FormatRFC5424(SyslogHeader{}, r)); !strings.HasPrefix(m, tc.pri+"1 ") {
			t.Errorf("kind %s: got %q, want priority %s", tc.kind, m[:10], tc.pri)
		}
	}
}

func TestSyslogSinkUDPAndTCP(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	s, err := NewSyslogSink("udp://"+pc.LocalAddr().String(), SyslogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Emit(rec(1))
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	n, _, err := pc.ReadFrom(buf)
	if err != nil || !strings.Contains(string(buf[:n]), `"message":"record 1"`) {
		t.Fatalf("udp syslog: %v %q", err, buf[:n])
	}
	s.Close()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	s, err = NewSyslogSink("tcp://"+ln.Addr().String(), SyslogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Emit(rec(2))
	s.Emit(rec(3))
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	for _, want := range []string{"record 2", "record 3"} {
		lenStr, err := br.ReadString(' ')
		if err != nil {
			t.Fatal(err)
		}
		n, err := strconv.Atoi(strings.TrimSpace(lenStr))
		if err != nil {
			t.Fatalf("octet count %q: %v", lenStr, err)
		}
		msg := make([]byte, n)
		if _, err := io.ReadFull(br, msg); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(msg), "<28>1 ") || !strings.Contains(string(msg), want) {
			t.Fatalf("tcp syslog frame %q, want %s", msg, want)
		}
	}
	if _, err := NewSyslogSink("http://x", SyslogOptions{}); err == nil {
		t.Fatal("http target accepted")
	}
}
