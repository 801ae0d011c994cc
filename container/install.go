package container

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
)

// The installed layout, in <state_dir>/containers/ (Dir):
//
//	VERSION_ARCH.squashfs            the image, as imported (never unpacked)
//	VERSION_ARCH.squashfs.json       its metadata
//	VERSION_ARCH.squashfs.json.minisig  the signature (when signed)
//	VERSION/                         mount point: the image of this node's
//	                                 architecture, loop-mounted read-only
//
// A plain directory VERSION/ without an image (scripts/rootfs.sh) is a
// development root and still works with the sandbox.

// HostArch is this machine's architecture as uname -m names it.
func HostArch() string {
	switch runtime.GOARCH {
	case "arm64":
		return "aarch64"
	case "arm":
		return "armv7l"
	}
	return "x86_64"
}

// Installed is one installed version.
type Installed struct {
	Version      string
	Architecture string // "" for a plain directory
	Image        string // path of the image; "" for a plain directory
	SHA256       string
	Size         int64
	Signed       bool
	Mounted      bool
	Dir          bool // a plain development directory, no image
}

// Import verifies image (see Verify) and installs it into dir. A version
// already installed for the same architecture is refused unless it has
// the same sha256 (then Import is a no-op).
func Import(dir, image string, t Trust) (*Installed, error) {
	v, err := Verify(image, t)
	if err != nil {
		return nil, err
	}
	m := v.Meta
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	dst := installedImage(dir, m.Version, m.Architecture)
	if old, _, err := ReadMeta(dst); err == nil {
		if old.SHA256 == m.SHA256 {
			return &Installed{Version: m.Version, Architecture: m.Architecture, Image: dst, SHA256: m.SHA256, Size: m.Size, Signed: v.Signed}, nil
		}
		return nil, fmt.Errorf("import %s: version %s (%s) is installed with sha256 %s, this image has %s: a version never changes; build it under a new version, or `arkgw container remove %s` first",
			image, m.Version, m.Architecture, old.SHA256, m.SHA256, m.Version)
	}
	mp := filepath.Join(dir, m.Version)
	if ents, err := os.ReadDir(mp); err == nil && len(ents) > 0 && !isMounted(mp) {
		return nil, fmt.Errorf("import %s: %s is a plain directory root of the same version: remove it (or use another version name)", image, mp)
	}
	// Copy, then check the copy: what is installed is what was verified.
	if err := copyFile(image, dst, 0o644); err != nil {
		return nil, fmt.Errorf("import %s: %w", image, err)
	}
	sum, _, err := FileSHA256(dst)
	if err != nil || sum != m.SHA256 {
		os.Remove(dst)
		return nil, fmt.Errorf("import %s: the copy %s has sha256 %s, want %s (%v)", image, dst, sum, m.SHA256, err)
	}
	metaData, _ := os.ReadFile(MetaPath(image))
	if err := os.WriteFile(MetaPath(dst), metaData, 0o644); err != nil {
		os.Remove(dst)
		return nil, fmt.Errorf("import %s: %w", image, err)
	}
	os.Remove(SigPath(dst))
	if v.Signed {
		sig, _ := os.ReadFile(SigPath(image))
		if err := os.WriteFile(SigPath(dst), sig, 0o644); err != nil {
			return nil, fmt.Errorf("import %s: %w", image, err)
		}
	}
	if err := os.MkdirAll(mp, 0o755); err != nil {
		return nil, fmt.Errorf("import %s: mount point: %w", image, err)
	}
	return &Installed{Version: m.Version, Architecture: m.Architecture, Image: dst, SHA256: m.SHA256, Size: m.Size, Signed: v.Signed}, nil
}

// List returns the installed versions, images and plain directories,
// sorted by version and architecture. It does not hash the images.
func List(dir string) ([]Installed, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	var out []Installed
	images := map[string]bool{}
	for _, e := range ents {
		name := e.Name()
		if !strings.HasSuffix(name, ".squashfs") || e.IsDir() {
			continue
		}
		p := filepath.Join(dir, name)
		m, _, err := ReadMeta(p)
		if err != nil || imageName(m.Version, m.Architecture) != name {
			continue // not ours, or half-imported
		}
		_, sigErr := os.Stat(SigPath(p))
		in := Installed{Version: m.Version, Architecture: m.Architecture, Image: p, SHA256: m.SHA256, Size: m.Size, Signed: sigErr == nil}
		in.Mounted = in.Architecture == HostArch() && isMounted(filepath.Join(dir, m.Version))
		out = append(out, in)
		images[m.Version] = true
	}
	for _, e := range ents {
		if images[e.Name()] || !ValidVersion(e.Name()) || strings.HasSuffix(e.Name(), ".squashfs") {
			continue
		}
		// a directory, or a link to one (development roots)
		if st, err := os.Stat(filepath.Join(dir, e.Name())); err != nil || !st.IsDir() {
			continue
		}
		out = append(out, Installed{Version: e.Name(), Dir: true})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Version != out[j].Version {
			return out[i].Version < out[j].Version
		}
		return out[i].Architecture < out[j].Architecture
	})
	return out, nil
}

// Lookup finds the image of version for arch. ok is false when the version
// has no image of that architecture; archs lists the architectures it has
// (empty: not installed at all; "dir" for a plain directory root).
func Lookup(dir, version, arch string) (in Installed, ok bool, archs []string) {
	list, _ := List(dir)
	for _, x := range list {
		if x.Version != version {
			continue
		}
		if x.Dir {
			archs = append(archs, "dir")
			if !ok {
				in, ok = x, true
			}
			continue
		}
		archs = append(archs, x.Architecture)
		if x.Architecture == arch {
			in, ok = x, true
		}
	}
	return in, ok, archs
}

// Remove unmounts and deletes every image of version (and its mount
// point). inUse lists the experiments (planned or running) that name the
// version; Remove refuses while there are any.
func Remove(dir, version string, inUse []string) error {
	if !ValidVersion(version) {
		return fmt.Errorf("remove: %q is not a container version", version)
	}
	if len(inUse) > 0 {
		return fmt.Errorf("remove %s: in use by experiment(s) %s: stop them or wait until they ended", version, strings.Join(inUse, ", "))
	}
	list, err := List(dir)
	if err != nil {
		return err
	}
	found := false
	var errs []error
	mp := filepath.Join(dir, version)
	if isMounted(mp) {
		if err := Unmount(mp); err != nil {
			return fmt.Errorf("remove %s: %w", version, err)
		}
	}
	for _, x := range list {
		if x.Version != version {
			continue
		}
		found = true
		if x.Dir {
			errs = append(errs, fmt.Errorf("remove %s: %s is a plain directory root; delete it yourself", version, mp))
			continue
		}
		for _, p := range []string{SigPath(x.Image), MetaPath(x.Image), x.Image} {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	if !found {
		return fmt.Errorf("remove: container version %s is not installed (arkgw container list)", version)
	}
	if len(errs) == 0 {
		os.Remove(mp) // empty mount point
	}
	return errors.Join(errs...)
}

// Installations returns the lookup configs.Env.Containers wants for the
// containers directory dir: architecture -> sha256 of each image of a
// version ("dir" -> "" for a plain directory root). nil when dir does not
// exist (nothing to check against).
func Installations(dir string) func(version string) map[string]string {
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return nil
	}
	return func(version string) map[string]string {
		list, _ := List(dir)
		out := map[string]string{}
		for _, x := range list {
			if x.Version != version {
				continue
			}
			if x.Dir {
				out["dir"] = ""
			} else {
				out[x.Architecture] = x.SHA256
			}
		}
		return out
	}
}

// Stage makes image usable from dir without copying it (for `arkgw try`):
// its sha256 is checked against its metadata (a signature is not
// required: the experimenter's own machine), then it is linked into dir
// with its metadata, ready for Mount.
func Stage(dir, image string) (*Meta, error) {
	v, err := Verify(image, Trust{AllowUnsigned: true})
	if err != nil {
		return nil, err
	}
	m := v.Meta
	if m.Architecture != HostArch() {
		return nil, fmt.Errorf("image %s is built for %s; this machine is %s: build one for it (arkgw container build %s)", image, m.Architecture, HostArch(), m.Version)
	}
	abs, err := filepath.Abs(image)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, m.Version), 0o755); err != nil {
		return nil, err
	}
	dst := installedImage(dir, m.Version, m.Architecture)
	if err := os.Symlink(abs, dst); err != nil {
		return nil, fmt.Errorf("stage %s: %w", image, err)
	}
	if err := os.WriteFile(MetaPath(dst), m.Encode(), 0o644); err != nil {
		return nil, err
	}
	return m, nil
}
