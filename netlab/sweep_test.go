package netlab

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/arkgw/arkgw/nsdo"
	"github.com/arkgw/arkgw/reexec"
)

const leakerName = "netlab-test-leaker"

func init() { reexec.Register(leakerName, leakerMain) }

// leakerMain plays a test binary that dies before its cleanup: it creates a
// namespace, starts a process inside it, reports both and waits to be
// killed.
func leakerMain() {
	ns, path, err := createNamed(nsName(randID(6), "leak"))
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	cmd := exec.Command("sleep", "600")
	if err := nsdo.In(ns, cmd.Start); err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println(path, cmd.Process.Pid)
	time.Sleep(time.Minute)
	os.Exit(1)
}

func TestPrivilegedSweepKilledTest(t *testing.T) {
	requireRoot(t)
	cmd := reexec.Command(leakerName)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	f := strings.Fields(line)
	if err != nil || len(f) != 2 || f[0] == "error" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("leaker: %q %v", line, err)
	}
	path := f[0]
	sleepPID, _ := strconv.Atoi(f[1])
	t.Cleanup(func() { removeNamed(path); syscall.Kill(sleepPID, syscall.SIGKILL) })

	// A live creator: Sweep leaves its namespace alone.
	if _, err := Sweep(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("sweep removed the namespace of a live process: %v", err)
	}

	// The "test binary" dies without cleanup (like SIGKILL or a crash).
	cmd.Process.Kill()
	cmd.Wait()
	removed, err := Sweep()
	if err != nil {
		t.Fatal(err)
	}
	name := path[len(RunDir)+1:]
	if !contains(removed, name) {
		t.Errorf("sweep removed %v, want %s", removed, name)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("%s still there: %v", path, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for alive(sleepPID) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if alive(sleepPID) {
		t.Errorf("process %d inside the stale namespace still runs", sleepPID)
	}
}
