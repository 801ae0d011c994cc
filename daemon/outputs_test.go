package daemon

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	mcreds "github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/arkgw/arkgw/outputs"
	"github.com/arkgw/arkgw/store"
)

// startS3 builds and starts the outputs tests' S3 server on a loopback
// port; it is killed at the end of the test.
func startS3(t *testing.T, bucket string) string {
	t.Helper()
	tmp := t.TempDir()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(tmp, "s3server")
	build := exec.Command(goBin, "build", "-o", bin, "../outputs/testdata/s3server")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build s3server: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-addr", "127.0.0.1:0", "-db", filepath.Join(tmp, "s3.db"), "-bucket", bucket)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
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
	case <-time.After(20 * time.Second):
		t.Fatal("s3server did not start")
		return ""
	}
}

// With [outputs] set, an experiment the daemon runs has its results in the
// store when it ends, and `arkgw list` (the API) says so.
func TestDaemonShipsResults(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root: the [outputs] credentials file must be owned by root")
	}
	const bucket = "arkgw-results"
	addr := startS3(t, bucket)
	tmp := t.TempDir()
	cred := filepath.Join(tmp, "s3.credentials")
	if err := os.WriteFile(cred, []byte("access_key = \"AK\"\nsecret_key = \"SK\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The owner page needs a port of its own: borrow a free one.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	web := l.Addr().String()
	l.Close()
	pol := testPolicy(t, fmt.Sprintf(`node = "ark-d1"
[web]
listen = %q
[outputs]
push = "s3://%s/fleet"
endpoint = "http://%s"
credentials = %q
interval = "1s"
`, web, bucket, addr, cred))
	r := newFakeRunner()
	sock := filepath.Join(tmp, "arkgw.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{Policy: pol, Socket: sock, NewRunner: func(RunnerDeps) (Runner, error) { return r, nil }}, nil)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
	})
	c := NewClient(sock)
	var x *store.Experiment
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		if x, err = c.Submit([]byte(goodManifest), "m.toml", "/tmp"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("submit: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var inst *fakeInstance
	for deadline := time.Now().Add(10 * time.Second); inst == nil; inst = r.instance(x.ID) {
		if time.Now().After(deadline) {
			t.Fatal("experiment not started")
		}
		time.Sleep(10 * time.Millisecond)
	}
	dir := filepath.Join(pol.StateDir(), "experiments", x.ID)
	stdout := bytes.Repeat([]byte("hop 1 198.51.100.1 0.4 ms\n"), 10000)
	if err := os.WriteFile(filepath.Join(dir, "stdout"), stdout, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "stderr"), []byte("warning: slow\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	inst.exit(Result{ExitCode: 0})

	var v *ExperimentView
	for deadline := time.Now().Add(30 * time.Second); ; {
		var err error
		v, err = c.Get(x.ID)
		if err == nil && v.Outputs != nil && v.Outputs.Shipped {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not shipped: %+v (%v)", v, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if want := "s3://" + bucket + "/fleet/ark-d1/" + x.ID + "/"; v.Outputs.Location != want {
		t.Errorf("location %q, want %q", v.Outputs.Location, want)
	}
	list, err := c.List()
	if err != nil || len(list) != 1 || list[0].Outputs == nil || !list[0].Outputs.Shipped {
		t.Fatalf("list: %+v %v", list, err)
	}
	raw, err := c.Raw("/metrics")
	if err != nil || !strings.Contains(string(raw), "arkgw_outputs_pending_bytes 0") || !strings.Contains(string(raw), "arkgw_outputs_upload_lag_seconds 0") {
		t.Errorf("metrics lack the outputs backlog: %v\n%s", err, raw)
	}

	mc, err := minio.New(addr, &minio.Options{Creds: mcreds.NewStaticV4("AK", "SK", "")})
	if err != nil {
		t.Fatal(err)
	}
	get := func(name string) []byte {
		o, err := mc.GetObject(context.Background(), bucket, "fleet/ark-d1/"+x.ID+"/"+name, minio.GetObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer o.Close()
		b, err := io.ReadAll(o)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return b
	}
	if got := get("stdout/000001"); !bytes.Equal(got, stdout) {
		t.Errorf("stdout/000001: %d bytes, want the %d written", len(got), len(stdout))
	}
	if got := string(get("stderr/000001")); got != "warning: slow\n" {
		t.Errorf("stderr/000001 = %q", got)
	}
	var st outputs.Status
	if err := json.Unmarshal(get("status.json"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Experiment != x.ID || st.Node != "ark-d1" || st.State != store.Completed || st.Reason != store.ReasonFinished || st.Stdout.Bytes != int64(len(stdout)) {
		t.Errorf("status.json %+v", st)
	}
	get("alerts.jsonl")
	get("flows.jsonl")
}

// A credentials file others may read stops the daemon at start, saying how
// to fix it; the store is not needed for that.
func TestDaemonRefusesReadableCredentials(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root: the [outputs] credentials file must be owned by root")
	}
	tmp := t.TempDir()
	cred := filepath.Join(tmp, "s3.credentials")
	if err := os.WriteFile(cred, []byte("access_key = \"AK\"\nsecret_key = \"SK\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(cred, 0o644)
	pol := testPolicy(t, fmt.Sprintf("[outputs]\npush = \"s3://results/p\"\nendpoint = \"http://127.0.0.1:9\"\ncredentials = %q\n", cred))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := Run(ctx, Config{Policy: pol, Socket: filepath.Join(tmp, "arkgw.sock"), NewRunner: func(RunnerDeps) (Runner, error) { return newFakeRunner(), nil }}, nil)
	if err == nil || !strings.Contains(err.Error(), cred) || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("daemon with a world-readable credentials file: %v, want a refusal naming the file and chmod 600", err)
	}
}
