package pcapstream

import (
	"bytes"
	"strings"
	"testing"

	"github.com/arkgw/arkgw/pcapstream/wire"
)

func TestReadHandshake(t *testing.T) {
	cases := []struct {
		name, in string
		want     wire.Request
		err      string
	}{
		{"minimal", "ARKPCAP 1\n\n", wire.Request{}, ""},
		{"all", "ARKPCAP 1\nsnaplen: 96\ncount: 10\nnanos: 1\nfilter: tcp port 80\n\n", wire.Request{Snaplen: 96, Count: 10, Nanos: true, Filter: "tcp port 80"}, ""},
		{"crlf", "ARKPCAP 1\r\nSnapLen:128\r\n\r\n", wire.Request{Snaplen: 128}, ""},
		{"trailing bytes ignored", "ARKPCAP 1\n\nGARBAGE", wire.Request{}, ""},
		{"wrong magic", "ARKPCAP 2\n\n", wire.Request{}, "must start with"},
		{"no end line", "ARKPCAP 1\nsnaplen: 5\n", wire.Request{}, "ended before"},
		{"empty", "", wire.Request{}, "ended before"},
		{"unknown option", "ARKPCAP 1\nfoo: 1\n\n", wire.Request{}, "unknown option"},
		{"twice", "ARKPCAP 1\ncount: 1\ncount: 2\n\n", wire.Request{}, "twice"},
		{"bad snaplen", "ARKPCAP 1\nsnaplen: -1\n\n", wire.Request{}, "snaplen"},
		{"huge snaplen", "ARKPCAP 1\nsnaplen: 99999999999\n\n", wire.Request{}, "snaplen"},
		{"bad nanos", "ARKPCAP 1\nnanos: yes\n\n", wire.Request{}, "nanos"},
		{"no colon", "ARKPCAP 1\nsnaplen 5\n\n", wire.Request{}, "key: value"},
		{"bad filter", "ARKPCAP 1\nfilter: tcp port\n\n", wire.Request{Filter: "tcp port"}, "filter"},
		{"too long", "ARKPCAP 1\nfilter: " + strings.Repeat("x", 5000) + "\n\n", wire.Request{}, "longer than"},
		{"not utf8", "ARKPCAP 1\nfilter: \xff\n\n", wire.Request{}, "UTF-8"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, _, err := readHandshake(strings.NewReader(c.in))
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err = %v, want it to contain %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if req != c.want {
				t.Fatalf("got %+v, want %+v", req, c.want)
			}
		})
	}
}

func TestRequestRoundTrip(t *testing.T) {
	for _, r := range []wire.Request{{}, {Snaplen: 1}, {Count: 1 << 40, Nanos: true}, {Snaplen: 65535, Filter: "not (tcp or udp) and host 10.250.0.2"}} {
		b, err := r.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		got, _, err := readHandshake(bytes.NewReader(b))
		if err != nil || got != r {
			t.Fatalf("round trip %+v: got %+v, %v", r, got, err)
		}
	}
	if _, err := (wire.Request{Filter: "a\nb"}).Marshal(); err == nil {
		t.Fatal("newline in filter accepted")
	}
}

// FuzzHandshake feeds untrusted request bytes (they come from the sandbox)
// to the server's handshake: no panic, and whatever it accepts survives a
// round trip through the client's encoder.
func FuzzHandshake(f *testing.F) {
	f.Add([]byte("ARKPCAP 1\n\n"))
	f.Add([]byte("ARKPCAP 1\nsnaplen: 96\ncount: 10\nnanos: 1\nfilter: tcp port 80 or (icmp and not host 10.250.0.2)\n\n"))
	f.Add([]byte("ARKPCAP 1\r\nfilter: !(\r\n\r\n"))
	f.Add([]byte("ARKPCAP 1\n" + strings.Repeat("a", 600) + "\n\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		req, flt, err := readHandshake(bytes.NewReader(data))
		if err != nil {
			return
		}
		if flt != nil {
			flt.Match(data)
		}
		b, err := req.Marshal()
		if err != nil {
			return // e.g. a filter with surrounding spaces trimmed differently
		}
		again, _, err := readHandshake(bytes.NewReader(b))
		if err != nil || again != req {
			t.Fatalf("accepted %q as %+v but its re-encoding gives %+v, %v", data, req, again, err)
		}
	})
}
