package sandbox

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestSubmountsOf(t *testing.T) {
	mi := `22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 7:0 / /var/lib/arkgw/containers/v1 ro,relatime shared:5 - squashfs /dev/loop0 ro
31 30 8:1 /srv/usr /var/lib/arkgw/containers/v1/usr ro shared:6 - ext4 /dev/sda1 rw
32 31 8:1 /srv/local /var/lib/arkgw/containers/v1/usr/local ro - ext4 /dev/sda1 rw
33 30 0:5 / /var/lib/arkgw/containers/v1/proc rw - proc proc rw
34 30 0:6 / /var/lib/arkgw/containers/v1/sys rw - sysfs sysfs rw
35 30 0:7 / /var/lib/arkgw/containers/v1/opt/my\040dir rw - tmpfs t rw
36 30 0:8 / /var/lib/arkgw/containers/v1/tmp/x rw - tmpfs t rw
37 30 0:9 / /var/lib/arkgw/containers/v10/usr rw - tmpfs t rw
38 31 8:1 /srv/usr /var/lib/arkgw/containers/v1/usr ro shared:6 - ext4 /dev/sda1 rw
bad line
`
	for _, c := range []struct {
		name, root string
		want       []string
	}{
		{"image with binds", "/var/lib/arkgw/containers/v1", []string{"opt/my dir", "usr", "usr/local"}},
		{"trailing slash", "/var/lib/arkgw/containers/v1/", []string{"opt/my dir", "usr", "usr/local"}},
		{"no submounts", "/var/lib/arkgw/containers/v10", []string{"usr"}},
		{"unknown root", "/nonexistent", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := submountsOf([]byte(mi), c.root); !slices.Equal(got, c.want) {
				t.Fatalf("got %q, want %q", got, c.want)
			}
		})
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	for in, want := range map[string]string{`/a\040b`: "/a b", `/a\134b`: `/a\b`, `/a\09`: `/a\09`, `/plain`: "/plain", `/end\04`: `/end\04`} {
		if got := unescapeMountinfo(in); got != want {
			t.Errorf("%q: got %q, want %q", in, got, want)
		}
	}
}

// skeletonOf lists what the root lacks or has as the wrong type (a symlink
// at a file mount point, which a bind would follow).
func TestSkeletonOf(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"proc", "dev", "etc", "usr/bin"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	os.WriteFile(filepath.Join(root, "etc/hosts"), nil, 0o644)
	os.Symlink("../run/resolv.conf", filepath.Join(root, "etc/resolv.conf"))
	os.WriteFile(filepath.Join(root, "tmp"), nil, 0o644) // a file where a directory is mounted
	os.Mkdir(filepath.Join(root, "etc/hostname"), 0o755) // a directory where a file is bound
	want := []string{"tmp/", "run/", "experiment/", "etc/resolv.conf", "etc/hostname"}
	if got := skeletonOf(root, false); !slices.Equal(got, want) {
		t.Errorf("without pcap: %q, want %q", got, want)
	}
	if got := skeletonOf(root, true); !slices.Equal(got, append(want, "usr/bin/pcap")) {
		t.Errorf("with pcap: %q", got)
	}
	if got := skeletonOf(filepath.Join(root, "none"), false); len(got) != 8 {
		t.Errorf("empty root: %q", got)
	}
}
