package gateway

import (
	"fmt"
	"testing"
	"time"

	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/netlab"
)

// TestPrivilegedReservedBlocks sends an ICMP echo from an experiment to a
// sample address of every reserved block that a forwarded packet can
// reach: each is dropped (nothing arrives at inet), counted and logged to
// NFLOG as "reserved". Without [lab] documentation_prefixes the fake
// Internet's documentation prefixes are reserved too; with it they are
// reached. (127/8, 224/4, 255.255.255.255 and the like never reach the
// forward hook: the kernel drops or delivers them locally; the compiled
// set still holds them, see TestCompileReservedFromRegistry.)
func TestPrivilegedReservedBlocks(t *testing.T) {
	samples := []string{
		"0.1.2.3", "10.1.2.3", "100.64.0.1", "100.127.255.254", "169.254.9.9", "172.16.0.1",
		"192.0.0.8", "192.0.0.9", "192.0.0.170", "192.168.77.5", "198.18.0.1", "198.19.255.254",
		"::ffff:198.51.100.7", "64:ff9b:1::1", "100::1", "2001:2::1", "2001::1", "5f00::1", "fc00::1", "fd77::5",
	}
	docs := []string{"192.0.2.1", "198.51.100.7", "203.0.113.5", "2001:db8:100::7"}
	for _, strict := range []bool{true, false} {
		t.Run(fmt.Sprintf("documentation_prefixes=%v", !strict), func(t *testing.T) {
			reserved := configs.ReservedPrefixes(configs.LabPolicy{DocumentationPrefixes: !strict})
			l := newLabReserved(t, false, reserved)
			eff := &configs.Effective{ID: "r" + randSuffix()[:4], IPv4: true, IPv6: true, ICMPAny: true}
			n, ns := l.add(t, eff, 0)
			logs := l.nflog(t)
			send := func(dst string) {
				a := addr(dst)
				var err error
				if a.Is4() {
					err = sendRaw(ns, rawICMP4(t, n.Addr4.String(), dst, 8), a)
				} else {
					err = sendRaw(ns, rawICMP6(t, n.Addr6.String(), dst, 128), a)
				}
				if err != nil {
					t.Fatalf("send to %s: %v", dst, err)
				}
			}
			dropped := func(t *testing.T, dst string) {
				before := l.counter(t, eff.ID, RuleReserved)
				send(dst)
				l.waitCounter(t, eff.ID, RuleReserved, before)
				want := "ark:" + eff.ID + ":" + RuleReserved
				select {
				case p := <-logs:
					if p != want {
						t.Errorf("NFLOG prefix %q, want %q", p, want)
					}
				case <-time.After(3 * time.Second):
					t.Errorf("no NFLOG message for %s", dst)
				}
				time.Sleep(100 * time.Millisecond)
				if l.inetCp.Count(to(dst, icmpProto(dst), 0)) > 0 {
					t.Errorf("echo to reserved %s arrived at inet", dst)
				}
			}
			list := samples
			if strict {
				list = append(list, docs...)
			}
			for _, dst := range list {
				t.Run(dst, func(t *testing.T) { dropped(t, dst) })
			}
			if !strict {
				for _, dst := range docs {
					send(dst)
					if !l.arrived(to(dst, icmpProto(dst), 0), 3*time.Second) {
						t.Errorf("with documentation_prefixes: echo to %s did not arrive", dst)
					}
				}
			}
			// The default router stays reachable although it is reserved.
			send(netlab.DefaultRouter4)
			if !l.arrived(to(netlab.DefaultRouter4, 1, 0), 3*time.Second) {
				t.Error("echo to the default router did not arrive")
			}
		})
	}
}

func icmpProto(dst string) uint8 {
	if addr(dst).Unmap().Is4() && !addr(dst).Is4In6() {
		return 1
	}
	return 58
}
