package sandbox

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// strippedMountPoints are every path the sandbox mounts on: a root made
// as images ship lacks them all.
var strippedMountPoints = []string{"proc", "dev", "tmp", "run", "experiment",
	"etc/resolv.conf", "etc/hosts", "etc/hostname", "usr/bin/pcap"}

// strippedRoot copies the test container root to dst without any mount
// point.
func strippedRoot(t *testing.T, dst string) {
	t.Helper()
	src := filepath.Join(testContainers(t), testVersion)
	if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("copy test root: %v %s", err, out)
	}
	for _, p := range strippedMountPoints {
		if err := os.RemoveAll(filepath.Join(dst, p)); err != nil {
			t.Fatal(err)
		}
	}
}

// treeDigest is every entry below root (crossing mounts) with its type,
// mode, owner, size, mtime and, for files, a hash of the content: equal
// digests mean nothing was created, removed or changed.
func treeDigest(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %o %d:%d %d %d.%d", strings.TrimPrefix(p, root), st.Mode, st.Uid, st.Gid, st.Size, st.Mtim.Sec, st.Mtim.Nsec)
		if d.Type().IsRegular() {
			fmt.Fprintf(&b, " %s", fileHash(t, p))
		}
		b.WriteByte('\n')
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	return b.String()
}

func fileHash(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// mountCleanup unmounts dir at cleanup (which must succeed: nothing of the
// test may stay mounted).
func mountCleanup(t *testing.T, dir string) {
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
}

// bindRO bind-mounts src on dst read-only (host namespace), unmounted at
// cleanup.
func bindROForTest(t *testing.T, src, dst string) {
	t.Helper()
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind %s on %s: %v", src, dst, err)
	}
	mountCleanup(t, dst)
	if err := unix.Mount("", dst, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
		t.Fatalf("remount %s read-only: %v", dst, err)
	}
}

// loopMountSquashfs attaches image to a free loop device, read-only and
// autoclear (LOOP_CONFIGURE), and mounts it read-only on dir; the device is
// released when it is unmounted at cleanup, which is checked.
func loopMountSquashfs(t *testing.T, image, dir string) string {
	t.Helper()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("loop devices: %v", err)
	}
	defer ctl.Close()
	img, err := os.Open(image)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	for attempt := 0; attempt < 20; attempt++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			t.Fatalf("LOOP_CTL_GET_FREE: %v", err)
		}
		dev := fmt.Sprintf("/dev/loop%d", n)
		lf, err := os.OpenFile(dev, os.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatalf("open %s: %v", dev, err)
		}
		cfg := unix.LoopConfig{Fd: uint32(img.Fd()),
			Info: unix.LoopInfo64{Flags: unix.LO_FLAGS_READ_ONLY | unix.LO_FLAGS_AUTOCLEAR}}
		copy(cfg.Info.File_name[:], image)
		if err := unix.IoctlLoopConfigure(int(lf.Fd()), &cfg); err != nil {
			lf.Close()
			if errors.Is(err, unix.EBUSY) { // another process took it
				continue
			}
			t.Fatalf("LOOP_CONFIGURE %s: %v", dev, err)
		}
		// Mounted before the device's last file is closed: autoclear
		// would detach it right away.
		err = unix.Mount(dev, dir, "squashfs", unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID, "")
		lf.Close()
		if err != nil {
			t.Fatalf("mount %s (%s) on %s: %v", dev, image, dir, err)
		}
		backing := fmt.Sprintf("/sys/block/loop%d/loop/backing_file", n)
		t.Cleanup(func() {
			for i := 0; i < 100; i++ {
				if _, err := os.Stat(backing); err != nil {
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
			t.Errorf("%s still attached to %s after unmount", dev, image)
		})
		mountCleanup(t, dir)
		return dev
	}
	t.Fatal("no free loop device")
	return ""
}

// An experiment runs on container roots as they ship, which the sandbox
// never writes to: a read-only squashfs image (one mount) lacking every
// mount point, a read-only bind, a writable directory lacking them (no
// file may be created in it), and a root made of several mounts (/usr
// and /srv separate), which the experiment sees whole.
func TestPrivilegedContainerRoots(t *testing.T) {
	needRoot(t)
	for _, c := range []struct {
		name  string
		setup func(t *testing.T, root string)
		check string // also in the output
	}{
		{"writable directory", func(t *testing.T, root string) {
			strippedRoot(t, root)
		}, ""},
		{"squashfs image", func(t *testing.T, root string) {
			if _, err := exec.LookPath("mksquashfs"); err != nil {
				t.Fatal("mksquashfs missing: install squashfs-tools (scripts/deps.sh)")
			}
			tree := filepath.Join(t.TempDir(), "tree")
			strippedRoot(t, tree)
			image := filepath.Join(t.TempDir(), "root.squashfs")
			if out, err := exec.Command("mksquashfs", tree, image, "-noappend", "-no-progress", "-quiet", "-comp", "gzip").CombinedOutput(); err != nil {
				t.Fatalf("mksquashfs: %v %s", err, out)
			}
			os.Mkdir(root, 0o755)
			loopMountSquashfs(t, image, root)
			sum := fileHash(t, image)
			t.Cleanup(func() {
				if fileHash(t, image) != sum {
					t.Errorf("image %s changed", image)
				}
			})
		}, ""},
		{"read-only bind", func(t *testing.T, root string) {
			tree := filepath.Join(t.TempDir(), "tree")
			strippedRoot(t, tree)
			os.Mkdir(root, 0o755)
			bindROForTest(t, tree, root)
		}, ""},
		{"several mounts", func(t *testing.T, root string) {
			tree := filepath.Join(t.TempDir(), "tree")
			strippedRoot(t, tree)
			// /usr (every binary and library: /bin is usr/bin) and /srv
			// are mounts of their own below the read-only top.
			usr := filepath.Join(t.TempDir(), "usr")
			if err := os.Rename(filepath.Join(tree, "usr"), usr); err != nil {
				t.Fatal(err)
			}
			srv := filepath.Join(t.TempDir(), "srv")
			os.Mkdir(srv, 0o755)
			os.WriteFile(filepath.Join(srv, "marker"), []byte("srv-mount-seen\n"), 0o644)
			os.Chmod(filepath.Dir(srv), 0o755)
			os.Chmod(filepath.Dir(usr), 0o755)
			for _, d := range []string{"usr", "srv"} {
				os.Mkdir(filepath.Join(tree, d), 0o755)
			}
			os.Mkdir(root, 0o755)
			bindROForTest(t, tree, root)
			bindROForTest(t, usr, filepath.Join(root, "usr"))
			bindROForTest(t, srv, filepath.Join(root, "srv"))
		}, "srv-mount-seen"},
	} {
		t.Run(c.name, func(t *testing.T) {
			tr := newSpec(t, "/bin/sh", "-c", `id; ls /; cat /experiment/hello.txt; hostname; cat /etc/resolv.conf
/usr/bin/pcap && echo pcap-ran; touch /x 2>&1; touch /tmp/y && echo tmp-ok; cat /srv/marker 2>/dev/null; true`)
			containers := filepath.Join(t.TempDir(), "containers")
			os.MkdirAll(containers, 0o755)
			root := filepath.Join(containers, "shipped")
			c.setup(t, root)
			tr.spec.ContainersDir, tr.spec.Version = containers, "shipped"
			pcap := filepath.Join(tr.dir, "pcap-client")
			b, _ := os.ReadFile("/bin/true")
			os.WriteFile(pcap, b, 0o755)
			tr.spec.PcapBinary = pcap
			before := treeDigest(t, root)
			res, out, errOut := tr.run(t)
			if !res.Exited || res.Code != 0 {
				t.Fatalf("result %+v\nstdout %s\nstderr %s", res, out, errOut)
			}
			for _, want := range []string{"uid=1000(ark)", "hello\n", "ark-" + tr.spec.ID, "# written by arkgw",
				"pcap-ran", "tmp-ok", "touch: cannot touch '/x': Read-only file system", c.check} {
				if !strings.Contains(out, want) {
					t.Errorf("stdout lacks %q:\n%s", want, out)
				}
			}
			if after := treeDigest(t, root); after != before {
				t.Errorf("container root changed by the run:\nbefore:\n%.2000s\nafter:\n%.2000s", before, after)
			}
			for _, p := range strippedMountPoints {
				if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
					t.Errorf("mount point %s created in the container root", p)
				}
			}
		})
	}
}

// What an experiment's /proc/self/mountinfo shows: no host path of its
// container root (an overlay, naming stage paths that mean nothing
// outside), and no mount that is not the sandbox's own. (Its files are a
// bind, shown with their path: without FilesDir here.)
func TestPrivilegedMountinfoHidesHostPaths(t *testing.T) {
	tr := newSpec(t, "/bin/cat", "/proc/self/mountinfo")
	tr.spec.FilesDir = ""
	res, out, errOut := tr.run(t)
	if !res.Exited || res.Code != 0 {
		t.Fatalf("%+v %s %s", res, out, errOut)
	}
	t.Logf("mountinfo inside:\n%s", out)
	for _, host := range []string{testContainers(t), tr.dir, filepath.Dir(tr.dir), "/tmp/arkgw-sandbox-roots", tr.spec.ID} {
		if strings.Contains(out, host) {
			t.Errorf("mountinfo shows host path %q:\n%s", host, out)
		}
	}
	mounts := map[string]string{}
	for _, l := range lines(out) {
		f := strings.Fields(l)
		if len(f) < 10 {
			t.Fatalf("mountinfo line %q", l)
		}
		sep := 6
		for f[sep] != "-" {
			sep++
		}
		mounts[f[4]] = f[sep+1] + " " + f[sep+2]
	}
	want := map[string]string{"/": "overlay arkgw", "/proc": "proc proc",
		"/dev/pts": "devpts devpts", "/dev/shm": "tmpfs shm", "/tmp": "tmpfs tmpfs", "/run": "tmpfs tmpfs"}
	for mp, fs := range want {
		if mounts[mp] != fs {
			t.Errorf("%s: %q, want %q", mp, mounts[mp], fs)
		}
	}
	for mp := range mounts {
		if _, ok := want[mp]; !ok && !strings.HasPrefix(mp, "/etc/") && mp != "/dev" {
			t.Errorf("unexpected mount %s (%s)", mp, mounts[mp])
		}
	}
}
