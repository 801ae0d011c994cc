package daemon

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"

	"github.com/arkgw/arkgw/configs"
)

// Policy is the node policy in force, with the defaults the daemon fills in.
// It is immutable: a reload builds a new one.
type Policy struct {
	Node *configs.NodePolicy
	// Path is the file it was read from ("" = the built-in defaults) and
	// Text that file's bytes: the CLI asks the daemon for both, so `arkgw
	// check` on a node judges by the policy actually in force.
	Path string
	Text []byte
}

// LoadPolicy reads and validates node.toml.
func LoadPolicy(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read node policy: %w", err)
	}
	n, err := configs.ParseNode(path, data)
	if err != nil {
		return nil, err
	}
	return &Policy{Node: n, Path: path, Text: data}, nil
}

// NodeInfo is GET /api/v1/node: where the running daemon's policy and
// alerts are, for a CLI that was given no --config.
type NodeInfo struct {
	ConfigPath string `json:"config_path"` // "" = the built-in defaults
	Policy     string `json:"policy"`      // the file's text as loaded
	AlertsFile string `json:"alerts_file"`
	StateDir   string `json:"state_dir"`
	Node       string `json:"node"`
}

// Info describes the policy for NodeInfo.
func (p *Policy) Info() NodeInfo {
	return NodeInfo{ConfigPath: p.Path, Policy: string(p.Text), AlertsFile: p.AlertsFile(), StateDir: p.StateDir(), Node: p.NodeName()}
}

// NodeName is the name used in alerts and on the page.
func (p *Policy) NodeName() string {
	if p.Node.Node != "" {
		return p.Node.Node
	}
	h, _ := os.Hostname()
	return h
}

// StateDir is where state, alerts and experiment directories live.
func (p *Policy) StateDir() string { return p.Node.StateDir }

// AlertsFile is the JSONL alert stream.
func (p *Policy) AlertsFile() string {
	if p.Node.Alerts.File != "" {
		return p.Node.Alerts.File
	}
	return filepath.Join(p.Node.StateDir, "alerts.jsonl")
}

// SyslogTarget is the optional syslog collector.
func (p *Policy) SyslogTarget() string { return p.Node.Alerts.Syslog }

// WebListen is the owner page's address ("" = off).
func (p *Policy) WebListen() string { return p.Node.Web.Listen }

// WebPasswordHash is the owner's bcrypt hash.
func (p *Policy) WebPasswordHash() string { return p.Node.Web.PasswordHash }

// WebTLS is the owner page's certificate and key files ("" = plain HTTP).
func (p *Policy) WebTLS() (cert, key string) { return p.Node.Web.TLSCert, p.Node.Web.TLSKey }

// Admit parses a stored or submitted manifest and admits it against this
// policy. err is for unreadable or invalid manifests; conflicts refuse.
func (p *Policy) Admit(manifest []byte, name, dir, id string, routers []netip.Addr) (*configs.Effective, []string, error) {
	m, err := configs.ParseManifest(name, manifest, dir)
	if err != nil {
		return nil, nil, err
	}
	eff, conflicts := configs.Admit(p.Node, m, configs.Env{DefaultRouters: routers, ID: id, Arch: configs.MachineArch(runtime.GOARCH)})
	var lines []string
	for _, c := range conflicts {
		lines = append(lines, c.String())
	}
	return eff, lines, nil
}
