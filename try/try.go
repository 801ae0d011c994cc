// Package try runs an experiment on an experimenter's own Linux machine the
// way a node would: the same container image, the same sandbox, the same
// gateway (network namespace, nftables allowlist, DNS proxy, NFLOG alerts,
// NAT out of the machine's uplink), with the manifest's own declaration as
// the policy. Undeclared traffic is dropped and reported exactly as on a
// node. Everything it made is removed when it returns (also on Ctrl-C).
package try

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/container"
	"github.com/arkgw/arkgw/daemon"
	"github.com/arkgw/arkgw/nsdo"
	"github.com/arkgw/arkgw/runner"
	"github.com/arkgw/arkgw/sandbox"
)

// cgroupParent holds a try run's experiment cgroup; removed when Run ends.
const cgroupParent = "arkgw-try"

// Options configure Run.
type Options struct {
	Manifest string // path of the manifest
	// Image is the container image to run in (with IMAGE.json beside it);
	// "" = the manifest's version installed in /var/lib/arkgw/containers.
	Image string
	// Uplink is the interface to NAT out of; "" = the default route's.
	Uplink string
	// HostNS is the network namespace that plays the machine (tests: a
	// netlab node); zero = this process's.
	HostNS nsdo.NS
	// NFLOGGroup for the drop alerts; 0 = 7713 (not a node daemon's 100).
	NFLOGGroup int
	// Lab makes the documentation prefixes reachable, as a node's [lab]
	// documentation_prefixes does: for a lab whose fake Internet answers
	// them (netlab), never for the real one.
	Lab bool
	// Helper and Pcap binaries (cmd/arkgw-init, cmd/pcap); "" = beside
	// this binary (then the image's own /usr/bin/pcap for pcap).
	HelperBinary, PcapBinary string
	// Out receives the live alerts and, at the end, the output.
	Out    io.Writer
	Logger hclog.Logger
}

// Result is what a try run produced.
type Result struct {
	ID             string
	Exit           daemon.Result
	Stdout, Stderr []byte
	Alerts         []alert.Record
	Effective      *configs.Effective
}

// policyFor is a node policy that permits what m declares: admission then
// makes the effective policy exactly the declaration (minus the reserved
// destinations a node always drops).
func policyFor(m *configs.Manifest, stateDir, uplink string, group int, lab bool) (*configs.NodePolicy, error) {
	var protos []string
	for _, p := range m.Protocols {
		protos = append(protos, fmt.Sprint(p))
	}
	var spoofDst []string
	for _, a := range m.SpoofDestinations {
		spoofDst = append(spoofDst, fmt.Sprintf("%q", a.String()))
	}
	text := fmt.Sprintf(`state_dir = %q
uplink = %q
[permit]
third_party = true
tcp = ["0.0.0.0/0:*", "[::/0]:*"]
udp = ["0.0.0.0/0:*", "[::/0]:*"]
icmp = ["any"]
dns_servers_any = true
syn_only = true
protocols = [%s]
spoof_destinations = [%s]
back_channel = true
[dns]
allow = ["any"]
[limits]
max_mbps = 1000
max_hours = 8760
max_ram_mb = 1048576
tmpfs_mb = 1048576
output_mb = 1024
allow_missing_controllers = ["cpu", "memory", "pids"]
[alerts]
nflog_group = %d
[lab]
documentation_prefixes = %v
`, stateDir, uplink, strings.Join(protos, ", "), strings.Join(spoofDst, ", "), group, lab)
	return configs.ParseNode("try policy", []byte(text))
}

// Run runs the manifest's experiment until its command ends or ctx is done
// (then it is stopped), printing alerts as they come, and removes
// everything it made before it returns.
func Run(ctx context.Context, o Options) (res *Result, err error) {
	if o.Out == nil {
		o.Out = os.Stdout
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	if o.NFLOGGroup == 0 {
		o.NFLOGGroup = 7713
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("try: run as root (it builds a network namespace, nftables rules and a sandbox like a node)")
	}
	m, err := configs.LoadManifest(o.Manifest)
	if err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp("", "arkgw-try-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	node, err := policyFor(m, work, o.Uplink, o.NFLOGGroup, o.Lab)
	if err != nil {
		return nil, fmt.Errorf("try: %w", err)
	}
	id := fmt.Sprintf("try%d", os.Getpid()%100000)

	// The image: staged (a link, not a copy) in the run's containers
	// directory, checked against its metadata, loop-mounted read-only.
	image := o.Image
	if image == "" {
		image = filepath.Join("/var/lib/arkgw/containers", m.Container+"_"+container.HostArch()+".squashfs")
	}
	containers := filepath.Join(work, "containers")
	meta, err := container.Stage(containers, image)
	if err != nil {
		return nil, fmt.Errorf("try: %w", err)
	}
	if meta.Version != m.Container {
		fmt.Fprintf(o.Out, "note: the manifest names container %s; running in %s (%s) instead\n", m.Container, meta.Version, image)
	}
	if m.ContainerSHA256 != "" && m.ContainerSHA256 != meta.SHA256 {
		return nil, fmt.Errorf("try: the manifest pins container_sha256 %s but image %s has sha256 %s", m.ContainerSHA256, image, meta.SHA256)
	}
	root, err := container.Mount(containers, meta.Version)
	if err != nil {
		return nil, fmt.Errorf("try: %w", err)
	}
	defer container.Unmount(root)

	eff, conflicts := configs.Admit(node, m, configs.Env{ID: id, Arch: container.HostArch()})
	if len(conflicts) > 0 {
		var lines []string
		for _, c := range conflicts {
			lines = append(lines, c.String())
		}
		return nil, fmt.Errorf("try: the manifest cannot run:\n  %s", strings.Join(lines, "\n  "))
	}
	eff.Container = meta.Version

	res = &Result{ID: id, Effective: eff}
	var mu sync.Mutex
	sink := alert.SinkFunc(func(r alert.Record) {
		mu.Lock()
		res.Alerts = append(res.Alerts, r)
		mu.Unlock()
		fmt.Fprintf(o.Out, "%s ALERT %s\n", r.Time.Format("15:04:05"), describe(r))
	})
	r, err := runner.New(daemon.RunnerDeps{
		Policy: &daemon.Policy{Node: node}, Alerts: sink, Logger: o.Logger,
		Lookup: func(string) (string, []string, bool) { return m.Title, nil, true },
	}, runner.Options{HostNS: o.HostNS, RunDir: filepath.Join(work, "run"),
		HelperBinary: o.HelperBinary, PcapBinary: o.PcapBinary, CgroupParent: cgroupParent})
	if err != nil {
		return nil, fmt.Errorf("try: %w", err)
	}
	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	runDone := make(chan error, 1)
	go func() { runDone <- r.Run(runCtx) }()
	// shutdown ends the node-wide loops (the alerter flushes what it
	// aggregated) and removes the runner's tables; once, on every path.
	var shutOnce sync.Once
	var shutErr error
	shutdown := func() error {
		shutOnce.Do(func() {
			stopRun()
			if e := <-runDone; e != nil {
				shutErr = fmt.Errorf("try: %w", e)
			}
			if e := r.Close(); e != nil && shutErr == nil {
				shutErr = fmt.Errorf("try: clean up: %w", e)
			}
			if e := sandbox.RemoveParent(cgroupParent); e != nil && shutErr == nil {
				shutErr = fmt.Errorf("try: clean up: %w", e)
			}
		})
		return shutErr
	}
	defer func() {
		if e := shutdown(); e != nil && err == nil {
			err = e
		}
	}()
	dir := filepath.Join(work, "experiment")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	fmt.Fprintf(o.Out, "running %q (%s) in container %s, sha256 %s; Ctrl-C stops it\n", m.Title, id, meta.Version, meta.SHA256)
	inst, err := r.Start(ctx, eff, 1, dir)
	if err != nil {
		return nil, fmt.Errorf("try: start: %w", err)
	}
	select {
	case <-inst.Done():
	case <-ctx.Done():
		fmt.Fprintln(o.Out, "stopping")
	}
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := inst.Stop(stopCtx); err != nil {
		return res, fmt.Errorf("try: stop: %w", err)
	}
	// Give the alerter a moment for drops logged just before the end,
	// then let it flush.
	time.Sleep(200 * time.Millisecond)
	if err := shutdown(); err != nil {
		return res, err
	}
	res.Exit = inst.Result()
	res.Stdout, _ = os.ReadFile(filepath.Join(dir, "stdout"))
	res.Stderr, _ = os.ReadFile(filepath.Join(dir, "stderr"))
	fmt.Fprintf(o.Out, "--- stdout ---\n%s", res.Stdout)
	if len(res.Stderr) > 0 {
		fmt.Fprintf(o.Out, "--- stderr ---\n%s", res.Stderr)
	}
	mu.Lock()
	n := len(res.Alerts)
	mu.Unlock()
	fmt.Fprintf(o.Out, "--- exit code %d%s, %d alert(s) ---\n", res.Exit.ExitCode, signalText(res.Exit.Signal), n)
	return res, nil
}

func signalText(s string) string {
	if s == "" {
		return ""
	}
	return " (signal " + s + ")"
}

// describe is one alert line.
func describe(r alert.Record) string {
	what := fmt.Sprintf("%s %s -> %s", r.Proto, r.Src, r.Dst)
	if r.DstPort != 0 {
		what += fmt.Sprintf(":%d", r.DstPort)
	}
	if r.Name != "" {
		what = fmt.Sprintf("dns %s %s", r.QType, r.Name)
	}
	return fmt.Sprintf("[%s] %s x%d: %s", r.Rule, what, max(r.Packets, 1), r.Message)
}
