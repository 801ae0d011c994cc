package main

import (
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/arkgw/arkgw/daemon"
)

// The CLI finds the node policy in the contract's order and says which.
func TestResolveNode(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	flagFile := write("flag.toml", "node = \"from-flag\"\n")
	envFile := write("env.toml", "node = \"from-env\"\n")
	defFile := write("default.toml", "node = \"from-default\"\n")
	daemonText := "node = \"from-daemon\"\n[alerts]\nfile = \"/srv/alerts/x.jsonl\"\n"

	// A daemon answering GET /api/v1/node on a Unix socket.
	sock := filepath.Join(dir, "arkgw.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/node" {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(daemon.NodeInfo{ConfigPath: "/srv/node.toml", Policy: daemonText})
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	noDaemon := filepath.Join(dir, "none.sock")

	cases := []struct {
		name, flag, env, socket, defPath string
		node, source, alerts             string
	}{
		{"flag first", flagFile, envFile, sock, defFile, "from-flag", "(--config)", ""},
		{"then env", "", envFile, sock, defFile, "from-env", "(ARKGW_CONFIG)", ""},
		{"then the daemon", "", "", sock, defFile, "from-daemon", "/srv/node.toml (in force in the running daemon)", "/srv/alerts/x.jsonl"},
		{"then the default file", "", "", noDaemon, defFile, "from-default", "no daemon answered", ""},
		{"then built-in defaults", "", "", noDaemon, filepath.Join(dir, "absent.toml"), "", "built-in defaults", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("ARKGW_CONFIG", c.env)
			pol, source, err := resolveNode(c.flag, c.socket, c.defPath)
			if err != nil {
				t.Fatal(err)
			}
			if pol.Node.Node != c.node {
				t.Errorf("node = %q, want %q", pol.Node.Node, c.node)
			}
			if !strings.Contains(source, c.source) {
				t.Errorf("source %q lacks %q", source, c.source)
			}
			if c.alerts != "" && pol.AlertsFile() != c.alerts {
				t.Errorf("alerts file %q, want %q", pol.AlertsFile(), c.alerts)
			}
		})
	}
	t.Run("named file missing is an error", func(t *testing.T) {
		t.Setenv("ARKGW_CONFIG", "")
		if _, _, err := resolveNode(filepath.Join(dir, "absent.toml"), noDaemon, defFile); err == nil || !strings.Contains(err.Error(), "absent.toml") {
			t.Fatalf("err = %v, want one naming the file", err)
		}
	})
}
