package alert

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestEscape(t *testing.T) {
	cases := []struct{ in, want string }{
		{"nc", "nc"},
		{"ping survey", "ping survey"},
		{"café ☕", "café ☕"},
		{"\x1b[2J\x1b]0;PWN\x07", `\x1b[2J\x1b]0;PWN\x07`},
		{"a\nb\tc\rd", `a\nb\tc\rd`},
		{`back\slash`, `back\\slash`},
		{"\x7f", `\x7f`},
		{"\u009b2J", `\u009b2J`}, // one-rune CSI
		{"abc\u202edef", `abc\u202edef`},
		{"zero\u200bwidth", `zero\u200bwidth`},
		{"tag\U000E0041", `tag\U000e0041`},
		{"bad\xff\xfeutf8", `bad\xff\xfeutf8`},
		{"\u2028", `\u2028`},
	}
	for _, c := range cases {
		t.Run(strconv.Quote(c.in), func(t *testing.T) {
			got := Escape(c.in)
			if got != c.want {
				t.Fatalf("Escape(%q) = %q, want %q", c.in, got, c.want)
			}
			if HasControl(got) {
				t.Fatalf("Escape(%q) = %q still holds a control character", c.in, got)
			}
			// Unambiguous: the escape reads back as Go string syntax.
			if back, err := strconv.Unquote(`"` + strings.ReplaceAll(got, `"`, `\"`) + `"`); err != nil || back != c.in {
				t.Fatalf("Unquote(Escape(%q)) = %q, %v", c.in, back, err)
			}
		})
	}
}

// The process name an experiment set with PR_SET_NAME, a DNS name and a
// message reach the alert line escaped.
func TestFormatLineEscapesExperimentText(t *testing.T) {
	r := Record{
		Time: time.Date(2026, 11, 25, 18, 0, 0, 0, time.UTC), Experiment: "e1", Kind: KindPacket, Rule: "tcp-dst",
		Proto: "tcp", Src: "10.250.0.2", SrcPort: 40000, Dst: "198.51.100.1", DstPort: 22, Packets: 1,
		PID: 42, Command: "\x1b[2J\x1b]0;PWN\x07", Message: "title \x1b[31mred",
	}
	want := `2026-11-25T18:00:00Z e1 packet/tcp-dst tcp 10.250.0.2:40000 -> 198.51.100.1:22 x1 [pid 42 \x1b[2J\x1b]0;PWN\x07] title \x1b[31mred`
	if got := FormatLine(r); got != want {
		t.Fatalf("\n got %q\nwant %q", got, want)
	}
	d := Record{Time: r.Time, Experiment: "e2", Kind: KindDNS, Rule: "dns", Name: "a\x1b]8;;http://x\x07.example.", QType: "A"}
	if got := FormatLine(d); HasControl(got) || !strings.Contains(got, `a\x1b]8;;http://x\x07.example.`) {
		t.Fatalf("dns line %q", got)
	}
}

// FuzzFormatLine: whatever strings an experiment puts in an alert (process
// name, DNS name, addresses as decoded, message parts), the staff line
// holds no control character, no invalid UTF-8, and is one line.
func FuzzFormatLine(f *testing.F) {
	f.Add("nc", "evil.example.", "A", "m", "tcp", "10.0.0.1", uint16(5))
	f.Add("\x1b[2J\x1b]0;PWN\x07", "a\x00b", "\x9b", "line\nbreak", "\u202e", "\xff", uint16(0))
	f.Fuzz(func(t *testing.T, cmd, name, qtype, msg, proto, addr string, port uint16) {
		for _, r := range []Record{
			{Experiment: "e1", Kind: KindPacket, Rule: proto, Proto: proto, Src: addr, Dst: addr, DstPort: int(port), PID: 7, Command: cmd, Message: msg, Packets: 1},
			{Experiment: name, Kind: KindDNS, Rule: "dns", Name: name, QType: qtype, Src: addr, Message: msg},
			{Experiment: cmd, Kind: qtype, Rule: name, Message: msg},
		} {
			line := FormatLine(r)
			if HasControl(line) || strings.ContainsAny(line, "\n\t") {
				t.Fatalf("FormatLine(%+v) = %q holds a control character", r, line)
			}
		}
		if s := Escape(cmd); HasControl(s) || strings.ContainsAny(s, "\n\t") {
			t.Fatalf("Escape(%q) = %q", cmd, s)
		}
	})
}
