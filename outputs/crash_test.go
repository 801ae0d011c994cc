package outputs

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	bolt "go.etcd.io/bbolt"

	"github.com/arkgw/arkgw/reexec"
	"github.com/arkgw/arkgw/store"
)

// childShipper is the re-executed test binary that runs a shipper, as the
// daemon would, until the experiment's results are shipped and its local
// copy is within the budget. Its configuration comes in the environment.
const childShipper = "arkgw-outputs-test-shipper"

type childConfig struct {
	DB, Endpoint, Dir string
	Budget            int64
}

func init() {
	reexec.Register(childShipper, func() {
		var cc childConfig
		if err := json.Unmarshal([]byte(os.Getenv("ARKGW_TEST_SHIPPER")), &cc); err != nil {
			fmt.Fprintln(os.Stderr, "child shipper config:", err)
			os.Exit(2)
		}
		if err := runChild(cc); err != nil {
			fmt.Fprintln(os.Stderr, "child shipper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	})
}

func runChild(cc childConfig) error {
	db, err := bolt.Open(cc.DB, 0o600, &bolt.Options{Timeout: 10 * time.Second})
	if err != nil {
		return err
	}
	defer db.Close()
	pol := testPolicy(cc.Endpoint)
	pol.ChunkBytes, pol.DiskBudgetBytes, pol.Interval = 16<<20, cc.Budget, time.Hour
	s, err := New(Config{Policy: pol, Node: testNode, DB: db, Credentials: testCreds, PartBytes: 5 << 20,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second,
		Logger: hclog.New(&hclog.LoggerOptions{Name: "child", Output: os.Stderr, Level: hclog.Info})})
	if err != nil {
		return err
	}
	start := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	if err := s.Finish(completed("x1", start, store.ReasonFinished), cc.Dir); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(ctx)
	}()
	defer func() {
		cancel()
		<-done
	}()
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		if p, _ := s.Progress("x1"); p.Shipped && p.LocalRemoved {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	p, _ := s.Progress("x1")
	return fmt.Errorf("not shipped within 90 s: %+v", p)
}

func startChild(t *testing.T, cc childConfig) (*os.Process, <-chan error) {
	t.Helper()
	b, _ := json.Marshal(cc)
	cmd := reexec.Command(childShipper)
	cmd.Env = append(os.Environ(), "ARKGW_TEST_SHIPPER="+string(b))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		done <- cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	return cmd.Process, done
}

// The shipper's process is killed (SIGKILL) in the middle of a multipart
// upload and started again: it continues the same upload from the parts
// the store confirmed, and every byte ends up in the store exactly once;
// the local copy is then removed for the disk budget.
func TestShipperKilledDuringMultipartUpload(t *testing.T) {
	tmp := t.TempDir()
	// Each part waits 500 ms at the store: the upload of the 16 MiB chunk
	// (parts of 5, 5, 5 and 1 MiB) is in flight long enough to be killed.
	srv := startServer(t, filepath.Join(tmp, "s3.db"), "127.0.0.1:0", "-part-delay", "500ms")
	dir := filepath.Join(tmp, "experiments", "x1")
	appendOutput(t, dir, "stdout", 20<<20, 11)
	appendOutput(t, dir, "stderr", 1000, 12)
	stdout, stderr := readFile(t, filepath.Join(dir, "stdout")), readFile(t, filepath.Join(dir, "stderr"))
	cc := childConfig{DB: filepath.Join(tmp, "arkgw.db"), Endpoint: srv.Addr, Dir: dir, Budget: 1 << 20}

	proc, done := startChild(t, cc)
	waitFor(t, "the second part of stdout/000001 on its way", 60*time.Second, func() bool {
		for _, l := range srv.Requests() {
			if strings.Contains(l, "stdout/000001?") && strings.Contains(l, "partNumber=2") {
				return true
			}
		}
		return false
	})
	if err := proc.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("child shipper ended with %v, want killed", err)
	}

	// The queue kept the upload's id and the part(s) the store confirmed.
	db := openDB(t, cc.DB)
	var it item
	if err := db.View(func(tx *bolt.Tx) error {
		_, v := sub(tx, bucketQueue).Cursor().First()
		return json.Unmarshal(v, &it)
	}); err != nil {
		t.Fatal(err)
	}
	if it.Name != "stdout/000001" || it.UploadID == "" || len(it.Parts) < 1 || len(it.PartMD5s) != len(it.Parts) {
		t.Fatalf("after the kill the queue's first item is %+v, want stdout/000001 with an upload id and confirmed parts", it)
	}
	db.Close()

	_, done = startChild(t, cc)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("restarted child shipper: %v", err)
		}
	case <-time.After(120 * time.Second):
		t.Fatal("restarted child shipper did not finish in 120 s")
	}

	var initiated int
	for _, l := range srv.Requests() {
		if strings.HasPrefix(l, "req POST ") && strings.Contains(l, "stdout/000001?uploads") {
			initiated++
		}
	}
	if initiated != 1 {
		t.Errorf("the multipart upload of stdout/000001 was started %d times, want once (continued after the kill)", initiated)
	}
	objs := srv.objects(t, "fleet/"+testNode+"/x1/")
	if n := checkStream(t, objs, "stdout", stdout); n != 2 {
		t.Errorf("stdout in %d chunks, want 2 (16 MiB + 4 MiB)", n)
	}
	checkStream(t, objs, "stderr", stderr)
	if len(objs) != 2+1+3 {
		t.Errorf("%d objects, want 6", len(objs))
	}
	if n := localBytes(dir); n > cc.Budget {
		t.Errorf("local copies %d bytes after shipping, budget %d", n, cc.Budget)
	}
	if _, err := os.Stat(filepath.Join(dir, "stdout")); !os.IsNotExist(err) {
		t.Errorf("stdout still on the node: %v", err)
	}
}
