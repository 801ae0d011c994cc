package sandbox

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// pseudoFS are kernel file systems never carried from a container root's
// mount tree into a sandbox: a chroot-style root with the host's /proc or
// /sys mounted in it must not hand them to the experiment.
var pseudoFS = []string{"proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs",
	"securityfs", "bpf", "configfs", "fusectl", "pstore", "efivarfs", "binfmt_misc", "mqueue",
	"hugetlbfs", "autofs", "rpc_pipefs", "nsfs", "selinuxfs"}

// ownMountPoints are covered by the sandbox's own mounts anyway.
var ownMountPoints = []string{"proc", "dev", "tmp", "run", "experiment"}

// submounts lists the mounts below the container root root (a root made
// of several mounts, e.g. /usr a separate bind), as paths relative to it:
// the overlay that makes the sandbox's root sees only the root's top
// mount, so the init mounts each over it, parents first (listed before
// their children).
func submounts(root string) ([]string, error) {
	real, err := filepath.EvalSymlinks(root)
	if err != nil {
		return nil, fmt.Errorf("resolve container root %s: %w", root, err)
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("list mounts below container root %s: %w", root, err)
	}
	return submountsOf(mi, real), nil
}

// submountsOf is submounts on the text of /proc/self/mountinfo.
func submountsOf(mountinfo []byte, root string) []string {
	prefix := strings.TrimSuffix(root, "/") + "/"
	var rels []string
	for _, line := range bytes.Split(mountinfo, []byte{'\n'}) {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		f := strings.Fields(string(line))
		if len(f) < 7 {
			continue
		}
		sep := slices.Index(f[6:], "-")
		if sep < 0 || 6+sep+1 >= len(f) {
			continue
		}
		fstype := f[6+sep+1]
		mp := unescapeMountinfo(f[4])
		rel, ok := strings.CutPrefix(mp, prefix)
		if !ok || rel == "" || slices.Contains(pseudoFS, fstype) {
			continue
		}
		rel = filepath.Clean(rel)
		if rel == "." || strings.HasPrefix(rel, "..") || under(rel, ownMountPoints) {
			continue
		}
		rels = append(rels, rel)
	}
	// a parent sorts before its children (it is their prefix)
	slices.Sort(rels)
	return slices.Compact(rels)
}

// under: p is one of dirs or below one of them.
func under(p string, dirs []string) bool {
	for _, d := range dirs {
		if p == d || strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for a space,
// \011, \012, \134) in a mountinfo path.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }
