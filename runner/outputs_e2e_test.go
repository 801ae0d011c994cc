package runner

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	mcreds "github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/daemon"
	"github.com/arkgw/arkgw/netlab"
	"github.com/arkgw/arkgw/outputs"
	"github.com/arkgw/arkgw/store"
)

// startS3 builds the outputs tests' S3 server (testdata/s3server) and runs
// it on a loopback port until the test ends.
func startS3(t *testing.T, bucket string) string {
	t.Helper()
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "s3server")
	build := exec.Command("go", "build", "-o", bin, "../outputs/testdata/s3server")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build s3server: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-addr", "127.0.0.1:0", "-db", filepath.Join(tmp, "s3.db"), "-bucket", bucket)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	// No Pdeathsig here: it fires when the starting thread exits, and
	// netlab lets threads that entered a namespace die.
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "listening "); ok {
				addr <- a
			}
		}
	}()
	select {
	case a := <-addr:
		return a
	case <-time.After(30 * time.Second):
		t.Fatal("s3server did not start")
		return ""
	}
}

// A netlab experiment on a node with [outputs]: its stdout, stderr,
// status, alerts and flow summary appear in the store under the documented
// names, and `arkgw list` says shipped.
func TestPrivilegedResultsShipped(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds netlab namespaces and runs sandboxes")
	}
	const bucket = "arkgw-results"
	s3 := startS3(t, bucket)
	w := netlab.NewWorld(t)
	state := t.TempDir()
	cred := filepath.Join(t.TempDir(), "outputs.credentials")
	if err := os.WriteFile(cred, []byte("access_key = \"AK\"\nsecret_key = \"SK\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	nd := startNodeWith(t, w, state, 2000+(os.Getpid()+500)%1000, fmt.Sprintf(`[outputs]
push = "s3://%s/fleet"
endpoint = "http://%s"
credentials = %q
`, bucket, s3, cred))
	defer nd.stop(t)

	script := `arkprobe tcp 198.51.100.80:80; arkprobe tcp 203.0.113.10:22; echo oops >&2; echo done`
	id := nd.submit(t, fmt.Sprintf(probeManifest, script))
	x := nd.waitState(t, id, store.Completed, 60*time.Second)
	if x.Reason != store.ReasonFinished {
		t.Fatalf("experiment ended %q (%s), want finished", x.Reason, x.Detail)
	}
	var v *daemon.ExperimentView
	for deadline := time.Now().Add(60 * time.Second); ; {
		var err error
		if v, err = nd.client.Get(id); err == nil && v.Outputs != nil && v.Outputs.Shipped {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("results not shipped within a minute: %+v", v)
		}
		time.Sleep(200 * time.Millisecond)
	}
	mc, err := minio.New(s3, &minio.Options{Creds: mcreds.NewStaticV4("AK", "SK", "")})
	if err != nil {
		t.Fatal(err)
	}
	get := func(name string) string {
		o, err := mc.GetObject(context.Background(), bucket, "fleet/netlab/"+id+"/"+name, minio.GetObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer o.Close()
		b, err := io.ReadAll(o)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return string(b)
	}
	logs, err := nd.client.Logs(id, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := get("stdout/000001"); got != string(logs) || !strings.Contains(got, "tcp 198.51.100.80:80: ok") || !strings.HasSuffix(got, "done\n") {
		t.Errorf("stdout/000001 = %q, want the experiment's stdout %q", got, logs)
	}
	if got := get("stderr/000001"); !strings.Contains(got, "oops") {
		t.Errorf("stderr/000001 = %q", got)
	}
	var st outputs.Status
	if err := json.Unmarshal([]byte(get("status.json")), &st); err != nil {
		t.Fatal(err)
	}
	if st.Experiment != id || st.Node != "netlab" || st.Reason != store.ReasonFinished || st.ExitCode != 0 || st.Stdout.Chunks != 1 || st.Started.IsZero() || st.Ended.IsZero() {
		t.Errorf("status.json %+v", st)
	}
	if a := get("alerts.jsonl"); !strings.Contains(a, `"dst":"203.0.113.10"`) || !strings.Contains(a, `"experiment":"`+id+`"`) {
		t.Errorf("alerts.jsonl lacks the denied connection:\n%s", a)
	}
	flows := get("flows.jsonl")
	var found bool
	for _, line := range strings.Split(strings.TrimSpace(flows), "\n") {
		var f outputs.FlowSummary
		if json.Unmarshal([]byte(line), &f) == nil && f.Dst == "198.51.100.80" && f.Port == 80 && f.Proto == "tcp" && f.BytesOut > 0 && f.BytesIn > 0 {
			found = true
		}
	}
	if !found {
		t.Errorf("flows.jsonl lacks tcp 198.51.100.80:80 with bytes both ways:\n%s", flows)
	}
}

// startNodeWith is startNode with more node.toml text.
func startNodeWith(t *testing.T, w *netlab.World, state string, group int, extra string) *node {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(state, "containers"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(containerRoot(t), filepath.Join(state, "containers", "ark-2026.1")); err != nil {
		t.Fatal(err)
	}
	n, err := configs.ParseNode("node.toml", []byte(fmt.Sprintf(`node = "netlab"
state_dir = %q
uplink = "eth0"
[dns]
upstreams = [%q]
[alerts]
nflog_group = %d
[lab]
documentation_prefixes = true
%s`, state, netlab.DNS4, group, extra)))
	if err != nil {
		t.Fatal(err)
	}
	n.Web.Listen = "127.0.0.1:0"
	sock := filepath.Join(state, "arkgw.sock")
	cgParent := testCgroupParent(t)
	pcap, helper := pcapBinary(t), helperBinary(t)
	ctx, cancel := context.WithCancel(context.Background())
	nd := &node{w: w, state: state, client: daemon.NewClient(sock), cancel: cancel, done: make(chan error, 1)}
	go func() {
		nd.done <- daemon.Run(ctx, daemon.Config{
			Policy: &daemon.Policy{Node: n}, Socket: sock, Logger: testLogger(),
			NewRunner: func(deps daemon.RunnerDeps) (daemon.Runner, error) {
				return New(deps, Options{HostNS: w.Node.NS(), RunDir: filepath.Join(state, "run"), PcapBinary: pcap, HelperBinary: helper, CgroupParent: cgParent})
			},
		}, nil)
	}()
	t.Cleanup(func() { nd.stop(t) })
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, err := nd.client.List(); err == nil {
			return nd
		}
		select {
		case err := <-nd.done:
			t.Fatalf("daemon exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("daemon did not come up")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
