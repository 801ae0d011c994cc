package flowlog

import (
	"context"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func mkFlow(exp, src, dst string, dport uint16, start time.Time, dur time.Duration) Flow {
	return Flow{
		Experiment: exp, Proto: 6,
		Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), SPort: 40000, DPort: dport,
		NATSrc: netip.MustParseAddr("192.168.77.2"), NATSPort: 50000,
		Start: start.UTC(), End: start.Add(dur).UTC(),
		PktsOut: 10, BytesOut: 1000, PktsIn: 8, BytesIn: 123456789,
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 14, 3, 0, 123456789, time.UTC)
	for _, f := range []Flow{
		mkFlow("x1", "10.250.0.2", "198.51.100.9", 22, t0, time.Second),
		mkFlow("abcdefghij", "fd00:a4c::2", "2001:db8:100::9", 443, t0, 3*time.Hour),
	} {
		got, err := decodeFlow(f.encode())
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, f) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, f)
		}
		if n := len(f.encode()); f.Src.Is4() && n > 80 {
			t.Errorf("IPv4 record is %d bytes; keep it compact", n)
		}
	}
}

func TestFind(t *testing.T) {
	s, err := OpenStore(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	t0 := time.Date(2026, 11, 25, 14, 0, 0, 0, time.UTC)
	flows := []Flow{
		mkFlow("x1", "10.250.0.2", "198.51.100.9", 22, t0, 5*time.Minute),
		mkFlow("x2", "10.250.0.6", "198.51.100.9", 22, t0.Add(10*time.Minute), time.Minute),
		mkFlow("x2", "10.250.0.6", "198.51.100.10", 80, t0, time.Hour),
		mkFlow("x3", "fd00:a4c:0:2::2", "2001:db8:100::9", 22, t0, time.Hour),
		// Ends the next UTC day: stored under that day, still found "at" t0.
		mkFlow("x4", "10.250.0.10", "203.0.113.1", 7, t0, 12*time.Hour),
	}
	flows[1].NATSrc = netip.MustParseAddr("192.0.2.77")
	if err := s.Append(flows); err != nil {
		t.Fatal(err)
	}
	ids := func(fs []Flow) (out []string) {
		for _, f := range fs {
			out = append(out, f.Experiment)
		}
		return out
	}
	cases := []struct {
		name string
		q    Query
		want []string
	}{
		{"who sent to dst:port at T", Query{Dst: netip.MustParsePrefix("198.51.100.9/32"), Port: 22, At: t0.Add(2 * time.Minute)}, []string{"x1"}},
		{"same dst later", Query{Dst: netip.MustParsePrefix("198.51.100.9/32"), Port: 22, At: t0.Add(10*time.Minute + 30*time.Second)}, []string{"x2"}},
		{"prefix", Query{Dst: netip.MustParsePrefix("198.51.100.0/24")}, []string{"x1", "x2", "x2"}},
		{"by NATed public source", Query{Src: netip.MustParseAddr("192.0.2.77")}, []string{"x2"}},
		{"by inside source", Query{Src: netip.MustParseAddr("10.250.0.2")}, []string{"x1"}},
		{"ipv6", Query{Dst: netip.MustParsePrefix("2001:db8:100::/48"), Port: 22}, []string{"x3"}},
		{"experiment", Query{Experiment: "x2", Port: 80}, []string{"x2"}},
		{"across midnight", Query{Dst: netip.MustParsePrefix("203.0.113.1/32"), At: t0.Add(time.Hour)}, []string{"x4"}},
		{"nothing at that time", Query{Dst: netip.MustParsePrefix("198.51.100.9/32"), At: t0.Add(-time.Minute)}, nil},
		{"until excludes later starts", Query{Port: 22, Until: t0.Add(time.Minute), Dst: netip.MustParsePrefix("198.51.100.0/24")}, []string{"x1"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := s.Find(c.q)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(ids(got), c.want) {
				t.Fatalf("got %v, want %v", ids(got), c.want)
			}
		})
	}
}

func TestStoreReopenAndExpire(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir, 7)
	if err != nil {
		t.Fatal(err)
	}
	old := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	s.Append([]Flow{mkFlow("x1", "10.250.0.2", "198.51.100.9", 22, old, time.Second), mkFlow("x2", "10.250.0.2", "198.51.100.9", 22, now, time.Second)})
	s.Close()

	s, err = OpenStore(dir, 7)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, _ := s.Find(Query{}); len(got) != 2 {
		t.Fatalf("after reopen: %d flows, want 2", len(got))
	}
	if err := s.Expire(now); err != nil {
		t.Fatal(err)
	}
	got, _ := s.Find(Query{})
	if len(got) != 1 || got[0].Experiment != "x2" {
		t.Fatalf("after expiry: %v, want only x2", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "2026-11-01.db")); !os.IsNotExist(err) {
		t.Fatalf("expired day file still there: %v", err)
	}
}

func TestParseQueryErrors(t *testing.T) {
	for _, c := range []struct{ q, want string }{
		{"dst=nope", `dst "nope"`},
		{"port=0", `port "0"`},
		{"port=70000", `port "70000"`},
		{"at=yesterday", `at "yesterday"`},
		{"proto=bogus", `protocol "bogus"`},
		{"limit=-1", `limit "-1"`},
	} {
		v, _ := url.ParseQuery(c.q)
		_, err := ParseQuery(v)
		if err == nil || !contains(err.Error(), c.want) {
			t.Errorf("ParseQuery(%s) = %v, want an error naming %s", c.q, err, c.want)
		}
	}
	v, _ := url.ParseQuery("dst=198.51.100.9&port=22&proto=tcp&at=2026-11-25T14:03:00Z")
	q, err := ParseQuery(v)
	if err != nil || q.Dst.Bits() != 32 || q.Port != 22 || q.Proto != 6 || q.At.IsZero() {
		t.Fatalf("ParseQuery(good) = %+v, %v", q, err)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func FuzzDecodeFlow(f *testing.F) {
	fl := mkFlow("x1", "10.250.0.2", "198.51.100.9", 22, time.Unix(1_800_000_000, 0), time.Second)
	f.Add(fl.encode())
	f.Add([]byte{1, 6, 200})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := decodeFlow(b)
		if err == nil {
			if _, err := decodeFlow(got.encode()); err != nil {
				t.Fatalf("re-encoding a decoded record fails: %v", err)
			}
		}
	})
}

func FuzzParseQuery(f *testing.F) {
	f.Add("dst=198.51.100.0/24&port=22&at=2026-11-25T14:03:00Z")
	f.Add("src=::ffff:1.2.3.4&proto=47&limit=5")
	f.Fuzz(func(t *testing.T, raw string) {
		v, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		q, err := ParseQuery(v)
		if err == nil && q.Dst.IsValid() && q.Dst != q.Dst.Masked() {
			t.Fatalf("dst %v not masked", q.Dst)
		}
	})
}

func TestParseProto(t *testing.T) {
	for in, want := range map[string]uint8{"tcp": 6, "udp": 17, "icmpv6": 58, "gre": 47, "esp": 50, "proto-253": 253, "47": 47} {
		if got, err := ParseProto(in); err != nil || got != want {
			t.Errorf("ParseProto(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	if _, err := ParseProto("nope"); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("ParseProto(nope) = %v", err)
	}
}

// The recorder deletes days past the retention when it starts (and hourly).
func TestRecorderExpiresOldDays(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir, 7)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	old := time.Now().UTC().AddDate(0, 0, -30)
	if err := s.Append([]Flow{mkFlow("x1", "10.250.0.2", "198.51.100.9", 22, old, time.Second)}); err != nil {
		t.Fatal(err)
	}
	r := NewRecorder(Config{Store: s, Attribute: attribute})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.flushLoop(ctx); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if got, _ := s.Find(Query{}); len(got) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a flow 30 days old is still there with a 7-day retention")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
}
