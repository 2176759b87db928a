// Package secretbox encrypts small secrets (passwords, tokens, keys) for
// storage with AES-256-GCM under a key from a mounted Kubernetes Secret.
// Every sealed value names the id of the key that sealed it, so keys can
// rotate: a new key becomes the current one for sealing while the old ones
// stay mounted to open what they sealed (docs/mail.md, "Secrets").
package secretbox

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// prefix marks the format of a sealed value: v1.<key id>.<nonce+ciphertext>.
const prefix = "v1"

// validID is what a key id may look like: a file name in the Secret.
var validID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$`)

// Keyring holds the keys and says which one seals.
type Keyring struct {
	current string
	aeads   map[string]cipher.AEAD
}

// New returns a keyring of keys (id → 32 bytes) that seals with current.
func New(current string, keys map[string][]byte) (*Keyring, error) {
	k := &Keyring{current: current, aeads: map[string]cipher.AEAD{}}
	for id, key := range keys {
		if !validID.MatchString(id) {
			return nil, fmt.Errorf("key id %q: want letters, digits, - and _", id)
		}
		if len(key) != 32 {
			return nil, fmt.Errorf("key %q: %d bytes, want 32 (AES-256)", id, len(key))
		}
		block, err := aes.NewCipher(key)
		if err != nil {
			return nil, err
		}
		if k.aeads[id], err = cipher.NewGCM(block); err != nil {
			return nil, err
		}
	}
	if _, ok := k.aeads[current]; !ok {
		return nil, fmt.Errorf("current key %q is not among the keys", current)
	}
	return k, nil
}

// Load reads every key file of dir, as a Secret volume mounts them: the
// file name is the key id, the content 32 bytes in base64 (a trailing
// newline is ignored). Kubernetes' own ..data links and dot files are
// skipped.
func Load(dir, current string) (*Keyring, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	keys := map[string][]byte{}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") || e.IsDir() {
			continue
		}
		raw, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(raw)))
		if err != nil {
			return nil, fmt.Errorf("key %q: not base64", e.Name())
		}
		keys[e.Name()] = key
	}
	return New(current, keys)
}

// Current is the id of the key that seals.
func (k *Keyring) Current() string { return k.current }

// Seal encrypts plain, bound to purpose (such as the field it is stored
// in), so a sealed value copied to another field does not open.
func (k *Keyring) Seal(purpose, plain string) (string, error) {
	a := k.aeads[k.current]
	nonce := make([]byte, a.NonceSize(), a.NonceSize()+len(plain)+a.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	out := a.Seal(nonce, nonce, []byte(plain), []byte(purpose))
	return prefix + "." + k.current + "." + base64.RawURLEncoding.EncodeToString(out), nil
}

// ErrOpen is the cause of every failure to open a value. Its message never
// includes the value.
var ErrOpen = errors.New("secretbox: cannot open sealed value")

// Open decrypts a value Seal made with the same purpose.
func (k *Keyring) Open(purpose, sealed string) (string, error) {
	v, id, body, ok := split(sealed)
	if !ok || v != prefix {
		return "", fmt.Errorf("%w: not a sealed value", ErrOpen)
	}
	a, ok := k.aeads[id]
	if !ok {
		return "", fmt.Errorf("%w: key %q is not mounted", ErrOpen, id)
	}
	raw, err := base64.RawURLEncoding.DecodeString(body)
	if err != nil || len(raw) < a.NonceSize()+a.Overhead() {
		return "", fmt.Errorf("%w: malformed", ErrOpen)
	}
	plain, err := a.Open(nil, raw[:a.NonceSize()], raw[a.NonceSize():], []byte(purpose))
	if err != nil {
		return "", fmt.Errorf("%w: key %q does not open it", ErrOpen, id)
	}
	return string(plain), nil
}

// KeyID is the id of the key that sealed a value, or "".
func KeyID(sealed string) string {
	_, id, _, _ := split(sealed)
	return id
}

// Stale reports whether sealed was made with a key other than the current
// one, so it should be sealed again.
func (k *Keyring) Stale(sealed string) bool { return KeyID(sealed) != k.current }

func split(s string) (v, id, body string, ok bool) {
	parts := strings.SplitN(s, ".", 3)
	if len(parts) != 3 {
		return "", "", "", false
	}
	return parts[0], parts[1], parts[2], true
}
