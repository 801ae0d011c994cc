package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/configs"
)

// runAlerts implements `arkgw alerts [--follow] [--json] [--since T]
// [--experiment ID] [--file PATH] [--config node.toml]`. It reads the alerts
// file itself (with its rotated predecessors), so it works while the daemon
// is down.
func runAlerts(args []string) int {
	fs := flag.NewFlagSet("alerts", flag.ContinueOnError)
	follow := fs.Bool("follow", false, "keep printing new alerts as they are written (like tail -F)")
	asJSON := fs.Bool("json", false, "print the raw JSON lines")
	since := fs.String("since", "", "only alerts from this time on: RFC 3339 time, date, or a duration such as 10m")
	exp := fs.String("experiment", "", "only alerts of this experiment id")
	src := nodeFlags(fs)
	file := fs.String("file", "", "alerts file written by the daemon (default: the node policy's [alerts].file)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: arkgw alerts [--follow] [--json] [--since T] [--experiment ID] [--file PATH]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "arkgw alerts: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *file == "" {
		// Works while the daemon is down: the policy file names the alerts
		// file even when no daemon answers.
		pol, source, err := resolveNode(*src.config, *src.socket, configs.DefaultNodePath)
		if err != nil {
			fmt.Fprintf(os.Stderr, "arkgw alerts: node policy is invalid: %v; or name the file with --file\n", err)
			return 2
		}
		*file = pol.AlertsFile()
		if !*asJSON {
			fmt.Fprintf(os.Stderr, "arkgw alerts: %s (node policy: %s)\n", *file, source)
		}
	}
	from, err := alert.ParseSince(*since, time.Now())
	if err != nil {
		fmt.Fprintln(os.Stderr, "arkgw alerts:", err)
		return 2
	}
	if _, err := os.Stat(*file); err != nil && !*follow {
		if errors.Is(err, os.ErrNotExist) {
			if _, err1 := os.Stat(alert.RotatedName(*file, 1)); err1 != nil {
				fmt.Fprintf(os.Stderr, "arkgw alerts: no alerts file %s yet (no alerts so far, or set --file to the node policy's [alerts].file)\n", *file)
				return 0
			}
		} else {
			fmt.Fprintln(os.Stderr, "arkgw alerts:", err)
			return 1
		}
	}
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	print := func(r alert.Record, line []byte) error {
		if *exp != "" && r.Experiment != *exp {
			return nil
		}
		var err error
		if *asJSON {
			_, err = fmt.Fprintf(out, "%s\n", line)
		} else {
			_, err = fmt.Fprintln(out, alert.FormatLine(r))
		}
		if err != nil {
			return err
		}
		if *follow {
			return out.Flush()
		}
		return nil
	}
	if *follow {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		out.Flush()
		err = alert.Follow(ctx, *file, from, print)
	} else {
		err = alert.ReadFile(*file, from, print)
	}
	if err != nil {
		if errors.Is(err, syscall.EPIPE) {
			return 0
		}
		fmt.Fprintln(os.Stderr, "arkgw alerts:", err)
		return 1
	}
	return 0
}
