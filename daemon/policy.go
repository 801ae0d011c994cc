package daemon

import (
	"net/netip"
	"os"
	"path/filepath"
	"runtime"

	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/container"
)

// Policy is the node policy in force, with the defaults the daemon fills in.
// It is immutable: a reload builds a new one.
type Policy struct {
	Node *configs.NodePolicy
}

// LoadPolicy reads and validates node.toml.
func LoadPolicy(path string) (*Policy, error) {
	n, err := configs.LoadNode(path)
	if err != nil {
		return nil, err
	}
	return &Policy{Node: n}, nil
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

// Admit parses a stored or submitted manifest and admits it against this
// policy. err is for unreadable or invalid manifests; conflicts refuse.
func (p *Policy) Admit(manifest []byte, name, dir, id string, routers []netip.Addr) (*configs.Effective, []string, error) {
	m, err := configs.ParseManifest(name, manifest, dir)
	if err != nil {
		return nil, nil, err
	}
	eff, conflicts := configs.Admit(p.Node, m, configs.Env{DefaultRouters: routers, ID: id, Arch: configs.MachineArch(runtime.GOARCH),
		Containers: container.Installations(filepath.Join(p.Node.StateDir, "containers"))})
	var lines []string
	for _, c := range conflicts {
		lines = append(lines, c.String())
	}
	return eff, lines, nil
}
