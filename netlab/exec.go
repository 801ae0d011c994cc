package netlab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// nsexecArg0 marks a re-executed copy of the running binary whose only job
// is to enter a network namespace and exec the real program (see Command).
const nsexecArg0 = "netlab-nsexec"

// The trampoline runs from a package init so that every binary that can
// call Host.Command (it imports netlab) also has the trampoline, without a
// TestMain. argv: nsexecArg0, netns path, program path, program argv...
func init() {
	if len(os.Args) >= 4 && os.Args[0] == nsexecArg0 {
		nsexecMain(os.Args[1], os.Args[2], os.Args[3:])
	}
}

// nsexecMain never returns. Namespaces are per thread and execve keeps the
// calling thread's, so: lock, setns, exec.
func nsexecMain(nsPath, prog string, argv []string) {
	runtime.LockOSThread()
	fd, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		fmt.Fprintf(os.Stderr, "netlab: open netns %s: %v\n", nsPath, err)
		os.Exit(127)
	}
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		fmt.Fprintf(os.Stderr, "netlab: enter netns %s: %v\n", nsPath, err)
		os.Exit(127)
	}
	unix.Close(fd)
	err = unix.Exec(prog, argv, os.Environ())
	fmt.Fprintf(os.Stderr, "netlab: exec %s: %v\n", prog, err)
	os.Exit(127)
}

// Command returns an unstarted exec.Cmd that runs name inside h's network
// namespace however the caller starts it (Run, Output, Start...). It starts
// a re-executed copy of the test binary that enters the namespace and
// execs name (found in PATH now), so cmd.Path is the test binary and
// cmd.Args[3:] are name's argv; appending to cmd.Args, setting Env, Dir,
// Stdin/Stdout still work. The trampoline needs CAP_SYS_ADMIN: for a
// command that drops privileges (SysProcAttr.Credential), build it with
// exec.Command and start it with h.Start instead.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	prog, lerr := exec.LookPath(name)
	cmd := exec.CommandContext(ctx, "/proc/self/exe")
	cmd.Args = append([]string{nsexecArg0, h.path, prog, name}, args...)
	if lerr != nil {
		cmd.Err = lerr
	}
	return cmd
}

// Start starts an ordinary exec.Cmd (exec.Command(...)) inside h's network
// namespace: the fork happens on a goroutine locked to a thread that has
// entered the namespace (nsdo.In), and the child inherits that thread's
// namespace. Credentials and other SysProcAttr settings apply as usual.
func (h *Host) Start(cmd *exec.Cmd) error {
	return h.Do(cmd.Start)
}

// RunE runs name in h with a timeout from ctx and returns the combined
// output; use it when failure is an expected outcome.
func (h *Host) RunE(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	cmd.WaitDelay = 5 * time.Second
	if err := h.Start(cmd); err != nil {
		return "", fmt.Errorf("host %q: start %s: %w", h.Name, name, err)
	}
	err := cmd.Wait()
	if err != nil {
		err = fmt.Errorf("host %q: %s %s: %w", h.Name, name, strings.Join(args, " "), err)
	}
	return buf.String(), err
}

// Run runs name in h (at most 2 minutes) and returns its combined output;
// it fails t if the command fails.
func (h *Host) Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := h.RunE(ctx, name, args...)
	if err != nil {
		t.Fatalf("netlab: %v\n%s", err, out)
	}
	return out
}

// Ping sends one echo request to dst (ping -c1, IPv4 or IPv6) and returns
// nil if a reply came within timeout (rounded up to whole seconds), else an
// error with ping's output.
func (h *Host) Ping(dst string, timeout time.Duration) error {
	secs := int((timeout + time.Second - 1) / time.Second)
	if secs < 1 {
		secs = 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout+5*time.Second)
	defer cancel()
	out, err := h.RunE(ctx, "ping", "-n", "-c1", "-W", fmt.Sprint(secs), dst)
	if err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(out))
	}
	return nil
}
