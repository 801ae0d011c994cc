package alert

import "strconv"

// ProtoName names an IP protocol number: tcp, udp, icmp, icmpv6, gre, esp,
// ah, sctp, udplite, ipip, ipv6, else proto-N.
func ProtoName(n uint8) string {
	switch n {
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 1:
		return "icmp"
	case 58:
		return "icmpv6"
	case 47:
		return "gre"
	case 50:
		return "esp"
	case 51:
		return "ah"
	case 132:
		return "sctp"
	case 136:
		return "udplite"
	case 4:
		return "ipip"
	case 41:
		return "ipv6"
	}
	return "proto-" + strconv.Itoa(int(n))
}
