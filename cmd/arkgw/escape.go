package main

import (
	"io"
	"strings"
	"unicode/utf8"

	"github.com/arkgw/arkgw/alert"
)

// escapeText escapes every line and every tab-separated cell of a text
// output with alert.Escape, keeping the line feeds and tabs that lay it
// out: for reports that quote a manifest or a daemon message as a whole.
func escapeText(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		cells := strings.Split(l, "\t")
		for j, c := range cells {
			cells[j] = alert.Escape(c)
		}
		lines[i] = strings.Join(cells, "\t")
	}
	return strings.Join(lines, "\n")
}

// terminalWriter escapes a byte stream for a terminal as it passes (the
// `check` report, `logs` on a terminal)
// (escapeText: control characters become visible, line feeds and tabs
// stay), holding back at most the 3 bytes of a UTF-8 sequence cut by a
// write boundary. Write reports the input bytes as written. Call Flush at
// the end.
type terminalWriter struct {
	w       io.Writer
	pending []byte
}

func (t *terminalWriter) Write(p []byte) (int, error) {
	buf := append(t.pending, p...)
	// Keep an incomplete UTF-8 sequence at the end for the next write.
	cut := len(buf)
	for i := len(buf) - 1; i >= 0 && i >= len(buf)-utf8.UTFMax+1; i-- {
		if utf8.RuneStart(buf[i]) {
			if !utf8.FullRune(buf[i:]) {
				cut = i
			}
			break
		}
	}
	_, err := io.WriteString(t.w, escapeText(string(buf[:cut])))
	t.pending = append(t.pending[:0:0], buf[cut:]...)
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush writes what was held back.
func (t *terminalWriter) Flush() error {
	if len(t.pending) == 0 {
		return nil
	}
	_, err := io.WriteString(t.w, escapeText(string(t.pending)))
	t.pending = nil
	return err
}
