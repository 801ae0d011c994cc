package container

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// recipe changes whenever Build makes a different root from the same
// options (bump it with finishRoot or the mksquashfs flags).
const recipe = "arkgw-container-recipe-2"

// CacheKey names the build inputs: options, the pcap client's bytes and
// the recipe. Two builds with the same key install the same packages (as
// far as the mirror serves the same versions; see README.md).
func CacheKey(o BuildOptions) (string, error) {
	o.OutDir = "-" // not an input
	if err := o.defaults(); err != nil {
		return "", err
	}
	pcap, _, err := FileSHA256(o.PcapBinary)
	if err != nil {
		return "", fmt.Errorf("container cache: pcap client: %w", err)
	}
	h := sha256.New()
	fmt.Fprintln(h, recipe, o.Version, o.Architecture, o.Suite, strings.Join(o.Mirrors, " "),
		strings.Join(o.Packages, ","), o.SourceDateEpoch, pcap)
	var srcs []string
	for src := range o.Extra {
		srcs = append(srcs, src)
	}
	sort.Strings(srcs)
	for _, src := range srcs {
		sum, _, err := FileSHA256(src)
		if err != nil {
			return "", fmt.Errorf("container cache: extra file: %w", err)
		}
		fmt.Fprintln(h, "extra", o.Extra[src], sum)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// Cached returns the image Build makes from o, building it into
// cacheDir/<CacheKey>/ only when that directory has no valid image yet
// (o.OutDir is ignored). Concurrent callers wait for one build (flock).
// Tests, the demo and CI use it to build the image once.
func Cached(ctx context.Context, cacheDir string, o BuildOptions) (image string, built bool, err error) {
	key, err := CacheKey(o)
	if err != nil {
		return "", false, err
	}
	dir := filepath.Join(cacheDir, "container-"+key)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", false, err
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", false, err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return "", false, err
	}
	if o.Architecture == "" {
		o.Architecture = HostArch()
	}
	image = filepath.Join(dir, imageName(o.Version, o.Architecture))
	if _, err := Verify(image, Trust{AllowUnsigned: true}); err == nil {
		return image, false, nil
	}
	o.OutDir, o.WorkDir = dir, dir
	res, err := Build(ctx, o)
	if err != nil {
		return "", false, err
	}
	return res.Image, true, nil
}
