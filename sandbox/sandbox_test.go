package sandbox

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/arkgw/arkgw/configs"
)

// The basic run: the command runs as uid 1000 of the experiment's user
// namespace on the container root, sees its files at /experiment, and its
// output is captured; with the helper binary as holder and init, and with
// the re-executed main binary (the daemon's fallback).
func TestPrivilegedShellIDAndRoot(t *testing.T) {
	for _, holder := range []string{"arkgw-init", "self"} {
		t.Run(holder, func(t *testing.T) { testShellIDAndRoot(t, holder) })
	}
}

func testShellIDAndRoot(t *testing.T, holder string) {
	tr := newSpec(t, "/bin/sh", "-c", "id; ls /; cat /experiment/hello.txt; hostname; cat /etc/resolv.conf; read -r st < /proc/self/stat; set -- $st; echo nice=${19}; echo err >&2")
	if holder == "self" {
		tr.spec.Holder = newHolderOf(t, "")
	}
	res, out, errOut := tr.run(t)
	if !res.Exited || res.Code != 0 {
		t.Fatalf("result %+v, stdout %q stderr %q", res, out, errOut)
	}
	for _, want := range []string{"uid=1000(ark) gid=1000(ark) groups=1000(ark)", "experiment\n", "proc\n", "hello\n", "ark-" + tr.spec.ID, "nice=10\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	// the holder (whose own binary the init re-executes) is the chosen one
	want, _ := os.Executable()
	if holder != "self" {
		want = helperBinary(t)
	}
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", tr.spec.Holder.PID())); err != nil || exe != want {
		t.Errorf("holder runs %q (%v), want %s", exe, err, want)
	}
	if errOut != "err\n" {
		t.Errorf("stderr %q", errOut)
	}
	t.Logf("stdout:\n%s", out)
	if res.Stdout.Bytes != int64(len(out)) || res.Stdout.Dropped != 0 {
		t.Errorf("stdout stream %+v, file %d bytes", res.Stdout, len(out))
	}
}

// A command that cannot start is reported by Launch, with nothing left.
func TestPrivilegedLaunchRefusals(t *testing.T) {
	for _, c := range []struct {
		name string
		cmd  []string
		mod  func(*Spec)
		want string
	}{
		{"missing binary", []string{"/nonexistent"}, nil, "no such file"},
		{"not in PATH", []string{"nosuchtool"}, nil, `"nosuchtool" not found in PATH`},
		{"unknown version", []string{"/bin/true"}, func(s *Spec) { s.Version = "ark-1999.1" }, `unknown container version "ark-1999.1"`},
		{"missing files dir", []string{"/bin/true"}, func(s *Spec) { s.FilesDir = "/nonexistent/files" }, "experiment files"},
	} {
		t.Run(c.name, func(t *testing.T) {
			tr := newSpec(t, c.cmd...)
			if c.mod != nil {
				c.mod(&tr.spec)
			}
			_, err := Launch(context.Background(), tr.spec)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want %q", err, c.want)
			}
			for _, d := range cgroupDirs(tr.parent, tr.spec.ID) {
				if _, err := os.Stat(d); err == nil {
					t.Errorf("cgroup %s left after a failed launch", d)
				}
			}
		})
	}
}

// The v2 path for real, as far as this hybrid host allows: its cgroup2
// hierarchy has no controllers (they are bound to v1), so only cgroup.kill,
// process accounting and removal can be exercised — and the refusal of
// experiments that need a missing controller.
func TestPrivilegedCgroupV2KillOnHybrid(t *testing.T) {
	needRoot(t)
	mount := "/sys/fs/cgroup/unified" // hybrid
	if _, err := os.Stat(filepath.Join(mount, "cgroup.controllers")); err != nil {
		mount = "/sys/fs/cgroup" // pure v2
	}
	ctrls, err := os.ReadFile(filepath.Join(mount, "cgroup.controllers"))
	if err != nil {
		t.Fatalf("no cgroup2 hierarchy: %v", err)
	}
	id := randID(t)
	parent := "/arkgw-test-" + id
	t.Cleanup(func() { os.Remove(filepath.Join(mount, parent, id)); os.Remove(filepath.Join(mount, parent)) })
	r := ComputeResources(configs.Limits{CPUPercent: 50, MaxRAMMB: 64}, 32)
	if !strings.Contains(string(ctrls), "memory") {
		if _, err := newCgroupV2At(mount, id, parent+"/"+id, r, []string{"pids", "cpu"}); err == nil || !strings.Contains(err.Error(), "cgroup_enable=memory") {
			t.Fatalf("missing memory controller not refused: %v", err)
		}
	}
	cg, err := newCgroupV2At(mount, id, parent+"/"+id, r, []string{"cpu", "memory", "pids"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("v2 at %s, controllers %q, running without %v", mount, strings.TrimSpace(string(ctrls)), cg.Missing())
	var procs []*os.Process
	for i := 0; i < 3; i++ {
		p, err := os.StartProcess("/bin/sleep", []string{"sleep", "60"}, &os.ProcAttr{})
		if err != nil {
			t.Fatal(err)
		}
		procs = append(procs, p)
		if err := cg.Add(p.Pid); err != nil {
			p.Kill()
			t.Fatal(err)
		}
	}
	if cg.Empty() {
		t.Fatal("cgroup empty after adding processes")
	}
	done := make(chan struct{})
	go func() {
		for _, p := range procs {
			p.Wait() // reap, as the holder would
		}
		close(done)
	}()
	if err := cg.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("processes survived cgroup.kill")
	}
	if !cg.Empty() {
		t.Fatal("cgroup not empty after kill")
	}
	if err := cg.Delete(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(mount, parent, id)); err == nil {
		t.Fatal("cgroup still there")
	}
}

// The pcap client is at /usr/bin/pcap and the pcap service socket at
// /run/ark/pcap.sock, connectable by the experiment uid.
func TestPrivilegedPcapBinds(t *testing.T) {
	tr := newSpec(t, "/bin/sh", "-c", "/usr/bin/pcap && echo pcap-ran; "+probeName+" connect-pcap")
	sock := filepath.Join(tr.dir, "pcap.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	os.Chmod(sock, 0o666)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hello"))
			c.Close()
		}
	}()
	bin := filepath.Join(tr.dir, "pcap-client")
	b, _ := os.ReadFile("/bin/true")
	os.WriteFile(bin, b, 0o755)
	tr.spec.PcapBinary, tr.spec.PcapSocket = bin, sock
	res, out, errOut := tr.run(t)
	if !res.Exited || !strings.Contains(out, "pcap-ran") || !strings.Contains(out, "connect-pcap ok") {
		t.Fatalf("%+v\n%s\n%s", res, out, errOut)
	}
}

// On cgroup v1 the init moves itself into the experiment's cgroup (the
// daemon made the tasks files its own); where it cannot (cgroup v2: run
// here by setting placeByDaemon) the daemon moves it. Either way the init
// and the command run in the cgroup.
func TestPrivilegedInitJoinsItsCgroup(t *testing.T) {
	for _, byDaemon := range []bool{false, true} {
		t.Run(fmt.Sprintf("by_daemon=%v", byDaemon), func(t *testing.T) {
			placeByDaemon = byDaemon
			defer func() { placeByDaemon = false }()
			testInitJoinsItsCgroup(t, byDaemon)
		})
	}
}

func testInitJoinsItsCgroup(t *testing.T, byDaemon bool) {
	tr := newSpec(t, "/bin/sh", "-c", "cat /proc/self/cgroup; exec sleep 30")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sb, err := Launch(ctx, tr.spec)
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Stop(context.Background())
	files := v1TasksFiles(cgroupRel(tr.parent, tr.spec.ID))
	if len(files) == 0 {
		// cgroup v2: nothing to delegate, the daemon moved the init
		// (TestPrivilegedCgroupV2Runs runs this path on any host).
		procs := filepath.Join(cgroupDirs(tr.parent, tr.spec.ID)[0], "cgroup.procs")
		if ps, err := readPids(procs); err != nil || !slices.Contains(ps, sb.PID) {
			t.Fatalf("%s lacks the init's pid %d: %v %v", procs, sb.PID, ps, err)
		}
		return
	}
	uid, _ := tr.spec.Holder.HostIDs()
	want := uid
	if byDaemon {
		want = 0 // not delegated
	}
	for _, f := range files {
		var st unix.Stat_t
		if err := unix.Stat(f, &st); err != nil || st.Uid != want {
			t.Errorf("%s: owner %d (%v), want %d", f, st.Uid, err, want)
		}
		b, _ := os.ReadFile(f)
		if !slices.Contains(strings.Fields(string(b)), fmt.Sprint(sb.PID)) {
			t.Errorf("%s lacks the init's pid %d: %q", f, sb.PID, b)
		}
	}
	// The command: in the pids cgroup (its own namespace root, "/").
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(tr.read("stdout"), "pids:/\n") {
		if time.Now().After(deadline) {
			t.Fatalf("command's /proc/self/cgroup: %q", tr.read("stdout"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
