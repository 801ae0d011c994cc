package outputs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/BurntSushi/toml"
)

// Credentials are the store's access key pair.
type Credentials struct {
	AccessKey    string `toml:"access_key"`
	SecretKey    string `toml:"secret_key"`
	SessionToken string `toml:"session_token"`
}

// requiredOwner is the uid that must own the credentials file (tests that
// do not run as root set their own).
var requiredOwner = 0

// LoadCredentials reads the credentials file: TOML with access_key and
// secret_key (and optionally session_token). It refuses a file that is not
// a regular file owned by root, or that its group or others may read or
// write: the key lets anyone write into the platform's bucket.
func LoadCredentials(path string) (Credentials, error) {
	var c Credentials
	f, err := os.Open(path)
	if err != nil {
		return c, fmt.Errorf("outputs credentials %s: %w (create it with access_key and secret_key, owned by root, mode 0600)", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return c, fmt.Errorf("outputs credentials %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return c, fmt.Errorf("outputs credentials %s: not a regular file", path)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); !ok || int(sys.Uid) != requiredOwner {
		return c, fmt.Errorf("outputs credentials %s: not owned by root; run chown root:root %s", path, path)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return c, fmt.Errorf("outputs credentials %s: mode %04o lets group or others read it; run chmod 600 %s", path, st.Mode().Perm(), path)
	}
	data, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return c, fmt.Errorf("outputs credentials %s: %w", path, err)
	}
	md, err := toml.Decode(string(data), &c)
	if err != nil {
		return c, fmt.Errorf("outputs credentials %s: %w", path, err)
	}
	if u := md.Undecoded(); len(u) > 0 {
		return c, fmt.Errorf("outputs credentials %s: unknown key %q; the file holds access_key, secret_key and optionally session_token", path, u[0].String())
	}
	if c.AccessKey == "" || c.SecretKey == "" {
		return c, errors.New("outputs credentials " + path + ": access_key and secret_key must both be set")
	}
	return c, nil
}
