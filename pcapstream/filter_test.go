package pcapstream

import (
	"fmt"
	"net"
	"strings"
	"testing"

	"golang.org/x/net/bpf"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

func frame(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	for _, l := range ls {
		if n, ok := l.(interface {
			SetNetworkLayerForChecksum(gopacket.NetworkLayer) error
		}); ok {
			for _, nl := range ls {
				if nw, ok := nl.(gopacket.NetworkLayer); ok {
					n.SetNetworkLayerForChecksum(nw)
				}
			}
		}
	}
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func testFrames(t testing.TB) map[string][]byte {
	mac1, _ := net.ParseMAC("02:00:00:00:00:01")
	mac2, _ := net.ParseMAC("02:00:00:00:00:02")
	eth4 := &layers.Ethernet{SrcMAC: mac1, DstMAC: mac2, EthernetType: layers.EthernetTypeIPv4}
	eth6 := &layers.Ethernet{SrcMAC: mac1, DstMAC: mac2, EthernetType: layers.EthernetTypeIPv6}
	ip4 := func(p layers.IPProtocol) *layers.IPv4 {
		return &layers.IPv4{Version: 4, TTL: 64, Protocol: p, SrcIP: net.ParseIP("10.250.0.2"), DstIP: net.ParseIP("198.51.100.1")}
	}
	ip6 := func(p layers.IPProtocol) *layers.IPv6 {
		return &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: p, SrcIP: net.ParseIP("fd00:a4c::2"), DstIP: net.ParseIP("2001:db8:100::80")}
	}
	vlan := &layers.Dot1Q{VLANIdentifier: 7, Type: layers.EthernetTypeIPv4}
	ethv := &layers.Ethernet{SrcMAC: mac1, DstMAC: mac2, EthernetType: layers.EthernetTypeDot1Q}
	return map[string][]byte{
		"icmp4": frame(t, eth4, ip4(layers.IPProtocolICMPv4), &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0)}),
		"tcp4":  frame(t, eth4, ip4(layers.IPProtocolTCP), &layers.TCP{SrcPort: 40000, DstPort: 80, SYN: true}),
		"udp4":  frame(t, eth4, ip4(layers.IPProtocolUDP), &layers.UDP{SrcPort: 5353, DstPort: 53}),
		"tcp6":  frame(t, eth6, ip6(layers.IPProtocolTCP), &layers.TCP{SrcPort: 40000, DstPort: 443}),
		"icmp6": frame(t, eth6, ip6(layers.IPProtocolICMPv6), &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(128, 0)}),
		"vlan":  frame(t, ethv, vlan, ip4(layers.IPProtocolUDP), &layers.UDP{SrcPort: 1, DstPort: 7}),
		"arp":   frame(t, &layers.Ethernet{SrcMAC: mac1, DstMAC: mac2, EthernetType: layers.EthernetTypeARP}, &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4, SourceHwAddress: mac1, SourceProtAddress: []byte{10, 250, 0, 2}, DstHwAddress: mac2, DstProtAddress: []byte{10, 250, 0, 1}}),
		"short": {1, 2, 3},
		"udp6hb": frame(t, eth6, &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolIPv6HopByHop, SrcIP: net.ParseIP("fd00:a4c::2"), DstIP: net.ParseIP("2001:db8:100::7")}, func() *layers.IPv6HopByHop {
			h := &layers.IPv6HopByHop{Options: []*layers.IPv6HopByHopOption{{OptionType: 1, OptionData: []byte{0, 0, 0, 0}}}}
			h.NextHeader = layers.IPProtocolUDP
			return h
		}(), &layers.UDP{SrcPort: 9, DstPort: 7}),
	}
}

func TestFilterMatch(t *testing.T) {
	frames := testFrames(t)
	cases := []struct {
		expr string
		want []string // frames that match
	}{
		{"icmp", []string{"icmp4"}},
		{"icmp6", []string{"icmp6"}},
		{"ip", []string{"icmp4", "tcp4", "udp4", "vlan"}},
		{"ip6", []string{"tcp6", "icmp6", "udp6hb"}},
		{"arp", []string{"arp"}},
		{"tcp", []string{"tcp4", "tcp6"}},
		{"udp", []string{"udp4", "vlan", "udp6hb"}},
		{"tcp port 80", []string{"tcp4"}},
		{"port 80 or port 53", []string{"tcp4", "udp4"}},
		{"udp dst port 53", []string{"udp4"}},
		{"udp src port 53", nil},
		{"src port 40000", []string{"tcp4", "tcp6"}},
		{"port 7", []string{"vlan", "udp6hb"}},
		{"host 198.51.100.1", []string{"icmp4", "tcp4", "udp4", "vlan"}},
		{"dst host 10.250.0.2", nil},
		{"src host 10.250.0.2 and not tcp", []string{"icmp4", "udp4", "vlan"}},
		{"net 2001:db8:100::/48", []string{"tcp6", "icmp6", "udp6hb"}},
		{"src net 10.0.0.0/8 && (icmp || tcp)", []string{"icmp4", "tcp4"}},
		{"!ip and !ip6", []string{"arp", "short"}},
		{"NOT (TCP or UDP)", []string{"icmp4", "icmp6", "arp", "short"}},
	}
	for _, c := range cases {
		t.Run(c.expr, func(t *testing.T) {
			f, err := ParseFilter(c.expr)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]bool{}
			for _, n := range c.want {
				want[n] = true
			}
			vm := filterVM(t, f, 96)
			for name, fr := range frames {
				if got := f.Match(fr); got != want[name] {
					t.Errorf("%s: match = %v, want %v", name, got, want[name])
				}
				n, err := vm.Run(fr)
				if err != nil {
					t.Fatal(err)
				}
				if wantN := map[bool]int{true: 96, false: 0}[want[name]]; n != wantN {
					t.Errorf("%s: BPF program returns %d, want %d", name, n, wantN)
				}
			}
		})
	}
}

func TestFilterErrors(t *testing.T) {
	for _, expr := range []string{"", "   ", "foo", "tcp port", "port x", "port 70000", "host", "host 1.2.3", "net 10/8",
		"(tcp", "tcp)", "tcp and", "or tcp", "not", "tcp tcp", "src tcp", "((((((((((((((((((((((((((((((((((tcp))))))))))))))))))))))))))))))))))"} {
		if _, err := ParseFilter(expr); err == nil {
			t.Errorf("ParseFilter(%q) = nil error", expr)
		}
	}
	var nilf *Filter
	if !nilf.Match(nil) {
		t.Error("nil filter must match")
	}
}

// filterVM compiles f to classic BPF, checks the kernel's structural
// rules, and returns x/net/bpf's VM for it.
func filterVM(t testing.TB, f *Filter, snaplen uint32) *bpf.VM {
	t.Helper()
	prog, err := f.BPF(snaplen)
	if err != nil {
		t.Fatal(err)
	}
	checkClassic(t, prog)
	vm, err := bpf.NewVM(prog)
	if err != nil {
		t.Fatalf("x/net/bpf refuses the program: %v", err)
	}
	return vm
}

// checkClassic checks what the kernel's bpf_check_classic would: at most
// 4096 instructions, a return last, every scratch slot stored before any
// load on every path (checked here as: stored before loaded in program
// order, which the prologue guarantees by writing every slot first).
func checkClassic(t testing.TB, prog []bpf.Instruction) {
	t.Helper()
	if len(prog) == 0 || len(prog) > maxBPFInstructions {
		t.Fatalf("program of %d instructions", len(prog))
	}
	if _, ok := prog[len(prog)-1].(bpf.RetConstant); !ok {
		t.Fatalf("last instruction %v is not a return", prog[len(prog)-1])
	}
	var stored [16]bool
	for i, ins := range prog {
		switch in := ins.(type) {
		case bpf.StoreScratch:
			stored[in.N] = true
		case bpf.LoadScratch:
			if !stored[in.N] {
				t.Fatalf("instruction %d loads M[%d] before any store", i, in.N)
			}
		}
	}
	if _, err := bpf.Assemble(prog); err != nil {
		t.Fatalf("assemble: %v", err)
	}
}

// Long expressions need conditional jumps further than 255 instructions;
// the assembler turns them into jumps over unconditional ones.
func TestFilterBPFLongJumps(t *testing.T) {
	frames := testFrames(t)
	var terms []string
	for i := 0; i < 20; i++ {
		terms = append(terms, fmt.Sprintf("host 2001:db8::%x", i+1))
	}
	for _, expr := range []string{
		strings.Join(terms, " or ") + " or tcp",
		"not (" + strings.Join(terms, " or ") + ") and udp",
		"src net 10.0.0.0/8 and (" + strings.Join(terms[:15], " or ") + " or dst host 198.51.100.1)",
	} {
		f, err := ParseFilter(expr)
		if err != nil {
			t.Fatal(err)
		}
		prog, _ := f.BPF(65535)
		long := 0
		for _, in := range prog {
			if _, ok := in.(bpf.Jump); ok {
				long++
			}
		}
		vm := filterVM(t, f, 65535)
		for name, fr := range frames {
			n, _ := vm.Run(fr)
			if (n != 0) != f.Match(fr) {
				t.Errorf("%q on %s: BPF %d, Go %v", clip(expr), name, n, f.Match(fr))
			}
		}
		t.Logf("%d instructions, %d unconditional jumps", len(prog), long)
	}
}

// FuzzFilterBPF: for any filter and frame, the kernel program (run in
// x/net/bpf's VM) and the Go reference evaluator agree.
func FuzzFilterBPF(f *testing.F) {
	fr := testFrames(f)
	f.Add("tcp port 80", fr["tcp4"])
	f.Add("not (icmp or udp dst port 53) and host 10.250.0.2", fr["udp4"])
	f.Add("ip6 and port 7", fr["udp6hb"])
	f.Add("net 10.0.0.0/8", fr["vlan"])
	f.Add("src net 2001:db8:100::/40 or icmp6", fr["icmp6"])
	f.Add("arp or dst host fd00:a4c::2", fr["arp"])
	f.Add("udp src port 1 and net 198.51.100.0/25", fr["vlan"])
	f.Add("port 9 and ip6", fr["udp6hb"])
	f.Fuzz(func(t *testing.T, expr string, frame []byte) {
		flt, err := ParseFilter(expr)
		if err != nil {
			return
		}
		prog, err := flt.BPF(1 << 18)
		if err != nil {
			t.Fatalf("%q parses but does not compile: %v", expr, err)
		}
		vm, err := bpf.NewVM(prog)
		if err != nil {
			t.Fatalf("%q: VM refuses the program: %v", expr, err)
		}
		n, err := vm.Run(frame)
		if err != nil {
			t.Fatal(err)
		}
		if want := flt.Match(frame); (n != 0) != want {
			t.Fatalf("%q on %x: BPF returns %d, Go reference says %v", expr, frame, n, want)
		}
	})
}

func FuzzFilter(f *testing.F) {
	fr := testFrames(f)
	f.Add("tcp port 80", fr["tcp4"])
	f.Add("not (icmp or udp dst port 53) and host 10.250.0.2", fr["udp4"])
	f.Add("ip6 and port 7", fr["udp6hb"])
	f.Add("net 10.0.0.0/8", fr["vlan"])
	f.Fuzz(func(t *testing.T, expr string, frame []byte) {
		flt, err := ParseFilter(expr)
		if err != nil {
			return
		}
		flt.Match(frame)
	})
}
