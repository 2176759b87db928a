// Package localissuer is a small but real token issuer: it holds an RSA key,
// publishes the public half as a JWKS and signs tokens that authn.Verifier
// accepts. Tests use it, and so does the local `make run` mode, where no
// identity provider runs.
package localissuer

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"

	"github.com/streamspace-dev/functions/shared/authn"
)

const keyBits = 2048

// Issuer signs RS256 tokens for one issuer URL. It is safe for concurrent use.
type Issuer struct {
	url string

	mu   sync.RWMutex
	cur  signingKey
	jwks []byte // the current key and, after Rotate, the one it replaced
}

type signingKey struct {
	kid  string
	priv *rsa.PrivateKey
}

// New returns an issuer whose tokens carry issuerURL as "iss", with a fresh
// RSA-2048 key whose kid is its RFC 7638 thumbprint.
func New(issuerURL string) (*Issuer, error) {
	if issuerURL == "" {
		return nil, errors.New("localissuer: issuer URL is required")
	}
	key, err := newSigningKey()
	if err != nil {
		return nil, err
	}
	jwks, err := buildJWKS(key)
	if err != nil {
		return nil, err
	}
	return &Issuer{url: issuerURL, cur: key, jwks: jwks}, nil
}

// URL is the issuer's "iss" value.
func (i *Issuer) URL() string { return i.url }

// KeyID is the kid of the key that signs new tokens.
func (i *Issuer) KeyID() string {
	i.mu.RLock()
	defer i.mu.RUnlock()
	return i.cur.kid
}

// PublicKey is the public half of the current signing key.
func (i *Issuer) PublicKey() *rsa.PublicKey {
	i.mu.RLock()
	defer i.mu.RUnlock()
	return &i.cur.priv.PublicKey
}

// Rotate makes a new key the signing key. The JWKS then lists the new key and
// the one it replaced, as real issuers do during a rollover, so tokens signed
// before the rotation verify until they expire; the key before that is
// dropped.
func (i *Issuer) Rotate() error {
	key, err := newSigningKey()
	if err != nil {
		return err
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	old := i.cur
	jwks, err := buildJWKS(key, old)
	if err != nil {
		return err
	}
	i.cur, i.jwks = key, jwks
	return nil
}

// JWKSHandler serves the public JWKS as application/json.
func (i *Issuer) JWKSHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		i.mu.RLock()
		body := i.jwks
		i.mu.RUnlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	})
}

// Token returns a signed access token for subject with the given role in the
// "role" claim (omitted when role is empty), audience and lifetime.
func (i *Issuer) Token(subject string, role authn.Role, audience string, ttl time.Duration) (string, error) {
	if ttl <= 0 {
		return "", fmt.Errorf("localissuer: token lifetime %v is not positive", ttl)
	}
	jti := make([]byte, 16)
	if _, err := rand.Read(jti); err != nil {
		return "", fmt.Errorf("localissuer: token id: %w", err)
	}
	now := time.Now()
	claims := map[string]any{
		"iss": i.url,
		"sub": subject,
		"aud": audience,
		"iat": now.Unix(),
		"nbf": now.Unix(),
		"exp": now.Add(ttl).Unix(),
		"jti": base64.RawURLEncoding.EncodeToString(jti),
	}
	if role != "" {
		claims["role"] = string(role)
	}
	return i.Sign(claims)
}

// SignOption changes how Sign builds a token.
type SignOption func(*signOptions)

type signOptions struct {
	alg     jwa.SignatureAlgorithm
	key     any
	kid     *string
	headers map[string]any
}

// WithAlgorithm sets the header "alg" and the algorithm used to sign. For
// HMAC algorithms pass the secret with WithKey.
func WithAlgorithm(alg jwa.SignatureAlgorithm) SignOption {
	return func(o *signOptions) { o.alg = alg }
}

// WithKey signs with key (a crypto private key, or []byte for HMAC) instead
// of the issuer's key; the header kid stays the issuer's unless WithKeyID
// says otherwise.
func WithKey(key any) SignOption {
	return func(o *signOptions) { o.key = key }
}

// WithKeyID sets the header "kid"; the empty string leaves it out.
func WithKeyID(kid string) SignOption {
	return func(o *signOptions) { o.kid = &kid }
}

// WithHeader adds a protected header, such as "crit".
func WithHeader(name string, value any) SignOption {
	return func(o *signOptions) {
		if o.headers == nil {
			o.headers = map[string]any{}
		}
		o.headers[name] = value
	}
}

// Sign signs claims exactly as given, by default with the current key as
// RS256 and its kid. The options let tests build tokens a verifier must
// refuse; the issuer never emits an unsigned token.
func (i *Issuer) Sign(claims map[string]any, opts ...SignOption) (string, error) {
	i.mu.RLock()
	cur := i.cur
	i.mu.RUnlock()

	o := signOptions{alg: jwa.RS256(), key: cur.priv}
	for _, opt := range opts {
		opt(&o)
	}
	kid := cur.kid
	if o.kid != nil {
		kid = *o.kid
	}

	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("localissuer: encode claims: %w", err)
	}
	hdr := jws.NewHeaders()
	if err := hdr.Set(jws.TypeKey, "JWT"); err != nil {
		return "", fmt.Errorf("localissuer: set typ: %w", err)
	}
	if kid != "" {
		if err := hdr.Set(jws.KeyIDKey, kid); err != nil {
			return "", fmt.Errorf("localissuer: set kid: %w", err)
		}
	}
	for name, value := range o.headers {
		if err := hdr.Set(name, value); err != nil {
			return "", fmt.Errorf("localissuer: set header %s: %w", name, err)
		}
	}
	signed, err := jws.Sign(payload, jws.WithKey(o.alg, o.key, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		return "", fmt.Errorf("localissuer: sign: %w", err)
	}
	return string(signed), nil
}

func newSigningKey() (signingKey, error) {
	priv, err := rsa.GenerateKey(rand.Reader, keyBits)
	if err != nil {
		return signingKey{}, fmt.Errorf("localissuer: generate key: %w", err)
	}
	pub, err := jwk.Import(&priv.PublicKey)
	if err != nil {
		return signingKey{}, fmt.Errorf("localissuer: import key: %w", err)
	}
	tp, err := pub.Thumbprint(crypto.SHA256)
	if err != nil {
		return signingKey{}, fmt.Errorf("localissuer: thumbprint: %w", err)
	}
	return signingKey{kid: base64.RawURLEncoding.EncodeToString(tp), priv: priv}, nil
}

// buildJWKS encodes the public halves of keys as a JWK set.
func buildJWKS(keys ...signingKey) ([]byte, error) {
	set := jwk.NewSet()
	for _, k := range keys {
		pub, err := jwk.Import(&k.priv.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("localissuer: import key: %w", err)
		}
		for name, value := range map[string]any{
			jwk.KeyIDKey:     k.kid,
			jwk.AlgorithmKey: jwa.RS256(),
			jwk.KeyUsageKey:  jwk.ForSignature,
		} {
			if err := pub.Set(name, value); err != nil {
				return nil, fmt.Errorf("localissuer: set %s: %w", name, err)
			}
		}
		if err := set.AddKey(pub); err != nil {
			return nil, fmt.Errorf("localissuer: add key: %w", err)
		}
	}
	body, err := json.Marshal(set)
	if err != nil {
		return nil, fmt.Errorf("localissuer: encode JWKS: %w", err)
	}
	return body, nil
}
