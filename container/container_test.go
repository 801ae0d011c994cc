package container

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"aead.dev/minisign"
)

func TestParseDpkgStatus(t *testing.T) {
	status := `Package: bash
Status: install ok installed
Priority: required
Architecture: amd64
Version: 5.2.15-2+b7
Description: GNU Bourne Again SHell
 Bash is an sh-compatible command language interpreter
 Version: not a field

Package: gone
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: python3-scapy
Status: install ok installed
Architecture: all
Version: 2.5.0+dfsg-2
`
	got := parseDpkgStatus([]byte(status))
	want := []Package{{"bash", "5.2.15-2+b7", "amd64"}, {"python3-scapy", "2.5.0+dfsg-2", "all"}}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("package %d: got %v, want %v", i, got[i], want[i])
		}
	}
}

// fakeImage writes an "image" and its metadata into dir.
func fakeImage(t *testing.T, dir, version, arch, content string) string {
	t.Helper()
	img := filepath.Join(dir, imageName(version, arch))
	if err := os.WriteFile(img, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	sum, size, err := FileSHA256(img)
	if err != nil {
		t.Fatal(err)
	}
	m := &Meta{Format: 1, Version: version, Architecture: arch, SHA256: sum, Size: size,
		Packages: []Package{{"bash", "5.2", "amd64"}}}
	if err := os.WriteFile(MetaPath(img), m.Encode(), 0o644); err != nil {
		t.Fatal(err)
	}
	return img
}

func TestParseMeta(t *testing.T) {
	good := `{"format":1,"version":"ark-2026.2","architecture":"x86_64","sha256":"` + strings.Repeat("ab", 32) + `","size":10,"packages":["bash 5.2 amd64"]}`
	if m, err := ParseMeta([]byte(good)); err != nil || m.Packages[0].Name != "bash" {
		t.Fatalf("good metadata: %v %+v", err, m)
	}
	for _, tc := range []struct{ name, in, want string }{
		{"format", strings.Replace(good, `"format":1`, `"format":2`, 1), "format 2"},
		{"version", strings.Replace(good, `ark-2026.2`, `../x`, 1), "not a valid name"},
		{"arch", strings.Replace(good, `x86_64`, `mips`, 1), "architecture"},
		{"sha", strings.Replace(good, `abab`, `zz`, 1), "64 hex"},
		{"size", strings.Replace(good, `"size":10`, `"size":0`, 1), "size 0"},
		{"unknown field", strings.Replace(good, `"size"`, `"x":1,"size"`, 1), "unknown field"},
		{"package", strings.Replace(good, `bash 5.2 amd64`, `bash`, 1), "name version arch"},
		{"trailing", good + "{}", "trailing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseMeta([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func FuzzParseMeta(f *testing.F) {
	f.Add([]byte(`{"format":1,"version":"a","architecture":"x86_64","sha256":"` + strings.Repeat("0", 64) + `","size":1}`))
	f.Add([]byte(`{"packages":["a b c"]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseMeta(b)
		if err == nil {
			if _, err := ParseMeta(m.Encode()); err != nil {
				t.Fatalf("re-encoded metadata does not parse: %v", err)
			}
		}
	})
}

func TestSignVerifyImport(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "key")
	pubLine, err := GenerateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ParsePublicKey(pubLine)
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other")
	otherLine, _ := GenerateKey(other)
	otherPub, _ := ParsePublicKey(otherLine)
	sk, err := LoadSecretKey(key, "")
	if err != nil {
		t.Fatal(err)
	}
	img := fakeImage(t, dir, "ark-test", "x86_64", "squashfs bytes")
	if err := Sign(img, sk); err != nil {
		t.Fatal(err)
	}
	trust := Trust{Keys: []minisign.PublicKey{pub}}
	if v, err := Verify(img, trust); err != nil || !v.Signed {
		t.Fatalf("verify signed image: %v %+v", err, v)
	}

	// A one-byte-modified copy fails naming the mismatch.
	bad := filepath.Join(t.TempDir(), filepath.Base(img))
	data, _ := os.ReadFile(img)
	data[3] ^= 1
	os.WriteFile(bad, data, 0o644)
	for _, f := range []string{MetaPath(img), SigPath(img)} {
		b, _ := os.ReadFile(f)
		os.WriteFile(filepath.Join(filepath.Dir(bad), filepath.Base(f)), b, 0o644)
	}
	_, err = Verify(bad, trust)
	if err == nil || !strings.Contains(err.Error(), "sha256 mismatch") {
		t.Fatalf("modified image: got %v, want a sha256 mismatch", err)
	}
	// Modified metadata (another sha256) breaks the signature.
	meta, _ := os.ReadFile(MetaPath(bad))
	sum, _, _ := FileSHA256(bad)
	var m0 *Meta
	m0, _ = ParseMeta(meta)
	m0.SHA256 = sum
	os.WriteFile(MetaPath(bad), m0.Encode(), 0o644)
	if _, err := Verify(bad, trust); err == nil || !strings.Contains(err.Error(), "does not verify") {
		t.Fatalf("modified metadata: got %v, want a signature failure", err)
	}

	cases := []struct {
		name  string
		trust Trust
		sig   bool
		want  string // "" = accepted
	}{
		{"signed, trusted", Trust{Keys: []minisign.PublicKey{pub}}, true, ""},
		{"signed by an untrusted key", Trust{Keys: []minisign.PublicKey{otherPub}}, true, "does not verify"},
		{"signed, no keys", Trust{}, true, "no trusted keys"},
		{"unsigned refused", Trust{Keys: []minisign.PublicKey{pub}}, false, "no signature"},
		{"unsigned allowed", Trust{AllowUnsigned: true}, false, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := t.TempDir()
			im := fakeImage(t, d, "ark-test", "x86_64", "squashfs bytes")
			if tc.sig {
				if err := Sign(im, sk); err != nil {
					t.Fatal(err)
				}
			}
			containers := filepath.Join(d, "containers")
			in, err := Import(containers, im, tc.trust)
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("got %v, want an error containing %q", err, tc.want)
				}
				if list, _ := List(containers); len(list) != 0 {
					t.Fatalf("refused image was installed: %+v", list)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			list, err := List(containers)
			if err != nil || len(list) != 1 || list[0].SHA256 != in.SHA256 || list[0].Signed != tc.sig || list[0].Architecture != "x86_64" {
				t.Fatalf("list after import: %v %+v", err, list)
			}
			// The same version with other bytes is refused.
			im2 := fakeImage(t, t.TempDir(), "ark-test", "x86_64", "other bytes")
			if _, err := Import(containers, im2, Trust{AllowUnsigned: true}); err == nil || !strings.Contains(err.Error(), "never changes") {
				t.Fatalf("reimport with other bytes: %v", err)
			}
			look := Installations(containers)
			if got := look("ark-test"); got["x86_64"] != in.SHA256 {
				t.Fatalf("installations: %v", got)
			}
			if err := Remove(containers, "ark-test", []string{"e7"}); err == nil || !strings.Contains(err.Error(), "in use by experiment(s) e7") {
				t.Fatalf("remove in use: %v", err)
			}
			if err := Remove(containers, "ark-test", nil); err != nil {
				t.Fatal(err)
			}
			if list, _ := List(containers); len(list) != 0 {
				t.Fatalf("after remove: %+v", list)
			}
		})
	}
}

func TestSignRefusesChangedImage(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "key")
	GenerateKey(key)
	sk, _ := LoadSecretKey(key, "")
	img := fakeImage(t, dir, "ark-test", "aarch64", "abc")
	os.WriteFile(img, []byte("abd"), 0o644)
	if err := Sign(img, sk); err == nil || !strings.Contains(err.Error(), "never sign a changed image") {
		t.Fatalf("got %v", err)
	}
}

func TestListDirectoryRoots(t *testing.T) {
	dir := t.TempDir()
	root := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "ark-dir"), 0o755)
	os.Symlink(root, filepath.Join(dir, "ark-link"))
	os.WriteFile(filepath.Join(dir, "ark-file"), nil, 0o644)
	list, err := List(dir)
	if err != nil || len(list) != 2 || list[0].Version != "ark-dir" || !list[0].Dir || list[1].Version != "ark-link" || !list[1].Dir {
		t.Fatalf("%v %+v", err, list)
	}
	for _, v := range []string{"ark-dir", "ark-link"} {
		if got, err := Mount(dir, v); err != nil || got != filepath.Join(dir, v) {
			t.Errorf("mount of directory root %s: %v %s", v, err, got)
		}
	}
	if _, err := Mount(dir, "ark-none"); err == nil || !strings.Contains(err.Error(), "not installed") {
		t.Errorf("unknown version: %v", err)
	}
}

func TestCheckELF(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := checkELF(self, HostArch()); err != nil {
		t.Fatalf("this binary for its own architecture: %v", err)
	}
	other := "aarch64"
	if HostArch() == "aarch64" {
		other = "x86_64"
	}
	if err := checkELF(self, other); err == nil || !strings.Contains(err.Error(), "GOARCH=") {
		t.Fatalf("foreign architecture: %v", err)
	}
	txt := filepath.Join(t.TempDir(), "pcap")
	os.WriteFile(txt, []byte("#!/bin/sh\n"), 0o755)
	if err := checkELF(txt, HostArch()); err == nil || !strings.Contains(err.Error(), "not an ELF") {
		t.Fatalf("script: %v", err)
	}
}

func TestCacheKey(t *testing.T) {
	dir := t.TempDir()
	pcap := filepath.Join(dir, "pcap")
	os.WriteFile(pcap, []byte("pcap v1"), 0o755)
	tool := filepath.Join(dir, "tool")
	os.WriteFile(tool, []byte("tool v1"), 0o755)
	base := BuildOptions{Version: "ark-1", PcapBinary: pcap}
	key := func(o BuildOptions) string {
		k, err := CacheKey(o)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	k0 := key(base)
	if key(base) != k0 {
		t.Fatal("same inputs, another key")
	}
	withOut := base
	withOut.OutDir = "/elsewhere"
	if key(withOut) != k0 {
		t.Error("the output directory changed the key")
	}
	for name, o := range map[string]BuildOptions{
		"version":  {Version: "ark-2", PcapBinary: pcap},
		"packages": {Version: "ark-1", PcapBinary: pcap, Packages: []string{"bash"}},
		"mirror":   {Version: "ark-1", PcapBinary: pcap, Mirrors: []string{"http://snapshot.debian.org/archive/debian/20260101T000000Z/"}},
		"epoch":    {Version: "ark-1", PcapBinary: pcap, SourceDateEpoch: 1},
		"extra":    {Version: "ark-1", PcapBinary: pcap, Extra: map[string]string{tool: "/usr/local/bin/tool"}},
	} {
		if key(o) == k0 {
			t.Errorf("%s did not change the key", name)
		}
	}
	ex := BuildOptions{Version: "ark-1", PcapBinary: pcap, Extra: map[string]string{tool: "/usr/local/bin/tool"}}
	k1 := key(ex)
	os.WriteFile(tool, []byte("tool v2"), 0o755)
	if key(ex) == k1 {
		t.Error("the extra file's content did not change the key")
	}
	os.WriteFile(pcap, []byte("pcap v2"), 0o755)
	if key(base) == k0 {
		t.Error("the pcap client's content did not change the key")
	}
}
