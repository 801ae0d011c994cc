package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/arkgw/arkgw/try"
)

func init() { commands["try"] = runTry }

// runTry is `arkgw try MANIFEST.toml [--image FILE] [--uplink IF]`: the
// experiment on this machine, in the same image and sandbox as on a node,
// with the manifest's declaration as the policy.
func runTry(args []string) int {
	fl := flag.NewFlagSet("try", flag.ContinueOnError)
	image := fl.String("image", "", "container image (IMAGE.json beside it); default: the manifest's version in /var/lib/arkgw/containers")
	uplink := fl.String("uplink", "", "interface to NAT out of (default: the default route's)")
	group := fl.Int("nflog-group", 7713, "NFLOG group for the drop alerts (not the one a node daemon here uses)")
	lab := fl.Bool("lab", false, "documentation prefixes (198.51.100.0/24, 2001:db8::/32, ...) reachable, for a test lab's fake Internet; they are dropped on a node otherwise")
	pos, err := parseInterspersed(fl, args)
	if err != nil || len(pos) != 1 {
		fmt.Fprintln(os.Stderr, "usage: arkgw try MANIFEST.toml [--image FILE] [--uplink IF] [--nflog-group N] [--lab]")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := try.Run(ctx, try.Options{Manifest: pos[0], Image: *image, Uplink: *uplink, NFLOGGroup: *group, Lab: *lab,
		Out: os.Stdout, Logger: newLogger()})
	if err != nil {
		return fail(err)
	}
	if res.Exit.ExitCode != 0 || res.Exit.Signal != "" {
		return 1
	}
	return 0
}
