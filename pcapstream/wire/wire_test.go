package wire

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestFrames(t *testing.T) {
	var b bytes.Buffer
	st := Stats{Packets: 7, Dropped: 2, KernelDropped: 1}
	for _, f := range []struct {
		typ byte
		p   []byte
	}{{FramePcap, []byte("pcapdata")}, {FrameStats, st.Marshal()}, {FrameError, []byte("no")}, {FramePcap, nil}} {
		if err := WriteFrame(&b, f.typ, f.p); err != nil {
			t.Fatal(err)
		}
	}
	var buf []byte
	want := []byte{FramePcap, FrameStats, FrameError, FramePcap}
	for i, w := range want {
		typ, p, nb, err := ReadFrame(&b, buf)
		buf = nb
		if err != nil || typ != w {
			t.Fatalf("frame %d: %q %v", i, typ, err)
		}
		if typ == FrameStats {
			got, err := ParseStats(p)
			if err != nil || got != st {
				t.Fatalf("stats %+v %v", got, err)
			}
		}
	}
	if _, _, _, err := ReadFrame(&b, buf); err != io.EOF {
		t.Fatalf("at end: %v, want io.EOF", err)
	}
	for name, in := range map[string][]byte{
		"truncated header":  {FramePcap, 0},
		"truncated payload": {FramePcap, 0, 0, 0, 5, 'a'},
		"unknown type":      {'X', 0, 0, 0, 0},
		"too big":           {FramePcap, 0xff, 0, 0, 0},
	} {
		if _, _, _, err := ReadFrame(bytes.NewReader(in), nil); err == nil || errors.Is(err, io.EOF) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
	if _, err := ParseStats([]byte{1, 2}); err == nil {
		t.Error("short stats accepted")
	}
}

func FuzzReadFrame(f *testing.F) {
	f.Add([]byte{FramePcap, 0, 0, 0, 1, 'x', FrameStats, 0, 0, 0, 24})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		var buf []byte
		for {
			typ, p, nb, err := ReadFrame(r, buf)
			buf = nb
			if err != nil {
				return
			}
			if typ == FrameStats {
				ParseStats(p)
			}
		}
	})
}
