package alert

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// FormatLine renders r as one readable line for staff. Every string in it
// goes through Escape: a line never holds a control character, whatever
// the experiment named its process or queried:
//
//	2026-11-25T18:00:00Z e1 packet/tcp-dst tcp 10.250.0.2:40000 -> 198.51.100.1:25 x1 [pid 42 nc] experiment e1 sent ...
func FormatLine(r Record) string {
	var b strings.Builder
	b.WriteString(r.Time.UTC().Format(time.RFC3339))
	b.WriteByte(' ')
	exp := r.Experiment
	if exp == "" {
		exp = "-"
	}
	b.WriteString(Escape(exp))
	b.WriteByte(' ')
	b.WriteString(Escape(r.Kind))
	if r.Rule != "" {
		b.WriteByte('/')
		b.WriteString(Escape(r.Rule))
	}
	if flow := flowText(r); flow != "" {
		b.WriteByte(' ')
		b.WriteString(flow)
	}
	if r.Packets > 0 {
		b.WriteString(" x")
		b.WriteString(strconv.FormatUint(r.Packets, 10))
	}
	if r.Occurrences > 1 {
		fmt.Fprintf(&b, " (%d times)", r.Occurrences)
	}
	if r.PID > 0 {
		// The command is the process name: the experiment sets it.
		fmt.Fprintf(&b, " [pid %d %s]", r.PID, Escape(r.Command))
	}
	if r.Message != "" {
		b.WriteByte(' ')
		b.WriteString(Escape(strings.ReplaceAll(r.Message, "\n", " ")))
	}
	return b.String()
}

func hostPort(addr string, port int) string {
	if port == 0 {
		if addr == "" {
			return "?"
		}
		return addr
	}
	if a, err := netip.ParseAddr(addr); err == nil {
		return netip.AddrPortFrom(a, uint16(port)).String()
	}
	return addr + ":" + strconv.Itoa(port)
}

func flowText(r Record) string {
	switch {
	case r.Kind == KindDNS:
		s := "dns " + Escape(r.Name)
		if r.QType != "" {
			s += " " + Escape(r.QType)
		}
		if r.Src != "" {
			s += " from " + Escape(r.Src)
		}
		return s
	case r.Proto == "" && r.Dst == "":
		return ""
	}
	s := Escape(r.Proto) + " " + Escape(hostPort(r.Src, r.SrcPort)) + " -> " + Escape(hostPort(r.Dst, r.DstPort))
	if r.ICMPType != nil {
		s += " type " + strconv.Itoa(*r.ICMPType)
		if r.ICMPCode != nil {
			s += " code " + strconv.Itoa(*r.ICMPCode)
		}
	}
	return s
}

// ParseSince reads a --since value: an RFC 3339 time, a date (2006-01-02,
// UTC) or a duration before now ("10m", "2h"). Empty means the beginning.
func ParseSince(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			d = -d
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse("2006-01-02", s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("--since %q: want an RFC 3339 time (2026-11-25T18:00:00Z), a date (2026-11-25) or a duration (10m)", s)
}
