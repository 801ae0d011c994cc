package alert

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Escape makes a string that an experiment or an experimenter chose (a
// process name set with PR_SET_NAME, a DNS name, a manifest title, a
// contact) safe to print on a staff terminal: every control character
// (C0, DEL, C1), every invisible formatting character (bidirectional
// overrides, zero-width joiners: Unicode category Cf), the line and
// paragraph separators and every byte that is not UTF-8 are written as a
// visible Go-style escape (\x1b, \n, \u202e, \xff), and a backslash as \\,
// so the escaped text reads back unambiguously (strconv.Unquote of the
// result in double quotes gives the original). Printable text, spaces
// included, is kept as it is. Text outputs (alert lines, the list and
// flows tables) use it for every such string; JSON outputs keep the exact
// string.
func Escape(s string) string {
	if isSafe(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b.WriteString(`\x`)
			b.WriteString(hex2(s[i]))
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			b.WriteString(`\x`)
			b.WriteString(hex2(byte(r)))
		case unsafeRune(r):
			h := strconv.FormatInt(int64(r), 16)
			if r > 0xffff {
				b.WriteString(`\U` + strings.Repeat("0", 8-len(h)) + h)
			} else {
				b.WriteString(`\u` + strings.Repeat("0", 4-len(h)) + h)
			}
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

// IsSafeText reports whether s holds nothing that Escape would change: no
// control or formatting character, no invalid UTF-8 and no backslash.
func IsSafeText(s string) bool { return isSafe(s) }

func isSafe(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == 0x7f || c == '\\' {
			return false
		}
		if c >= 0x80 {
			return safeUTF8(s[i:])
		}
	}
	return true
}

func safeUTF8(s string) bool {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && size == 1) || r < 0x20 || r == 0x7f || r == '\\' || unsafeRune(r) {
			return false
		}
		i += size
	}
	return true
}

// unsafeRune: the runes beyond ASCII that a terminal acts on or that hide
// or reorder text: C1 controls (0x9b is a one-byte CSI), the format
// characters (bidi overrides and isolates, zero-width spaces and joiners,
// the BOM) and the line and paragraph separators.
func unsafeRune(r rune) bool {
	return r < 0xa0 && r >= 0x80 || unicode.Is(unicode.Cf, r) || r == 0x2028 || r == 0x2029 || r == utf8.RuneError
}

func hex2(c byte) string {
	const digits = "0123456789abcdef"
	return string([]byte{digits[c>>4], digits[c&0xf]})
}

// HasControl reports whether s, printed, would contain a control or
// formatting character other than the line feeds and tabs that separate
// lines and table cells of arkgw's own output. Tests and fuzz targets use
// it to check text outputs.
func HasControl(s string) bool {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		if r == '\n' || r == '\t' {
			continue
		}
		if (r == utf8.RuneError && size == 1) || unicode.IsControl(r) || unsafeRune(r) {
			return true
		}
	}
	return false
}
