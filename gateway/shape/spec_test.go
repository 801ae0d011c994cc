package shape

import (
	"strings"
	"testing"
)

func TestFrameRate(t *testing.T) {
	for _, c := range []struct {
		ip   uint64
		mtu  int
		want uint64
	}{
		{10_000_000, 1500, 1_261_667}, // 1.25 MB/s * 1514/1500, rounded up
		{1_000_000, 1500, 126_167},
		{100_000_000, 0, 12_616_667},
		{1, 1500, 1010}, // clamped to MinRateBps
	} {
		if got := FrameRate(c.ip, c.mtu); got != c.want {
			t.Errorf("FrameRate(%d, %d) = %d, want %d", c.ip, c.mtu, got, c.want)
		}
	}
	// Full-size frames at the frame rate carry the IP cap exactly.
	fr := float64(FrameRate(5_000_000, 1500))
	ip := fr * 1500 / 1514 * 8
	if ip < 5_000_000 || ip > 5_000_100 {
		t.Errorf("IP rate of full frames %f, want 5e6", ip)
	}
}

func TestBurst(t *testing.T) {
	for _, c := range []struct {
		r    uint64
		want uint32
	}{
		{126_167, 3028},      // 1 Mbit/s: two frames
		{1_261_667, 6308},    // 10 Mbit/s: 5 ms
		{12_616_667, 63_083}, // 100 Mbit/s
		{1 << 40, 1 << 24},   // clamp
	} {
		if got := Burst(c.r, 1500); got != c.want {
			t.Errorf("Burst(%d) = %d, want %d", c.r, got, c.want)
		}
	}
}

func TestCompile(t *testing.T) {
	specs := []Spec{
		{ID: "b", HostIf: "arkb", Slot: 1, RateBps: 10_000_000},
		{ID: "a", HostIf: "arka", Slot: 0, RateBps: 50_000_000},
		{ID: "c", HostIf: "arkc", Slot: 7, RateBps: 0},
	}
	t.Run("no node cap", func(t *testing.T) {
		p, err := Compile(Config{}, specs)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Leaves) != 3 || p.Leaves[0].ID != "a" || p.Leaves[2].ID != "c" {
			t.Fatalf("leaves not sorted: %v", p)
		}
		a, b, c := p.Leaves[0], p.Leaves[1], p.Leaves[2]
		if a.Class.Minor != 2 || b.Class.Minor != 3 || c.Class.Minor != 9 {
			t.Errorf("minors %d %d %d, want slot+2", a.Class.Minor, b.Class.Minor, c.Class.Minor)
		}
		if a.Class.Rate != a.Class.Ceil || a.Class.Ceil != FrameRate(50_000_000, 1500) {
			t.Errorf("a: rate %d ceil %d", a.Class.Rate, a.Class.Ceil)
		}
		if a.CapBps != 50_000_000 || c.CapBps != 0 {
			t.Errorf("caps a=%d c=%d, want 50e6 and 0 (unlimited)", a.CapBps, c.CapBps)
		}
		if a.Class.Parent != RootMinor || p.Default.Parent != 0 || p.Root.Parent != 0 {
			t.Errorf("parents wrong:\n%s", p)
		}
	})
	t.Run("node cap shared", func(t *testing.T) {
		p, err := Compile(Config{NodeBps: 30_000_000}, specs)
		if err != nil {
			t.Fatal(err)
		}
		if p.Root.Ceil != FrameRate(30_000_000, 1500) {
			t.Errorf("root ceil %d", p.Root.Ceil)
		}
		var sumRate uint64
		for _, l := range p.Leaves {
			sumRate += l.Class.Rate
			if l.Class.Ceil > p.Root.Ceil {
				t.Errorf("%s ceil %d above node cap", l.ID, l.Class.Ceil)
			}
		}
		if sumRate > p.Root.Rate+3 { // rounding up per class
			t.Errorf("guarantees %d exceed the node cap %d", sumRate, p.Root.Rate)
		}
		if got := p.Leaves[0].CapBps; got != 30_000_000 {
			t.Errorf("a's effective cap %d, want node cap 30e6", got)
		}
		if got := p.Leaves[1].CapBps; got != 10_000_000 {
			t.Errorf("b's effective cap %d, want its own 10e6", got)
		}
	})
	for _, bad := range []struct {
		name  string
		specs []Spec
		want  string
	}{
		{"dup id", []Spec{{ID: "a", HostIf: "x", Slot: 0}, {ID: "a", HostIf: "y", Slot: 1}}, "twice"},
		{"dup slot", []Spec{{ID: "a", HostIf: "x", Slot: 0}, {ID: "b", HostIf: "y", Slot: 0}}, "share slot"},
		{"dup if", []Spec{{ID: "a", HostIf: "x", Slot: 0}, {ID: "b", HostIf: "x", Slot: 1}}, "share interface"},
		{"long if", []Spec{{ID: "a", HostIf: "0123456789abcdef", Slot: 0}}, "1-15 bytes"},
		{"slot", []Spec{{ID: "a", HostIf: "x", Slot: MaxSlot + 1}}, "out of range"},
	} {
		t.Run(bad.name, func(t *testing.T) {
			_, err := Compile(Config{}, bad.specs)
			if err == nil || !strings.Contains(err.Error(), bad.want) {
				t.Fatalf("err %v, want %q", err, bad.want)
			}
		})
	}
}

func TestPriority(t *testing.T) {
	if got := Priority(UpMajor, 5); got != 0xa4c10005 {
		t.Errorf("Priority = %#x", got)
	}
}
