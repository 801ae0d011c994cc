package outputs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadCredentials(t *testing.T) {
	owner := os.Getuid()
	if owner != 0 {
		// Not root: the file can only be the test user's; check that.
		old := requiredOwner
		requiredOwner = owner
		t.Cleanup(func() { requiredOwner = old })
	}
	const good = "access_key = \"AK\"\nsecret_key = \"SK\"\n"
	for _, tc := range []struct {
		name, text string
		mode       os.FileMode
		chown      int // -1: keep
		err        string
	}{
		{name: "root 0600", text: good, mode: 0o600, chown: -1},
		{name: "root 0400 with token", text: good + "session_token = \"T\"\n", mode: 0o400, chown: -1},
		{name: "group readable", text: good, mode: 0o640, chown: -1, err: "chmod 600"},
		{name: "world readable", text: good, mode: 0o604, chown: -1, err: "chmod 600"},
		{name: "other owner", text: good, mode: 0o600, chown: 65534, err: "chown root"},
		{name: "no secret", text: "access_key = \"AK\"\n", mode: 0o600, chown: -1, err: "secret_key"},
		{name: "unknown key", text: good + "region = \"x\"\n", mode: 0o600, chown: -1, err: "unknown key"},
		{name: "not toml", text: "AK:SK\n", mode: 0o600, chown: -1, err: "outputs credentials"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "creds")
			if err := os.WriteFile(p, []byte(tc.text), tc.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, tc.mode); err != nil {
				t.Fatal(err)
			}
			if tc.chown >= 0 {
				if owner != 0 {
					t.Skip("chown needs root")
				}
				if err := os.Chown(p, tc.chown, tc.chown); err != nil {
					t.Fatal(err)
				}
			}
			c, err := LoadCredentials(p)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), p) {
					t.Fatalf("error %v, want one naming %s and %q", err, p, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.AccessKey != "AK" || c.SecretKey != "SK" {
				t.Errorf("got %+v", c)
			}
		})
	}
	if _, err := LoadCredentials(filepath.Join(t.TempDir(), "missing")); err == nil || !strings.Contains(err.Error(), "mode 0600") {
		t.Errorf("missing file: %v", err)
	}
}
