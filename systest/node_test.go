package systest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/arkgw/arkgw/netlab"
)

// Paths as a node has them: the daemon's default socket and run directory,
// so the CLI below is typed as the README has it (no --socket, no --config).
const (
	nodeSocket = "/run/arkgw/arkgw.sock"
	nodeRunDir = "/run/arkgw"
)

// installed is `make install DESTDIR=...` of this tree, once per test binary.
type installed struct {
	root   string // DESTDIR
	arkgw  string // DESTDIR/usr/local/sbin/arkgw
	unit   string // the systemd unit as installed
	config string // the commented node.toml as installed
}

var (
	installOnce sync.Once
	installDir  installed
	installErr  error
)

func repoTop() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// install builds the binaries and installs them with `make install`, as an
// owner does, into a DESTDIR of this test binary's.
func install(t *testing.T) installed {
	t.Helper()
	installOnce.Do(func() {
		dir, err := os.MkdirTemp("", "arkgw-systest-")
		if err != nil {
			installErr = err
			return
		}
		cmd := exec.Command("make", "--no-print-directory", "install", "DESTDIR="+dir, "BIN="+filepath.Join(dir, "build"))
		cmd.Dir = repoTop()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "PATH="+os.Getenv("PATH")+":/usr/local/go/bin")
		if out, err := cmd.CombinedOutput(); err != nil {
			installErr = fmt.Errorf("make install: %v\n%s", err, out)
			return
		}
		installDir = installed{
			root:   dir,
			arkgw:  filepath.Join(dir, "usr/local/sbin/arkgw"),
			unit:   filepath.Join(dir, "etc/systemd/system/arkgw.service"),
			config: filepath.Join(dir, "etc/arkgw/node.toml"),
		}
	})
	if installErr != nil {
		t.Fatal(installErr)
	}
	return installDir
}

// node is one arkgw daemon run as a node runs it: its own process, started
// in the node's network namespace by nsenter (no namespace handle passed
// in), its policy a file on disk.
type node struct {
	t      *testing.T
	w      *netlab.World
	bin    installed
	config string
	state  string
	logf   string // the daemon's stderr (hclog JSON lines), across restarts

	cmd  *exec.Cmd
	done chan error
}

// nodePolicy is the node.toml of the system tests: the owner's commented
// defaults with the lines a netlab node needs.
func nodePolicy(state string, webPort int) string {
	return fmt.Sprintf(`node = "systest"
state_dir = %q
uplink = %q
[web]
listen = "127.0.0.1:%d"
[dns]
upstreams = [%q]
# netlab's fake Internet answers documentation prefixes, which a node
# otherwise drops as not globally reachable.
[lab]
documentation_prefixes = true
`, state, netlab.NodeUplinkIf, webPort, netlab.DNS4)
}

func startNode(t *testing.T, w *netlab.World, bin installed, policy string, state string) *node {
	t.Helper()
	if c, err := (&http.Client{Timeout: time.Second, Transport: unixTransport(nodeSocket)}).Get("http://arkgw/api/v1/version"); err == nil {
		c.Body.Close()
		t.Fatalf("an arkgw daemon already answers on %s: the system test runs the node's own paths; stop it first", nodeSocket)
	}
	n := &node{t: t, w: w, bin: bin, state: state, logf: filepath.Join(state, "daemon.log")}
	n.config = filepath.Join(state, "node.toml")
	if err := os.WriteFile(n.config, []byte(policy), 0o640); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.shutdown)
	n.start()
	return n
}

// start runs `nsenter --net=NODE -- arkgw run --config FILE`.
func (n *node) start() {
	t := n.t
	t.Helper()
	logf, err := os.OpenFile(n.logf, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	n.cmd = exec.Command("nsenter", "--net="+n.w.Node.Path(), "--", n.bin.arkgw, "run", "--config", n.config)
	n.cmd.Stdout, n.cmd.Stderr = logf, logf
	// The daemon is its own process group, as under systemd: signals to the
	// test do not reach it, and the test signals it on purpose.
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	n.cmd.Env = append(os.Environ(), "ARKGW_LOG_LEVEL=info")
	if err := n.cmd.Start(); err != nil {
		t.Fatalf("start arkgw run: %v", err)
	}
	n.done = make(chan error, 1)
	go func(c *exec.Cmd, done chan error) { done <- c.Wait() }(n.cmd, n.done)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, _, code := n.cli("list"); code == 0 {
			return
		}
		select {
		case err := <-n.done:
			n.cmd = nil
			t.Fatalf("arkgw run exited: %v\n%s", err, n.logTail())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("arkgw run did not answer on %s within 20 s\n%s", nodeSocket, n.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill9 kills the daemon as a crash would; the experiments keep running.
func (n *node) kill9() {
	n.t.Helper()
	if err := n.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		n.t.Fatal(err)
	}
	<-n.done
	n.cmd = nil
}

// term stops the daemon as systemd does (SIGTERM) and wants exit status 0.
func (n *node) term() {
	n.t.Helper()
	if n.cmd == nil {
		return
	}
	n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-n.done:
		if err != nil {
			n.t.Errorf("arkgw run after SIGTERM: %v\n%s", err, n.logTail())
		}
	case <-time.After(40 * time.Second):
		n.cmd.Process.Kill()
		<-n.done
		n.t.Errorf("arkgw run did not stop within 40 s of SIGTERM\n%s", n.logTail())
	}
	n.cmd = nil
}

// shutdown is the test's last word: whatever happened, no experiment, rule,
// namespace or cgroup of this daemon's stays.
func (n *node) shutdown() {
	if n.cmd != nil {
		if out, _, code := n.cli("list", "--json"); code == 0 {
			var list []struct{ ID, State string }
			json.Unmarshal([]byte(out), &list)
			for _, x := range list {
				if x.State != "completed" {
					n.cli("stop", x.ID)
				}
			}
		}
		n.term()
	}
	n.cli("cleanup", "--config", n.config)
	os.Remove(nodeSocket)
	os.Remove(nodeRunDir) // only if empty: what the daemon left is checked by the tests
}

// cli runs the installed arkgw in the node's network namespace, as the owner
// types it there.
func (n *node) cli(args ...string) (stdout, stderr string, code int) {
	return n.cliEnv(nil, args...)
}

func (n *node) cliEnv(env []string, args ...string) (stdout, stderr string, code int) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + n.w.Node.Path(), "--", n.bin.arkgw}, args...)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	cmd.Env = append(os.Environ(), env...)
	err := cmd.Run()
	code = 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		code = -1
		e.WriteString(err.Error())
	}
	return o.String(), e.String(), code
}

// must runs the CLI and fails the test unless it exits 0.
func (n *node) must(args ...string) string {
	n.t.Helper()
	out, errs, code := n.cli(args...)
	if code != 0 {
		n.t.Fatalf("arkgw %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

func (n *node) logTail() string {
	b, _ := os.ReadFile(n.logf)
	if len(b) > 6000 {
		b = b[len(b)-6000:]
	}
	return "daemon log (tail):\n" + string(b)
}

// experiment is an experiment as `arkgw list --json` shows it.
type experiment struct {
	ID, State, Title, Reason, Detail string
	ExitCode                         int `json:"exit_code"`
}

func (n *node) list() []experiment {
	n.t.Helper()
	var l []experiment
	if err := json.Unmarshal([]byte(n.must("list", "--json")), &l); err != nil {
		n.t.Fatalf("arkgw list --json: %v", err)
	}
	return l
}

func (n *node) get(id string) experiment {
	for _, x := range n.list() {
		if x.ID == id {
			return x
		}
	}
	n.t.Fatalf("experiment %s not in arkgw list", id)
	return experiment{}
}

func (n *node) waitState(id, state string, timeout time.Duration) experiment {
	n.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		x := n.get(id)
		if x.State == state {
			return x
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("experiment %s: %s (%s: %s), want %s\n%s", id, x.State, x.Reason, x.Detail, state, n.logTail())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// submit writes the manifest into a directory of its own, as an
// experimenter's checkout, and submits it with the CLI.
func (n *node) submit(manifest string) string {
	n.t.Helper()
	dir := n.t.TempDir()
	p := filepath.Join(dir, "manifest.toml")
	if err := os.WriteFile(p, []byte(manifest), 0o644); err != nil {
		n.t.Fatal(err)
	}
	return strings.TrimSpace(n.must("submit", p))
}

// waitOutput waits until the experiment's stdout holds every want.
func (n *node) waitOutput(id string, timeout time.Duration, want ...string) string {
	n.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, _, _ := n.cli("logs", id)
		missing := ""
		for _, w := range want {
			if !strings.Contains(out, w) {
				missing = w
				break
			}
		}
		if missing == "" {
			return out
		}
		if time.Now().After(deadline) {
			errs, _, _ := n.cli("logs", id, "--stderr")
			n.t.Fatalf("experiment %s: stdout lacks %q after %s\nstdout:\n%s\nstderr:\n%s", id, missing, timeout, out, errs)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// alerts reads the node's alert file through the CLI (no --file, no
// --config: it asks the daemon, or reads the policy when the daemon is down).
func (n *node) alerts(env ...string) []alertLine {
	n.t.Helper()
	out, errs, code := n.cliEnv(env, "alerts", "--json")
	if code != 0 {
		n.t.Fatalf("arkgw alerts --json: exit %d: %s", code, errs)
	}
	var recs []alertLine
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r alertLine
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			n.t.Fatalf("alert line %q: %v", sc.Text(), err)
		}
		recs = append(recs, r)
	}
	return recs
}

type alertLine struct {
	Experiment, Kind, Rule, Proto, Dst, Name, Message string
	DstPort                                           int `json:"dport"`
	Packets                                           uint64
}

func (n *node) waitAlert(timeout time.Duration, what string, match func(alertLine) bool) alertLine {
	n.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, r := range n.alerts() {
			if match(r) {
				return r
			}
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("no alert %s within %s; alerts: %+v\n%s", what, timeout, n.alerts(), n.logTail())
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// page fetches a path of the owner page from inside the node's namespace.
func (n *node) page(addr, path string) (int, string) {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := n.w.Node.Dial(ctx, "tcp", addr)
	if err != nil {
		n.t.Fatalf("dial the owner page at %s: %v", addr, err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, addr)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		n.t.Fatalf("owner page %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func unixTransport(path string) *http.Transport {
	return &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}
}
