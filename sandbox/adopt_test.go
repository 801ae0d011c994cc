package sandbox

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/nsholder"
	"github.com/arkgw/arkgw/reexec"
)

const testDaemonName = "arkgw-sandbox-testdaemon"

func init() { reexec.Register(testDaemonName, testDaemonMain) }

type testDaemonArgs struct {
	HolderDir string
	UID       uint32
	Spec      Spec
}

// testDaemonMain plays a daemon that creates the namespaces, launches a
// run, reports, and then waits to be killed (a crash).
func testDaemonMain() {
	var a testDaemonArgs
	if err := json.Unmarshal([]byte(os.Args[1]), &a); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	h, err := nsholder.Create(nsholder.Config{Dir: a.HolderDir, HostUID: a.UID, HostGID: a.UID})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	a.Spec.Holder = h
	sb, err := Launch(context.Background(), a.Spec)
	if err != nil {
		fmt.Println("error:", err)
		h.Remove()
		os.Exit(1)
	}
	fmt.Println("launched", sb.PID, h.PID())
	select {}
}

// The daemon dies while a run is going: the holder keeps capturing output
// and records the exit status; a new daemon adopts the run and gets its
// result; nothing is left afterwards.
func TestPrivilegedDaemonCrashAdopt(t *testing.T) {
	needRoot(t)
	containers := testContainers(t)
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	id := randID(t)
	parent := "arkgw-test-" + id
	holderDir := filepath.Join(dir, "ns")
	t.Cleanup(func() {
		nsholder.RemoveDir(holderDir)
		Cleanup(id, parent)
		for _, d := range cgroupDirs(parent, id) {
			os.Remove(filepath.Dir(d))
		}
	})
	spec := Spec{ID: id, ContainersDir: containers, Version: testVersion,
		Command:      []string{"/bin/sh", "-c", "echo before; while [ ! -e /experiment/go ]; do sleep 0.05; done; echo after; exit 3"},
		FilesDir:     dir,
		Limits:       configs.Limits{CPUPercent: 100, MaxRAMMB: 128, TmpfsMB: 8, OutputMB: 1, MaxHours: 1},
		Stdout:       filepath.Join(dir, "stdout"),
		Stderr:       filepath.Join(dir, "stderr"),
		StatusFile:   filepath.Join(dir, "status.json"),
		CgroupParent: parent,
	}
	uidSlot.Lock()
	uidSlot.n++
	uid := 0x30000000 + (uint32(os.Getpid())%1000)*0x100000 + uidSlot.n*65536
	uidSlot.Unlock()
	arg, _ := json.Marshal(testDaemonArgs{HolderDir: holderDir, UID: uid, Spec: spec})
	cmd := reexec.Command(testDaemonName, string(arg))
	cmd.Stderr = os.Stderr
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	if !strings.HasPrefix(line, "launched ") {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("test daemon: %q", line)
	}
	var initPID, holderPID int
	fmt.Sscan(strings.TrimPrefix(line, "launched "), &initPID, &holderPID)
	// crash
	cmd.Process.Kill()
	cmd.Wait()
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", holderPID)); err != nil {
		t.Fatalf("holder died with the daemon: %v", err)
	}
	// the run goes on without a daemon, its output still captured
	os.WriteFile(filepath.Join(dir, "go"), nil, 0o644)

	sb, err := Adopt(AdoptSpec{ID: id, CgroupParent: parent, StatusFile: spec.StatusFile, Deadline: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := sb.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Exited || res.Code != 3 || res.Err != "" {
		t.Fatalf("adopted result %+v", res)
	}
	if b, _ := os.ReadFile(spec.Stdout); string(b) != "before\nafter\n" {
		t.Fatalf("stdout %q", b)
	}
	// the holder, its work done and its creator gone, exits
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", holderPID))
		if err != nil || strings.Contains(string(b), ") Z ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("holder %d still running", holderPID)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, d := range cgroupDirs(parent, id) {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("cgroup %s left", d)
		}
	}
}
