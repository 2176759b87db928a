package authn_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/authn/localissuer"
	"github.com/streamspace-dev/functions/shared/errs"
)

const (
	issuerURL = "https://issuer.test/realms/streamspace"
	audience  = "streamspace-api"
	// secret is a StreamSpace JWT_SECRET of the length its API requires.
	secret = "0123456789abcdef0123456789abcdef-streamspace"
)

// jwksServer serves an issuer's JWKS and counts the requests it gets. It can
// fail, or hang until released, to stand in for an issuer in trouble.
type jwksServer struct {
	*httptest.Server
	hits atomic.Int64
	fail atomic.Bool

	mu      sync.Mutex
	gate    chan struct{} // non-nil: requests wait for it to close
	entered chan struct{} // a request reached the gate
	// abandoned is set when a request waiting at the gate was given up by
	// its client, which only a fetch's own timeout does.
	abandoned atomic.Bool
}

func newJWKSServer(t testing.TB, iss *localissuer.Issuer) *jwksServer {
	t.Helper()
	s := &jwksServer{entered: make(chan struct{}, 1024)}
	h := iss.JWKSHandler()
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		s.mu.Lock()
		gate := s.gate
		s.mu.Unlock()
		if gate != nil {
			s.entered <- struct{}{}
			select {
			case <-gate:
			case <-r.Context().Done():
				s.abandoned.Store(true)
				return
			}
		}
		if s.fail.Load() {
			http.Error(w, "down", http.StatusInternalServerError)
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

// hang makes requests wait until the returned release is called (the test
// ends calling it too, so that the server can close).
func (s *jwksServer) hang(t testing.TB) (release func()) {
	t.Helper()
	gate := make(chan struct{})
	s.mu.Lock()
	s.gate = gate
	s.mu.Unlock()
	var once sync.Once
	release = func() {
		once.Do(func() {
			s.mu.Lock()
			s.gate = nil
			s.mu.Unlock()
			close(gate)
		})
	}
	t.Cleanup(release)
	return release
}

// waitEntered waits until a request has reached the gate.
func (s *jwksServer) waitEntered(t testing.TB) {
	t.Helper()
	select {
	case <-s.entered:
	case <-time.After(time.Minute):
		require.FailNow(t, "no JWKS request reached the issuer within a minute")
	}
}

// fakeClock is a settable clock shared by a test and a Verifier.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

type env struct {
	iss   *localissuer.Issuer
	jwks  *jwksServer
	v     *authn.Verifier
	clock *fakeClock
}

func newIssuer(t testing.TB) *localissuer.Issuer {
	t.Helper()
	iss, err := localissuer.New(issuerURL)
	require.NoError(t, err)
	return iss
}

// setup starts a JWKS server for iss and a JWKS-only Verifier against it
// whose clock the test controls. mod, when set, adjusts the config.
func setup(t testing.TB, iss *localissuer.Issuer, mod func(*authn.Config)) *env {
	t.Helper()
	s := newJWKSServer(t, iss)
	cfg := authn.Config{
		Issuer:     issuerURL,
		Audience:   audience,
		JWKSURL:    s.URL + "/jwks.json",
		HTTPClient: s.Client(),
	}
	if mod != nil {
		mod(&cfg)
	}
	v, err := authn.NewVerifier(context.Background(), cfg)
	require.NoError(t, err)
	clock := &fakeClock{now: time.Now()}
	authn.SetClock(v, clock.Now)
	return &env{iss: iss, jwks: s, v: v, clock: clock}
}

// claims is a valid JWKS claim set; each mod edits it (drop a key to delete it).
func claims(mods ...func(map[string]any)) map[string]any {
	now := time.Now()
	c := map[string]any{
		"iss": issuerURL,
		"sub": "user-1",
		"aud": audience,
		"iat": now.Unix(),
		"nbf": now.Unix(),
		"exp": now.Add(time.Hour).Unix(),
	}
	for _, m := range mods {
		m(c)
	}
	return c
}

// ssClaims is a valid StreamSpace claim set for user, as its API writes it
// (api/internal/auth/jwt.go).
func ssClaims(user string, mods ...func(map[string]any)) map[string]any {
	now := time.Now()
	c := map[string]any{
		"user_id":  user,
		"username": user,
		"email":    user + "@streamspace.test",
		"role":     "user",
		"groups":   []string{"team-a"},
		"jti":      hex.EncodeToString([]byte(user + "-session-0123456789")),
		"iss":      "streamspace-api",
		"sub":      user,
		"iat":      now.Unix(),
		"nbf":      now.Unix(),
		"exp":      now.Add(24 * time.Hour).Unix(),
	}
	for _, m := range mods {
		m(c)
	}
	return c
}

func set(k string, v any) func(map[string]any) { return func(c map[string]any) { c[k] = v } }
func drop(k string) func(map[string]any)       { return func(c map[string]any) { delete(c, k) } }

func sign(t testing.TB, iss *localissuer.Issuer, c map[string]any, opts ...localissuer.SignOption) string {
	t.Helper()
	tok, err := iss.Sign(c, opts...)
	require.NoError(t, err)
	return tok
}

// hs signs c with key under alg (HS256 unless given) and the header
// StreamSpace's API writes, {"alg","typ"}.
func hs(t testing.TB, key []byte, c map[string]any, alg ...jwa.SignatureAlgorithm) string {
	t.Helper()
	a := jwa.HS256()
	if len(alg) > 0 {
		a = alg[0]
	}
	payload, err := json.Marshal(c)
	require.NoError(t, err)
	hdr := jws.NewHeaders()
	require.NoError(t, hdr.Set(jws.TypeKey, "JWT"))
	tok, err := jws.Sign(payload, jws.WithKey(a, key, jws.WithProtectedHeaders(hdr)))
	require.NoError(t, err)
	return string(tok)
}

// raw builds a token from a header and payload given as JSON text, signed
// with HMAC-SHA256 under key (no signature when key is nil), for payloads
// that json.Marshal cannot write, such as a key given twice.
func raw(key []byte, header, payload string) string {
	input := b64(header) + "." + b64(payload)
	if key == nil {
		return input + "."
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(input))
	return input + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// unsigned builds an alg "none" token by hand: no issuer makes one.
func unsigned(t testing.TB, header, c map[string]any) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		require.NoError(t, err)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	return enc(header) + "." + enc(c) + "."
}

// tamper swaps the payload of a signed token for c, keeping the signature.
func tamper(t testing.TB, token string, c map[string]any) string {
	t.Helper()
	parts := strings.Split(token, ".")
	b, err := json.Marshal(c)
	require.NoError(t, err)
	parts[1] = base64.RawURLEncoding.EncodeToString(b)
	return strings.Join(parts, ".")
}

func mustToken(t testing.TB, iss *localissuer.Issuer, sub string, role authn.Role) string {
	t.Helper()
	tok, err := iss.Token(sub, role, audience, time.Hour)
	require.NoError(t, err)
	return tok
}

// assertRefused checks that err is an Unauthenticated *errs.Error with
// message want that does not repeat the token.
func assertRefused(t *testing.T, err error, want, token string) {
	t.Helper()
	var e *errs.Error
	require.True(t, errors.As(err, &e), "got error %v (%T), want *errs.Error", err, err)
	assert.Equal(t, errs.Unauthenticated, e.Kind, "kind")
	assert.Equal(t, want, e.Message, "message")
	if token != "" {
		assert.NotContains(t, err.Error(), token, "the error repeats the token")
	}
}
