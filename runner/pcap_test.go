package runner

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/arkgw/arkgw/netlab"
	"github.com/arkgw/arkgw/store"
)

// TestPrivilegedPcapInSandbox: an experiment runs /usr/bin/pcap (no
// privileges beyond its own) while it pings the fake Internet; the stream
// holds its echo requests and replies with its own, un-NATed address.
func TestPrivilegedPcapInSandbox(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds netlab namespaces and runs sandboxes")
	}
	w := netlab.NewWorld(t)
	nd := startNode(t, w, t.TempDir(), 4000+os.Getpid()%1000)
	defer nd.stop(t)
	script := `pcap -c 4 icmp > /tmp/x.pcap 2>/tmp/pcap.err & sleep 1; ping -n -c2 -W2 198.51.100.1 >/dev/null; wait; cat /tmp/pcap.err >&2; echo BEGIN; od -An -tx1 -v /tmp/x.pcap; echo END; sleep 600`
	id := nd.submit(t, fmt.Sprintf(probeManifest, script))
	nd.waitState(t, id, store.Running, 30*time.Second)
	out := nd.waitLog(t, id, "END", 60*time.Second)
	dump := out[strings.Index(out, "BEGIN")+len("BEGIN") : strings.Index(out, "END")]
	raw, err := hex.DecodeString(strings.Join(strings.Fields(dump), ""))
	if err != nil {
		t.Fatalf("od output: %v", err)
	}
	r, err := pcapgo.NewReader(bytes.NewReader(raw))
	if err != nil {
		errOut, _ := nd.client.Logs(id, true)
		t.Fatalf("not a pcap stream (%d bytes): %v; stderr:\n%s", len(raw), err, errOut)
	}
	if r.LinkType() != layers.LinkTypeEthernet {
		t.Errorf("link type %v", r.LinkType())
	}
	x, _ := nd.client.Get(id)
	own := x.Live.Addr4
	var requests, replies int
	for {
		data, _, err := r.ReadPacketData()
		if err != nil {
			break
		}
		p := gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.Default)
		ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		icmp, _ := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
		if ip == nil || icmp == nil {
			t.Errorf("non-ICMP packet despite the filter: %v", p)
			continue
		}
		switch icmp.TypeCode.Type() {
		case layers.ICMPv4TypeEchoRequest:
			requests++
			if ip.SrcIP.String() != own {
				t.Errorf("echo request from %v, want the experiment's own %s (before NAT)", ip.SrcIP, own)
			}
		case layers.ICMPv4TypeEchoReply:
			replies++
		}
	}
	if requests != 2 || replies != 2 {
		t.Fatalf("captured %d echo requests and %d replies, want 2 and 2", requests, replies)
	}
	errOut, _ := nd.client.Logs(id, true)
	if !strings.Contains(string(errOut), "pcap: 4 packets captured, 0 dropped") {
		t.Errorf("pcap's exit line on stderr: %q", errOut)
	}
}
