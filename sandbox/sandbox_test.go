package sandbox

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The basic run: the command runs as uid 1000 of the experiment's user
// namespace on the container root, sees its files at /experiment, and its
// output is captured.
func TestPrivilegedShellIDAndRoot(t *testing.T) {
	tr := newSpec(t, "/bin/sh", "-c", "id; ls /; cat /experiment/hello.txt; hostname; cat /etc/resolv.conf; echo err >&2")
	res, out, errOut := tr.run(t)
	if !res.Exited || res.Code != 0 {
		t.Fatalf("result %+v, stdout %q stderr %q", res, out, errOut)
	}
	for _, want := range []string{"uid=1000(ark) gid=1000(ark) groups=1000(ark)", "experiment\n", "proc\n", "hello\n", "ark-" + tr.spec.ID} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
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
			for _, ctrl := range []string{"cpu", "memory", "pids"} {
				if _, err := os.Stat(filepath.Join(v1Root, ctrl, tr.parent, tr.spec.ID)); err == nil {
					t.Errorf("cgroup %s left after a failed launch", ctrl)
				}
			}
		})
	}
}
