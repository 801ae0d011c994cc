package daemon

import (
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// serveAPI serves d's API on a Unix socket, as the daemon does, and
// returns a client for it.
func serveAPI(t *testing.T, d *Daemon) *Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "arkgw.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: d.apiHandler()}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return NewClient(sock)
}

type countWriter struct{ n int64 }

func (w *countWriter) Write(b []byte) (int, error) { w.n += int64(len(b)); return len(b), nil }

// `arkgw logs` of a 100 MiB stdout gets all 100 MiB (it got 64 MiB, with
// success, before), and learns how much the node's output cap dropped.
func TestLogsStreamWholeAndSayWhatTheCapDropped(t *testing.T) {
	pol := testPolicy(t, "")
	m := newTestManager(t, pol, newFakeRunner(), nil)
	d := &Daemon{log: m.log, mgr: m, alertsPath: pol.AlertsFile()}
	c := serveAPI(t, d)
	x, err := m.Submit([]byte(goodManifest), "m.toml", "/")
	if err != nil {
		t.Fatal(err)
	}
	dir := m.ExperimentDir(x.ID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	const size = 100 << 20
	f, err := os.Create(filepath.Join(dir, "stdout"))
	if err != nil {
		t.Fatal(err)
	}
	// Sparse: 100 MiB to read, nothing on disk.
	f.WriteString("first line\n")
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.WriteFile(filepath.Join(dir, "status.json"), []byte(`{"stdout":{"bytes":104857600,"dropped":12345},"stderr":{"bytes":0,"dropped":0}}`), 0o644); err != nil {
		t.Fatal(err)
	}

	out, err := c.Logs(x.ID, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != size || !strings.HasPrefix(string(out[:11]), "first line\n") {
		t.Fatalf("logs returned %d bytes, want %d", len(out), size)
	}
	var w countWriter
	info, err := c.LogsTo(x.ID, false, &w)
	if err != nil || w.n != size || info.Bytes != size || info.Dropped != 12345 {
		t.Fatalf("LogsTo = %+v, %v (%d bytes written)", info, err, w.n)
	}
	// stderr: no file yet is an empty, complete answer.
	info, err = c.LogsTo(x.ID, true, &w)
	if err != nil || info.Bytes != 0 || info.Dropped != 0 {
		t.Fatalf("stderr: %+v %v", info, err)
	}
	if _, err := c.LogsTo("x999", false, &w); err == nil || !strings.Contains(err.Error(), "x999") {
		t.Fatalf("unknown experiment: %v", err)
	}
}

// A stream that ends before the announced size is an error, never a
// silent short copy.
func TestLogsCutIsAnError(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "arkgw.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		w.Write(make([]byte, 500))
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // the daemon goes away mid-stream
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	var w countWriter
	info, err := NewClient(sock).LogsTo("x1", false, &w)
	if err == nil || !strings.Contains(err.Error(), "cut after 500 of 1000 bytes") || info.Bytes != 500 {
		t.Fatalf("LogsTo of a cut stream = %+v, %v", info, err)
	}
}
