package function

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
)

// benchProvider is a provider whose JWKS a loopback server serves, with
// the keys already fetched, and an ID token it signed for nonce.
func benchProvider(b *testing.B, nonce string) (*provider, *discovery, string) {
	b.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(b, err)
	pub, err := jwk.Import(&key.PublicKey)
	require.NoError(b, err)
	require.NoError(b, pub.Set(jwk.KeyIDKey, "k1"))
	set := jwk.NewSet()
	require.NoError(b, set.AddKey(pub))
	jwks, err := json.Marshal(set)
	require.NoError(b, err)
	var fetches atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		w.Write(jwks)
	}))
	b.Cleanup(srv.Close)
	b.Cleanup(func() { require.EqualValues(b, 1, fetches.Load(), "JWKS fetches") })
	cfg := ProviderConfig{ID: "bench", Issuer: srv.URL, ClientID: "streamspace", SyncGroups: true,
		RoleRules: []RoleRule{{Group: "admins", Role: RoleAdmin}}}
	require.NoError(b, cfg.applyPreset())
	p := &provider{cfg: cfg, client: srv.Client(), keys: newKeyCache(srv.Client(), srv.URL)}
	d := &discovery{Issuer: srv.URL, SigningAlgs: []string{"RS256"}}
	now := time.Now()
	claims, err := json.Marshal(map[string]any{
		"iss": srv.URL, "aud": "streamspace", "sub": "bench-user", "nonce": nonce,
		"iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
		"email": "bench@example.com", "email_verified": true, "preferred_username": "bench", "name": "Bench User",
		"groups": []string{"engineering", "admins", "design"},
	})
	require.NoError(b, err)
	hdr := jws.NewHeaders()
	require.NoError(b, hdr.Set(jws.KeyIDKey, "k1"))
	tok, err := jws.Sign(claims, jws.WithKey(jwa.RS256(), key, jws.WithProtectedHeaders(hdr)))
	require.NoError(b, err)
	return p, d, string(tok)
}

// BenchmarkCallback measures the callback's own work, apart from the
// provider's (code exchange, userinfo) and the database's:
//
//   - handling: open and check the sealed cookie and state, verify the ID
//     token (keys cached), map the claims, sign the StreamSpace token.
//     Target: p50 at most 2 ms.
//   - commit: the login's transaction for a returning user (identity lock,
//     user update, group sync, audit row), reported separately.
func BenchmarkCallback(b *testing.B) {
	ctx := context.Background()
	seal, err := newSealer([]byte("bench-key-material-of-32-bytes!!"))
	require.NoError(b, err)
	state, nonce := "state-"+rand.Text(), "nonce-"+rand.Text()
	p, d, idToken := benchProvider(b, nonce)
	cookie, err := seal.seal(pending{Provider: "bench", State: state, Nonce: nonce, Verifier: "v", ReturnURL: "/", Expires: time.Now().Add(loginTTL).Unix()})
	require.NoError(b, err)
	is := &issuer{secret: []byte("bench-secret-bench-secret-bench-secret"), ttl: 24 * time.Hour}
	check := idTokenCheck{Issuer: d.Issuer, ClientID: "streamspace", Nonce: nonce, Algs: p.allowedAlgs(d)}

	var mapped Mapped
	b.Run("handling", func(b *testing.B) {
		b.ReportAllocs()
		var took []time.Duration
		for b.Loop() {
			began := time.Now()
			pend, err := seal.open(cookie, "bench", time.Now())
			if err != nil || !matchState(state, pend.State) {
				b.Fatal("state check failed", err)
			}
			check.Now = time.Now()
			claims, err := p.verifyIDToken(ctx, idToken, check)
			if err != nil {
				b.Fatal(err)
			}
			if mapped, err = mapClaims(&p.cfg, claims); err != nil {
				b.Fatal(err)
			}
			u := User{ID: "u-1", Username: mapped.Username, Email: mapped.Email, Role: string(mapped.Role), Groups: []string{"g1", "g2", "g3"}}
			if _, err := is.issue(ctx, u, "10.0.0.1", "bench"); err != nil {
				b.Fatal(err)
			}
			took = append(took, time.Since(began))
		}
		reportP50(b, took)
	})

	b.Run("commit", func(b *testing.B) {
		pool := dbtest.New(b)
		log := slog.New(slog.DiscardHandler)
		login := func() error {
			return db.InTx(ctx, pool, func(tx pgx.Tx) error {
				_, err := loginUser(ctx, tx, log, "bench", true, mapped, "10.0.0.1")
				return err
			})
		}
		require.NoError(b, login()) // the user and groups exist from here on
		b.ReportAllocs()
		var took []time.Duration
		for b.Loop() {
			began := time.Now()
			if err := login(); err != nil {
				b.Fatal(err)
			}
			took = append(took, time.Since(began))
		}
		reportP50(b, took)
	})
}

// reportP50 adds the median of took as the p50-ns metric.
func reportP50(b *testing.B, took []time.Duration) {
	if len(took) == 0 {
		return
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Nanoseconds()), "p50-ns")
}

// countingUsers is the users table, counting the queries that reach it.
type countingUsers struct {
	db.ReadOnly
	queries atomic.Int64
}

func (c *countingUsers) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	c.queries.Add(1)
	return c.ReadOnly.QueryRow(ctx, sql, args...)
}

// BenchmarkVerifyIssuedToken is what every other function spends on a
// token this function issued: shared/authn's StreamSpace mode, its user
// check cached, with no network call. Target: at most 60 µs.
func BenchmarkVerifyIssuedToken(b *testing.B) {
	ctx := context.Background()
	pool := dbtest.New(b)
	_, err := pool.Exec(ctx, `insert into users (id, username, email, role, active) values ('u-1', 'bench', 'bench@example.com', 'user', true)`)
	require.NoError(b, err)
	secret := []byte("bench-secret-bench-secret-bench-secret")
	is := &issuer{secret: secret, ttl: 24 * time.Hour}
	tok, err := is.issue(ctx, User{ID: "u-1", Username: "bench", Email: "bench@example.com", Role: "user", Groups: []string{"g1", "g2"}}, "", "")
	require.NoError(b, err)
	users := &countingUsers{ReadOnly: db.ReadOnly{DB: pool}}
	v, err := authn.NewVerifier(ctx, authn.Config{StreamSpaceSecret: secret, Users: users, UserCacheTTL: time.Hour})
	require.NoError(b, err)
	_, err = v.Verify(ctx, tok.Token)
	require.NoError(b, err)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(ctx, tok.Token); err != nil {
			b.Fatal(err)
		}
	}
	require.EqualValues(b, 1, users.queries.Load(), "users queries: the check must come from the cache")
}
