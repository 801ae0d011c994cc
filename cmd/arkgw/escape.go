package main

import (
	"bytes"
	"io"
	"strings"

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

// escapingWriter passes complete lines through escapeText; Flush writes
// the rest. Not safe for concurrent use.
type escapingWriter struct {
	w   io.Writer
	buf []byte
}

func (e *escapingWriter) Write(p []byte) (int, error) {
	e.buf = append(e.buf, p...)
	if i := bytes.LastIndexByte(e.buf, '\n'); i >= 0 {
		_, err := io.WriteString(e.w, escapeText(string(e.buf[:i+1])))
		e.buf = append(e.buf[:0], e.buf[i+1:]...)
		if err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Flush writes what is left after the last line feed.
func (e *escapingWriter) Flush() error {
	if len(e.buf) == 0 {
		return nil
	}
	_, err := io.WriteString(e.w, escapeText(string(e.buf)))
	e.buf = e.buf[:0]
	return err
}
