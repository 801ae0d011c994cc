package configs

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func pr(lo, hi uint16) PortRange { return PortRange{lo, hi} }

func TestParsePorts(t *testing.T) {
	tests := []struct {
		in      string
		want    []PortRange
		wantErr string
	}{
		{"*", []PortRange{AllPorts}, ""},
		{"80", []PortRange{pr(80, 80)}, ""},
		{"80,443", []PortRange{pr(80, 80), pr(443, 443)}, ""},
		{"443, 80", []PortRange{pr(80, 80), pr(443, 443)}, ""},
		{"33434-33534", []PortRange{pr(33434, 33534)}, ""},
		{"1-10,5-20,21", []PortRange{pr(1, 21)}, ""},
		{"80,*", []PortRange{AllPorts}, ""},
		{"65535", []PortRange{pr(65535, 65535)}, ""},
		{"0", nil, "port 0 is not a port; use 1-65535"},
		{"65536", nil, "port 65536 is out of range; use 1-65535"},
		{"99999999999999999999999", nil, "out of range; use 1-65535"},
		{"443-80", nil, "range 443-80 is inverted; write 80-443"},
		{"http", nil, `"http" is not a port number`},
		{"", nil, "no ports"},
		{"80,,443", nil, "empty item"},
		{"-5", nil, "not a port number"},
		{"1-0", nil, "port 0 is not a port"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParsePorts(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
			// FormatPorts round-trips.
			again, err := ParsePorts(FormatPorts(got))
			if err != nil || !reflect.DeepEqual(again, got) {
				t.Errorf("round trip %q -> %v, %v", FormatPorts(got), again, err)
			}
		})
	}
}

func TestParseDest(t *testing.T) {
	d := func(p string, rs ...PortRange) Dest { return Dest{Prefix: netip.MustParsePrefix(p), Ports: rs} }
	tests := []struct {
		in       string
		allowAny bool
		want     []Dest
		wantErr  string
	}{
		{"198.51.100.1/32:80,443", false, []Dest{d("198.51.100.1/32", pr(80, 80), pr(443, 443))}, ""},
		{"198.51.100.0/24:33434-33534", false, []Dest{d("198.51.100.0/24", pr(33434, 33534))}, ""},
		{"0.0.0.0/0:*", false, []Dest{d("0.0.0.0/0", AllPorts)}, ""},
		{"198.51.100.7:22", false, []Dest{d("198.51.100.7/32", pr(22, 22))}, ""},
		{"[2001:db8::/32]:53", false, []Dest{d("2001:db8::/32", pr(53, 53))}, ""},
		{"[2001:db8::1]:53", false, []Dest{d("2001:db8::1/128", pr(53, 53))}, ""},
		{"[::/0]:*", false, []Dest{d("::/0", AllPorts)}, ""},
		{" 198.51.100.0/24 : 80 ", false, []Dest{d("198.51.100.0/24", pr(80, 80))}, ""},
		{"none", false, nil, ""},
		{"NONE", false, nil, ""},
		{"any", true, []Dest{d("0.0.0.0/0", AllPorts), d("::/0", AllPorts)}, ""},
		{"any", false, nil, `"any" is not allowed here`},
		{"198.51.100.1/24:80", false, nil, "host bits set; did you mean 198.51.100.0/24?"},
		{"[2001:db8::1/32]:80", false, nil, "host bits set; did you mean 2001:db8::/32?"},
		{"198.51.100.0/33:80", false, nil, "not a prefix"},
		{"198.51.100.256:80", false, nil, "not an address or prefix"},
		{"example.org:80", false, nil, "not an address or prefix"},
		{"198.51.100.0/24", false, nil, "missing ports"},
		{"[2001:db8::/32]", false, nil, "missing ports"},
		{"[2001:db8::/32:53", false, nil, `missing "]"`},
		{"2001:db8::/32:53", false, nil, "IPv6 needs brackets"},
		{"198.51.100.0/24:0", false, nil, "port 0 is not a port"},
		{"198.51.100.0/24:70000", false, nil, "port 70000 is out of range"},
		{"198.51.100.0/24:90-80", false, nil, "range 90-80 is inverted; write 80-90"},
		{"[fe80::1%eth0]:80", false, nil, "zone"},
		{"[::ffff:1.2.3.4]:80", false, nil, "IPv4-mapped"},
		{":80", false, nil, "empty address"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseDest(tt.in, tt.allowAny)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
			for _, g := range got {
				again, err := ParseDest(FormatDest(g), false)
				if err != nil || !reflect.DeepEqual(again, []Dest{g}) {
					t.Errorf("round trip %q -> %v, %v", FormatDest(g), again, err)
				}
			}
		})
	}
}

func TestParseICMPType(t *testing.T) {
	tests := []struct {
		in      string
		want    ICMPType
		wantErr string
	}{
		{"echo-request", ICMPType{Type: 8}, ""},
		{"Echo-Reply", ICMPType{Type: 0}, ""},
		{"time-exceeded", ICMPType{Type: 11}, ""},
		{"destination-unreachable", ICMPType{Type: 3}, ""},
		{"13", ICMPType{Type: 13}, ""},
		{"icmp:8", ICMPType{Type: 8}, ""},
		{"icmpv6:echo-request", ICMPType{V6: true, Type: 128}, ""},
		{"icmpv6:time-exceeded", ICMPType{V6: true, Type: 3}, ""},
		{"icmpv6:packet-too-big", ICMPType{V6: true, Type: 2}, ""},
		{"icmpv6:200", ICMPType{V6: true, Type: 200}, ""},
		{"256", ICMPType{}, "ICMP type 256 is out of range; use 0-255"},
		{"echo", ICMPType{}, "unknown ICMP type name; use a number or one of"},
		{"packet-too-big", ICMPType{}, "unknown ICMP type name"},
		{"icmpv6:source-quench", ICMPType{}, "unknown ICMPv6 type name"},
		{"icmpv6:", ICMPType{}, "empty ICMP type"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseICMPType(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
			if again, err := ParseICMPType(got.String()); err != nil || again != got {
				t.Errorf("round trip %q -> %v, %v", got.String(), again, err)
			}
		})
	}
}

func TestProtocolItem(t *testing.T) {
	tests := []struct {
		in      any
		want    uint8
		wantErr string
	}{
		{int64(47), 47, ""},
		{int64(50), 50, ""},
		{"132", 132, ""},
		{int64(0), 0, ""},
		{int64(1), 0, "use the icmp field"},
		{int64(58), 0, "use the icmp field"},
		{int64(6), 0, "use the tcp, tcp_ports or syn_only_ports fields"},
		{int64(17), 0, "use the udp or udp_ports fields"},
		{int64(256), 0, "out of range"},
		{int64(-1), 0, "out of range"},
		{"gre", 0, "not a protocol number"},
		{1.5, 0, "not a protocol number"},
	}
	for _, tt := range tests {
		got, _, err := protocolItem(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%v: err = %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%v: got %d, %v", tt.in, got, err)
		}
	}
}

func TestNormalizeName(t *testing.T) {
	tests := []struct {
		in, want, wantErr string
	}{
		{"example.org", "example.org.", ""},
		{"Example.ORG.", "example.org.", ""},
		{"_dmarc.example.org", "_dmarc.example.org.", ""},
		{"münchen.de", "xn--mnchen-3ya.de.", ""},
		{"MÜNCHEN.de", "xn--mnchen-3ya.de.", ""},
		{"xn--mnchen-3ya.de", "xn--mnchen-3ya.de.", ""},
		{"org", "org.", ""},
		{"", "", "empty name"},
		{".", "", "empty name"},
		{"*.example.org", "", "names are suffixes already"},
		{"a..b", "", "two dots"},
		{"exa mple.org", "", "has the character"},
		{"-x.org", "", "starts or ends with '-'"},
		{strings.Repeat("a", 64) + ".org", "", "longer than 63"},
		{strings.Repeat("abcdefghi.", 26) + "org", "", "longer than 253"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := NormalizeName(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestNameUnder(t *testing.T) {
	tests := []struct {
		name, suffix string
		want         bool
	}{
		{"example.org.", "example.org.", true},
		{"www.example.org.", "example.org.", true},
		{"a.b.example.org.", "example.org.", true},
		{"badexample.org.", "example.org.", false},
		{"example.org.", "www.example.org.", false},
		{"org.", "example.org.", false},
		{"example.com.", "org.", false},
		{"example.org.", "org.", true},
	}
	for _, tt := range tests {
		if got := NameUnder(tt.name, tt.suffix); got != tt.want {
			t.Errorf("NameUnder(%q, %q) = %v", tt.name, tt.suffix, got)
		}
	}
}

func TestValidEmail(t *testing.T) {
	good := []string{"researcher@example.edu", "a.b+c@cs.example.edu"}
	bad := []string{"", " ", "researcher", "@example.edu", "researcher@", "A <a@example.edu>", "a@localhost", "a@[192.0.2.1]", "a b@example.edu"}
	for _, s := range good {
		if err := ValidEmail(s); err != nil {
			t.Errorf("%q: %v", s, err)
		}
	}
	for _, s := range bad {
		if err := ValidEmail(s); err == nil {
			t.Errorf("%q: accepted", s)
		}
	}
}
