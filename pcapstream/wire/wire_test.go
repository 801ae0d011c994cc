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

// FrameReader returns the frames ReadFrame would, whatever the read sizes.
func TestFrameReader(t *testing.T) {
	var b bytes.Buffer
	big := bytes.Repeat([]byte("x"), MaxFrame)
	frames := []struct {
		typ byte
		p   []byte
	}{{FramePcap, []byte("head")}, {FramePcap, big}, {FrameStats, Stats{Packets: 3}.Marshal()}, {FramePcap, big[:7000]}, {FramePcap, big}, {FrameError, []byte("bye")}}
	for _, f := range frames {
		if err := WriteFrame(&b, f.typ, f.p); err != nil {
			t.Fatal(err)
		}
	}
	for _, chunk := range []int{1, 3, 4096, 1 << 20, 1 << 22} {
		fr := NewFrameReader(&chunked{r: bytes.NewReader(b.Bytes()), n: chunk}, 0)
		for i, f := range frames {
			typ, p, err := fr.Next()
			if err != nil || typ != f.typ || !bytes.Equal(p, f.p) {
				t.Fatalf("chunk %d, frame %d: %q %d bytes %v", chunk, i, typ, len(p), err)
			}
		}
		if _, _, err := fr.Next(); err != io.EOF {
			t.Fatalf("chunk %d: end: %v", chunk, err)
		}
	}
	fr := NewFrameReader(bytes.NewReader(b.Bytes()[:b.Len()-2]), 0)
	var err error
	for err == nil {
		_, _, err = fr.Next()
	}
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated stream: %v", err)
	}
}

type chunked struct {
	r io.Reader
	n int
}

func (c *chunked) Read(p []byte) (int, error) { return c.r.Read(p[:min(len(p), c.n)]) }

// FuzzFrameReader: any bytes from the socket give frames or an error,
// never a panic, and the same frames as ReadFrame.
func FuzzFrameReader(f *testing.F) {
	var b bytes.Buffer
	WriteFrame(&b, FramePcap, []byte("abc"))
	WriteFrame(&b, FrameStats, Stats{Packets: 1}.Marshal())
	f.Add(b.Bytes())
	f.Add([]byte{'P', 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		fr := NewFrameReader(bytes.NewReader(data), 0)
		r := bytes.NewReader(data)
		var buf []byte
		for {
			typ, p, err := fr.Next()
			typ2, p2, nb, err2 := ReadFrame(r, buf)
			buf = nb
			if (err == nil) != (err2 == nil) || typ != typ2 || !bytes.Equal(p, p2) {
				t.Fatalf("FrameReader %q %q %v, ReadFrame %q %q %v", typ, p, err, typ2, p2, err2)
			}
			if err != nil {
				return
			}
		}
	})
}
