package main

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"

	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/daemon"
)

// nodeSource is how a subcommand finds the node policy it judges by.
type nodeSource struct {
	config *string // --config ("" = not given)
	socket *string // --socket, to ask the running daemon
}

// nodeFlags adds --config and --socket to a subcommand that reads the node
// policy.
func nodeFlags(fs *flag.FlagSet) nodeSource {
	return nodeSource{
		config: fs.String("config", "", "node policy file (default: $ARKGW_CONFIG, else the running daemon's, else "+configs.DefaultNodePath+", else the built-in defaults)"),
		socket: socketFlag(fs),
	}
}

// resolveNode finds the node policy in the contract's order: --config,
// $ARKGW_CONFIG, the running daemon's, the default file, the built-in
// defaults. source says which, for the user: a check judged by the wrong
// policy is worse than none.
func resolveNode(config, socket, defaultPath string) (pol *daemon.Policy, source string, err error) {
	if config != "" {
		p, err := daemon.LoadPolicy(config)
		return p, config + " (--config)", err
	}
	if env := os.Getenv("ARKGW_CONFIG"); env != "" {
		p, err := daemon.LoadPolicy(env)
		return p, env + " (ARKGW_CONFIG)", err
	}
	if info, err := daemon.NewClient(socket).Node(); err == nil {
		if info.ConfigPath == "" {
			return &daemon.Policy{Node: configs.DefaultNode()}, "built-in defaults (in force in the running daemon)", nil
		}
		n, err := configs.ParseNode(info.ConfigPath, []byte(info.Policy))
		if err != nil {
			return nil, "", fmt.Errorf("the running daemon's policy %s: %w", info.ConfigPath, err)
		}
		return &daemon.Policy{Node: n, Path: info.ConfigPath, Text: []byte(info.Policy)},
			info.ConfigPath + " (in force in the running daemon)", nil
	}
	p, err := daemon.LoadPolicy(defaultPath)
	switch {
	case err == nil:
		return p, defaultPath + " (no daemon answered on " + socket + ")", nil
	case errors.Is(err, fs.ErrNotExist):
		return &daemon.Policy{Node: configs.DefaultNode()},
			"built-in defaults (no daemon answered on " + socket + " and " + defaultPath + " does not exist)", nil
	default:
		return nil, "", err
	}
}
