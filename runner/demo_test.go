package runner

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/arkgw/arkgw/alert"
	"github.com/arkgw/arkgw/container"
	"github.com/arkgw/arkgw/netlab"
	"github.com/arkgw/arkgw/store"
)

// demoGood declares what it does: DNS for arkgw.test, pings, HTTP to the
// web server.
const demoGood = `
title = "Well-behaved latency survey"
container = "ark-2026.1"
command = ["/bin/sh", "-c", "while true; do arkprobe dns www.arkgw.test; ping -c1 -W1 198.51.100.1 | head -2 | tail -1; arkprobe http http://198.51.100.80/; sleep 5; done"]
max_hours = 2
cpu = "minimal"
max_ram_mb = 128
max_mbps = 5
max_mb_per_day = 100
ip = "ipv4"
dns = ["arkgw.test"]
icmp = ["echo-request"]
tcp = ["198.51.100.80/32:80"]
[[experimenters]]
name = "Ada Lovelace"
email = "ada@example.edu"
`

// demoBad declares only ICMP but also tries SSH to another host, a UDP
// probe and a name it did not declare.
const demoBad = `
title = "Survey that breaks its declaration"
container = "ark-2026.1"
command = ["/bin/sh", "-c", "while true; do ping -c1 -W1 198.51.100.1 >/dev/null && echo ping ok; arkprobe tcp 203.0.113.10:22; arkprobe udp 203.0.113.10:7; arkprobe dns www.denied.test; sleep 10; done"]
max_hours = 2
cpu = "minimal"
max_ram_mb = 128
max_mbps = 1
ip = "ipv4"
dns = ["arkgw.test"]
icmp = ["echo-request"]
[[experimenters]]
name = "Mallory Example"
email = "mallory@example.org"
`

// TestDemo is `make demo`: a netlab node with a fake Internet, the daemon,
// two experiments, the owner page and the alert stream, until Ctrl-C.
func TestDemo(t *testing.T) {
	if os.Getenv("ARKGW_DEMO") == "" {
		t.Skip("the demo runs with `make demo` (ARKGW_DEMO=1)")
	}
	if os.Geteuid() != 0 {
		t.Fatal("the demo needs root: it builds network namespaces (run `sudo make demo`)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	w := netlab.NewWorld(t)
	state := os.Getenv("ARKGW_DEMO_STATE")
	if state == "" {
		state = t.TempDir()
	}
	listen := os.Getenv("ARKGW_DEMO_LISTEN")
	if listen == "" {
		listen = "127.0.0.1:8080"
	}
	image := "the small test root (ARKGW_DEMO_ROOTFS=1)"
	if os.Getenv("ARKGW_DEMO_ROOTFS") == "" {
		image = demoImage(t, state)
	}
	nd := startNodeListen(t, w, state, 100, listen)
	defer nd.stop(t)
	for _, m := range []string{demoGood, demoBad} {
		id := nd.submit(t, m)
		nd.waitState(t, id, store.Running, 30*time.Second)
	}
	list, _ := nd.client.List()
	fmt.Printf("\n=== arkgw demo ===\n")
	fmt.Printf("owner page:   http://%s/   (graphs' JSON: /api/v1/traffic; the CLI API and /metrics are on the socket)\n", listen)
	fmt.Printf("CLI:          ARKGW_SOCKET=%s bin/arkgw list | logs ID | stop ID | flows --dst 203.0.113.10\n", filepath.Join(state, "arkgw.sock"))
	fmt.Printf("alerts file:  %s\n", filepath.Join(state, "alerts.jsonl"))
	fmt.Printf("container:    ark-2026.1 = %s\n", image)
	for _, x := range list {
		fmt.Printf("experiment %s: %s (%s)\n", x.ID, x.Title, x.State)
	}
	fmt.Printf("tailing alerts; Ctrl-C stops the demo and removes everything\n\n")
	err := alert.Follow(ctx, filepath.Join(state, "alerts.jsonl"), time.Time{}, func(r alert.Record, _ []byte) error {
		what := fmt.Sprintf("%s %s -> %s", r.Proto, r.Src, r.Dst)
		if r.DstPort != 0 {
			what += fmt.Sprintf(":%d", r.DstPort)
		}
		if r.Name != "" {
			what = fmt.Sprintf("dns %s %s", r.QType, r.Name)
		}
		fmt.Printf("%s ALERT %s [%s] %s x%d: %s\n", r.Time.Format("15:04:05"), r.Experiment, r.Rule, what, max(r.Packets, 1), r.Message)
		return nil
	})
	if err != nil && ctx.Err() == nil {
		t.Error(err)
	}
	fmt.Println("\nstopping: experiments, rules, namespaces and the fake Internet are removed")
	for _, x := range list {
		nd.client.Stop(x.ID)
	}
}

// demoImage installs the standard container image (built once and cached
// by its inputs: the first demo on a machine builds it with mmdebstrap, a
// few minutes) as version ark-2026.1, with arkprobe added for the demo's
// manifests, and mounts it as the runner would; it says which image.
func demoImage(t *testing.T, state string) string {
	t.Helper()
	cache := os.Getenv("ARKGW_TEST_CACHE")
	if cache == "" {
		cache = "/var/cache/arkgw-test"
	}
	fmt.Printf("standard image: building or taking it from %s (the first build takes a few minutes)\n", cache)
	img, built, err := container.Cached(context.Background(), cache, container.BuildOptions{
		Version: "ark-2026.1", PcapBinary: pcapBinary(t),
		Extra: map[string]string{cmdBinary(t, "arkprobe"): "/usr/local/bin/arkprobe"}, Stderr: os.Stderr})
	if err != nil {
		t.Fatalf("standard image (or run the demo with ARKGW_DEMO_ROOTFS=1): %v", err)
	}
	dir := filepath.Join(state, "containers")
	in, err := container.Import(dir, img, container.Trust{AllowUnsigned: true})
	if err != nil {
		t.Fatal(err)
	}
	mp, err := container.Mount(dir, in.Version)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { container.Unmount(mp) })
	how := "cached"
	if built {
		how = "built now"
	}
	return fmt.Sprintf("%s (sha256 %s, %s, loop-mounted read-only)", filepath.Base(img), in.SHA256, how)
}
