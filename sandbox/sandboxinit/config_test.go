package sandboxinit

import (
	"bufio"
	"bytes"
	"reflect"
	"testing"
)

// The daemon's encoding and the init's decoding agree, and the "go" byte
// that follows on the same pipe is still there to read.
func TestConfigRoundTrip(t *testing.T) {
	c := Config{ID: "x1", ReportFD: 4, ResultFD: 7, RootFD: 5, Args: []string{"/bin/true", "a b"},
		Env: []string{"PATH=/bin"}, UID: 1000, GID: 1000, Caps: []string{"CAP_NET_RAW"},
		Seccomp: []uint64{0x20 << 48, 1<<48 | 2<<40 | 3<<32 | 0xdeadbeef, ^uint64(0)}}
	b, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	rd := bufio.NewReader(bytes.NewReader(append(b, 'g')))
	got, err := decodeConfig(rd)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, c) {
		t.Fatalf("decoded %+v, want %+v", got, c)
	}
	if g, err := rd.ReadByte(); err != nil || g != 'g' {
		t.Fatalf("after the config: %q %v", g, err)
	}
	// A program longer than the kernel takes is refused, not allocated.
	bad := append(b[:bytes.IndexByte(b, '\n')+1:bytes.IndexByte(b, '\n')+1], 0xff, 0xff, 0xff, 0xff)
	if _, err := decodeConfig(bufio.NewReader(bytes.NewReader(bad))); err == nil {
		t.Fatal("a 4-billion-instruction program was accepted")
	}
}
