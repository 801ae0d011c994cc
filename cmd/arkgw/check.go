package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/container"
)

// runCheck implements `arkgw check MANIFEST [--node node.toml]`: it prints
// the effective policy and every conflict. Exit status: 0 admitted,
// 1 refused, 2 unreadable or invalid input.
func runCheck(args []string) int {
	// The manifest's title, contacts and values reach the report: escaped
	// on the way out.
	stdout, stderr := &terminalWriter{w: os.Stdout}, &terminalWriter{w: os.Stderr}
	code := checkManifest(args, stdout, stderr, configs.DefaultNodePath)
	stdout.Flush()
	stderr.Flush()
	return code
}

func checkManifest(args []string, stdout, stderr io.Writer, defaultNode string) int {
	fl := flag.NewFlagSet("arkgw check", flag.ContinueOnError)
	fl.SetOutput(stderr)
	src := nodeFlags(fl)
	fl.StringVar(src.config, "node", "", "the same as --config")
	fl.Usage = func() {
		fmt.Fprintln(stderr, "usage: arkgw check MANIFEST.toml [--config node.toml]")
		fl.PrintDefaults()
	}
	// Accept the flag before or after the manifest.
	var pos []string
	for {
		if err := fl.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return 2
		}
		if fl.NArg() == 0 {
			break
		}
		pos = append(pos, fl.Arg(0))
		args = fl.Args()[1:]
	}
	if len(pos) != 1 {
		fl.Usage()
		return 2
	}

	pol, source, err := resolveNode(*src.config, *src.socket, defaultNode)
	if err != nil {
		fmt.Fprintf(stderr, "arkgw check: node policy is invalid:\n%v\n", err)
		return 2
	}
	node := pol.Node

	m, err := configs.LoadManifest(pos[0])
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			fmt.Fprintf(stderr, "arkgw check: %v\n", err)
		} else {
			fmt.Fprintf(stderr, "arkgw check: %s is invalid:\n%v\n", pos[0], err)
		}
		return 2
	}
	routers := defaultRouters()
	eff, conflicts := configs.Admit(node, m, configs.Env{DefaultRouters: routers, Arch: configs.MachineArch(runtime.GOARCH),
		Containers: container.Installations(filepath.Join(node.StateDir, "containers"))})

	fmt.Fprintf(stdout, "manifest:      %s\n", pos[0])
	fmt.Fprintf(stdout, "node policy:   %s\n", source)
	if len(routers) > 0 {
		rs := make([]string, len(routers))
		for i, r := range routers {
			rs[i] = r.String()
		}
		fmt.Fprintf(stdout, "routers:       %s (default routes: reachable even in reserved ranges)\n", strings.Join(rs, ", "))
	}
	fmt.Fprintln(stdout)
	if err := configs.FormatEffective(stdout, eff); err != nil {
		fmt.Fprintf(stderr, "arkgw check: %v\n", err)
		return 2
	}
	fmt.Fprintln(stdout)
	if len(conflicts) == 0 {
		fmt.Fprintln(stdout, "admitted: no conflicts with the node policy")
		return 0
	}
	fmt.Fprintf(stdout, "refused: %d conflict(s) with the node policy:\n", len(conflicts))
	for _, c := range conflicts {
		fmt.Fprintf(stdout, "  %s: %s\n", pos[0], c)
	}
	return 1
}

// defaultRouters reads the gateways of the IPv4 and IPv6 default routes
// from /proc/net/route and /proc/net/ipv6_route (best effort: none on error).
func defaultRouters() []netip.Addr {
	var out []netip.Addr
	if f, err := os.Open("/proc/net/route"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 3 || fs[1] != "00000000" {
				continue
			}
			v, err := strconv.ParseUint(fs[2], 16, 32)
			if err != nil || v == 0 {
				continue
			}
			// Little-endian hex of the address in network byte order.
			a := netip.AddrFrom4([4]byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)})
			out = append(out, a)
		}
		f.Close()
	}
	if f, err := os.Open("/proc/net/ipv6_route"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 5 || fs[0] != strings.Repeat("0", 32) || fs[1] != "00" {
				continue
			}
			var b [16]byte
			ok := len(fs[4]) == 32
			for i := 0; ok && i < 16; i++ {
				v, err := strconv.ParseUint(fs[4][2*i:2*i+2], 16, 8)
				ok = err == nil
				b[i] = byte(v)
			}
			if a := netip.AddrFrom16(b); ok && !a.IsUnspecified() {
				out = append(out, a)
			}
		}
		f.Close()
	}
	return out
}
