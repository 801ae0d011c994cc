// Command arkgw is the node daemon and its CLI. See README.md.
package main

import (
	"fmt"
	"os"

	"github.com/arkgw/arkgw/daemon"
	"github.com/arkgw/arkgw/reexec"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if reexec.Init() {
		return
	}
	daemon.Version = version
	os.Exit(dispatch(os.Args[1:]))
}

var commands = map[string]func([]string) int{
	"run":     runDaemon,
	"check":   runCheck,
	"submit":  runSubmit,
	"list":    runList,
	"stop":    runStop,
	"logs":    runLogs,
	"alerts":  runAlerts,
	"flows":   runFlows,
	"cleanup": runCleanup,
}

func dispatch(args []string) int {
	if len(args) == 0 {
		usage()
		return 2
	}
	switch args[0] {
	case "version", "--version":
		fmt.Println("arkgw", version)
		return 0
	case "help", "-h", "--help":
		usage()
		return 0
	}
	if cmd, ok := commands[args[0]]; ok {
		return cmd(args[1:])
	}
	fmt.Fprintf(os.Stderr, "arkgw: unknown command %q; run 'arkgw help'\n", args[0])
	return 2
}

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  arkgw run    [--config /etc/arkgw/node.toml]   the daemon, started at node boot
  arkgw check  MANIFEST.toml [--config F]        validate against the node policy
  arkgw submit MANIFEST.toml                     schedule an experiment; prints its id
  arkgw list   [--json]                          planned, running, completed
  arkgw stop   ID                                stop now
  arkgw logs   ID [--stderr]                     collected stdout (or stderr)
  arkgw alerts [--follow] [--json] [--since T]   violation alerts (works while the daemon is down)
  arkgw flows  [--dst P] [--port N] [--at T]     which experiment sent this?
  arkgw cleanup [--config node.toml]             remove kernel state no experiment owns
  arkgw container build|keygen|sign|import|list|remove ...   the experiment container images
  arkgw try    MANIFEST.toml [--image FILE]      run it here: same image, same sandbox, own declaration as policy
  arkgw version

The node policy (check, alerts, run, cleanup): --config F, else $ARKGW_CONFIG,
else the running daemon's, else /etc/arkgw/node.toml, else the built-in
defaults; check and alerts say which they used. --socket (or $ARKGW_SOCKET)
names the daemon's socket (default /run/arkgw/arkgw.sock).
`)
}
