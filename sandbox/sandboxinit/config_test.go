package sandboxinit

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

func sampleConfig() Config {
	return Config{ID: "x1", ReportFD: 4, ResultFD: 7, RootFD: 5, FilesFD: 6, PcapBinFD: -1, DevFD: 8, TmpfsBytes: 8 << 20,
		HasFiles: true, Hostname: "ark-x1", ResolvConf: "nameserver 10.250.0.1\n", Hosts: "127.0.0.1 localhost\n",
		Args: []string{"/bin/true", "a b", ""}, Env: []string{"PATH=/bin"}, Dir: "/experiment",
		UID: 1000, GID: 1000, NoFile: 1024, CPUSeconds: 1<<40 + 3, Nice: 10, Caps: []string{"CAP_NET_RAW"},
		CgroupTasks: []string{"/sys/fs/cgroup/pids/x/tasks"},
		Seccomp:     []uint64{0x20 << 48, 1<<48 | 2<<40 | 3<<32 | 0xdeadbeef, ^uint64(0)}}
}

// The daemon's encoding and the init's decoding agree, and the bytes that
// follow on the same pipe are still there to read.
func TestConfigRoundTrip(t *testing.T) {
	c := sampleConfig()
	b, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	rd := bufio.NewReader(bytes.NewReader(append(b, 'c', 'g')))
	got, err := decodeConfig(rd)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, c) {
		t.Fatalf("decoded %+v, want %+v", got, c)
	}
	if rest, err := io.ReadAll(rd); err != nil || string(rest) != "cg" {
		t.Fatalf("after the config: %q %v", rest, err)
	}
}

func TestConfigDecodeRefusals(t *testing.T) {
	c := sampleConfig()
	good, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	withLen := func(payload []byte) []byte {
		return append(binary.LittleEndian.AppendUint32(nil, uint32(len(payload))), payload...)
	}
	for _, tc := range []struct {
		name, in, want string
	}{
		{"nothing (the daemon gave up)", "", "EOF"},
		{"half a length", "\x01\x00", "configuration length"},
		{"a length over the bound", "\xff\xff\xff\xff", "at most 1048576"},
		{"shorter than its length", string(good[:len(good)-3]), "unexpected EOF"},
		{"truncated fields", string(withLen(good[4 : len(good)-30])), "configuration"},
		{"a string longer than what is left", string(withLen([]byte{0x7f, 'a'})), "exceeds the 1 bytes left"},
		{"bytes after the last field", string(withLen(append(append([]byte{}, good[4:]...), 0))), "1 bytes after the last field"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeConfig(bufio.NewReader(strings.NewReader(tc.in)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if tc.in == "" && !errors.Is(err, io.EOF) {
				t.Fatalf("empty input: %v, want io.EOF", err)
			}
		})
	}
	// A program longer than the kernel takes is refused, not allocated.
	c.Seccomp = make([]uint64, maxSeccomp+1)
	if _, err := c.Encode(); err == nil {
		t.Fatal("encoded a program the kernel refuses")
	}
	e := encoder{b: make([]byte, 4)}
	c.fields(&e)
	binary.LittleEndian.PutUint32(e.b, uint32(len(e.b)-4))
	if _, err := decodeConfig(bufio.NewReader(bytes.NewReader(e.b))); err == nil || !strings.Contains(err.Error(), "4097 instructions") {
		t.Fatalf("program of %d instructions: %v", maxSeccomp+1, err)
	}
}

// The configuration comes from the daemon, but the init must not crash or
// over-allocate on any bytes; what it accepts encodes back the same.
func FuzzDecodeConfig(f *testing.F) {
	c := sampleConfig()
	good, _ := c.Encode()
	f.Add(good)
	f.Add([]byte{})
	f.Add([]byte{3, 0, 0, 0, 0x80, 0x80, 0x80})
	f.Fuzz(func(t *testing.T, in []byte) {
		got, err := decodeConfig(bufio.NewReader(bytes.NewReader(in)))
		if err != nil {
			return
		}
		b, err := got.Encode()
		if err != nil {
			t.Fatalf("decoded config does not encode: %v", err)
		}
		again, err := decodeConfig(bufio.NewReader(bytes.NewReader(b)))
		if err != nil || !reflect.DeepEqual(again, got) {
			t.Fatalf("re-encoded config decodes to %+v (%v), want %+v", again, err, got)
		}
	})
}

// The layout follows the cgroup byte; the 'g' after it stays to be read.
func TestLayoutRoundTrip(t *testing.T) {
	for _, l := range []Layout{{}, {Skeleton: []string{"proc/", "etc/resolv.conf"}, Submounts: []string{"usr", "usr/local"}}} {
		b, err := l.Encode()
		if err != nil {
			t.Fatal(err)
		}
		rd := bufio.NewReader(bytes.NewReader(append(b, 'g')))
		got, err := decodeLayout(rd)
		if err != nil || !reflect.DeepEqual(got, l) {
			t.Fatalf("decoded %+v (%v), want %+v", got, err, l)
		}
		if rest, _ := io.ReadAll(rd); string(rest) != "g" {
			t.Fatalf("after the layout: %q", rest)
		}
	}
	if _, err := decodeLayout(bufio.NewReader(bytes.NewReader([]byte{2, 0, 0, 0, 5, 'a'}))); err == nil {
		t.Fatal("truncated layout accepted")
	}
}

// Layouts come from the daemon, but the init must not crash on any bytes.
func FuzzDecodeLayout(f *testing.F) {
	good, _ := (&Layout{Skeleton: []string{"proc/"}, Submounts: []string{"usr"}}).Encode()
	f.Add(good)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		got, err := decodeLayout(bufio.NewReader(bytes.NewReader(in)))
		if err != nil {
			return
		}
		b, err := got.Encode()
		if err != nil {
			t.Fatal(err)
		}
		again, err := decodeLayout(bufio.NewReader(bytes.NewReader(b)))
		if err != nil || !reflect.DeepEqual(again, got) {
			t.Fatalf("re-encoded layout decodes to %+v (%v), want %+v", again, err, got)
		}
	})
}
