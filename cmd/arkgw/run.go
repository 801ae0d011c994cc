package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/hashicorp/go-hclog"
	"github.com/mattn/go-isatty"
	"golang.org/x/sys/unix"

	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/daemon"
	"github.com/arkgw/arkgw/runner"
	"github.com/arkgw/arkgw/sandbox"
	"github.com/arkgw/arkgw/store"
)

const defaultConfig = "/etc/arkgw/node.toml"

// newLogger is the one root logger: JSON for log shippers unless stderr is
// a terminal.
func newLogger() hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:       "arkgw",
		Level:      hclog.LevelFromString(envOr("ARKGW_LOG_LEVEL", "info")),
		JSONFormat: !isatty.IsTerminal(os.Stderr.Fd()),
	})
}

// configPath fills in the daemon's policy file: --config, else
// $ARKGW_CONFIG, else the default path. explicit: the user named one, so a
// missing file is an error rather than the built-in defaults.
func configPath(p *string) (explicit bool) {
	switch {
	case *p != "":
		return true
	case os.Getenv("ARKGW_CONFIG") != "":
		*p = os.Getenv("ARKGW_CONFIG")
		return true
	}
	*p = defaultConfig
	return false
}

// loadPolicy reads node.toml; a missing file at the default path means the
// built-in defaults (said in the log).
func loadPolicy(path string, explicit bool, log hclog.Logger) (*daemon.Policy, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) && !explicit {
		log.Warn("no node policy file; using the built-in defaults", "path", path)
		return &daemon.Policy{Node: configs.DefaultNode()}, nil
	}
	return daemon.LoadPolicy(path)
}

func runDaemon(args []string) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "node policy file (default: $ARKGW_CONFIG, else "+defaultConfig+")")
	sock := socketFlag(fs)
	runDir := fs.String("run-dir", "/run/arkgw", "runtime state that ends with a reboot (namespace mounts)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	explicit := configPath(cfgPath)
	log := newLogger()
	raiseNoFile(log)
	pol, err := loadPolicy(*cfgPath, explicit, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "arkgw:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	// SIGHUP: parse and validate the whole new policy first; an invalid one
	// leaves the old one in force.
	reload := make(chan *daemon.Policy, 1)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				p, err := loadPolicy(*cfgPath, explicit, log)
				if err != nil {
					log.Error("node policy reload refused; the previous policy stays in force", "error", err)
					continue
				}
				log.Info("node policy reload requested", "path", *cfgPath)
				reload <- p
			}
		}
	}()

	err = daemon.Run(ctx, daemon.Config{
		Policy: pol, Socket: *sock, Logger: log,
		NewRunner: func(deps daemon.RunnerDeps) (daemon.Runner, error) {
			return runner.New(deps, runner.Options{RunDir: *runDir})
		},
	}, reload)
	if err != nil {
		log.Error("arkgw failed", "error", err)
		return 1
	}
	return 0
}

// runCleanup removes kernel state (veths, namespaces, rules) of experiments
// the store does not list as running. The daemon must be stopped.
func runCleanup(args []string) int {
	fs := flag.NewFlagSet("cleanup", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "node policy file (default: $ARKGW_CONFIG, else "+defaultConfig+")")
	runDir := fs.String("run-dir", "/run/arkgw", "runtime state directory of the daemon")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	explicit := configPath(cfgPath)
	log := newLogger()
	pol, err := loadPolicy(*cfgPath, explicit, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "arkgw:", err)
		return 2
	}
	st, err := store.Open(pol.StateDir())
	if err != nil {
		fmt.Fprintf(os.Stderr, "arkgw cleanup: %v; stop the daemon first (it sweeps at start by itself)\n", err)
		return 1
	}
	defer st.Close()
	keep := map[string]bool{}
	list, err := st.List()
	if err != nil {
		return fail(err)
	}
	for _, x := range list {
		if x.State == store.Running {
			keep[x.ID] = true
		}
	}
	r, err := runner.New(daemon.RunnerDeps{Policy: pol, Store: st, Logger: log}, runner.Options{RunDir: *runDir})
	if err != nil {
		return fail(err)
	}
	defer r.Close()
	if err := r.Sweep(context.Background(), keep); err != nil {
		return fail(err)
	}
	if len(keep) == 0 {
		// No experiment runs: the daemon's cgroup parent is kernel state
		// nothing owns (the next `arkgw run` makes it again).
		if err := sandbox.RemoveParent(sandbox.DefaultCgroupParent); err != nil {
			return fail(err)
		}
	}
	fmt.Printf("arkgw cleanup: done (%d running experiments kept)\n", len(keep))
	return 0
}

// minNoFile is the descriptor limit below which the daemon warns: about
// 180 descriptors per running experiment at most (docs/HARDENING.md,
// "Descriptors") for a few dozen experiments, plus the node-wide ones.
const minNoFile = 8192

// raiseNoFile raises the soft RLIMIT_NOFILE to the hard one (the Go
// runtime does so too since Go 1.19; this makes it explicit and says what
// the daemon got) and warns when that is below minNoFile.
func raiseNoFile(log hclog.Logger) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		log.Warn("cannot read the descriptor limit", "error", err)
		return
	}
	if lim.Cur < lim.Max {
		want := lim
		want.Cur = lim.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &want); err != nil {
			log.Warn("cannot raise the descriptor limit to the hard limit", "soft", lim.Cur, "hard", lim.Max, "error", err)
		} else {
			lim = want
		}
	}
	if lim.Cur < minNoFile {
		log.Warn("descriptor limit is low for a node; set LimitNOFILE=65536 in the systemd unit", "limit", lim.Cur, "recommended", minNoFile)
		return
	}
	log.Debug("descriptor limit", "limit", lim.Cur)
}
