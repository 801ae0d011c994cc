package sandbox

import (
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
