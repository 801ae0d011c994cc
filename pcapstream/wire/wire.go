// Package wire is the protocol spoken on an experiment's pcap socket between
// the daemon (package pcapstream) and the client inside the sandbox
// (cmd/pcap). It imports only the standard library so that the client stays
// a small static binary.
//
// Client to server, once, right after connecting: a request of text lines,
// at most MaxRequest bytes, ended by an empty line:
//
//	ARKPCAP 1
//	snaplen: 96
//	count: 10
//	nanos: 1
//	filter: tcp port 80
//	<empty line>
//
// Every key is optional; each may appear once. Unknown keys are refused so
// that a newer client talking to an older daemon learns it at once.
//
// Server to client: frames of a 1-byte type, a 4-byte big-endian payload
// length (at most MaxFrame) and the payload:
//
//	'P' pcap bytes: the concatenation of all P payloads is a pcap file
//	    (global header first, then records); a client writes them to stdout.
//	'S' statistics: Stats, 24 bytes; sent about once a second while they
//	    change and always as the last frame before the server closes.
//	'E' error: UTF-8 text for the user; the server closes after it.
//
// The client ends a capture by half-closing its side (shutdown SHUT_WR); the
// server then writes what it still holds, a last S frame, and closes.
package wire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Magic is the first line of a request.
const Magic = "ARKPCAP 1"

// MaxRequest bounds the request (magic, options, end line) in bytes.
const MaxRequest = 4096

// MaxFrame bounds a frame's payload in bytes.
const MaxFrame = 1 << 20

// MaxFilter bounds the filter expression in bytes.
const MaxFilter = 1024

// HeaderLen is the length of a frame header (type + length).
const HeaderLen = 5

// Frame types.
const (
	FramePcap  byte = 'P'
	FrameStats byte = 'S'
	FrameError byte = 'E'
)

// Request holds a client's capture options.
type Request struct {
	Snaplen uint32 // 0 = the server's default (full packets)
	Count   uint64 // 0 = until the client leaves
	Nanos   bool   // nanosecond timestamps (pcap magic 0xa1b23c4d) instead of microseconds
	Filter  string // filter expression, "" = every packet
}

// Marshal encodes r as a request.
func (r Request) Marshal() ([]byte, error) {
	if strings.ContainsAny(r.Filter, "\r\n") || len(r.Filter) > MaxFilter || !utf8.ValidString(r.Filter) {
		return nil, fmt.Errorf("filter must be one line of at most %d bytes of UTF-8", MaxFilter)
	}
	var b bytes.Buffer
	b.WriteString(Magic + "\n")
	if r.Snaplen != 0 {
		fmt.Fprintf(&b, "snaplen: %d\n", r.Snaplen)
	}
	if r.Count != 0 {
		fmt.Fprintf(&b, "count: %d\n", r.Count)
	}
	if r.Nanos {
		b.WriteString("nanos: 1\n")
	}
	if f := strings.TrimSpace(r.Filter); f != "" {
		fmt.Fprintf(&b, "filter: %s\n", f)
	}
	b.WriteString("\n")
	if b.Len() > MaxRequest {
		return nil, fmt.Errorf("request is %d bytes, more than %d", b.Len(), MaxRequest)
	}
	return b.Bytes(), nil
}

// ErrRequestTooLong is returned when no end line came within MaxRequest bytes.
var ErrRequestTooLong = errors.New("pcap request longer than 4096 bytes")

// ReadRequest reads and parses one request from r, reading at most
// MaxRequest bytes.
func ReadRequest(r io.Reader) (Request, error) {
	br := bufio.NewReaderSize(io.LimitReader(r, MaxRequest), 512)
	var raw []byte
	atStart := true
	for {
		line, err := br.ReadSlice('\n')
		raw = append(raw, line...)
		switch {
		case err == nil:
			if atStart && (string(line) == "\n" || string(line) == "\r\n") {
				return ParseRequest(raw)
			}
			atStart = true
			continue
		case err == bufio.ErrBufferFull:
			atStart = false
			continue
		case len(raw) >= MaxRequest:
			return Request{}, ErrRequestTooLong
		case err == io.EOF:
			return Request{}, fmt.Errorf("pcap request ended before its end line: %w", io.ErrUnexpectedEOF)
		default:
			return Request{}, fmt.Errorf("read pcap request: %w", err)
		}
	}
}

// ParseRequest parses a complete request (including its end line).
func ParseRequest(b []byte) (Request, error) {
	var req Request
	if len(b) > MaxRequest {
		return req, ErrRequestTooLong
	}
	if !utf8.Valid(b) {
		return req, errors.New("pcap request is not UTF-8")
	}
	s := strings.ReplaceAll(string(b), "\r\n", "\n")
	lines := strings.Split(s, "\n")
	// A well-formed request splits into: magic, options..., "", "".
	if len(lines) < 3 || lines[len(lines)-1] != "" || lines[len(lines)-2] != "" {
		return req, errors.New("pcap request must end with an empty line")
	}
	lines = lines[:len(lines)-2]
	if lines[0] != Magic {
		return req, fmt.Errorf("pcap request must start with %q (client and daemon versions differ?)", Magic)
	}
	seen := map[string]bool{}
	for _, line := range lines[1:] {
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			return req, fmt.Errorf("pcap request line %q: want \"key: value\"", clip(line))
		}
		key = strings.ToLower(strings.TrimSpace(key))
		val = strings.TrimSpace(val)
		if seen[key] {
			return req, fmt.Errorf("pcap request: option %q given twice", clip(key))
		}
		seen[key] = true
		switch key {
		case "snaplen":
			n, err := strconv.ParseUint(val, 10, 32)
			if err != nil {
				return req, fmt.Errorf("pcap request: snaplen %q: want a number of bytes", clip(val))
			}
			req.Snaplen = uint32(n)
		case "count":
			n, err := strconv.ParseUint(val, 10, 64)
			if err != nil {
				return req, fmt.Errorf("pcap request: count %q: want a number of packets", clip(val))
			}
			req.Count = n
		case "nanos":
			switch val {
			case "0":
				req.Nanos = false
			case "1":
				req.Nanos = true
			default:
				return req, fmt.Errorf("pcap request: nanos %q: want 0 or 1", clip(val))
			}
		case "filter":
			if len(val) > MaxFilter {
				return req, fmt.Errorf("pcap request: filter longer than %d bytes", MaxFilter)
			}
			req.Filter = val
		default:
			return req, fmt.Errorf("pcap request: unknown option %q (known: snaplen, count, nanos, filter)", clip(key))
		}
	}
	return req, nil
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// Stats is the payload of an S frame. Counts are for this reader since it
// connected.
type Stats struct {
	Packets       uint64 // packets written to this reader
	Dropped       uint64 // packets this reader lost because it did not keep up (its own capture ring was full)
	KernelDropped uint64 // 0 from daemons that give each reader its own ring (every loss is in Dropped); was the shared socket's drops
}

// StatsLen is the length of an S payload.
const StatsLen = 24

// Marshal encodes s as an S payload.
func (s Stats) Marshal() []byte {
	b := make([]byte, StatsLen)
	binary.BigEndian.PutUint64(b[0:], s.Packets)
	binary.BigEndian.PutUint64(b[8:], s.Dropped)
	binary.BigEndian.PutUint64(b[16:], s.KernelDropped)
	return b
}

// ParseStats decodes an S payload. Longer payloads are accepted (later
// versions may append fields).
func ParseStats(b []byte) (Stats, error) {
	if len(b) < StatsLen {
		return Stats{}, fmt.Errorf("stats frame of %d bytes, want %d", len(b), StatsLen)
	}
	return Stats{
		Packets:       binary.BigEndian.Uint64(b[0:]),
		Dropped:       binary.BigEndian.Uint64(b[8:]),
		KernelDropped: binary.BigEndian.Uint64(b[16:]),
	}, nil
}

// PutHeader writes a frame header for a payload of n bytes into b[:HeaderLen].
func PutHeader(b []byte, typ byte, n int) {
	b[0] = typ
	binary.BigEndian.PutUint32(b[1:HeaderLen], uint32(n))
}

// WriteFrame writes one frame.
func WriteFrame(w io.Writer, typ byte, payload []byte) error {
	if len(payload) > MaxFrame {
		return fmt.Errorf("frame of %d bytes exceeds %d", len(payload), MaxFrame)
	}
	b := make([]byte, HeaderLen+len(payload))
	PutHeader(b, typ, len(payload))
	copy(b[HeaderLen:], payload)
	_, err := w.Write(b)
	return err
}

// ReadFrame reads one frame into buf (grown as needed, up to MaxFrame) and
// returns its type and payload (aliasing buf). io.EOF means the stream ended
// cleanly between frames.
func ReadFrame(r io.Reader, buf []byte) (typ byte, payload []byte, newbuf []byte, err error) {
	var h [HeaderLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return 0, nil, buf, fmt.Errorf("truncated frame header: %w", err)
		}
		return 0, nil, buf, err
	}
	n := binary.BigEndian.Uint32(h[1:])
	if n > MaxFrame {
		return 0, nil, buf, fmt.Errorf("frame of %d bytes exceeds %d", n, MaxFrame)
	}
	switch h[0] {
	case FramePcap, FrameStats, FrameError:
	default:
		return 0, nil, buf, fmt.Errorf("unknown frame type %q", h[0])
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, buf, fmt.Errorf("truncated frame: %w", err)
	}
	return h[0], buf, buf, nil
}

// FrameReader reads frames through one large buffer: each read takes what
// the connection holds (a whole block of records, usually), and frames are
// returned from the buffer without a copy. cmd/pcap uses it to write each
// P payload with one write.
type FrameReader struct {
	r          io.Reader
	buf        []byte
	start, end int
}

// NewFrameReader returns a FrameReader on r; its buffer holds at least one
// frame of MaxFrame bytes.
func NewFrameReader(r io.Reader, size int) *FrameReader {
	return &FrameReader{r: r, buf: make([]byte, max(size, HeaderLen+MaxFrame))}
}

// Next returns the next frame; its payload is valid until the next call.
// io.EOF means the stream ended cleanly between frames.
func (f *FrameReader) Next() (typ byte, payload []byte, err error) {
	need := HeaderLen
	for {
		if have := f.end - f.start; have >= HeaderLen {
			h := f.buf[f.start:]
			n := int(binary.BigEndian.Uint32(h[1:HeaderLen]))
			if n > MaxFrame {
				return 0, nil, fmt.Errorf("frame of %d bytes exceeds %d", n, MaxFrame)
			}
			switch h[0] {
			case FramePcap, FrameStats, FrameError:
			default:
				return 0, nil, fmt.Errorf("unknown frame type %q", h[0])
			}
			need = HeaderLen + n
			if have >= need {
				f.start += need
				return h[0], h[HeaderLen:need:need], nil
			}
		}
		if f.start == f.end {
			f.start, f.end = 0, 0
		}
		if len(f.buf)-f.start < need {
			// Move the partial frame to the front (it fits: need <=
			// HeaderLen+MaxFrame <= len(buf)).
			f.end = copy(f.buf, f.buf[f.start:f.end])
			f.start = 0
		}
		// Once the frame's length is known, read no further than its
		// end: the buffer then empties with each frame and partial
		// frames are seldom moved.
		limit := len(f.buf)
		if need > HeaderLen {
			limit = f.start + need
		}
		n, err := f.r.Read(f.buf[f.end:limit])
		f.end += n
		if n > 0 {
			continue
		}
		if err == nil {
			continue
		}
		if err == io.EOF {
			if f.start == f.end {
				return 0, nil, io.EOF
			}
			if f.end-f.start < HeaderLen {
				return 0, nil, fmt.Errorf("truncated frame header: %w", io.ErrUnexpectedEOF)
			}
			return 0, nil, fmt.Errorf("truncated frame: %w", io.ErrUnexpectedEOF)
		}
		return 0, nil, err
	}
}
