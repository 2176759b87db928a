package authn_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/authn/localissuer"
)

// publicKeyForms is the issuer's public key in every form an attacker might
// try as an HMAC secret.
func publicKeyForms(t testing.TB, iss *localissuer.Issuer) map[string][]byte {
	t.Helper()
	pub := iss.PublicKey()
	pkix, err := x509.MarshalPKIXPublicKey(pub)
	require.NoError(t, err)
	pkcs1 := x509.MarshalPKCS1PublicKey(pub)
	return map[string][]byte{
		"PEM (PKIX)":  pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pkix}),
		"PEM (PKCS1)": pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: pkcs1}),
		"DER (PKIX)":  pkix,
		"DER (PKCS1)": pkcs1,
	}
}

func TestVerifyJWKS(t *testing.T) {
	iss := newIssuer(t)
	keys := publicKeyForms(t, iss)
	otherRSA, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	otherEC, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	e := setup(t, iss, nil)
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
		{name: "fractional dates", token: sign(t, iss, claims(set("exp", float64(now.Add(time.Hour).Unix())+0.5))), wantSub: "user-1", wantRole: authn.User},
		{name: "groups of a JWKS token are not read", token: sign(t, iss, claims(set("groups", []string{"team-a"}))), wantSub: "user-1", wantRole: authn.User},

		{name: "alg none", token: unsigned(t, map[string]any{"alg": "none", "typ": "JWT", "kid": kid}, claims(set("role", "admin"))), wantErr: "algorithm not allowed"},
		{name: "alg none without kid", token: unsigned(t, map[string]any{"alg": "none"}, claims()), wantErr: "algorithm not allowed"},
		{name: "no alg", token: unsigned(t, map[string]any{"kid": kid}, claims()), wantErr: "algorithm not allowed"},
		{name: "alg not a string", token: unsigned(t, map[string]any{"alg": []string{"RS256"}, "kid": kid}, claims()), wantErr: "algorithm not allowed"},
		{name: "HS256 with public key PEM (PKIX)", token: sign(t, iss, claims(), localissuer.WithAlgorithm(jwa.HS256()), localissuer.WithKey(keys["PEM (PKIX)"])), wantErr: "algorithm not allowed"},
		{name: "HS256 with public key PEM (PKCS1)", token: sign(t, iss, claims(), localissuer.WithAlgorithm(jwa.HS256()), localissuer.WithKey(keys["PEM (PKCS1)"])), wantErr: "algorithm not allowed"},
		{name: "HS256 with public key DER (PKIX)", token: sign(t, iss, claims(), localissuer.WithAlgorithm(jwa.HS256()), localissuer.WithKey(keys["DER (PKIX)"])), wantErr: "algorithm not allowed"},
		{name: "HS256 with public key DER (PKCS1)", token: sign(t, iss, claims(), localissuer.WithAlgorithm(jwa.HS256()), localissuer.WithKey(keys["DER (PKCS1)"])), wantErr: "algorithm not allowed"},
		{name: "HS512 with public key PEM", token: sign(t, iss, claims(), localissuer.WithAlgorithm(jwa.HS512()), localissuer.WithKey(keys["PEM (PKIX)"])), wantErr: "algorithm not allowed"},
		{name: "HS256 StreamSpace token with StreamSpace tokens off", token: hs(t, []byte(secret), ssClaims("user-1")), wantErr: "algorithm not allowed"},
		{name: "PS256 with an RS256 key", token: sign(t, iss, claims(), localissuer.WithAlgorithm(jwa.PS256())), wantErr: "signing key does not match algorithm"},
		{name: "RS512 with an RS256 key", token: sign(t, iss, claims(), localissuer.WithAlgorithm(jwa.RS512())), wantErr: "signing key does not match algorithm"},
		{name: "ES256 under the RSA kid", token: sign(t, iss, claims(), localissuer.WithAlgorithm(jwa.ES256()), localissuer.WithKey(otherEC)), wantErr: "signing key does not match algorithm"},
		{name: "no exp", token: sign(t, iss, claims(drop("exp"))), wantErr: "token has no exp claim"},
		{name: "null exp", token: sign(t, iss, claims(set("exp", nil))), wantErr: "token has no exp claim"},
		{name: "exp as a string", token: sign(t, iss, claims(set("exp", "4102444800"))), wantErr: "malformed token"},
		{name: "expired", token: sign(t, iss, claims(set("iat", now.Add(-2*time.Hour).Unix()), set("nbf", now.Add(-2*time.Hour).Unix()), set("exp", now.Add(-time.Minute).Unix()))), wantErr: "token expired"},
		{name: "nbf beyond leeway", token: sign(t, iss, claims(set("nbf", now.Add(2*time.Minute).Unix()))), wantErr: "token not yet valid"},
		{name: "iat in the future", token: sign(t, iss, claims(set("iat", now.Add(2*time.Minute).Unix()))), wantErr: "token issued in the future"},
		{name: "wrong aud", token: sign(t, iss, claims(set("aud", "another-api"))), wantErr: "token audience not accepted"},
		{name: "no aud", token: sign(t, iss, claims(drop("aud"))), wantErr: "token audience not accepted"},
		{name: "aud list of other types", token: sign(t, iss, claims(set("aud", []any{1, audience}))), wantErr: "malformed token"},
		{name: "wrong iss", token: sign(t, iss, claims(set("iss", "https://evil.test"))), wantErr: "token issuer not accepted"},
		{name: "StreamSpace's iss", token: sign(t, iss, claims(set("iss", "streamspace-api"))), wantErr: "token issuer not accepted"},
		{name: "no iss", token: sign(t, iss, claims(drop("iss"))), wantErr: "token issuer not accepted"},
		{name: "no sub", token: sign(t, iss, claims(drop("sub"))), wantErr: "token has no subject"},
		{name: "empty sub", token: sign(t, iss, claims(set("sub", ""))), wantErr: "token has no subject"},
		{name: "user_id is not a subject here", token: sign(t, iss, claims(drop("sub"), set("user_id", "user-1"))), wantErr: "token has no subject"},
		{name: "unknown kid", token: sign(t, iss, claims(), localissuer.WithKeyID("no-such-key")), wantErr: "unknown signing key"},
		{name: "no kid", token: sign(t, iss, claims(), localissuer.WithKeyID("")), wantErr: "token has no key id"},
		{name: "known kid, other key", token: sign(t, iss, claims(set("role", "admin")), localissuer.WithKey(otherRSA)), wantErr: "invalid signature"},
		{name: "tampered payload", token: tamper(t, sign(t, iss, claims()), claims(set("role", "admin"))), wantErr: "invalid signature"},
		{name: "signature cut off", token: strings.TrimRight(sign(t, iss, claims()), "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"), wantErr: "invalid signature"},
		{name: "critical header", token: sign(t, iss, claims(), localissuer.WithHeader("crit", []string{"exp"}), localissuer.WithHeader("exp", 1)), wantErr: "unsupported critical header"},
		{name: "many header fields", token: sign(t, iss, claims(), manyHeaders(40)...), wantSub: "user-1", wantRole: authn.User},
		{name: "many claims", token: sign(t, iss, claims(manyClaims(40))), wantSub: "user-1", wantRole: authn.User},
		{name: "role spelt Role", token: sign(t, iss, claims(set("Role", "admin"))), wantSub: "user-1", wantRole: authn.User},
		{name: "unrecognised role", token: sign(t, iss, claims(set("role", "superuser"))), wantErr: "unrecognised role"},
		{name: "role with other case", token: sign(t, iss, claims(set("role", "Admin"))), wantErr: "unrecognised role"},
		{name: "role list", token: sign(t, iss, claims(set("role", []string{"admin"}))), wantErr: "unrecognised role"},
		{name: "role number", token: sign(t, iss, claims(set("role", 1))), wantErr: "unrecognised role"},
		{name: "empty role", token: sign(t, iss, claims(set("role", ""))), wantErr: "unrecognised role"},
		{name: "garbage", token: "not-a-token", wantErr: "malformed token"},
		{name: "three garbage parts", token: "aaa.bbb.ccc", wantErr: "malformed token"},
		{name: "four parts", token: sign(t, iss, claims()) + ".x", wantErr: "malformed token"},
		{name: "empty", token: "", wantErr: "missing bearer token"},
		{name: "too large", token: strings.Repeat("a", 17<<10), wantErr: "token too large"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, err := e.v.Verify(context.Background(), tc.token)
			if tc.wantErr != "" {
				assertRefused(t, err, tc.wantErr, tc.token)
				assert.Zero(t, id, "identity on failure")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, authn.Identity{Subject: tc.wantSub, Role: tc.wantRole}, id)
		})
	}
	assert.LessOrEqual(t, e.jwks.hits.Load(), int64(2),
		"JWKS fetches for the whole table: at most first use and one unknown-kid refetch")
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
		{name: "nested null role", roleClaim: "realm_access.role", claims: claims(set("realm_access", map[string]any{"role": nil})), wantRole: authn.User},
		{name: "top-level role ignored", roleClaim: "realm_access.role", claims: claims(set("role", "admin")), wantRole: authn.User},
		{name: "nested unrecognised", roleClaim: "realm_access.role", claims: claims(set("realm_access", map[string]any{"role": "root"})), wantErr: "unrecognised role"},
		{name: "groups list", roleClaim: "realm_access.roles", claims: claims(set("realm_access", map[string]any{"roles": []string{"admin", "user"}})), wantErr: "unrecognised role"},
		{name: "parent not an object", roleClaim: "realm_access.role", claims: claims(set("realm_access", "admin")), wantErr: "unrecognised role"},
		{name: "parent a list", roleClaim: "realm_access.0", claims: claims(set("realm_access", []string{"admin"})), wantErr: "unrecognised role"},
		{name: "claim named like a URL", roleClaim: "https://streamspace.dev/role", claims: claims(set("https://streamspace.dev/role", "operator")), wantRole: authn.Operator},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := setup(t, iss, func(c *authn.Config) { c.RoleClaim = tc.roleClaim })
			token := sign(t, iss, tc.claims)
			id, err := e.v.Verify(context.Background(), token)
			if tc.wantErr != "" {
				assertRefused(t, err, tc.wantErr, token)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.wantRole, id.Role)
		})
	}
}

func TestAuthenticate(t *testing.T) {
	iss := newIssuer(t)
	e := setup(t, iss, nil)
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
				assertRefused(t, err, tc.wantErr, valid)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, authn.Identity{Subject: "user-7", Role: authn.Admin}, id)
		})
	}
}

func TestAlgorithmAllowList(t *testing.T) {
	iss := newIssuer(t)
	tests := []struct {
		name    string
		allowed []jwa.SignatureAlgorithm
		wantErr string
	}{
		{name: "RS256 allowed", allowed: []jwa.SignatureAlgorithm{jwa.RS256()}},
		{name: "RS256 not allowed", allowed: []jwa.SignatureAlgorithm{jwa.ES256()}, wantErr: "algorithm not allowed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := setup(t, iss, func(c *authn.Config) { c.Algorithms = tc.allowed })
			token := mustToken(t, iss, "user-1", "")
			_, err := e.v.Verify(context.Background(), token)
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			assertRefused(t, err, tc.wantErr, token)
			assert.Zero(t, e.jwks.hits.Load(), "JWKS fetches: a refused algorithm needs no key")
		})
	}
}

func TestConfig(t *testing.T) {
	jwks := authn.Config{Issuer: issuerURL, Audience: audience, JWKSURL: "https://issuer.test/jwks"}
	both := jwks
	both.StreamSpaceSecret = []byte(secret)
	both.Users = noUsers{}
	tests := []struct {
		name    string
		cfg     authn.Config
		mod     func(*authn.Config)
		wantErr string // substring; empty means success
	}{
		{name: "JWKS only", cfg: jwks},
		{name: "StreamSpace only", cfg: authn.Config{StreamSpaceSecret: []byte(secret), Users: noUsers{}}},
		{name: "both", cfg: both},
		{name: "neither", cfg: authn.Config{}, wantErr: "set AUTH_ISSUER, AUTH_AUDIENCE and AUTH_JWKS_URL, or STREAMSPACE_JWT_SECRET_FILE"},
		{name: "event path without JWKS", cfg: authn.Config{EnvPrefix: "EVENT_AUTH_"}, wantErr: "EVENT_AUTH_ISSUER, EVENT_AUTH_AUDIENCE and EVENT_AUTH_JWKS_URL are required"},
		{name: "no issuer", cfg: jwks, mod: func(c *authn.Config) { c.Issuer = "" }, wantErr: "AUTH_ISSUER is required"},
		{name: "no audience", cfg: jwks, mod: func(c *authn.Config) { c.Audience = "" }, wantErr: "AUTH_AUDIENCE is required"},
		{name: "no JWKS URL", cfg: jwks, mod: func(c *authn.Config) { c.JWKSURL = "" }, wantErr: "AUTH_JWKS_URL is required"},
		{name: "only a JWKS URL beside StreamSpace", cfg: both, mod: func(c *authn.Config) { c.Issuer, c.Audience = "", "" }, wantErr: "AUTH_ISSUER is required"},
		{name: "event prefix names its variables", cfg: jwks, mod: func(c *authn.Config) { c.Audience, c.EnvPrefix = "", "EVENT_AUTH_" }, wantErr: "EVENT_AUTH_AUDIENCE is required"},
		{name: "relative JWKS URL", cfg: jwks, mod: func(c *authn.Config) { c.JWKSURL = "/jwks" }, wantErr: "AUTH_JWKS_URL"},
		{name: "file JWKS URL", cfg: jwks, mod: func(c *authn.Config) { c.JWKSURL = "file:///etc/jwks" }, wantErr: "AUTH_JWKS_URL"},
		{name: "empty role path segment", cfg: jwks, mod: func(c *authn.Config) { c.RoleClaim = "realm_access..role" }, wantErr: "AUTH_ROLE_CLAIM"},
		{name: "HS256 allowed for the JWKS", cfg: jwks, mod: func(c *authn.Config) { c.Algorithms = []jwa.SignatureAlgorithm{jwa.RS256(), jwa.HS256()} }, wantErr: "HS256"},
		{name: "none allowed", cfg: jwks, mod: func(c *authn.Config) { c.Algorithms = []jwa.SignatureAlgorithm{jwa.NoSignature()} }, wantErr: "none"},
		{name: "negative leeway", cfg: jwks, mod: func(c *authn.Config) { c.Leeway = -time.Second }, wantErr: "leeway"},
		{name: "negative refetch interval", cfg: jwks, mod: func(c *authn.Config) { c.MinRefetchInterval = -time.Second }, wantErr: "interval"},
		{name: "short secret", cfg: both, mod: func(c *authn.Config) { c.StreamSpaceSecret = []byte("too-short") }, wantErr: "STREAMSPACE_JWT_SECRET_FILE holds a secret shorter than 32 bytes"},
		{name: "sessions without a secret", cfg: jwks, mod: func(c *authn.Config) { c.Sessions = noSessions{} }, wantErr: "STREAMSPACE_REDIS_URL applies to StreamSpace tokens: set STREAMSPACE_JWT_SECRET_FILE too"},
		{name: "negative user cache TTL", cfg: both, mod: func(c *authn.Config) { c.UserCacheTTL = -time.Second }, wantErr: "STREAMSPACE_USER_CACHE_TTL"},
		{name: "secret without users", cfg: both, mod: func(c *authn.Config) { c.Users = nil }, wantErr: "Config.Users"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			if tc.mod != nil {
				tc.mod(&cfg)
			}
			v, err := authn.NewVerifier(context.Background(), cfg)
			if tc.wantErr == "" {
				require.NoError(t, err)
				assert.NotNil(t, v)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.wantErr)
			assert.NotContains(t, err.Error(), secret, "the error repeats the secret")
		})
	}
}

// manyHeaders adds n made-up header fields.
func manyHeaders(n int) []localissuer.SignOption {
	var opts []localissuer.SignOption
	for i := range n {
		opts = append(opts, localissuer.WithHeader(fmt.Sprintf("x-%d", i), i))
	}
	return opts
}

// manyClaims adds n made-up claims.
func manyClaims(n int) func(map[string]any) {
	return func(c map[string]any) {
		for i := range n {
			c[fmt.Sprintf("x-%d", i)] = i
		}
	}
}

// noUsers and noSessions satisfy the interfaces for config checks that
// never reach them.
type (
	noUsers    struct{ authn.Querier }
	noSessions struct{ authn.SessionStore }
)

func TestIdentity(t *testing.T) {
	tests := []struct {
		name      string
		id        authn.Identity
		wantAdmin bool
	}{
		{name: "admin", id: authn.Identity{Subject: "u", Role: authn.Admin}, wantAdmin: true},
		{name: "operator", id: authn.Identity{Subject: "u", Role: authn.Operator}},
		{name: "user with groups", id: authn.Identity{Subject: "u", Role: authn.User, Groups: []string{"admin"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.wantAdmin, tc.id.IsAdmin())
		})
	}
}
