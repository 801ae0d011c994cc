package pcapstream

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/net/bpf"
)

// Filters run in the kernel as classic BPF attached to each reader's own
// capture socket (SO_ATTACH_FILTER): a packet the reader does not want is
// dropped in the kernel without waking the daemon, and the program's accept
// value is the reader's snap length, so the kernel also cuts the frames.
//
// The program first decodes the frame into scratch memory exactly as
// headers.decode does (EtherType after VLAN tags, address family, protocol,
// ports; the IPv6 extension-header walk unrolled to maxExtHeaders), with
// every packet load guarded by a length check (a classic BPF load past the
// end would reject the packet). Values that are absent get a sentinel that
// no comparison matches (protocol 0x100, ports 0x10000, family 0), so each
// primitive is a few compares against scratch memory or the addresses. The
// expression is then compiled with true/false labels (short circuit).

// maxBPFInstructions is the kernel's limit for a classic program
// (BPF_MAXINSNS).
const maxBPFInstructions = 4096

// Scratch memory slots.
const (
	mET    = iota // EtherType after VLAN tags (0: frame shorter than 14 bytes)
	mL3           // offset of the network header
	mAF           // 4 or 6 when the addresses are present, else 0
	mProto        // IP protocol, or 0x100 when unknown
	mOff          // running offset (IPv6 walk), then the transport header's
	mSport        // source port, or 0x10000
	mDport        // destination port, or 0x10000
	mRem          // bytes left from the current offset
	mN            // IPv4 header length; IPv6 extension header length
	mNH           // IPv6 next header
	mSlots
)

const (
	noProto = 0x100
	noPort  = 0x10000
)

// BPF returns the classic BPF program for f that accepts a frame with
// snaplen bytes (the kernel cuts it there) or rejects it. A nil Filter
// accepts every frame.
func (f *Filter) BPF(snaplen uint32) ([]bpf.Instruction, error) {
	if f == nil {
		return []bpf.Instruction{bpf.RetConstant{Val: snaplen}}, nil
	}
	a := &asm{}
	t, fl := a.label(), a.label()
	a.decode()
	a.expr(f.root, t, fl)
	a.mark(t)
	a.op(bpf.RetConstant{Val: snaplen})
	a.mark(fl)
	a.op(bpf.RetConstant{Val: 0})
	prog, err := a.link()
	if err != nil {
		return nil, fmt.Errorf("filter %q: %w", clip(f.expr), err)
	}
	return prog, nil
}

// asm assembles a classic BPF program with forward jumps to labels.
// Conditional jumps skip at most 255 instructions; one that must go further
// becomes a conditional jump over two unconditional ones (link relaxes the
// layout until every jump fits).
type asm struct {
	ins    []asmIns
	labels []int // label -> index in ins of the instruction it precedes
}

type asmIns struct {
	op   bpf.Instruction // plain instruction, or nil for a jump
	cond bpf.JumpTest
	val  uint32
	isIf bool
	t, f int // labels (f unused for an unconditional jump)
	long bool
}

func (a *asm) label() int {
	a.labels = append(a.labels, -1)
	return len(a.labels) - 1
}

func (a *asm) mark(l int) { a.labels[l] = len(a.ins) }

func (a *asm) op(ins ...bpf.Instruction) {
	for _, i := range ins {
		a.ins = append(a.ins, asmIns{op: i})
	}
}

// jif jumps to t if A <cond> val, else to f.
func (a *asm) jif(cond bpf.JumpTest, val uint32, t, f int) {
	a.ins = append(a.ins, asmIns{isIf: true, cond: cond, val: val, t: t, f: f})
}

// jeqElse falls through if A == val, else jumps to f.
func (a *asm) jeqElse(val uint32, f int) {
	next := a.label()
	a.jif(bpf.JumpEqual, val, next, f)
	a.mark(next)
}

// jgeElse falls through if A >= val, else jumps to f.
func (a *asm) jgeElse(val uint32, f int) {
	next := a.label()
	a.jif(bpf.JumpGreaterOrEqual, val, next, f)
	a.mark(next)
}

func (a *asm) ja(l int) { a.ins = append(a.ins, asmIns{t: l}) }

func (a *asm) ldm(n int)  { a.op(bpf.LoadScratch{Dst: bpf.RegA, N: n}) }
func (a *asm) ldxm(n int) { a.op(bpf.LoadScratch{Dst: bpf.RegX, N: n}) }
func (a *asm) st(n int)   { a.op(bpf.StoreScratch{Src: bpf.RegA, N: n}) }

// link resolves the labels and returns the program.
func (a *asm) link() ([]bpf.Instruction, error) {
	for l, at := range a.labels {
		if at < 0 {
			return nil, fmt.Errorf("internal error: BPF label %d never placed", l)
		}
	}
	pos := make([]int, len(a.ins)+1)
	for {
		p := 0
		for i, in := range a.ins {
			pos[i] = p
			switch {
			case in.isIf && in.long:
				p += 3
			default:
				p++
			}
		}
		pos[len(a.ins)] = p
		if p > maxBPFInstructions {
			return nil, fmt.Errorf("too complex: %d BPF instructions, the kernel allows %d (use fewer or simpler terms)", p, maxBPFInstructions)
		}
		changed := false
		for i := range a.ins {
			in := &a.ins[i]
			if in.isIf && !in.long && (pos[a.labels[in.t]]-pos[i]-1 > 255 || pos[a.labels[in.f]]-pos[i]-1 > 255) {
				in.long, changed = true, true
			}
		}
		if !changed {
			break
		}
	}
	prog := make([]bpf.Instruction, 0, pos[len(a.ins)])
	for i, in := range a.ins {
		switch {
		case in.op != nil:
			prog = append(prog, in.op)
		case in.isIf && !in.long:
			t, f := pos[a.labels[in.t]]-pos[i]-1, pos[a.labels[in.f]]-pos[i]-1
			if t < 0 || f < 0 {
				return nil, fmt.Errorf("internal error: backward BPF jump")
			}
			prog = append(prog, in.cjump(uint8(t), uint8(f)))
		case in.isIf:
			t, f := pos[a.labels[in.t]]-pos[i]-2, pos[a.labels[in.f]]-pos[i]-3
			if t < 0 || f < 0 {
				return nil, fmt.Errorf("internal error: backward BPF jump")
			}
			prog = append(prog, in.cjump(0, 1),
				bpf.Jump{Skip: uint32(t)}, bpf.Jump{Skip: uint32(f)})
		default:
			t := pos[a.labels[in.t]] - pos[i] - 1
			if t < 0 {
				return nil, fmt.Errorf("internal error: backward BPF jump")
			}
			prog = append(prog, bpf.Jump{Skip: uint32(t)})
		}
	}
	return prog, nil
}

func (in *asmIns) cjump(t, f uint8) bpf.Instruction {
	if in.cond == jgeX {
		return bpf.JumpIfX{Cond: bpf.JumpGreaterOrEqual, SkipTrue: t, SkipFalse: f}
	}
	return bpf.JumpIf{Cond: in.cond, Val: in.val, SkipTrue: t, SkipFalse: f}
}

// decode emits the prologue: headers.decode in BPF, into scratch memory.
func (a *asm) decode() {
	done := a.label()
	ldLen := bpf.LoadExtension{Num: bpf.ExtLen}
	// The kernel refuses a program that may read a slot it did not write.
	for n := 0; n < mSlots; n++ {
		v := uint32(0)
		switch n {
		case mProto:
			v = noProto
		case mSport, mDport:
			v = noPort
		}
		a.op(bpf.LoadConstant{Dst: bpf.RegA, Val: v})
		a.st(n)
	}
	a.op(ldLen)
	a.jgeElse(14, done)
	a.op(bpf.LoadAbsolute{Off: 12, Size: 2})
	a.st(mET)
	a.op(bpf.LoadConstant{Dst: bpf.RegX, Val: 14})
	// Up to two VLAN tags in the data (A = EtherType, X = offset).
	l2done := a.label()
	for i := 0; i < 2; i++ {
		tag, next := a.label(), a.label()
		a.jif(bpf.JumpEqual, 0x8100, tag, next)
		a.mark(next)
		a.jif(bpf.JumpEqual, 0x88a8, tag, l2done)
		a.mark(tag)
		a.op(ldLen, bpf.ALUOpX{Op: bpf.ALUOpSub})
		a.jgeElse(4, l2done)
		a.op(bpf.LoadIndirect{Off: 2, Size: 2})
		a.st(mET)
		a.op(bpf.TXA{}, bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: 4}, bpf.TAX{})
		a.ldm(mET)
	}
	a.mark(l2done)
	a.op(bpf.StoreScratch{Src: bpf.RegX, N: mL3})
	v4, v6, ports := a.label(), a.label(), a.label()
	a.ldm(mET)
	next := a.label()
	a.jif(bpf.JumpEqual, etIPv4, v4, next)
	a.mark(next)
	a.jif(bpf.JumpEqual, etIPv6, v6, done)

	// IPv4 (X = network offset).
	a.mark(v4)
	a.op(ldLen, bpf.ALUOpX{Op: bpf.ALUOpSub})
	a.st(mRem)
	a.jgeElse(20, done)
	a.op(bpf.LoadIndirect{Off: 0, Size: 1}, bpf.ALUOpConstant{Op: bpf.ALUOpShiftRight, Val: 4})
	a.jeqElse(4, done)
	a.op(bpf.LoadIndirect{Off: 0, Size: 1}, bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0x0f}, bpf.ALUOpConstant{Op: bpf.ALUOpShiftLeft, Val: 2})
	a.st(mN)
	a.jgeElse(20, done)
	a.op(bpf.TAX{})
	a.ldm(mRem)
	nx := a.label()
	a.jifX(nx, done) // rem >= ihl
	a.mark(nx)
	a.ldxm(mL3)
	a.op(bpf.LoadConstant{Dst: bpf.RegA, Val: 4})
	a.st(mAF)
	a.op(bpf.LoadIndirect{Off: 9, Size: 1})
	a.st(mProto)
	a.op(bpf.LoadIndirect{Off: 6, Size: 2})
	first := a.label()
	a.jif(bpf.JumpBitsSet, 0x1fff, done, first)
	a.mark(first)
	a.ldm(mN)
	a.op(bpf.ALUOpX{Op: bpf.ALUOpAdd})
	a.st(mOff)
	a.ja(ports)

	// IPv6 (X = network offset).
	a.mark(v6)
	a.op(ldLen, bpf.ALUOpX{Op: bpf.ALUOpSub})
	a.jgeElse(40, done)
	a.op(bpf.LoadIndirect{Off: 0, Size: 1}, bpf.ALUOpConstant{Op: bpf.ALUOpShiftRight, Val: 4})
	a.jeqElse(6, done)
	a.op(bpf.LoadConstant{Dst: bpf.RegA, Val: 6})
	a.st(mAF)
	a.op(bpf.LoadIndirect{Off: 6, Size: 1})
	a.st(mNH)
	a.op(bpf.TXA{}, bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: 40})
	a.st(mOff)
	a.op(bpf.TAX{})
	v6done := a.label()
	for i := 0; i < maxExtHeaders; i++ {
		// X = mOff = the current header's offset.
		ext, frag, step := a.label(), a.label(), a.label()
		a.ldm(mNH)
		for _, v := range []uint32{0, 43, 60} {
			n := a.label()
			a.jif(bpf.JumpEqual, v, ext, n)
			a.mark(n)
		}
		a.jif(bpf.JumpEqual, 44, frag, v6done)

		a.mark(ext)
		a.op(ldLen, bpf.ALUOpX{Op: bpf.ALUOpSub})
		a.st(mRem)
		a.jgeElse(8, done)
		a.op(bpf.LoadIndirect{Off: 1, Size: 1}, bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: 1}, bpf.ALUOpConstant{Op: bpf.ALUOpShiftLeft, Val: 3})
		a.st(mN)
		a.op(bpf.TAX{})
		a.ldm(mRem)
		ok := a.label()
		a.jifX(ok, done) // rem >= length
		a.mark(ok)
		a.ldxm(mOff)
		a.op(bpf.LoadIndirect{Off: 0, Size: 1})
		a.st(mNH)
		a.ldxm(mN)
		a.ldm(mOff)
		a.op(bpf.ALUOpX{Op: bpf.ALUOpAdd})
		a.st(mOff)
		a.op(bpf.TAX{})
		a.ja(step)

		a.mark(frag)
		a.op(ldLen, bpf.ALUOpX{Op: bpf.ALUOpSub})
		a.jgeElse(8, done)
		a.op(bpf.LoadIndirect{Off: 0, Size: 1})
		a.st(mNH)
		a.op(bpf.LoadIndirect{Off: 2, Size: 2}, bpf.ALUOpConstant{Op: bpf.ALUOpShiftRight, Val: 3})
		firstFrag, later := a.label(), a.label()
		a.jif(bpf.JumpEqual, 0, firstFrag, later)
		a.mark(later) // not the first fragment: protocol, no ports
		a.ldm(mNH)
		a.st(mProto)
		a.ja(done)
		a.mark(firstFrag)
		a.op(bpf.TXA{}, bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: 8})
		a.st(mOff)
		a.op(bpf.TAX{})
		a.mark(step)
	}
	a.mark(v6done)
	a.ldm(mNH)
	a.st(mProto)

	// Ports (mOff = transport offset, mProto set).
	a.mark(ports)
	a.ldxm(mOff)
	a.ldm(mProto)
	p := a.label()
	for _, v := range []uint32{6, 17} {
		n := a.label()
		a.jif(bpf.JumpEqual, v, p, n)
		a.mark(n)
	}
	a.jif(bpf.JumpEqual, 132, p, done)
	a.mark(p)
	a.op(ldLen, bpf.ALUOpX{Op: bpf.ALUOpSub})
	a.jgeElse(4, done)
	a.op(bpf.LoadIndirect{Off: 0, Size: 2})
	a.st(mSport)
	a.op(bpf.LoadIndirect{Off: 2, Size: 2})
	a.st(mDport)
	a.mark(done)
}

// jifX jumps to t if A >= X, else to f. (Rare enough to keep short: the
// targets are always near.)
func (a *asm) jifX(t, f int) {
	a.ins = append(a.ins, asmIns{op: nil, isIf: true, cond: jgeX, t: t, f: f})
}

// jgeX marks a JumpIfX >= in asmIns.cond; bpf.JumpTest values are small.
const jgeX bpf.JumpTest = 0xff

// expr emits n: jump to t when it holds, f when not.
func (a *asm) expr(n *fnode, t, f int) {
	switch n.op {
	case opAnd:
		mid := a.label()
		a.expr(n.a, mid, f)
		a.mark(mid)
		a.expr(n.b, t, f)
	case opOr:
		mid := a.label()
		a.expr(n.a, t, mid)
		a.mark(mid)
		a.expr(n.b, t, f)
	case opNot:
		a.expr(n.a, f, t)
	default:
		a.prim(&n.p, t, f)
	}
}

func (a *asm) prim(p *prim, t, f int) {
	switch p.kind {
	case primEther:
		a.ldm(mET)
		a.jif(bpf.JumpEqual, uint32(p.et), t, f)
	case primProto:
		if p.et != 0 {
			a.ldm(mET)
			a.jeqElse(uint32(p.et), f)
		}
		a.ldm(mProto)
		a.jif(bpf.JumpEqual, uint32(p.proto), t, f)
	case primHost:
		if p.addr.Zone() != "" { // never equal to a packet's address
			a.ja(f)
			return
		}
		a.addrs(p.dir, p.addr.AsSlice(), p.addr.BitLen(), t, f)
	case primNet:
		b := p.prefix.Addr().AsSlice()
		a.addrs(p.dir, b, p.prefix.Bits(), t, f)
	case primPort:
		if p.proto >= 0 {
			a.ldm(mProto)
			a.jeqElse(uint32(p.proto), f)
		}
		if p.dir != dirDst {
			a.ldm(mSport)
			if p.dir == dirSrc {
				a.jif(bpf.JumpEqual, uint32(p.port), t, f)
				return
			}
			n := a.label()
			a.jif(bpf.JumpEqual, uint32(p.port), t, n)
			a.mark(n)
		}
		a.ldm(mDport)
		a.jif(bpf.JumpEqual, uint32(p.port), t, f)
	default:
		a.ja(f)
	}
}

// addrs tests the packet's source and/or destination address against the
// first bits of want (4 or 16 bytes); the family must match.
func (a *asm) addrs(dir int, want []byte, bits int, t, f int) {
	af, src, dst := uint32(4), uint32(12), uint32(16)
	if len(want) == 16 {
		af, src, dst = 6, 8, 24
	}
	a.ldm(mAF)
	a.jeqElse(af, f)
	a.ldxm(mL3)
	var offs []uint32
	if dir != dirDst {
		offs = append(offs, src)
	}
	if dir != dirSrc {
		offs = append(offs, dst)
	}
	for i, off := range offs {
		miss := f
		if i < len(offs)-1 {
			miss = a.label()
		}
		for w := 0; w < len(want)/4 && w*32 < bits; w++ {
			mask := ^uint32(0)
			if left := bits - w*32; left < 32 {
				mask <<= 32 - left
			}
			a.op(bpf.LoadIndirect{Off: off + uint32(4*w), Size: 4})
			if mask != ^uint32(0) {
				a.op(bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: mask})
			}
			a.jeqElse(binary.BigEndian.Uint32(want[4*w:])&mask, miss)
		}
		a.ja(t)
		if i < len(offs)-1 {
			a.mark(miss)
		}
	}
}
