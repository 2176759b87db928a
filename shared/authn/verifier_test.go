package authn_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/authn/localissuer"
	"github.com/streamspace-dev/functions/shared/errs"
)

const (
	issuerURL = "https://issuer.test/realms/streamspace"
	audience  = "streamspace-api"
)

// jwksServer serves an issuer's JWKS and counts the requests it gets.
type jwksServer struct {
	*httptest.Server
	hits  atomic.Int64
	fail  atomic.Bool
	delay time.Duration
}

func newJWKSServer(t testing.TB, iss *localissuer.Issuer, delay time.Duration) *jwksServer {
	t.Helper()
	s := &jwksServer{delay: delay}
	h := iss.JWKSHandler()
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		time.Sleep(s.delay)
		if s.fail.Load() {
			http.Error(w, "down", http.StatusInternalServerError)
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(s.Close)
	return s
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
	if err != nil {
		t.Fatalf("localissuer.New: %v", err)
	}
	return iss
}

// setup starts a JWKS server for iss and a Verifier against it whose clock
// the test controls. mod, when set, adjusts the config.
func setup(t testing.TB, iss *localissuer.Issuer, delay time.Duration, mod func(*authn.Config)) *env {
	t.Helper()
	s := newJWKSServer(t, iss, delay)
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
	if err != nil {
		t.Fatalf("NewVerifier: %v", err)
	}
	clock := &fakeClock{now: time.Now()}
	authn.SetClock(v, clock.Now)
	return &env{iss: iss, jwks: s, v: v, clock: clock}
}

// claims is a valid claim set; each mod edits it (delete a key to drop it).
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

func set(k string, v any) func(map[string]any) { return func(c map[string]any) { c[k] = v } }
func drop(k string) func(map[string]any)       { return func(c map[string]any) { delete(c, k) } }

func sign(t testing.TB, iss *localissuer.Issuer, c map[string]any, opts ...localissuer.SignOption) string {
	t.Helper()
	tok, err := iss.Sign(c, opts...)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return tok
}

// unsigned builds an alg "none" token by hand: the issuer never makes one.
func unsigned(t testing.TB, header, c map[string]any) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	return enc(header) + "." + enc(c) + "."
}

// wantUnauthenticated fails unless err is an Unauthenticated *errs.Error
// with message want that does not repeat the token.
func wantUnauthenticated(t *testing.T, err error, want, token string) {
	t.Helper()
	var e *errs.Error
	if !errors.As(err, &e) {
		t.Fatalf("got error %v (%T), want *errs.Error", err, err)
	}
	if e.Kind != errs.Unauthenticated {
		t.Errorf("got kind %v, want %v", e.Kind, errs.Unauthenticated)
	}
	if e.Message != want {
		t.Errorf("got message %q, want %q", e.Message, want)
	}
	if token != "" && strings.Contains(err.Error(), token) {
		t.Errorf("error %q contains the token", err)
	}
}

func TestVerify(t *testing.T) {
	iss := newIssuer(t)
	pub := iss.PublicKey()
	pkix, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	pkcs1 := x509.MarshalPKCS1PublicKey(pub)
	pkixPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pkix})
	pkcs1PEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: pkcs1})
	otherRSA, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	otherEC, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	e := setup(t, iss, 0, nil)
	kid := iss.KeyID()
	now := time.Now()

	tests := []struct {
		name     string
		token    string
		wantSub  string
		wantRole authn.Role
		wantErr  string
	}{
		{name: "valid, no role claim", token: sign(t, iss, claims()), wantSub: "user-1", wantRole: authn.User},
		{name: "valid admin", token: sign(t, iss, claims(set("role", "admin"))), wantSub: "user-1", wantRole: authn.Admin},
		{name: "valid operator", token: sign(t, iss, claims(set("role", "operator"))), wantSub: "user-1", wantRole: authn.Operator},
		{name: "valid user", token: sign(t, iss, claims(set("role", "user"))), wantSub: "user-1", wantRole: authn.User},
		{name: "null role is no role", token: sign(t, iss, claims(set("role", nil))), wantSub: "user-1", wantRole: authn.User},
		{name: "audience list containing ours", token: sign(t, iss, claims(set("aud", []string{"other", audience}))), wantSub: "user-1", wantRole: authn.User},
		{name: "issued by Token", token: mustToken(t, iss, "u-42", authn.Operator), wantSub: "u-42", wantRole: authn.Operator},
		{name: "expired within leeway", token: sign(t, iss, claims(set("exp", now.Add(-10*time.Second).Unix()))), wantSub: "user-1", wantRole: authn.User},
		{name: "nbf within leeway", token: sign(t, iss, claims(set("nbf", now.Add(10*time.Second).Unix()))), wantSub: "user-1", wantRole: authn.User},

		{name: "alg none", token: unsigned(t, map[string]any{"alg": "none", "typ": "JWT", "kid": kid}, claims(set("role", "admin"))), wantErr: "algorithm not allowed"},
		{name: "alg none without kid", token: unsigned(t, map[string]any{"alg": "none"}, claims()), wantErr: "algorithm not allowed"},
		{name: "HS256 with public key PEM (PKIX)", token: sign(t, iss, claims(), localissuer.WithAlgorithm(jwa.HS256()), localissuer.WithKey(pkixPEM)), wantErr: "algorithm not allowed"},
		{name: "HS256 with public key PEM (PKCS1)", token: sign(t, iss, claims(), localissuer.WithAlgorithm(jwa.HS256()), localissuer.WithKey(pkcs1PEM)), wantErr: "algorithm not allowed"},
		{name: "HS256 with public key DER (PKIX)", token: sign(t, iss, claims(), localissuer.WithAlgorithm(jwa.HS256()), localissuer.WithKey(pkix)), wantErr: "algorithm not allowed"},
		{name: "HS256 with public key DER (PKCS1)", token: sign(t, iss, claims(), localissuer.WithAlgorithm(jwa.HS256()), localissuer.WithKey(pkcs1)), wantErr: "algorithm not allowed"},
		{name: "HS512 with public key PEM", token: sign(t, iss, claims(), localissuer.WithAlgorithm(jwa.HS512()), localissuer.WithKey(pkixPEM)), wantErr: "algorithm not allowed"},
		{name: "PS256 with an RS256 key", token: sign(t, iss, claims(), localissuer.WithAlgorithm(jwa.PS256())), wantErr: "signing key does not match algorithm"},
		{name: "RS512 with an RS256 key", token: sign(t, iss, claims(), localissuer.WithAlgorithm(jwa.RS512())), wantErr: "signing key does not match algorithm"},
		{name: "ES256 under the RSA kid", token: sign(t, iss, claims(), localissuer.WithAlgorithm(jwa.ES256()), localissuer.WithKey(otherEC)), wantErr: "signing key does not match algorithm"},
		{name: "no exp", token: sign(t, iss, claims(drop("exp"))), wantErr: "token has no exp claim"},
		{name: "expired", token: sign(t, iss, claims(set("iat", now.Add(-2*time.Hour).Unix()), set("nbf", now.Add(-2*time.Hour).Unix()), set("exp", now.Add(-time.Minute).Unix()))), wantErr: "token expired"},
		{name: "nbf beyond leeway", token: sign(t, iss, claims(set("nbf", now.Add(2*time.Minute).Unix()))), wantErr: "token not yet valid"},
		{name: "iat in the future", token: sign(t, iss, claims(set("iat", now.Add(2*time.Minute).Unix()))), wantErr: "token issued in the future"},
		{name: "wrong aud", token: sign(t, iss, claims(set("aud", "another-api"))), wantErr: "token audience not accepted"},
		{name: "no aud", token: sign(t, iss, claims(drop("aud"))), wantErr: "token audience not accepted"},
		{name: "wrong iss", token: sign(t, iss, claims(set("iss", "https://evil.test"))), wantErr: "token issuer not accepted"},
		{name: "no iss", token: sign(t, iss, claims(drop("iss"))), wantErr: "token issuer not accepted"},
		{name: "no sub", token: sign(t, iss, claims(drop("sub"))), wantErr: "token has no subject"},
		{name: "empty sub", token: sign(t, iss, claims(set("sub", ""))), wantErr: "token has no subject"},
		{name: "unknown kid", token: sign(t, iss, claims(), localissuer.WithKeyID("no-such-key")), wantErr: "unknown signing key"},
		{name: "no kid", token: sign(t, iss, claims(), localissuer.WithKeyID("")), wantErr: "token has no key id"},
		{name: "known kid, other key", token: sign(t, iss, claims(set("role", "admin")), localissuer.WithKey(otherRSA)), wantErr: "invalid signature"},
		{name: "tampered payload", token: tamper(t, sign(t, iss, claims()), claims(set("role", "admin"))), wantErr: "invalid signature"},
		{name: "critical header", token: sign(t, iss, claims(), localissuer.WithHeader("crit", []string{"exp"}), localissuer.WithHeader("exp", 1)), wantErr: "unsupported critical header"},
		{name: "unrecognised role", token: sign(t, iss, claims(set("role", "superuser"))), wantErr: "unrecognised role"},
		{name: "role with other case", token: sign(t, iss, claims(set("role", "Admin"))), wantErr: "unrecognised role"},
		{name: "role list", token: sign(t, iss, claims(set("role", []string{"admin"}))), wantErr: "unrecognised role"},
		{name: "role number", token: sign(t, iss, claims(set("role", 1))), wantErr: "unrecognised role"},
		{name: "empty role", token: sign(t, iss, claims(set("role", ""))), wantErr: "unrecognised role"},
		{name: "garbage", token: "not-a-token", wantErr: "malformed token"},
		{name: "three garbage parts", token: "aaa.bbb.ccc", wantErr: "malformed token"},
		{name: "empty", token: "", wantErr: "missing bearer token"},
		{name: "too large", token: strings.Repeat("a", 17<<10), wantErr: "token too large"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, err := e.v.Verify(context.Background(), tc.token)
			if tc.wantErr != "" {
				wantUnauthenticated(t, err, tc.wantErr, tc.token)
				if id != (authn.Identity{}) {
					t.Errorf("got identity %+v on failure, want zero", id)
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v, want none", err)
			}
			want := authn.Identity{Subject: tc.wantSub, Role: tc.wantRole}
			if id != want {
				t.Errorf("got %+v, want %+v", id, want)
			}
		})
	}
	if got := e.jwks.hits.Load(); got > 2 {
		t.Errorf("got %d JWKS fetches for the whole table, want at most 2 (first use, one unknown-kid refetch)", got)
	}
}

func mustToken(t testing.TB, iss *localissuer.Issuer, sub string, role authn.Role) string {
	t.Helper()
	tok, err := iss.Token(sub, role, audience, time.Hour)
	if err != nil {
		t.Fatalf("Token: %v", err)
	}
	return tok
}

// tamper swaps the payload of a signed token for c, keeping the signature.
func tamper(t testing.TB, token string, c map[string]any) string {
	t.Helper()
	parts := strings.Split(token, ".")
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	parts[1] = base64.RawURLEncoding.EncodeToString(b)
	return strings.Join(parts, ".")
}

func TestVerifyRoleClaimPath(t *testing.T) {
	iss := newIssuer(t)
	tests := []struct {
		name      string
		roleClaim string
		claims    map[string]any
		wantRole  authn.Role
		wantErr   string
	}{
		{name: "nested admin", roleClaim: "realm_access.role", claims: claims(set("realm_access", map[string]any{"role": "admin"})), wantRole: authn.Admin},
		{name: "deeper nesting", roleClaim: "a.b.c", claims: claims(set("a", map[string]any{"b": map[string]any{"c": "operator"}})), wantRole: authn.Operator},
		{name: "nested object missing", roleClaim: "realm_access.role", claims: claims(), wantRole: authn.User},
		{name: "nested key missing", roleClaim: "realm_access.role", claims: claims(set("realm_access", map[string]any{"roles": []string{"x"}})), wantRole: authn.User},
		{name: "nested null parent", roleClaim: "realm_access.role", claims: claims(set("realm_access", nil)), wantRole: authn.User},
		{name: "top-level role ignored", roleClaim: "realm_access.role", claims: claims(set("role", "admin")), wantRole: authn.User},
		{name: "nested unrecognised", roleClaim: "realm_access.role", claims: claims(set("realm_access", map[string]any{"role": "root"})), wantErr: "unrecognised role"},
		{name: "groups list", roleClaim: "realm_access.roles", claims: claims(set("realm_access", map[string]any{"roles": []string{"admin", "user"}})), wantErr: "unrecognised role"},
		{name: "parent not an object", roleClaim: "realm_access.role", claims: claims(set("realm_access", "admin")), wantErr: "unrecognised role"},
		{name: "claim named like a URL", roleClaim: "https://streamspace.dev/role", claims: claims(set("https://streamspace.dev/role", "operator")), wantRole: authn.Operator},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := setup(t, iss, 0, func(c *authn.Config) { c.RoleClaim = tc.roleClaim })
			token := sign(t, iss, tc.claims)
			id, err := e.v.Verify(context.Background(), token)
			if tc.wantErr != "" {
				wantUnauthenticated(t, err, tc.wantErr, token)
				return
			}
			if err != nil {
				t.Fatalf("got error %v, want none", err)
			}
			if id.Role != tc.wantRole {
				t.Errorf("got role %v, want %v", id.Role, tc.wantRole)
			}
		})
	}
}

func TestAuthenticate(t *testing.T) {
	iss := newIssuer(t)
	e := setup(t, iss, 0, nil)
	valid := mustToken(t, iss, "user-7", authn.Admin)
	tests := []struct {
		name    string
		headers []string
		wantErr string
	}{
		{name: "bearer", headers: []string{"Bearer " + valid}},
		{name: "scheme is case-insensitive", headers: []string{"bearer " + valid}},
		{name: "missing header", wantErr: "missing bearer token"},
		{name: "basic", headers: []string{"Basic dXNlcjpwYXNz"}, wantErr: "authorization scheme must be Bearer"},
		{name: "bare token", headers: []string{valid}, wantErr: "authorization scheme must be Bearer"},
		{name: "bearer without token", headers: []string{"Bearer"}, wantErr: "authorization scheme must be Bearer"},
		{name: "bearer with blank token", headers: []string{"Bearer   "}, wantErr: "authorization scheme must be Bearer"},
		{name: "bearer with garbage", headers: []string{"Bearer garbage"}, wantErr: "malformed token"},
		{name: "bearer with two tokens", headers: []string{"Bearer " + valid + " " + valid}, wantErr: "malformed bearer token"},
		{name: "two headers", headers: []string{"Bearer " + valid, "Bearer " + valid}, wantErr: "more than one Authorization header"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/api/v1/sessions", nil)
			for _, h := range tc.headers {
				r.Header.Add("Authorization", h)
			}
			id, err := e.v.Authenticate(r)
			if tc.wantErr != "" {
				wantUnauthenticated(t, err, tc.wantErr, valid)
				return
			}
			if err != nil {
				t.Fatalf("got error %v, want none", err)
			}
			want := authn.Identity{Subject: "user-7", Role: authn.Admin}
			if id != want {
				t.Errorf("got %+v, want %+v", id, want)
			}
		})
	}
}

func TestAlgorithmAllowList(t *testing.T) {
	iss := newIssuer(t)
	e := setup(t, iss, 0, func(c *authn.Config) { c.Algorithms = []jwa.SignatureAlgorithm{jwa.ES256()} })
	token := mustToken(t, iss, "user-1", "")
	_, err := e.v.Verify(context.Background(), token)
	wantUnauthenticated(t, err, "algorithm not allowed", token)
	if got := e.jwks.hits.Load(); got != 0 {
		t.Errorf("got %d JWKS fetches, want 0: a refused algorithm needs no key", got)
	}
}

func TestNewVerifierConfig(t *testing.T) {
	valid := authn.Config{Issuer: issuerURL, Audience: audience, JWKSURL: "https://issuer.test/jwks"}
	tests := []struct {
		name    string
		mod     func(*authn.Config)
		wantErr string // substring; empty means success
	}{
		{name: "valid", mod: func(*authn.Config) {}},
		{name: "no issuer", mod: func(c *authn.Config) { c.Issuer = "" }, wantErr: "AUTH_ISSUER"},
		{name: "no audience", mod: func(c *authn.Config) { c.Audience = "" }, wantErr: "AUTH_AUDIENCE"},
		{name: "no JWKS URL", mod: func(c *authn.Config) { c.JWKSURL = "" }, wantErr: "AUTH_JWKS_URL"},
		{name: "relative JWKS URL", mod: func(c *authn.Config) { c.JWKSURL = "/jwks" }, wantErr: "AUTH_JWKS_URL"},
		{name: "file JWKS URL", mod: func(c *authn.Config) { c.JWKSURL = "file:///etc/jwks" }, wantErr: "AUTH_JWKS_URL"},
		{name: "empty role path segment", mod: func(c *authn.Config) { c.RoleClaim = "realm_access..role" }, wantErr: "AUTH_ROLE_CLAIM"},
		{name: "HS256 allowed", mod: func(c *authn.Config) { c.Algorithms = []jwa.SignatureAlgorithm{jwa.RS256(), jwa.HS256()} }, wantErr: "HS256"},
		{name: "none allowed", mod: func(c *authn.Config) { c.Algorithms = []jwa.SignatureAlgorithm{jwa.NoSignature()} }, wantErr: "none"},
		{name: "negative leeway", mod: func(c *authn.Config) { c.Leeway = -time.Second }, wantErr: "leeway"},
		{name: "negative refetch interval", mod: func(c *authn.Config) { c.MinRefetchInterval = -time.Second }, wantErr: "interval"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := valid
			tc.mod(&cfg)
			v, err := authn.NewVerifier(context.Background(), cfg)
			if tc.wantErr == "" {
				if err != nil || v == nil {
					t.Fatalf("got %v, want a verifier", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("got error %v, want one naming %q", err, tc.wantErr)
			}
		})
	}
}

func TestRotation(t *testing.T) {
	iss := newIssuer(t)
	e := setup(t, iss, 0, func(c *authn.Config) { c.MinRefetchInterval = time.Minute })
	ctx := context.Background()

	before := mustToken(t, iss, "user-1", authn.User)
	if _, err := e.v.Verify(ctx, before); err != nil {
		t.Fatalf("before rotation: got %v, want none", err)
	}
	if got := e.jwks.hits.Load(); got != 1 {
		t.Fatalf("got %d JWKS fetches after first use, want 1", got)
	}
	if _, err := e.v.Verify(ctx, before); err != nil {
		t.Fatalf("cached: got %v, want none", err)
	}
	if got := e.jwks.hits.Load(); got != 1 {
		t.Fatalf("got %d JWKS fetches for a cached kid, want 1", got)
	}

	if err := iss.Rotate(); err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	after := mustToken(t, iss, "user-2", authn.Admin)

	// Within the interval since the last fetch the new kid is not looked for.
	_, err := e.v.Verify(ctx, after)
	wantUnauthenticated(t, err, "unknown signing key", after)
	if got := e.jwks.hits.Load(); got != 1 {
		t.Fatalf("got %d JWKS fetches within the refetch interval, want 1", got)
	}

	e.clock.Advance(time.Minute + time.Second)
	id, err := e.v.Verify(ctx, after)
	if err != nil {
		t.Fatalf("after rotation: got %v, want none", err)
	}
	if want := (authn.Identity{Subject: "user-2", Role: authn.Admin}); id != want {
		t.Errorf("got %+v, want %+v", id, want)
	}
	if got := e.jwks.hits.Load(); got != 2 {
		t.Errorf("got %d JWKS fetches after rotation, want 2 (exactly one refetch)", got)
	}
	// The issuer still publishes the replaced key, so older tokens verify.
	if _, err := e.v.Verify(ctx, before); err != nil {
		t.Errorf("old token after rotation: got %v, want none", err)
	}
	if got := e.jwks.hits.Load(); got != 2 {
		t.Errorf("got %d JWKS fetches, want still 2", got)
	}
}

func TestUnknownKidFloodIsRateLimited(t *testing.T) {
	iss := newIssuer(t)
	// The delay keeps the fetch in flight while the flood arrives.
	e := setup(t, iss, 50*time.Millisecond, func(c *authn.Config) { c.MinRefetchInterval = time.Minute })
	ctx := context.Background()
	if _, err := e.v.Verify(ctx, mustToken(t, iss, "user-1", "")); err != nil {
		t.Fatalf("warm-up: got %v, want none", err)
	}
	e.clock.Advance(2 * time.Minute)

	flood := func(n int) {
		var wg sync.WaitGroup
		for i := range n {
			token := sign(t, iss, claims(), localissuer.WithKeyID(fmt.Sprintf("made-up-%d", i)))
			wg.Go(func() {
				_, err := e.v.Verify(ctx, token)
				var ee *errs.Error
				if !errors.As(err, &ee) || ee.Kind != errs.Unauthenticated || ee.Message != "unknown signing key" {
					t.Errorf("got %v, want unauthenticated: unknown signing key", err)
				}
			})
		}
		wg.Wait()
	}
	flood(50)
	if got := e.jwks.hits.Load(); got != 2 {
		t.Errorf("got %d JWKS fetches after 50 unknown kids, want 2 (warm-up and one refetch)", got)
	}
	flood(50)
	if got := e.jwks.hits.Load(); got != 2 {
		t.Errorf("got %d JWKS fetches after 100 unknown kids, want still 2", got)
	}
}

func TestConcurrentMissesShareOneFetch(t *testing.T) {
	iss := newIssuer(t)
	e := setup(t, iss, 50*time.Millisecond, func(c *authn.Config) { c.MinRefetchInterval = time.Minute })
	ctx := context.Background()
	if _, err := e.v.Verify(ctx, mustToken(t, iss, "user-1", "")); err != nil {
		t.Fatalf("warm-up: got %v, want none", err)
	}
	if err := iss.Rotate(); err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	e.clock.Advance(2 * time.Minute)
	token := mustToken(t, iss, "user-2", authn.Operator)

	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if _, err := e.v.Verify(ctx, token); err != nil {
				t.Errorf("got %v, want none", err)
			}
		})
	}
	wg.Wait()
	if got := e.jwks.hits.Load(); got != 2 {
		t.Errorf("got %d JWKS fetches, want 2 (warm-up and one shared refetch)", got)
	}
}

func TestStaleKeySetIsRefetched(t *testing.T) {
	iss := newIssuer(t)
	e := setup(t, iss, 0, func(c *authn.Config) { c.MinRefetchInterval = time.Minute })
	ctx := context.Background()
	first := mustToken(t, iss, "user-1", "")
	if _, err := e.v.Verify(ctx, first); err != nil {
		t.Fatalf("first: got %v, want none", err)
	}
	// Two rotations drop the first key from the JWKS.
	for range 2 {
		if err := iss.Rotate(); err != nil {
			t.Fatalf("Rotate: %v", err)
		}
	}
	e.clock.Advance(2 * time.Minute)
	if _, err := e.v.Verify(ctx, first); err != nil {
		t.Fatalf("cached key before the set is stale: got %v, want none", err)
	}
	if got := e.jwks.hits.Load(); got != 1 {
		t.Fatalf("got %d JWKS fetches, want 1", got)
	}

	// Past maxKeyAge the set is refetched on use even though the kid is
	// known, and the withdrawn key stops verifying. The token's hour-long
	// lifetime outlives the clock jump.
	e.clock.Advance(authn.MaxKeyAge)
	_, err := e.v.Verify(ctx, first)
	wantUnauthenticated(t, err, "unknown signing key", first)
	if got := e.jwks.hits.Load(); got != 2 {
		t.Errorf("got %d JWKS fetches once the set is stale, want 2", got)
	}
}

func TestJWKSUnavailable(t *testing.T) {
	iss := newIssuer(t)
	e := setup(t, iss, 0, func(c *authn.Config) { c.MinRefetchInterval = time.Minute })
	ctx := context.Background()
	token := mustToken(t, iss, "user-1", "")

	e.jwks.fail.Store(true)
	_, err := e.v.Verify(ctx, token)
	if got := errs.KindOf(err); got != errs.Unavailable {
		t.Fatalf("got kind %v (%v), want %v", got, err, errs.Unavailable)
	}
	if strings.Contains(err.Error(), token) {
		t.Errorf("error %q contains the token", err)
	}
	// Failed fetches count against the rate limit too.
	if _, err := e.v.Verify(ctx, token); errs.KindOf(err) != errs.Unavailable {
		t.Fatalf("got %v, want unavailable", err)
	}
	if got := e.jwks.hits.Load(); got != 1 {
		t.Errorf("got %d JWKS fetches while down, want 1", got)
	}

	e.jwks.fail.Store(false)
	e.clock.Advance(time.Minute + time.Second)
	if _, err := e.v.Verify(ctx, token); err != nil {
		t.Fatalf("after recovery: got %v, want none", err)
	}

	// Once a set is cached, an outage at refresh time keeps it in use.
	e.jwks.fail.Store(true)
	e.clock.Advance(authn.MaxKeyAge + time.Second)
	if _, err := e.v.Verify(ctx, token); err != nil {
		t.Errorf("stale set, issuer down: got %v, want none", err)
	}
	if got := e.jwks.hits.Load(); got != 3 {
		t.Errorf("got %d JWKS fetches, want 3", got)
	}
}

func TestIdentityContext(t *testing.T) {
	if _, ok := authn.FromContext(context.Background()); ok {
		t.Errorf("got an identity from an empty context, want none")
	}
	want := authn.Identity{Subject: "user-1", Role: authn.Admin}
	got, ok := authn.FromContext(authn.WithIdentity(context.Background(), want))
	if !ok || got != want {
		t.Errorf("got %+v, %v, want %+v, true", got, ok, want)
	}
	if !want.IsAdmin() {
		t.Errorf("got IsAdmin false for %+v, want true", want)
	}
	if (authn.Identity{Subject: "u", Role: authn.Operator}).IsAdmin() {
		t.Errorf("got IsAdmin true for an operator, want false")
	}
}

func BenchmarkVerify(b *testing.B) {
	iss := newIssuer(b)
	e := setup(b, iss, 0, nil)
	token := mustToken(b, iss, "user-1", authn.Admin)
	ctx := context.Background()
	if _, err := e.v.Verify(ctx, token); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.v.Verify(ctx, token); err != nil {
			b.Fatal(err)
		}
	}
}
