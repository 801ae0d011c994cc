package sandboxinit

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// The configuration travels as a uint32 length (little-endian) and that
// many bytes of fields in the order of Config.fields: integers as
// varints, strings and lists with a uvarint length first. Not JSON: the
// init decodes it once, right after the Go runtime started, where
// encoding/json's first use (its reflection caches, code paged in) cost
// 0.2-0.9 ms of every launch, against some µs for this.

// maxConfig bounds the encoded configuration (it is the daemon's, but a
// length is not trusted to size an allocation).
const maxConfig = 1 << 20

// maxSeccomp bounds the program (the kernel's BPF_MAXINSNS).
const maxSeccomp = 4096

// fieldCodec is one direction of the encoding; fields walks Config's
// fields in their wire order with it, so both directions share the order.
type fieldCodec interface {
	str(*string)
	strs(*[]string)
	int(*int)
	i64(*int64)
	u32(*uint32)
	u64(*uint64)
	bool(*bool)
	u64s(*[]uint64)
}

func (c *Config) fields(f fieldCodec) {
	f.str(&c.ID)
	f.int(&c.ReportFD)
	f.int(&c.ResultFD)
	f.int(&c.RootFD)
	f.int(&c.FilesFD)
	f.int(&c.PcapBinFD)
	f.int(&c.PcapSockFD)
	f.int(&c.DevFD)
	f.i64(&c.TmpfsBytes)
	f.bool(&c.HasFiles)
	f.bool(&c.HasPcapBin)
	f.bool(&c.HasPcapSck)
	f.str(&c.Hostname)
	f.str(&c.ResolvConf)
	f.str(&c.Hosts)
	f.strs(&c.Args)
	f.strs(&c.Env)
	f.str(&c.Dir)
	f.u32(&c.UID)
	f.u32(&c.GID)
	f.u64(&c.NoFile)
	f.u64(&c.CPUSeconds)
	f.int(&c.Nice)
	f.strs(&c.Caps)
	f.strs(&c.CgroupTasks)
	f.u64s(&c.Seccomp)
}

// Layout is the container root's shape, which the daemon works out while
// the init starts (reading its mount table takes a good part of a
// millisecond) and sends after the cgroup byte: the init needs it only to
// build the root.
type Layout struct {
	// Skeleton are the mount points the container root lacks, relative
	// paths (directories end in "/"): made in the skeleton layer of the
	// root overlay, never in the root.
	Skeleton []string
	// Submounts are the mounts below the container root (relative paths,
	// parents first), mounted over the overlay, which sees only the top
	// one.
	Submounts []string
}

func (l *Layout) fields(f fieldCodec) {
	f.strs(&l.Skeleton)
	f.strs(&l.Submounts)
}

// Encode is the layout as the init reads it (framed like Config).
func (l *Layout) Encode() ([]byte, error) { return encodeMsg(l) }

func decodeLayout(rd *bufio.Reader) (Layout, error) {
	var l Layout
	if err := decodeMsg(rd, &l); err != nil {
		return Layout{}, fmt.Errorf("root layout: %w", err)
	}
	return l, nil
}

// message is a value with a wire order of fields.
type message interface{ fields(fieldCodec) }

func encodeMsg(m message) ([]byte, error) {
	e := encoder{b: make([]byte, 4, 256)}
	m.fields(&e)
	n := len(e.b) - 4
	if n > maxConfig {
		return nil, fmt.Errorf("message of %d bytes (at most %d)", n, maxConfig)
	}
	binary.LittleEndian.PutUint32(e.b, uint32(n))
	return e.b, nil
}

// decodeMsg reads what encodeMsg wrote, and nothing after it; an empty
// input is io.EOF.
func decodeMsg(rd *bufio.Reader, m message) error {
	var hdr [4]byte
	if _, err := io.ReadFull(rd, hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("length: %w", err)
		}
		return err
	}
	n := binary.LittleEndian.Uint32(hdr[:])
	if n > maxConfig {
		return fmt.Errorf("%d bytes (at most %d)", n, maxConfig)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(rd, buf); err != nil {
		return err
	}
	d := decoder{b: buf}
	m.fields(&d)
	if d.err == nil && len(d.b) > 0 {
		d.err = fmt.Errorf("%d bytes after the last field", len(d.b))
	}
	return d.err
}

// Encode is the configuration as the init reads it.
func (c *Config) Encode() ([]byte, error) {
	e := encoder{b: make([]byte, 4, 512+8*len(c.Seccomp))}
	c.fields(&e)
	n := len(e.b) - 4
	if n > maxConfig {
		return nil, fmt.Errorf("init configuration of %d bytes (at most %d)", n, maxConfig)
	}
	if len(c.Seccomp) > maxSeccomp {
		return nil, fmt.Errorf("seccomp program of %d instructions (at most %d)", len(c.Seccomp), maxSeccomp)
	}
	binary.LittleEndian.PutUint32(e.b, uint32(n))
	return e.b, nil
}

// decodeConfig reads what Encode wrote, and nothing after it. An empty
// input is io.EOF (the daemon gave up before sending it).
func decodeConfig(rd *bufio.Reader) (Config, error) {
	var c Config
	var hdr [4]byte
	if _, err := io.ReadFull(rd, hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return c, fmt.Errorf("configuration length: %w", err)
		}
		return c, err
	}
	n := binary.LittleEndian.Uint32(hdr[:])
	if n > maxConfig {
		return c, fmt.Errorf("configuration of %d bytes (at most %d)", n, maxConfig)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(rd, buf); err != nil {
		return c, fmt.Errorf("configuration: %w", err)
	}
	d := decoder{b: buf}
	c.fields(&d)
	if d.err == nil && len(d.b) > 0 {
		d.err = fmt.Errorf("%d bytes after the last field", len(d.b))
	}
	if d.err != nil {
		return Config{}, fmt.Errorf("configuration: %w", d.err)
	}
	return c, nil
}

type encoder struct{ b []byte }

func (e *encoder) uv(x uint64) { e.b = binary.AppendUvarint(e.b, x) }
func (e *encoder) str(s *string) {
	e.uv(uint64(len(*s)))
	e.b = append(e.b, *s...)
}
func (e *encoder) strs(ss *[]string) {
	e.uv(uint64(len(*ss)))
	for i := range *ss {
		e.str(&(*ss)[i])
	}
}
func (e *encoder) int(x *int)    { e.b = binary.AppendVarint(e.b, int64(*x)) }
func (e *encoder) i64(x *int64)  { e.b = binary.AppendVarint(e.b, *x) }
func (e *encoder) u32(x *uint32) { e.uv(uint64(*x)) }
func (e *encoder) u64(x *uint64) { e.uv(*x) }
func (e *encoder) bool(x *bool) {
	if *x {
		e.uv(1)
	} else {
		e.uv(0)
	}
}
func (e *encoder) u64s(xs *[]uint64) {
	e.uv(uint64(len(*xs)))
	for _, x := range *xs {
		e.b = binary.LittleEndian.AppendUint64(e.b, x)
	}
}

// decoder consumes b; the first error stops it (later fields stay zero).
type decoder struct {
	b   []byte
	err error
}

var errTruncated = errors.New("truncated")

func (d *decoder) uv() uint64 {
	if d.err != nil {
		return 0
	}
	x, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errTruncated
		return 0
	}
	d.b = d.b[n:]
	return x
}

// v reads what binary.AppendVarint wrote: a zig-zag uvarint.
func (d *decoder) v() int64 {
	u := d.uv()
	return int64(u>>1) ^ -int64(u&1)
}

// count is a length prefix of items of at least size bytes each, checked
// against what is left before anything is allocated.
func (d *decoder) count(size int) int {
	n := d.uv()
	if d.err == nil && n > uint64(len(d.b)/size) {
		d.err = fmt.Errorf("length %d exceeds the %d bytes left", n, len(d.b))
		return 0
	}
	return int(n)
}

func (d *decoder) str(s *string) {
	n := d.count(1)
	if d.err != nil {
		return
	}
	*s = string(d.b[:n])
	d.b = d.b[n:]
}

func (d *decoder) strs(ss *[]string) {
	n := d.count(1)
	if d.err != nil || n == 0 {
		return
	}
	*ss = make([]string, n)
	for i := range *ss {
		d.str(&(*ss)[i])
	}
}

func (d *decoder) int(x *int) {
	v := d.v()
	if v < math.MinInt32 || v > math.MaxInt32 {
		d.err = fmt.Errorf("integer %d out of range", v)
	}
	*x = int(v)
}

func (d *decoder) i64(x *int64) { *x = d.v() }

func (d *decoder) u32(x *uint32) {
	v := d.uv()
	if v > math.MaxUint32 {
		d.err = fmt.Errorf("integer %d out of range", v)
	}
	*x = uint32(v)
}

func (d *decoder) u64(x *uint64) { *x = d.uv() }

func (d *decoder) bool(x *bool) {
	switch d.uv() {
	case 0:
	case 1:
		*x = true
	default:
		if d.err == nil {
			d.err = errors.New("boolean not 0 or 1")
		}
	}
}

func (d *decoder) u64s(xs *[]uint64) {
	n := d.count(8)
	if d.err != nil || n == 0 {
		return
	}
	if n > maxSeccomp {
		d.err = fmt.Errorf("seccomp program of %d instructions (at most %d)", n, maxSeccomp)
		return
	}
	*xs = make([]uint64, n)
	for i := range *xs {
		(*xs)[i] = binary.LittleEndian.Uint64(d.b)
		d.b = d.b[8:]
	}
}
