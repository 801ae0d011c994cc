package main

import (
	"bytes"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/arkgw/arkgw/daemon"
)

// fakeLogs serves GET .../logs with the given headers and body, cut after
// cut bytes when cut >= 0.
func fakeLogs(t *testing.T, hdr map[string]string, body []byte, cut int) *daemon.Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "arkgw.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for k, v := range hdr {
			w.Header().Set(k, v)
		}
		if cut >= 0 {
			w.Write(body[:cut])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
		w.Write(body)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return daemon.NewClient(sock)
}

func TestPrintLogs(t *testing.T) {
	body := bytes.Repeat([]byte("output line\n"), 1000)
	n := len(body)
	cases := []struct {
		name   string
		hdr    map[string]string
		cut    int
		code   int
		stdout int
		stderr string
	}{
		{"whole", map[string]string{"Content-Length": "12000"}, -1, 0, n, ""},
		{"cap dropped", map[string]string{"Content-Length": "12000", daemon.HeaderOutputDropped: "5000"}, -1, 0, n, "5000 more bytes were dropped by the node's output cap"},
		{"at cap while running", map[string]string{"Content-Length": "12000", daemon.HeaderOutputCap: "12000"}, -1, 0, n, "reached the node's cap of 12000 bytes"},
		{"cut", map[string]string{"Content-Length": "12000"}, 3000, 1, 3000, "cut after 3000 of 12000 bytes"},
		{"cut says incomplete", map[string]string{"Content-Length": "12000"}, 3000, 1, 3000, "the stdout shown is incomplete"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out, errw bytes.Buffer
			code := printLogs(fakeLogs(t, c.hdr, body, c.cut), "x1", false, &out, &errw)
			if code != c.code || out.Len() != c.stdout {
				t.Fatalf("exit %d with %d bytes on stdout, want %d with %d; stderr %q", code, out.Len(), c.code, c.stdout, errw.String())
			}
			if c.stderr == "" && errw.Len() != 0 || c.stderr != "" && !strings.Contains(errw.String(), c.stderr) {
				t.Fatalf("stderr %q, want %q", errw.String(), c.stderr)
			}
		})
	}
}
