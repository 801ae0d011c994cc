// Package container builds, signs, verifies, installs, lists, removes and
// mounts the standard experiment container: a Debian root made by
// mmdebstrap, packed into one read-only squashfs image, described by a
// small JSON metadata file (version, architecture, sha256, size, packages)
// that is signed with minisign (ed25519) and loop-mounted read-only on the
// node, never unpacked. See README.md.
package container

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/arkgw/arkgw/configs"
)

// Meta describes an image. It is the signed part: its sha256 binds the
// image's bytes, so one signature covers image, architecture and package
// list.
type Meta struct {
	Format       int    `json:"format"`       // 1
	Version      string `json:"version"`      // e.g. "ark-2026.2"
	Architecture string `json:"architecture"` // as uname -m: x86_64, aarch64, armv7l
	SHA256       string `json:"sha256"`       // of the squashfs image, hex
	Size         int64  `json:"size"`         // bytes of the image
	// How it was built (informative).
	Suite           string    `json:"suite,omitempty"`
	Mirrors         []string  `json:"mirrors,omitempty"`
	SourceDateEpoch int64     `json:"source_date_epoch,omitempty"`
	Packages        []Package `json:"packages,omitempty"`
	// Extra lists files added beside the packages (BuildOptions.Extra).
	Extra []string `json:"extra,omitempty"`
}

// Package is one installed Debian package of an image.
type Package struct {
	Name, Version, Arch string
}

// MarshalJSON writes a package as "name version arch" (compact lists).
func (p Package) MarshalJSON() ([]byte, error) {
	return json.Marshal(p.Name + " " + p.Version + " " + p.Arch)
}

// UnmarshalJSON reads "name version arch".
func (p *Package) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	f := strings.Fields(s)
	if len(f) != 3 {
		return fmt.Errorf("package %q: want \"name version arch\"", s)
	}
	p.Name, p.Version, p.Arch = f[0], f[1], f[2]
	return nil
}

// Files beside an image IMAGE: its metadata, the metadata's signature, the
// sha256sum line and the package list.
func MetaPath(image string) string     { return image + ".json" }
func SigPath(image string) string      { return MetaPath(image) + ".minisig" }
func SHA256Path(image string) string   { return image + ".sha256" }
func PackagesPath(image string) string { return image + ".packages" }

// maxMeta bounds the metadata file (untrusted input on import).
const maxMeta = 1 << 20

// ParseMeta decodes and checks metadata (untrusted bytes).
func ParseMeta(data []byte) (*Meta, error) {
	if len(data) > maxMeta {
		return nil, fmt.Errorf("container metadata: %d bytes, more than %d", len(data), maxMeta)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var m Meta
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("container metadata: %w", err)
	}
	if dec.More() {
		return nil, errors.New("container metadata: trailing data after the JSON object")
	}
	if m.Format != 1 {
		return nil, fmt.Errorf("container metadata: format %d; this arkgw reads format 1", m.Format)
	}
	if !ValidVersion(m.Version) {
		return nil, fmt.Errorf("container metadata: version %q is not a valid name (letters, digits, . _ -)", m.Version)
	}
	if !knownArch(m.Architecture) {
		return nil, fmt.Errorf("container metadata: architecture %q; want one of %s", m.Architecture, strings.Join(Architectures, ", "))
	}
	if b, err := hex.DecodeString(m.SHA256); err != nil || len(b) != sha256.Size {
		return nil, fmt.Errorf("container metadata: sha256 %q is not 64 hex digits", m.SHA256)
	}
	if m.Size <= 0 {
		return nil, fmt.Errorf("container metadata: size %d", m.Size)
	}
	return &m, nil
}

// Encode is the canonical form written beside an image.
func (m *Meta) Encode() []byte {
	b, _ := json.MarshalIndent(m, "", "  ")
	return append(b, '\n')
}

// ReadMeta reads the metadata beside an image.
func ReadMeta(image string) (*Meta, []byte, error) {
	f, err := os.Open(MetaPath(image))
	if err != nil {
		return nil, nil, fmt.Errorf("read container metadata: %w (an image comes with IMAGE.json from `arkgw container build`)", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxMeta+1))
	if err != nil {
		return nil, nil, fmt.Errorf("read container metadata %s: %w", f.Name(), err)
	}
	m, err := ParseMeta(data)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", f.Name(), err)
	}
	return m, data, nil
}

// ValidVersion is configs.ValidContainerVersion: the manifest, the sandbox
// and the image agree on what a version may be called.
func ValidVersion(v string) bool { return configs.ValidContainerVersion(v) }

// Architectures an image may be built for, named as uname -m (and
// manifests) name them.
var Architectures = []string{"x86_64", "aarch64", "armv7l"}

func knownArch(a string) bool {
	for _, k := range Architectures {
		if a == k {
			return true
		}
	}
	return false
}

// DebianArch maps a machine architecture to Debian's name.
func DebianArch(arch string) (string, error) {
	switch arch {
	case "x86_64":
		return "amd64", nil
	case "aarch64":
		return "arm64", nil
	case "armv7l":
		return "armhf", nil
	}
	return "", fmt.Errorf("unknown architecture %q; want one of %s", arch, strings.Join(Architectures, ", "))
}

// GoArch maps a machine architecture to GOARCH (and GOARM for armv7l).
func GoArch(arch string) (goarch, goarm string) {
	switch arch {
	case "aarch64":
		return "arm64", ""
	case "armv7l":
		return "arm", "7"
	}
	return "amd64", ""
}

// FileSHA256 hashes a file.
func FileSHA256(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, bufio.NewReaderSize(f, 1<<20))
	if err != nil {
		return "", 0, fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// packageList is the text form of the package list (IMAGE.packages).
func packageList(ps []Package) []byte {
	var b bytes.Buffer
	for _, p := range ps {
		fmt.Fprintf(&b, "%s\t%s\t%s\n", p.Name, p.Version, p.Arch)
	}
	return b.Bytes()
}

// imageName is the file name of an installed image.
func imageName(version, arch string) string { return version + "_" + arch + ".squashfs" }

// installedImage is the path of an installed image.
func installedImage(dir, version, arch string) string {
	return filepath.Join(dir, imageName(version, arch))
}
