package outputs

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	mcreds "github.com/minio/minio-go/v7/pkg/credentials"

	// The test S3 server (testdata/s3server) is built from these; the
	// import keeps them in go.mod.
	_ "github.com/johannesboyne/gofakes3"
	_ "github.com/johannesboyne/gofakes3/backend/s3bolt"

	"github.com/arkgw/arkgw/reexec"
)

const testBucket = "arkgw-results"

var testCreds = &Credentials{AccessKey: "arkgw-test", SecretKey: "arkgw-test-secret"}

func TestMain(m *testing.M) {
	if reexec.Init() {
		return
	}
	code := m.Run()
	if serverBin != "" {
		os.RemoveAll(filepath.Dir(serverBin))
	}
	os.Exit(code)
}

var (
	buildOnce sync.Once
	serverBin string
	buildErr  error
)

// buildServer builds testdata/s3server once per test binary.
func buildServer(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "arkgw-s3server-")
		if err != nil {
			buildErr = err
			return
		}
		goBin, err := exec.LookPath("go")
		if err != nil {
			goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		bin := filepath.Join(dir, "s3server")
		cmd := exec.Command(goBin, "build", "-o", bin, "./testdata/s3server")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build testdata/s3server: %v\n%s", err, out)
			return
		}
		serverBin = bin
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return serverBin
}

// s3server is a running testdata/s3server process.
type s3server struct {
	t    *testing.T
	cmd  *exec.Cmd
	Addr string
	db   string

	mu    sync.Mutex
	lines []string
	done  chan struct{}
}

// startServer starts the store on addr ("127.0.0.1:0" for any port) with
// its objects in db. It is stopped at the end of the test.
func startServer(t *testing.T, db, addr string, args ...string) *s3server {
	t.Helper()
	bin := buildServer(t)
	cmd := exec.Command(bin, append([]string{"-addr", addr, "-db", db, "-bucket", testBucket}, args...)...)
	cmd.Stderr = os.Stderr
	// A test binary that dies (a timeout) takes its server along.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &s3server{t: t, cmd: cmd, db: db, done: make(chan struct{})}
	ready := make(chan string, 1)
	go func() {
		defer close(s.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			if a, ok := strings.CutPrefix(line, "listening "); ok {
				ready <- a
				continue
			}
			s.mu.Lock()
			s.lines = append(s.lines, line)
			s.mu.Unlock()
		}
		cmd.Wait()
	}()
	t.Cleanup(s.Stop)
	select {
	case s.Addr = <-ready:
	case <-s.done:
		t.Fatal("s3server exited before listening")
	case <-time.After(20 * time.Second):
		t.Fatal("s3server did not start in 20 s")
	}
	return s
}

// Stop kills the server (an outage; its bbolt file keeps the objects).
func (s *s3server) Stop() {
	if s.cmd.ProcessState == nil {
		s.cmd.Process.Signal(syscall.SIGKILL)
	}
	<-s.done
}

// Requests returns the request lines seen so far.
func (s *s3server) Requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.lines...)
}

func (s *s3server) client(t *testing.T) *minio.Core {
	t.Helper()
	c, err := minio.New(s.Addr, &minio.Options{Creds: mcreds.NewStaticV4(testCreds.AccessKey, testCreds.SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	return &minio.Core{Client: c}
}

// storedObject is one object read back from the store.
type storedObject struct {
	Data []byte
	Meta map[string]string
}

// objects reads every object under prefix (name relative to it).
func (s *s3server) objects(t *testing.T, prefix string) map[string]storedObject {
	t.Helper()
	c := s.client(t)
	ctx := context.Background()
	out := map[string]storedObject{}
	for o := range c.Client.ListObjects(ctx, testBucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			t.Fatalf("list %s: %v", prefix, o.Err)
		}
		r, err := c.Client.GetObject(ctx, testBucket, o.Key, minio.GetObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(r)
		r.Close()
		if err != nil {
			t.Fatalf("get %s: %v", o.Key, err)
		}
		st, err := c.Client.StatObject(ctx, testBucket, o.Key, minio.StatObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		meta := map[string]string{}
		for k, v := range st.UserMetadata {
			meta[strings.ToLower(k)] = v
		}
		out[strings.TrimPrefix(o.Key, prefix)] = storedObject{Data: b, Meta: meta}
	}
	return out
}

// checkStream asserts that the stream's chunks in objs are numbered 1..n
// without gaps, that each starts where the previous ended (the offset in
// its metadata), and that together they are exactly want: every byte once.
func checkStream(t *testing.T, objs map[string]storedObject, stream string, want []byte) int {
	t.Helper()
	var names []string
	for n := range objs {
		if strings.HasPrefix(n, stream+"/") {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	var got bytes.Buffer
	for i, n := range names {
		if n != chunkName(stream, i+1) {
			t.Fatalf("%s chunks %v: want %s at position %d", stream, names, chunkName(stream, i+1), i+1)
		}
		if off := objs[n].Meta["arkgw-offset"]; off != fmt.Sprint(got.Len()) {
			t.Errorf("%s: offset metadata %q, want %d", n, off, got.Len())
		}
		got.Write(objs[n].Data)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("%s in the store: %d bytes, want %d (equal: %v)", stream, got.Len(), len(want), bytes.Equal(got.Bytes(), want))
	}
	return len(names)
}

// appendOutput appends n pseudo-random printable bytes to dir/name.
func appendOutput(t *testing.T, dir, name string, n int, seed uint64) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + r.IntN(26))
		if r.IntN(64) == 0 {
			b[i] = '\n'
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
}

// fakeClock: time moves only when the test says. After registers a waiter
// that fires when the clock passes its time.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []fakeWaiter
}

type fakeWaiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := fakeWaiter{at: c.now.Add(d), ch: make(chan time.Time, 1)}
	if d <= 0 {
		w.ch <- c.now
		return w.ch
	}
	c.waiters = append(c.waiters, w)
	return w.ch
}

// Advance moves the clock by d and fires the waiters due.
func (c *fakeClock) Advance(d time.Duration) { c.set(c.Now().Add(d)) }

// AdvanceToNext moves the clock to the earliest waiter, if any, and fires
// it; it reports whether there was one.
func (c *fakeClock) AdvanceToNext() bool {
	c.mu.Lock()
	if len(c.waiters) == 0 {
		c.mu.Unlock()
		return false
	}
	next := c.waiters[0].at
	for _, w := range c.waiters {
		if w.at.Before(next) {
			next = w.at
		}
	}
	c.mu.Unlock()
	c.set(next)
	return true
}

// WaitWaiters waits (real time) until n waiters are registered, or the
// timeout passed: the shipper's goroutines are then asleep on the clock.
func (c *fakeClock) WaitWaiters(n int, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		k := len(c.waiters)
		c.mu.Unlock()
		if k >= n {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

func (c *fakeClock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.After(c.now) {
		c.now = t
	}
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
			continue
		}
		kept = append(kept, w)
	}
	c.waiters = kept
}

// waitFor polls cond (real time) until it holds or the timeout passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
