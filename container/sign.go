package container

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"strings"

	"aead.dev/minisign"
)

// Keys are minisign's (ed25519): a secret key file as `minisign -G` (or
// `arkgw container keygen`) writes it, and public keys as the one-line
// base64 form ("RW...") of a minisign .pub file. Signatures are minisign
// signatures of the image's metadata file, so `minisign -Vm IMAGE.json -p
// KEY.pub` checks them too.

// GenerateKey writes a new unencrypted secret key to path (0600) and its
// public key to path+".pub"; it returns the public key line.
func GenerateKey(path string) (string, error) {
	pub, priv, err := minisign.GenerateKey(rand.Reader)
	if err != nil {
		return "", err
	}
	sk, _ := priv.MarshalText()
	pk, _ := pub.MarshalText()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return "", fmt.Errorf("write secret key: %w (an existing key is never overwritten)", err)
	}
	if _, err := f.Write(append(sk, '\n')); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	if err := os.WriteFile(path+".pub", append(pk, '\n'), 0o644); err != nil {
		return "", err
	}
	return pubLine(pk), nil
}

// pubLine is the base64 line of a public key's text form.
func pubLine(text []byte) string {
	lines := strings.Split(strings.TrimSpace(string(text)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// LoadSecretKey reads a minisign secret key; an encrypted one is decrypted
// with password.
func LoadSecretKey(path, password string) (minisign.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return minisign.PrivateKey{}, fmt.Errorf("read signing key: %w", err)
	}
	var k minisign.PrivateKey
	if minisign.IsEncrypted(data) {
		if password == "" {
			return k, fmt.Errorf("signing key %s is encrypted: give its password (ARKGW_KEY_PASSWORD)", path)
		}
		k, err = minisign.DecryptKey(password, data)
	} else {
		err = k.UnmarshalText(data)
	}
	if err != nil {
		return k, fmt.Errorf("signing key %s: %w", path, err)
	}
	return k, nil
}

// ParsePublicKey reads one trusted key: the base64 line of a minisign
// public key, or the whole .pub file text.
func ParsePublicKey(s string) (minisign.PublicKey, error) {
	var k minisign.PublicKey
	if err := k.UnmarshalText([]byte(strings.TrimSpace(s))); err != nil {
		return k, fmt.Errorf("trusted key %q: not a minisign public key (the RW... line of a .pub file): %w", s, err)
	}
	return k, nil
}

// Sign signs the metadata beside image with key, after checking that the
// metadata describes these bytes, and writes IMAGE.json.minisig.
func Sign(image string, key minisign.PrivateKey) error {
	m, data, err := ReadMeta(image)
	if err != nil {
		return err
	}
	sum, size, err := FileSHA256(image)
	if err != nil {
		return fmt.Errorf("sign %s: %w", image, err)
	}
	if sum != m.SHA256 || size != m.Size {
		return fmt.Errorf("sign %s: the image has sha256 %s (%d bytes) but %s says %s (%d bytes): rebuild it, never sign a changed image",
			image, sum, size, MetaPath(image), m.SHA256, m.Size)
	}
	trusted := fmt.Sprintf("arkgw container %s %s sha256 %s", m.Version, m.Architecture, m.SHA256)
	sig := minisign.SignWithComments(key, data, trusted, "signature from arkgw container sign")
	if err := os.WriteFile(SigPath(image), sig, 0o644); err != nil {
		return fmt.Errorf("sign %s: %w", image, err)
	}
	return nil
}

// Trust is the node's policy for images.
type Trust struct {
	Keys          []minisign.PublicKey
	AllowUnsigned bool
}

// Verified is the outcome of Verify.
type Verified struct {
	Meta   *Meta
	Signed bool   // a trusted key signed it
	KeyID  string // that key's id (hex)
}

// ErrUnsigned is returned (wrapped) for an image without a valid signature
// by a trusted key when the trust policy requires one.
var ErrUnsigned = errors.New("unsigned container image")

// Verify checks an image against its metadata and the metadata's
// signature: the signature must be by one of t.Keys (unless
// t.AllowUnsigned and there is no signature at all), and the image's
// sha256 and size must be what the signed metadata says.
func Verify(image string, t Trust) (*Verified, error) {
	m, data, err := ReadMeta(image)
	if err != nil {
		return nil, err
	}
	v := &Verified{Meta: m}
	sigData, err := os.ReadFile(SigPath(image))
	switch {
	case errors.Is(err, os.ErrNotExist):
		if !t.AllowUnsigned {
			return nil, fmt.Errorf("%w %s: no signature %s; sign it (arkgw container sign IMAGE --key K) with a key in node.toml [containers] trusted_keys, or set allow_unsigned = true", ErrUnsigned, image, SigPath(image))
		}
	case err != nil:
		return nil, fmt.Errorf("read signature of %s: %w", image, err)
	default:
		var sig minisign.Signature
		if err := sig.UnmarshalText(sigData); err != nil {
			return nil, fmt.Errorf("signature %s: %w", SigPath(image), err)
		}
		if len(t.Keys) == 0 && !t.AllowUnsigned {
			return nil, fmt.Errorf("%w %s: no trusted keys configured: add the signer's public key to node.toml [containers] trusted_keys", ErrUnsigned, image)
		}
		for _, k := range t.Keys {
			if k.ID() == sig.KeyID && minisign.Verify(k, data, sigData) {
				v.Signed, v.KeyID = true, fmt.Sprintf("%016X", k.ID())
				break
			}
		}
		if !v.Signed {
			if !t.AllowUnsigned || len(t.Keys) > 0 {
				return nil, fmt.Errorf("%w %s: signature %s (key id %016X) does not verify with any trusted key: the metadata was changed or the signer is not in node.toml [containers] trusted_keys",
					ErrUnsigned, image, SigPath(image), sig.KeyID)
			}
		}
		if v.Signed && !bytes.Contains([]byte(sig.TrustedComment), []byte(m.SHA256)) {
			return nil, fmt.Errorf("signature %s: trusted comment %q does not name sha256 %s", SigPath(image), sig.TrustedComment, m.SHA256)
		}
	}
	sum, size, err := FileSHA256(image)
	if err != nil {
		return nil, err
	}
	if sum != m.SHA256 {
		return nil, fmt.Errorf("image %s: sha256 mismatch: the file has %s, its signed metadata %s says %s (the image was modified or is incomplete; fetch it again)",
			image, sum, MetaPath(image), m.SHA256)
	}
	if size != m.Size {
		return nil, fmt.Errorf("image %s: %d bytes, its metadata says %d", image, size, m.Size)
	}
	return v, nil
}
