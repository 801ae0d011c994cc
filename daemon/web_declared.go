package daemon

import (
	"fmt"
	"runtime"
	"strings"

	"github.com/arkgw/arkgw/configs"
)

// openPermit is a [permit] section that allows everything a manifest can
// ask for: admitting a manifest under it gives back its declaration.
const openPermit = `[permit]
third_party = true
tcp = ["any"]
udp = ["any"]
icmp = ["any"]
dns_servers_any = false
syn_only = true
spoof_destinations = ["0.0.0.0/0", "::/0"]
back_channel = true
protocols = [%s]
[dns]
allow = ["any"]
`

// declaredText is what the manifest declares, in the words `arkgw check`
// prints (configs.FormatEffective): the manifest admitted under node, with
// every permission opened and every maximum raised to what the manifest
// asks, so nothing of the declaration is trimmed. Limits the manifest
// leaves out are node's defaults, as they would be in force. Reserved
// destinations are still shown as removed: no policy can allow them.
func declaredText(node *configs.NodePolicy, id, name, manifest, dir string) (string, error) {
	m, err := configs.ParseManifest(name, []byte(manifest), dir)
	if err != nil {
		return "", err
	}
	protos := make([]string, 0, 256)
	for p := 0; p < 256; p++ {
		if p != 1 && p != 6 && p != 17 && p != 58 { // ICMP, TCP, UDP, ICMPv6 have fields of their own
			protos = append(protos, fmt.Sprint(p))
		}
	}
	open, err := configs.ParseNode("declared", []byte(fmt.Sprintf(openPermit, strings.Join(protos, ", "))))
	if err != nil {
		return "", fmt.Errorf("open policy: %w", err)
	}
	n := *node
	n.Permit = open.Permit
	n.DNS.AllowAny, n.DNS.Allow = true, nil
	l := n.Limits
	if m.MaxMbps != nil {
		l.MaxMbps = max(l.MaxMbps, *m.MaxMbps)
	}
	if m.MaxMBPerDay != nil {
		l.MaxMBPerDay = 0 // whatever it asks, including no maximum
	}
	if m.MaxHours != nil {
		l.MaxHours = max(l.MaxHours, *m.MaxHours)
	}
	if m.MaxRAMMB != nil {
		l.MaxRAMMB = max(l.MaxRAMMB, *m.MaxRAMMB)
	}
	if m.TmpfsMB != nil {
		l.TmpfsMB = max(l.TmpfsMB, *m.TmpfsMB)
	}
	cpu := map[string]int{}
	for k, v := range l.CPU {
		cpu[k] = v
	}
	for i, c := range configs.CPUClasses {
		if _, ok := cpu[c]; !ok {
			cpu[c] = []int{10, 50, 100}[i] // a class the node does not offer: the default's share
		}
	}
	l.CPU = cpu
	n.Limits = l
	eff, _ := configs.Admit(&n, m, configs.Env{ID: id, Arch: configs.MachineArch(runtime.GOARCH)})
	var b strings.Builder
	if err := configs.FormatEffective(&b, eff); err != nil {
		return "", err
	}
	return b.String(), nil
}
