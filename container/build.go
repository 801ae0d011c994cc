package container

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
)

// DefaultPackages are what the standard container holds besides Debian's
// essential set: shells and utilities, python with scapy, the measurement
// tools, DNS and HTTP clients.
var DefaultPackages = []string{
	"bash", "coreutils", "procps", "iproute2", "iputils-ping", "traceroute",
	"scamper", "dnsutils", "curl", "ca-certificates", "python3", "python3-scapy",
}

// Defaults of a build.
const (
	DefaultSuite  = "bookworm"
	DefaultMirror = "http://deb.debian.org/debian"
	// DefaultSourceDateEpoch is 2026-01-01T00:00:00Z: every file time in
	// the image and the squashfs creation time.
	DefaultSourceDateEpoch = 1767225600
	// ExperimentUID is the uid/gid of the experiment user "ark" (the
	// sandbox's default).
	ExperimentUID = 1000
)

// BuildOptions configure Build. Only Version, OutDir and PcapBinary are
// required.
type BuildOptions struct {
	Version string
	OutDir  string // receives VERSION_ARCH.squashfs and the files beside it
	// Architecture as uname -m names it; "" = this machine's. A foreign one
	// needs qemu-user-static and binfmt_misc.
	Architecture string
	Suite        string   // "" = bookworm
	Mirrors      []string // apt sources; "" = deb.debian.org. A snapshot.debian.org URL pins the packages.
	Packages     []string // nil = DefaultPackages
	// SourceDateEpoch clamps every time in the image; 0 = DefaultSourceDateEpoch.
	SourceDateEpoch int64
	// PcapBinary is the static pcap client (cmd/pcap, CGO_ENABLED=0, built
	// for Architecture), installed at /usr/bin/pcap.
	PcapBinary string
	// Extra files copied into the root (mode 0755), e.g. a test tool:
	// host path -> absolute path in the image. They are inputs of the
	// cache key and listed in the metadata.
	Extra map[string]string
	// WorkDir holds the temporary root (about 300 MB); "" = OutDir.
	WorkDir string
	Logger  hclog.Logger
	// Stderr receives the build tools' output; nil = discarded.
	Stderr io.Writer
}

// BuildResult is what Build made.
type BuildResult struct {
	Image               string // path of the squashfs image
	Meta                *Meta
	Duration            time.Duration // whole build
	Debootstrap, Squash time.Duration
}

// Build makes the standard container image: mmdebstrap installs the
// packages into a temporary root; the experiment user, the sandbox's mount
// points and the pcap client are added; files that differ between builds
// for no reason (caches, logs, machine id) are removed; mksquashfs packs
// it with every owner root and every time SOURCE_DATE_EPOCH. The image,
// IMAGE.json (metadata, to be signed), IMAGE.sha256 and IMAGE.packages are
// written to OutDir; the temporary root is removed.
func Build(ctx context.Context, o BuildOptions) (*BuildResult, error) {
	t0 := time.Now()
	if err := o.defaults(); err != nil {
		return nil, err
	}
	log := o.Logger
	debArch, err := DebianArch(o.Architecture)
	if err != nil {
		return nil, fmt.Errorf("container build: %w", err)
	}
	for _, tool := range []string{"mmdebstrap", "mksquashfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("container build: %s not found: install it (apt-get install mmdebstrap squashfs-tools)", tool)
		}
	}
	if st, err := os.Stat(o.PcapBinary); err != nil || !st.Mode().IsRegular() {
		return nil, fmt.Errorf("container build: pcap client %q: not a file (build it: CGO_ENABLED=0 go build -o pcap ./cmd/pcap)", o.PcapBinary)
	}
	if err := checkELF(o.PcapBinary, o.Architecture); err != nil {
		return nil, fmt.Errorf("container build: %w", err)
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return nil, fmt.Errorf("container build: %w", err)
	}
	work, err := os.MkdirTemp(o.WorkDir, ".arkgw-build-")
	if err != nil {
		return nil, fmt.Errorf("container build: temporary directory: %w", err)
	}
	defer os.RemoveAll(work)
	root := filepath.Join(work, "root")

	args := []string{
		"--mode=root", "--format=directory", "--variant=essential",
		"--architectures=" + debArch,
		"--include=" + strings.Join(o.Packages, ","),
		// Snapshot mirrors serve Release files whose Valid-Until passed.
		`--aptopt=Acquire::Check-Valid-Until "false"`,
		`--aptopt=APT::Install-Recommends "false"`,
		// Documentation is not needed to measure; smaller and faster.
		"--dpkgopt=path-exclude=/usr/share/man/*",
		"--dpkgopt=path-exclude=/usr/share/doc/*",
		"--dpkgopt=path-include=/usr/share/doc/*/copyright",
		"--dpkgopt=path-exclude=/usr/share/info/*",
		"--dpkgopt=path-exclude=/usr/share/locale/*",
		o.Suite, root,
	}
	args = append(args, o.Mirrors...)
	cmd := exec.CommandContext(ctx, "mmdebstrap", args...)
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH="+strconv.FormatInt(o.SourceDateEpoch, 10), "LC_ALL=C.UTF-8")
	cmd.Stdout, cmd.Stderr = o.Stderr, o.Stderr
	log.Info("container build: mmdebstrap", "version", o.Version, "arch", debArch, "suite", o.Suite, "mirrors", o.Mirrors)
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("container build: mmdebstrap %s: %w (see its output above; is the mirror reachable?)", o.Suite, err)
	}
	tBoot := time.Since(t0)
	if err := finishRoot(root, o.PcapBinary); err != nil {
		return nil, fmt.Errorf("container build: %w", err)
	}
	var extras []string
	for src, dst := range o.Extra {
		if !filepath.IsAbs(dst) || strings.Contains(dst, "..") {
			return nil, fmt.Errorf("container build: extra file %s: destination %q must be an absolute path inside the image", src, dst)
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return nil, fmt.Errorf("container build: extra file: %w", err)
		}
		p := filepath.Join(root, dst)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, fmt.Errorf("container build: %w", err)
		}
		if err := os.WriteFile(p, data, 0o755); err != nil {
			return nil, fmt.Errorf("container build: %w", err)
		}
		if err := os.Chmod(p, 0o755); err != nil {
			return nil, err
		}
		extras = append(extras, dst)
	}
	sort.Strings(extras)
	pkgs, err := readDpkgStatus(filepath.Join(root, "var/lib/dpkg/status"))
	if err != nil {
		return nil, fmt.Errorf("container build: %w", err)
	}
	image := filepath.Join(o.OutDir, imageName(o.Version, o.Architecture))
	tmpImage := filepath.Join(work, "image.squashfs")
	t1 := time.Now()
	sq := exec.CommandContext(ctx, "mksquashfs", root, tmpImage,
		"-noappend", "-all-root", "-no-xattrs", "-comp", "gzip",
		"-mkfs-time", strconv.FormatInt(o.SourceDateEpoch, 10),
		"-all-time", strconv.FormatInt(o.SourceDateEpoch, 10),
		"-quiet", "-no-progress")
	sq.Stdout, sq.Stderr = o.Stderr, o.Stderr
	if err := sq.Run(); err != nil {
		return nil, fmt.Errorf("container build: mksquashfs: %w", err)
	}
	tSquash := time.Since(t1)
	sum, size, err := FileSHA256(tmpImage)
	if err != nil {
		return nil, fmt.Errorf("container build: %w", err)
	}
	m := &Meta{Format: 1, Version: o.Version, Architecture: o.Architecture, SHA256: sum, Size: size,
		Suite: o.Suite, Mirrors: o.Mirrors, SourceDateEpoch: o.SourceDateEpoch, Packages: pkgs, Extra: extras}
	if err := moveFile(tmpImage, image); err != nil {
		return nil, fmt.Errorf("container build: %w", err)
	}
	for _, f := range []struct {
		path string
		data []byte
	}{
		{MetaPath(image), m.Encode()},
		{SHA256Path(image), []byte(sum + "  " + filepath.Base(image) + "\n")},
		{PackagesPath(image), packageList(pkgs)},
	} {
		if err := os.WriteFile(f.path, f.data, 0o644); err != nil {
			return nil, fmt.Errorf("container build: %w", err)
		}
	}
	// An old signature beside a rebuilt image signs other bytes.
	os.Remove(SigPath(image))
	res := &BuildResult{Image: image, Meta: m, Duration: time.Since(t0), Debootstrap: tBoot, Squash: tSquash}
	log.Info("container built", "image", image, "sha256", sum, "size", size, "packages", len(pkgs),
		"mmdebstrap", tBoot.Round(time.Millisecond), "mksquashfs", tSquash.Round(time.Millisecond), "total", res.Duration.Round(time.Millisecond))
	return res, nil
}

func (o *BuildOptions) defaults() error {
	if !ValidVersion(o.Version) {
		return fmt.Errorf("container build: version %q is not a valid name (letters, digits, . _ -), e.g. ark-2026.2", o.Version)
	}
	if o.OutDir == "" {
		return errors.New("container build: no output directory")
	}
	if o.Architecture == "" {
		o.Architecture = HostArch()
	}
	if o.Suite == "" {
		o.Suite = DefaultSuite
	}
	if len(o.Mirrors) == 0 {
		o.Mirrors = []string{DefaultMirror}
	}
	if o.Packages == nil {
		o.Packages = DefaultPackages
	}
	if o.SourceDateEpoch == 0 {
		o.SourceDateEpoch = DefaultSourceDateEpoch
	}
	if o.WorkDir == "" {
		o.WorkDir = o.OutDir
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	if o.Stderr == nil {
		o.Stderr = io.Discard
	}
	return nil
}

// SandboxMountPoints are the paths the sandbox mounts over; a read-only
// image must already have them (see sandbox's mountPoints).
var SandboxMountPoints = []struct {
	Path string
	Dir  bool
}{
	{"proc", true}, {"dev", true}, {"tmp", true}, {"run", true}, {"run/ark", true}, {"experiment", true},
	{"etc/resolv.conf", false}, {"etc/hosts", false}, {"etc/hostname", false},
	{"usr/bin/pcap", false},
}

// finishRoot adds what the Debian packages do not: the experiment user,
// the mount points, the pcap client, scamper's privilege-separation
// directory; and removes files that only record when or where the build
// ran.
func finishRoot(root, pcap string) error {
	if err := appendLine(filepath.Join(root, "etc/passwd"), "ark:", fmt.Sprintf("ark:x:%d:%d:arkgw experiment:/tmp:/bin/bash", ExperimentUID, ExperimentUID)); err != nil {
		return err
	}
	if err := appendLine(filepath.Join(root, "etc/group"), "ark:", fmt.Sprintf("ark:x:%d:", ExperimentUID)); err != nil {
		return err
	}
	for _, mp := range SandboxMountPoints {
		p := filepath.Join(root, mp.Path)
		if mp.Dir {
			if err := os.MkdirAll(p, 0o755); err != nil {
				return err
			}
			continue
		}
		os.Remove(p) // a dangling /etc/resolv.conf link of the build host
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(root, "tmp"), 0o1777); err != nil {
		return err
	}
	// scamper's privilege separation chroots here (empty, root's, 0755).
	if err := os.MkdirAll(filepath.Join(root, "var/empty"), 0o755); err != nil {
		return err
	}
	data, err := os.ReadFile(pcap)
	if err != nil {
		return fmt.Errorf("read pcap client: %w", err)
	}
	// (WriteFile keeps the mode of the mount point file made above.)
	if err := os.WriteFile(filepath.Join(root, "usr/bin/pcap"), data, 0o755); err != nil {
		return err
	}
	if err := os.Chmod(filepath.Join(root, "usr/bin/pcap"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "etc/hostname"), []byte("ark\n"), 0o644); err != nil {
		return err
	}
	// Build-time leftovers that differ on every build.
	for _, g := range []string{
		"var/cache/ldconfig/aux-cache", "var/log/*", "var/cache/apt/*.bin", "var/lib/apt/lists/*",
		"var/cache/debconf/*-old", "var/lib/dpkg/*-old", "etc/machine-id", "var/lib/dbus/machine-id",
		"etc/ssh/ssh_host_*", "root/.bash_history",
	} {
		ms, _ := filepath.Glob(filepath.Join(root, g))
		for _, m := range ms {
			if err := os.RemoveAll(m); err != nil {
				return err
			}
		}
	}
	// An empty machine-id: systemd-less roots want the file to exist.
	return os.WriteFile(filepath.Join(root, "etc/machine-id"), nil, 0o444)
}

func appendLine(path, prefix, line string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, prefix) {
			return nil
		}
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		data = append(data, '\n')
	}
	return os.WriteFile(path, append(data, line+"\n"...), 0o644)
}

// readDpkgStatus lists the installed packages of a root, sorted as dpkg
// keeps them (by name).
func readDpkgStatus(path string) ([]Package, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read package list: %w", err)
	}
	return parseDpkgStatus(data), nil
}

// parseDpkgStatus reads the stanzas of a dpkg status file and keeps the
// installed packages.
func parseDpkgStatus(data []byte) []Package {
	var out []Package
	var p Package
	installed := false
	flush := func() {
		if installed && p.Name != "" {
			out = append(out, p)
		}
		p, installed = Package{}, false
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			flush()
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok || strings.HasPrefix(line, " ") {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "Package":
			p.Name = v
		case "Version":
			p.Version = v
		case "Architecture":
			p.Arch = v
		case "Status":
			installed = strings.HasSuffix(v, " installed")
		}
	}
	flush()
	return out
}

// moveFile renames, or copies across file systems.
func moveFile(src, dst string) error {
	if err := os.Rename(src, dst); err == nil {
		return nil
	}
	return copyFile(src, dst, 0o644)
}

// copyFile copies src to dst through a temporary file in dst's directory
// and a rename, so dst is never half-written.
func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dst)
}

// checkELF refuses a pcap client built for another architecture than the
// image's (it would fail with "exec format error" in every sandbox).
func checkELF(path, arch string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("pcap client %s: not an ELF executable: %w", path, err)
	}
	defer f.Close()
	want := map[string]elf.Machine{"x86_64": elf.EM_X86_64, "aarch64": elf.EM_AARCH64, "armv7l": elf.EM_ARM}[arch]
	if f.Machine != want {
		goarch, goarm := GoArch(arch)
		return fmt.Errorf("pcap client %s is built for %v, the image is %s: build it with CGO_ENABLED=0 GOARCH=%s GOARM=%s go build ./cmd/pcap", path, f.Machine, arch, goarch, goarm)
	}
	return nil
}
