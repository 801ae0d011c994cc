package container

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"aead.dev/minisign"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/arkgw/arkgw/configs"
	"github.com/arkgw/arkgw/netlab"
	"github.com/arkgw/arkgw/nsholder"
	"github.com/arkgw/arkgw/reexec"
	"github.com/arkgw/arkgw/sandbox"
)

// The standard image is built once per set of build inputs and cached
// (CI builds it once): ARKGW_TEST_CACHE or /var/cache/arkgw-test.
func testCacheDir() string {
	if d := os.Getenv("ARKGW_TEST_CACHE"); d != "" {
		return d
	}
	return "/var/cache/arkgw-test"
}

const testImageVersion = "ark-test"

var (
	imageOnce sync.Once
	imagePath string
	imageErr  error
	helperBin string // cmd/arkgw-init, built once per test binary
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: mmdebstrap, loop devices, namespaces")
	}
}

// testImage returns the cached standard image (built when its inputs
// changed) and builds the arkgw-init helper binary.
func testImage(t *testing.T) string {
	t.Helper()
	needRoot(t)
	for _, tool := range []string{"mmdebstrap", "mksquashfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s missing: apt-get install mmdebstrap squashfs-tools (scripts/deps.sh)", tool)
		}
	}
	imageOnce.Do(func() {
		bin, err := os.MkdirTemp("", "arkgw-container-test-")
		if err != nil {
			imageErr = err
			return
		}
		helperBin = filepath.Join(bin, "arkgw-init")
		for _, b := range []struct{ out, pkg string }{{helperBin, "../cmd/arkgw-init"}, {filepath.Join(bin, "pcap"), "../cmd/pcap"}} {
			cmd := exec.Command("go", "build", "-trimpath", "-o", b.out, b.pkg)
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				imageErr = fmt.Errorf("build %s: %v\n%s", b.pkg, err, out)
				return
			}
		}
		var log strings.Builder
		t0 := time.Now()
		img, built, err := Cached(context.Background(), testCacheDir(), BuildOptions{Version: testImageVersion,
			PcapBinary: filepath.Join(bin, "pcap"), Stderr: &log})
		if err != nil {
			imageErr = fmt.Errorf("%v\n%s", err, log.String())
			return
		}
		if built {
			t.Logf("built the standard image %s in %s (cached for later runs)", img, time.Since(t0).Round(time.Second))
		}
		imagePath = img
	})
	if imageErr != nil {
		t.Fatalf("standard image: %v", imageErr)
	}
	return imagePath
}

// installTestImage signs the cached image with a fresh key and imports it
// into a new containers directory, mounted; everything is removed at
// cleanup (the loop device detaches itself).
func installTestImage(t *testing.T) (containers string, in *Installed) {
	t.Helper()
	img := testImage(t)
	key := filepath.Join(t.TempDir(), "key")
	pubLine, err := GenerateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	sk, _ := LoadSecretKey(key, "")
	pub, _ := ParsePublicKey(pubLine)
	if err := Sign(img, sk); err != nil {
		t.Fatal(err)
	}
	containers = filepath.Join(t.TempDir(), "containers")
	if _, err := Import(containers, img, Trust{}); err == nil {
		t.Fatal("import without trusted keys succeeded")
	}
	in, err = Import(containers, img, Trust{Keys: []minisign.PublicKey{pub}})
	if err != nil {
		t.Fatal(err)
	}
	root, err := Mount(containers, testImageVersion)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Unmount(root); err != nil {
			t.Error(err)
		}
	})
	return containers, in
}

func TestPrivilegedImageMount(t *testing.T) {
	containers, in := installTestImage(t)
	root := filepath.Join(containers, testImageVersion)
	again, err := Mount(containers, testImageVersion) // idempotent
	if err != nil || again != root {
		t.Fatalf("second mount: %v %s", err, again)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(root, &sfs); err != nil || sfs.Type != unix.SQUASHFS_MAGIC || sfs.Flags&unix.ST_RDONLY == 0 {
		t.Fatalf("root %s: statfs %+v %v: want a read-only squashfs", root, sfs, err)
	}
	if err := os.WriteFile(filepath.Join(root, "x"), nil, 0o644); err == nil {
		t.Fatal("wrote into the mounted image")
	}
	for _, p := range []string{"usr/bin/scamper", "usr/bin/pcap", "usr/bin/python3", "usr/bin/ping", "usr/bin/traceroute",
		"usr/bin/dig", "usr/bin/curl", "usr/bin/ip", "experiment", "etc/resolv.conf", "etc/hostname", "var/empty", "run/ark"} {
		if _, err := os.Lstat(filepath.Join(root, p)); err != nil {
			t.Errorf("image lacks %s: %v", p, err)
		}
	}
	if st, err := os.Stat(filepath.Join(root, "usr/bin/pcap")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("/usr/bin/pcap: %v %v, want mode 0755", st.Mode(), err)
	}
	if passwd, _ := os.ReadFile(filepath.Join(root, "etc/passwd")); !strings.Contains(string(passwd), "ark:x:1000:1000:") {
		t.Errorf("no experiment user in /etc/passwd")
	}
	list, _ := List(containers)
	if len(list) != 1 || !list[0].Mounted || !list[0].Signed || list[0].SHA256 != in.SHA256 {
		t.Fatalf("list: %+v", list)
	}
	// remove refuses while in use, then unmounts and deletes
	if err := Remove(containers, testImageVersion, []string{"e1"}); err == nil {
		t.Fatal("remove in use succeeded")
	}
	if err := Remove(containers, testImageVersion, nil); err != nil {
		t.Fatal(err)
	}
	if isMounted(root) {
		t.Fatal("still mounted after remove")
	}
	if l, _ := List(containers); len(l) != 0 {
		t.Fatalf("after remove: %+v", l)
	}
}

// The tools of the standard image work unmodified as the experiment's uid
// in the sandbox, on the loop-mounted image: scamper (privilege separation:
// chroot to /var/empty, setuid to nobody, inside the experiment's user
// namespace), ping, traceroute (UDP and ICMP), python raw sockets and
// scapy, popen("/usr/bin/pcap"); through a router to a host two hops away.
func TestPrivilegedImageTools(t *testing.T) {
	containers, _ := installTestImage(t)
	holder, err := nsholder.Create(nsholder.Config{Dir: filepath.Join(t.TempDir(), "ns"),
		HostUID: 0x38000000, HostGID: 0x38000000, Binary: helperBin})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Remove() })
	netlab.Build(t, netlab.Topology{
		Hosts: []netlab.HostSpec{
			{Name: "exp", NetNSPath: holder.NetNSPath(), Routes: []netlab.RouteSpec{{Dst: "default", Via: "10.77.0.1"}}},
			{Name: "router", Forward: true},
			{Name: "far", Routes: []netlab.RouteSpec{{Dst: "default", Via: "10.78.0.1"}}},
		},
		Links: []netlab.LinkSpec{
			{A: "exp", B: "router", AIf: "eth0", BIf: "e0", AAddrs: []string{"10.77.0.2/24"}, BAddrs: []string{"10.77.0.1/24"}},
			{A: "router", B: "far", AIf: "e1", BIf: "eth0", AAddrs: []string{"10.78.0.1/24"}, BAddrs: []string{"10.78.0.2/24"}},
		},
	})
	const dst = "10.78.0.2"
	script := strings.Join([]string{
		"echo uid=$(id -u)",
		`scamper -c "trace -P icmp-paris" -i ` + dst + ` 2>&1; echo scamper-trace=$?`,
		`scamper -c "ping -c 2" -i ` + dst + ` 2>&1; echo scamper-ping=$?`,
		"ping -n -c 1 -W 5 " + dst + " >/dev/null 2>&1; echo ping=$?",
		"traceroute -n -q 1 -w 3 " + dst + " 2>&1; echo traceroute-udp=$?",
		"traceroute -I -n -q 1 -w 3 " + dst + " 2>&1; echo traceroute-icmp=$?",
		`python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); print("python-raw=ok")' 2>&1`,
		`python3 -c 'from scapy.all import IP, ICMP, sr1; r=sr1(IP(dst="` + dst + `")/ICMP(), timeout=5, verbose=0); print("scapy=%s" % ("reply" if r is not None and r.haslayer(ICMP) and r[ICMP].type == 0 else r))' 2>&1`,
		`python3 -c 'import os; print("popen-pcap=" + os.popen("/usr/bin/pcap -S /nonexistent.sock 2>&1").read().replace("\n", " "))' 2>&1`,
	}, "; ")
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	id := fmt.Sprintf("ti%d", os.Getpid()%100000)
	parent := "arkgw-test-" + id
	sb, err := sandbox.Launch(ctx, sandbox.Spec{
		ID: id, Holder: holder, ContainersDir: containers, Version: testImageVersion,
		Command:     []string{"/bin/bash", "-c", script},
		Nameservers: []netip.Addr{netip.MustParseAddr("10.77.0.1")},
		Limits:      configs.Limits{CPUPercent: 100, MaxRAMMB: 512, TmpfsMB: 32, OutputMB: 4, MaxHours: 1},
		Stdout:      filepath.Join(dir, "stdout"), Stderr: filepath.Join(dir, "stderr"), StatusFile: filepath.Join(dir, "status.json"),
		CgroupParent: parent,
		Logger:       hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: os.Stderr}),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, c := range []string{"cpu", "cpuacct", "memory", "pids", "freezer"} {
			os.Remove(filepath.Join("/sys/fs/cgroup", c, parent))
		}
	})
	res, err := sb.Wait(ctx)
	if err != nil {
		sb.Stop(context.Background())
		t.Fatal(err)
	}
	out, _ := os.ReadFile(filepath.Join(dir, "stdout"))
	errOut, _ := os.ReadFile(filepath.Join(dir, "stderr"))
	t.Logf("result %+v\n%s\n%s", res, out, errOut)
	o := string(out)
	for _, want := range []string{
		"uid=1000", "scamper-trace=0", "scamper-ping=0", "ping=0", "traceroute-udp=0", "traceroute-icmp=0",
		"python-raw=ok", "scapy=reply", "popen-pcap=pcap:",
		// scamper's trace reached the far host through the router
		" 1  10.77.0.1", " 2  10.78.0.2",
		// scamper ping got its replies
		"2 packets transmitted, 2 packets received",
	} {
		if !strings.Contains(o, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(o, "could not chroot") {
		t.Errorf("scamper's privilege separation failed")
	}
}

func TestMain(m *testing.M) {
	if reexec.Init() {
		return
	}
	code := m.Run()
	if helperBin != "" {
		os.RemoveAll(filepath.Dir(helperBin))
	}
	os.Exit(code)
}
