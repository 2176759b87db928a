package authn_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/authn/localissuer"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
	"github.com/streamspace-dev/functions/shared/errs"
)

// ssEnv is a verifier for StreamSpace tokens, against a real database with
// StreamSpace's schema, and for JWKS tokens too unless jwksOff.
type ssEnv struct {
	*env
	pool *pgxpool.Pool
}

func setupStreamSpace(t testing.TB, iss *localissuer.Issuer, jwksOff bool, mod func(*authn.Config)) *ssEnv {
	t.Helper()
	pool := dbtest.New(t)
	e := setup(t, iss, func(c *authn.Config) {
		if jwksOff {
			c.Issuer, c.Audience, c.JWKSURL = "", "", ""
		}
		c.StreamSpaceSecret = []byte(secret)
		c.Users = pool
		if mod != nil {
			mod(c)
		}
	})
	return &ssEnv{env: e, pool: pool}
}

// addUser inserts a StreamSpace users row; a nil role or active is NULL.
func addUser(t testing.TB, pool *pgxpool.Pool, id string, role *string, active *bool) {
	t.Helper()
	_, err := pool.Exec(context.Background(),
		`insert into users (id, username, email, role, active) values ($1, $2, $3, $4, $5)`,
		id, id, id+"@streamspace.test", role, active)
	require.NoError(t, err)
}

func ptr[T any](v T) *T { return &v }

func sqlExec(t testing.TB, pool *pgxpool.Pool, sql string, args ...any) {
	t.Helper()
	_, err := pool.Exec(context.Background(), sql, args...)
	require.NoError(t, err)
}

// TestStreamSpaceTokens holds the attack tests of the StreamSpace mode: each
// refusal names the defence that makes it, and each fails if that defence
// goes.
func TestStreamSpaceTokens(t *testing.T) {
	iss := newIssuer(t)
	both := setupStreamSpace(t, iss, false, nil)
	hmacOnly := setupStreamSpace(t, iss, true, nil)
	for _, pool := range []*pgxpool.Pool{both.pool, hmacOnly.pool} {
		addUser(t, pool, "alice", ptr("user"), ptr(true))
		addUser(t, pool, "root", ptr("admin"), ptr(true))
		addUser(t, pool, "ops", ptr("operator"), ptr(true))
		addUser(t, pool, "mallory", ptr("user"), ptr(false))
		addUser(t, pool, "null-active", ptr("user"), nil)
		addUser(t, pool, "null-role", nil, ptr(true))
		addUser(t, pool, "odd-role", ptr("superuser"), ptr(true))
		addUser(t, pool, "gone", ptr("admin"), ptr(true))
		sqlExec(t, pool, `delete from users where id = 'gone'`)
	}
	keys := publicKeyForms(t, iss)
	key := []byte(secret)
	now := time.Now()

	tests := []struct {
		name    string
		v       *authn.Verifier
		token   string
		want    authn.Identity
		wantErr string
	}{
		{name: "valid StreamSpace token", v: both.v, token: hs(t, key, ssClaims("alice")),
			want: authn.Identity{Subject: "alice", Role: authn.User, Groups: []string{"team-a"}}},
		{name: "valid StreamSpace token, HMAC mode only", v: hmacOnly.v, token: hs(t, key, ssClaims("alice")),
			want: authn.Identity{Subject: "alice", Role: authn.User, Groups: []string{"team-a"}}},
		{name: "valid JWKS token with both modes on", v: both.v, token: mustToken(t, iss, "carol", authn.Operator),
			want: authn.Identity{Subject: "carol", Role: authn.Operator}},
		{name: "the row's role, not the token's: admin", v: both.v, token: hs(t, key, ssClaims("root", set("role", "user"))),
			want: authn.Identity{Subject: "root", Role: authn.Admin, Groups: []string{"team-a"}}},
		{name: "the row's role, not the token's: a user claiming admin", v: both.v, token: hs(t, key, ssClaims("alice", set("role", "admin"))),
			want: authn.Identity{Subject: "alice", Role: authn.User, Groups: []string{"team-a"}}},
		{name: "operator", v: both.v, token: hs(t, key, ssClaims("ops", drop("groups"))),
			want: authn.Identity{Subject: "ops", Role: authn.Operator, Groups: nil}},
		{name: "no user_id: sub names the user", v: both.v, token: hs(t, key, ssClaims("alice", drop("user_id"))),
			want: authn.Identity{Subject: "alice", Role: authn.User, Groups: []string{"team-a"}}},
		{name: "user_id wins over sub", v: both.v, token: hs(t, key, ssClaims("alice", set("sub", "root"))),
			want: authn.Identity{Subject: "alice", Role: authn.User, Groups: []string{"team-a"}}},
		{name: "a kid header is ignored", v: both.v, token: raw(key, `{"alg":"HS256","typ":"JWT","kid":"`+iss.KeyID()+`"}`, mustJSON(t, ssClaims("alice"))),
			want: authn.Identity{Subject: "alice", Role: authn.User, Groups: []string{"team-a"}}},

		{name: "HS256 signed with the JWKS public key, PEM (PKIX)", v: both.v, token: hs(t, keys["PEM (PKIX)"], ssClaims("root")), wantErr: "invalid signature"},
		{name: "HS256 signed with the JWKS public key, PEM (PKCS1)", v: both.v, token: hs(t, keys["PEM (PKCS1)"], ssClaims("root")), wantErr: "invalid signature"},
		{name: "HS256 signed with the JWKS public key, DER (PKIX)", v: both.v, token: hs(t, keys["DER (PKIX)"], ssClaims("root")), wantErr: "invalid signature"},
		{name: "HS256 signed with the JWKS public key, DER (PKCS1)", v: both.v, token: hs(t, keys["DER (PKCS1)"], ssClaims("root")), wantErr: "invalid signature"},
		{name: "HS256 with the JWKS kid, signed with the public key", v: both.v,
			token: sign(t, iss, claims(set("iss", issuerURL)), localissuer.WithAlgorithm(jwa.HS256()), localissuer.WithKey(keys["PEM (PKIX)"])), wantErr: "invalid signature"},
		{name: "RS256 in HMAC mode", v: hmacOnly.v, token: sign(t, iss, ssClaims("root")), wantErr: "algorithm not allowed"},
		{name: "RS256 claiming StreamSpace's issuer", v: both.v, token: sign(t, iss, ssClaims("root", set("aud", audience))), wantErr: "token issuer not accepted"},
		{name: "alg none", v: both.v, token: unsigned(t, map[string]any{"alg": "none", "typ": "JWT"}, ssClaims("root")), wantErr: "algorithm not allowed"},
		{name: "alg none, HMAC mode only", v: hmacOnly.v, token: unsigned(t, map[string]any{"alg": "none", "typ": "JWT"}, ssClaims("root")), wantErr: "algorithm not allowed"},
		{name: "alg None", v: both.v, token: unsigned(t, map[string]any{"alg": "None", "typ": "JWT"}, ssClaims("root")), wantErr: "algorithm not allowed"},
		{name: "HS256 with its signature dropped", v: both.v, token: raw(nil, `{"alg":"HS256","typ":"JWT"}`, mustJSON(t, ssClaims("root"))), wantErr: "invalid signature"},
		{name: "HS384 with the secret", v: both.v, token: hs(t, key, ssClaims("alice"), jwa.HS384()), wantErr: "algorithm not allowed"},
		{name: "HS512 with the secret", v: both.v, token: hs(t, key, ssClaims("alice"), jwa.HS512()), wantErr: "algorithm not allowed"},
		{name: "wrong secret", v: both.v, token: hs(t, []byte(strings.ToUpper(secret)), ssClaims("root")), wantErr: "invalid signature"},
		{name: "secret with a trailing newline", v: both.v, token: hs(t, []byte(secret+"\n"), ssClaims("root")), wantErr: "invalid signature"},
		{name: "tampered payload", v: both.v, token: tamper(t, hs(t, key, ssClaims("alice")), ssClaims("root")), wantErr: "invalid signature"},
		{name: "missing exp", v: both.v, token: hs(t, key, ssClaims("alice", drop("exp"))), wantErr: "token has no exp claim"},
		{name: "expired", v: both.v, token: hs(t, key, ssClaims("alice", set("iat", now.Add(-25*time.Hour).Unix()), set("nbf", now.Add(-25*time.Hour).Unix()), set("exp", now.Add(-time.Hour).Unix()))), wantErr: "token expired"},
		{name: "not yet valid", v: both.v, token: hs(t, key, ssClaims("alice", set("nbf", now.Add(time.Hour).Unix()))), wantErr: "token not yet valid"},
		{name: "wrong issuer", v: both.v, token: hs(t, key, ssClaims("alice", set("iss", issuerURL))), wantErr: "token issuer not accepted"},
		{name: "no issuer", v: both.v, token: hs(t, key, ssClaims("alice", drop("iss"))), wantErr: "token issuer not accepted"},
		{name: "inactive user", v: both.v, token: hs(t, key, ssClaims("mallory")), wantErr: "user account is disabled"},
		{name: "user whose active is NULL", v: both.v, token: hs(t, key, ssClaims("null-active")), wantErr: "user account is disabled"},
		{name: "deleted user", v: both.v, token: hs(t, key, ssClaims("gone", set("role", "admin"))), wantErr: "user not found"},
		{name: "user never created", v: both.v, token: hs(t, key, ssClaims("nobody")), wantErr: "user not found"},
		{name: "user whose role is NULL", v: both.v, token: hs(t, key, ssClaims("null-role")), wantErr: "user has no role"},
		{name: "user with an unknown role", v: both.v, token: hs(t, key, ssClaims("odd-role")), wantErr: "unrecognised role"},
		{name: "no user_id and no sub", v: both.v, token: hs(t, key, ssClaims("alice", drop("user_id"), drop("sub"))), wantErr: "token has no subject"},
		{name: "user_id not a string", v: both.v, token: hs(t, key, ssClaims("alice", set("user_id", 7))), wantErr: "malformed token"},
		{name: "unrecognised role claim", v: both.v, token: hs(t, key, ssClaims("alice", set("role", "superuser"))), wantErr: "unrecognised role"},
		{name: "groups not a list", v: both.v, token: hs(t, key, ssClaims("alice", set("groups", "team-a"))), wantErr: "malformed token"},
		{name: "user_id given twice", v: both.v,
			token: raw(key, `{"alg":"HS256","typ":"JWT"}`, strings.Replace(mustJSON(t, ssClaims("alice")), `{`, `{"user_id":"root",`, 1)), wantErr: "malformed token"},
		{name: "user_id given twice among many claims", v: both.v,
			token: raw(key, `{"alg":"HS256","typ":"JWT"}`, strings.Replace(mustJSON(t, ssClaims("alice", manyClaims(40))), `{`, `{"user_id":"root",`, 1)), wantErr: "malformed token"},
		{name: "alg given twice among many header fields", v: both.v,
			token: raw(key, `{"alg":"HS256",`+manyFields(40)+`"alg":"none"}`, mustJSON(t, ssClaims("alice"))), wantErr: "malformed token"},
		{name: "critical header", v: both.v, token: raw(key, `{"alg":"HS256","typ":"JWT","crit":["exp"],"exp":1}`, mustJSON(t, ssClaims("alice"))), wantErr: "unsupported critical header"},
		{name: "alg given twice", v: both.v, token: raw(key, `{"alg":"HS256","alg":"RS256"}`, mustJSON(t, ssClaims("alice"))), wantErr: "malformed token"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, err := tc.v.Verify(context.Background(), tc.token)
			if tc.wantErr != "" {
				assertRefused(t, err, tc.wantErr, tc.token)
				assert.NotContains(t, err.Error(), secret, "the error repeats the secret")
				assert.Zero(t, id, "identity on failure")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, id)
		})
	}
}

// manyFields is n distinct JSON members, each followed by a comma.
func manyFields(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, `"x-%d":%d,`, i, i)
	}
	return b.String()
}

func mustJSON(t testing.TB, c map[string]any) string {
	t.Helper()
	b, err := json.Marshal(c)
	require.NoError(t, err)
	return string(b)
}

// TestUserCheckIsCached shows the window in which a changed users row is not
// yet seen, and that it closes.
func TestUserCheckIsCached(t *testing.T) {
	iss := newIssuer(t)
	e := setupStreamSpace(t, iss, true, func(c *authn.Config) { c.UserCacheTTL = time.Minute })
	addUser(t, e.pool, "boss", ptr("admin"), ptr(true))
	addUser(t, e.pool, "temp", ptr("user"), ptr(true))
	boss := hs(t, []byte(secret), ssClaims("boss", set("role", "admin")))
	temp := hs(t, []byte(secret), ssClaims("temp"))

	steps := []struct {
		name     string
		do       func()
		token    string
		wantRole authn.Role
		wantErr  string
	}{
		{name: "admin", token: boss, wantRole: authn.Admin},
		{name: "demoted, within the window", do: func() { sqlExec(t, e.pool, `update users set role = 'user' where id = 'boss'`) }, token: boss, wantRole: authn.Admin},
		{name: "demoted, past the window", do: func() { e.clock.Advance(time.Minute) }, token: boss, wantRole: authn.User},
		{name: "active user", token: temp, wantRole: authn.User},
		{name: "deactivated, within the window", do: func() {
			sqlExec(t, e.pool, `update users set active = false where id = 'temp'`)
			e.clock.Advance(59 * time.Second)
		}, token: temp, wantRole: authn.User},
		{name: "deactivated, past the window", do: func() { e.clock.Advance(time.Second) }, token: temp, wantErr: "user account is disabled"},
		{name: "refusals are cached too", do: func() { sqlExec(t, e.pool, `update users set active = true where id = 'temp'`) }, token: temp, wantErr: "user account is disabled"},
		{name: "reactivated, past the window", do: func() { e.clock.Advance(time.Minute) }, token: temp, wantRole: authn.User},
		{name: "deleted, past the window", do: func() {
			sqlExec(t, e.pool, `delete from users where id = 'temp'`)
			e.clock.Advance(time.Minute)
		}, token: temp, wantErr: "user not found"},
	}
	for _, s := range steps {
		ok := t.Run(s.name, func(t *testing.T) {
			if s.do != nil {
				s.do()
			}
			id, err := e.v.Verify(context.Background(), s.token)
			if s.wantErr != "" {
				assertRefused(t, err, s.wantErr, s.token)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, s.wantRole, id.Role)
		})
		if !ok {
			return
		}
	}
}

func TestUserCheck(t *testing.T) {
	iss := newIssuer(t)
	tests := []struct {
		name     string
		size     int
		users    int
		closeDB  bool
		wantSize int
		wantKind errs.Kind
	}{
		{name: "the cache is bounded", size: 3, users: 10, wantSize: 3},
		{name: "the default TTL is a few seconds", users: 1, wantSize: 1},
		{name: "database down: unavailable, not refused", users: 1, closeDB: true, wantKind: errs.Unavailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := setupStreamSpace(t, iss, true, func(c *authn.Config) { c.UserCacheSize = tc.size })
			for i := range tc.users {
				id := "u" + string(rune('a'+i))
				addUser(t, e.pool, id, ptr("user"), ptr(true))
				if tc.closeDB {
					e.pool.Close()
				}
				token := hs(t, []byte(secret), ssClaims(id))
				_, err := e.v.Verify(context.Background(), token)
				if tc.wantKind != "" {
					assert.Equal(t, tc.wantKind, errs.KindOf(err), "kind of %v", err)
					assert.Zero(t, authn.CachedUsers(e.v), "failures are not cached")
					return
				}
				require.NoError(t, err)
			}
			assert.Equal(t, tc.wantSize, authn.CachedUsers(e.v), "cached user checks")
			if tc.size == 0 {
				// Five seconds later the row is read again.
				sqlExec(t, e.pool, `update users set active = false`)
				token := hs(t, []byte(secret), ssClaims("ua"))
				e.clock.Advance(4 * time.Second)
				_, err := e.v.Verify(context.Background(), token)
				require.NoError(t, err, "within 5s")
				e.clock.Advance(time.Second)
				_, err = e.v.Verify(context.Background(), token)
				assertRefused(t, err, "user account is disabled", token)
			}
		})
	}
}

func TestReadSecretFile(t *testing.T) {
	tests := []struct {
		name    string
		content *string // nil: no file
		want    string
		wantErr string
	}{
		{name: "as written", content: ptr(secret), want: secret},
		{name: "trailing newline dropped", content: ptr(secret + "\n"), want: secret},
		{name: "trailing CRLF dropped", content: ptr(secret + "\r\n"), want: secret},
		{name: "only one newline dropped", content: ptr(secret + "\n\n"), want: secret + "\n"},
		{name: "inner whitespace kept", content: ptr(" " + secret + " "), want: " " + secret + " "},
		{name: "empty", content: ptr(""), wantErr: "STREAMSPACE_JWT_SECRET_FILE"},
		{name: "only a newline", content: ptr("\n"), wantErr: "is empty"},
		{name: "short", content: ptr("0123456789abcdef0123456789abcde\n"), wantErr: "shorter than 32 bytes"},
		{name: "too large", content: ptr(strings.Repeat("x", 65<<10)), wantErr: "larger than"},
		{name: "missing", wantErr: "STREAMSPACE_JWT_SECRET_FILE"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "jwt-secret")
			if tc.content != nil {
				require.NoError(t, os.WriteFile(path, []byte(*tc.content), 0o600))
			}
			got, err := authn.ReadSecretFile(path)
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErr)
				assert.Contains(t, err.Error(), "STREAMSPACE_JWT_SECRET_FILE")
				if tc.content != nil && len(*tc.content) > 2 {
					assert.NotContains(t, err.Error(), strings.TrimSpace(*tc.content), "the error repeats the secret")
				}
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, string(got))
		})
	}
}
