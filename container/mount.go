package container

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// mountMu serialises Mount and Unmount within the process (two launches of
// the same version must not attach two loop devices).
var mountMu sync.Mutex

// Mount makes version's root available at dir/version: the image of this
// node's architecture, after its sha256 was checked against its metadata,
// loop-mounted read-only (nosuid, nodev). Idempotent: an existing mount is
// kept. A plain directory root (no image) is returned as it is. The root's
// path is returned.
func Mount(dir, version string) (string, error) {
	if !ValidVersion(version) {
		return "", fmt.Errorf("container version %q is not a valid name (letters, digits, . _ -)", version)
	}
	mountMu.Lock()
	defer mountMu.Unlock()
	mp := filepath.Join(dir, version)
	if isMounted(mp) {
		return mp, nil
	}
	in, ok, archs := Lookup(dir, version, HostArch())
	if !ok {
		if len(archs) > 0 {
			return "", fmt.Errorf("container version %s is installed for %v only; this node is %s: import an image built for %s", version, archs, HostArch(), HostArch())
		}
		return "", fmt.Errorf("unknown container version %q: not installed in %s (arkgw container import IMAGE)", version, dir)
	}
	if in.Dir {
		return mp, nil
	}
	sum, _, err := FileSHA256(in.Image)
	if err != nil {
		return "", err
	}
	if sum != in.SHA256 {
		return "", fmt.Errorf("container %s: installed image %s has sha256 %s, its metadata says %s: the file was changed; remove and import it again", version, in.Image, sum, in.SHA256)
	}
	if err := os.MkdirAll(mp, 0o755); err != nil {
		return "", err
	}
	if err := LoopMount(in.Image, mp); err != nil {
		return "", fmt.Errorf("container %s: %w", version, err)
	}
	return mp, nil
}

// LoopMount attaches image to a free loop device (read-only, detached
// automatically when its last user is gone) and mounts it read-only,
// nosuid, nodev as squashfs at target.
func LoopMount(image, target string) error {
	img, err := os.Open(image)
	if err != nil {
		return fmt.Errorf("loop mount: %w", err)
	}
	defer img.Close()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("loop mount %s: %w (is the loop module loaded? modprobe loop)", image, err)
	}
	defer ctl.Close()
	var loop *os.File
	var dev string
	// Another process may take the free device between GET_FREE and
	// CONFIGURE (EBUSY): ask again.
	for try := 0; ; try++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return fmt.Errorf("loop mount %s: get a free loop device: %w", image, err)
		}
		dev = fmt.Sprintf("/dev/loop%d", n)
		if _, err := os.Stat(dev); errors.Is(err, os.ErrNotExist) {
			// no devtmpfs node (some containers): make it
			if err := unix.Mknod(dev, unix.S_IFBLK|0o660, int(unix.Mkdev(7, uint32(n)))); err != nil {
				return fmt.Errorf("loop mount %s: mknod %s: %w", image, dev, err)
			}
		}
		f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("loop mount %s: open %s: %w", image, dev, err)
		}
		cfg := unix.LoopConfig{Fd: uint32(img.Fd())}
		cfg.Info.Flags = unix.LO_FLAGS_READ_ONLY | unix.LO_FLAGS_AUTOCLEAR
		copy(cfg.Info.File_name[:], image)
		err = unix.IoctlLoopConfigure(int(f.Fd()), &cfg)
		if err == nil {
			loop = f
			break
		}
		f.Close()
		if !errors.Is(err, unix.EBUSY) || try >= 10 {
			return fmt.Errorf("loop mount %s: configure %s: %w", image, dev, err)
		}
	}
	// Closing our fd after the mount leaves the mount as the device's only
	// user; when it is unmounted the device detaches itself (AUTOCLEAR).
	defer loop.Close()
	if err := unix.Mount(dev, target, "squashfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		return fmt.Errorf("loop mount %s on %s: mount %s: %w (does the kernel have squashfs?)", image, target, dev, err)
	}
	return nil
}

// Unmount unmounts a mounted image (lazily when still busy: sandboxes that
// run hold their own clones of it). Its loop device detaches itself.
func Unmount(target string) error {
	mountMu.Lock()
	defer mountMu.Unlock()
	err := unix.Unmount(target, 0)
	if errors.Is(err, unix.EBUSY) {
		err = unix.Unmount(target, unix.MNT_DETACH)
	}
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", target, err)
	}
	return nil
}

// isMounted: path is a directory on another device than its parent.
func isMounted(path string) bool {
	var st, pst unix.Stat_t
	if unix.Lstat(path, &st) != nil || unix.Lstat(filepath.Dir(path), &pst) != nil {
		return false
	}
	return st.Mode&unix.S_IFMT == unix.S_IFDIR && st.Dev != pst.Dev
}
