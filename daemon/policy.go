package daemon

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/container"
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
	eff, conflicts := configs.Admit(p.Node, m, configs.Env{DefaultRouters: routers, ID: id, Arch: configs.MachineArch(runtime.GOARCH),
		Containers: container.Installations(filepath.Join(p.Node.StateDir, "containers"))})
	var lines []string
	for _, c := range conflicts {
		lines = append(lines, c.String())
	}
	return eff, lines, nil
}

// RestartKeys names the node.toml keys whose values differ between p and
// next and that only take effect when the daemon starts: the node's name,
// state and uplink, the listeners and sinks it opens once ([web],
// [alerts], [flows]), and what the runner fixes for its lifetime (DNS
// upstreams, the node-wide rate cap, the cgroup controllers it may run
// without). A reload that changes one of them is refused whole, naming
// them; everything else applies on reload (see Reload).
func (p *Policy) RestartKeys(next *Policy) []string {
	a, b := p.Node, next.Node
	var keys []string
	diff := func(key string, same bool) {
		if !same {
			keys = append(keys, key)
		}
	}
	diff("node", a.Node == b.Node)
	diff("state_dir", a.StateDir == b.StateDir)
	diff("uplink", a.Uplink == b.Uplink)
	diff("web.listen", a.Web.Listen == b.Web.Listen)
	diff("web.password_hash", a.Web.PasswordHash == b.Web.PasswordHash)
	diff("web.tls_cert", a.Web.TLSCert == b.Web.TLSCert)
	diff("web.tls_key", a.Web.TLSKey == b.Web.TLSKey)
	diff("lab.documentation_prefixes", a.Lab == b.Lab)
	diff("dns.upstreams", slices.Equal(a.DNS.Upstreams, b.DNS.Upstreams))
	diff("limits.node_mbps", a.Limits.NodeMbps == b.Limits.NodeMbps)
	diff("limits.allow_missing_controllers", slices.Equal(sorted(a.Limits.AllowMissingControllers), sorted(b.Limits.AllowMissingControllers)))
	diff("alerts.nflog_group", a.Alerts.NFLOGGroup == b.Alerts.NFLOGGroup)
	diff("alerts.file", a.Alerts.File == b.Alerts.File)
	diff("alerts.syslog", a.Alerts.Syslog == b.Alerts.Syslog)
	diff("alerts.stop_after", a.Alerts.StopAfter == b.Alerts.StopAfter)
	diff("alerts.window", a.Alerts.Window == b.Alerts.Window)
	diff("flows.retention_days", a.Flows.RetentionDays == b.Flows.RetentionDays)
	return keys
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// ReloadError is a reload that was not applied; the previous policy stays
// in force for rules and admission alike.
type ReloadError struct {
	// RestartKeys are changed keys that need a daemon restart.
	RestartKeys []string
	Err         error
}

func (e *ReloadError) Error() string {
	if len(e.RestartKeys) > 0 {
		return fmt.Sprintf("node policy reload refused: %s changed, which only take effect when arkgw starts; "+
			"restart the daemon (systemctl restart arkgw: running experiments are re-adopted) or undo the change; "+
			"the previous policy stays in force", strings.Join(e.RestartKeys, ", "))
	}
	return fmt.Sprintf("node policy reload not applied: %v; the previous policy stays in force", e.Err)
}

func (e *ReloadError) Unwrap() error { return e.Err }
