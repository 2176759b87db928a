package function

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"time"

	"github.com/streamspace-dev/functions/shared/errs"
)

// loginTTL is how long a started login may take: the cookie's lifetime and
// the state's.
const loginTTL = 10 * time.Minute

// cookieName is the login cookie. __Secure- makes browsers refuse it unless
// it is Secure and set over HTTPS.
const cookieName = "__Secure-streamspace-oidc"

// pending is a started login, sealed into the cookie: what the callback
// must match (state, nonce), what it needs (the PKCE verifier) and where
// the user goes afterwards.
type pending struct {
	Provider  string `json:"p"`
	State     string `json:"s"`
	Nonce     string `json:"n"`
	Verifier  string `json:"v"`
	ReturnURL string `json:"r"`
	Expires   int64  `json:"e"`
}

// sealer encrypts and authenticates the login cookie with AES-256-GCM, so
// the browser can neither read the verifier nor change anything.
type sealer struct{ aead cipher.AEAD }

// newSealer derives the cookie key from key material with a label, so the
// same secret used elsewhere never serves as this key directly.
func newSealer(material []byte) (sealer, error) {
	mac := hmac.New(sha256.New, material)
	mac.Write([]byte("streamspace-functions auth login cookie v1"))
	block, err := aes.NewCipher(mac.Sum(nil))
	if err != nil {
		return sealer{}, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return sealer{}, err
	}
	return sealer{aead}, nil
}

// seal returns the cookie value for p; the provider id is bound as
// additional data.
func (s sealer) seal(p pending) (string, error) {
	plain, err := json.Marshal(p)
	if err != nil {
		return "", err
	}
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	out := s.aead.Seal(nonce, nonce, plain, []byte(p.Provider))
	return base64.RawURLEncoding.EncodeToString(out), nil
}

// open returns the pending login in value, started for provider and not
// expired.
func (s sealer) open(value, provider string, now time.Time) (pending, error) {
	raw, err := base64.RawURLEncoding.DecodeString(value)
	if err != nil || len(raw) < s.aead.NonceSize()+s.aead.Overhead() {
		return pending{}, errs.E(errs.Unauthenticated, "login cookie is invalid")
	}
	n := s.aead.NonceSize()
	plain, err := s.aead.Open(nil, raw[:n], raw[n:], []byte(provider))
	if err != nil {
		return pending{}, errs.E(errs.Unauthenticated, "login cookie is invalid")
	}
	var p pending
	if err := json.Unmarshal(plain, &p); err != nil || p.Provider != provider {
		return pending{}, errs.E(errs.Unauthenticated, "login cookie is invalid")
	}
	if now.Unix() >= p.Expires {
		return pending{}, errs.E(errs.Unauthenticated, "login expired; start again")
	}
	return p, nil
}

// matchState compares the state the provider sent back with the cookie's
// in constant time.
func matchState(got, want string) bool {
	return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1 && want != ""
}

// randomToken returns n random bytes, base64url: state (32 bytes, 256
// bits), nonce and PKCE verifier.
func randomToken(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// loginCookie is the cookie carrying value, limited to the provider's
// callback path, HttpOnly, Secure, SameSite=Lax (the provider's redirect
// back is a top-level GET from another site) and host-only on the public
// URL's host; maxAge -1 deletes it.
func loginCookie(callbackPath, value string, maxAge int) *http.Cookie {
	return &http.Cookie{
		Name:     cookieName,
		Value:    value,
		Path:     callbackPath,
		MaxAge:   maxAge,
		HttpOnly: true,
		Secure:   true,
		SameSite: http.SameSiteLaxMode,
	}
}
