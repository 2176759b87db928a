package authn_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/authn"
)

// BenchmarkVerify compares each kind of token's full verification with
// jwx's bare jws.Verify of the same token, in the same run: the target is
// at most 1.2 times the bare verify.
func BenchmarkVerify(b *testing.B) {
	ctx := context.Background()
	iss := newIssuer(b)

	// An identity provider's RS256 token, its key cached.
	jwksEnv := setup(b, iss, nil)
	jwksToken := mustToken(b, iss, "user-1", authn.Admin)
	_, err := jwksEnv.v.Verify(ctx, jwksToken)
	require.NoError(b, err)

	// A StreamSpace HS256 token; after the first call its user check is
	// served from the cache, which the frozen clock never expires. The
	// benchmark runs without a database, so the users table is a
	// hand-written one-row stand-in that counts its queries.
	users := &oneUser{}
	ssV, err := authn.NewVerifier(ctx, authn.Config{StreamSpaceSecret: []byte(secret), Users: users})
	require.NoError(b, err)
	frozen := time.Now()
	authn.SetClock(ssV, func() time.Time { return frozen })
	ssToken := hs(b, []byte(secret), ssClaims("alice"))
	_, err = ssV.Verify(ctx, ssToken)
	require.NoError(b, err)

	jwksBytes, ssBytes := []byte(jwksToken), []byte(ssToken)
	pub := iss.PublicKey()
	benchmarks := []struct {
		name   string
		verify func() error
	}{
		{name: "JWKS/Verifier", verify: func() error { _, err := jwksEnv.v.Verify(ctx, jwksToken); return err }},
		{name: "JWKS/jws.Verify", verify: func() error { _, err := jws.Verify(jwksBytes, jws.WithKey(jwa.RS256(), pub)); return err }},
		{name: "StreamSpace/Verifier", verify: func() error { _, err := ssV.Verify(ctx, ssToken); return err }},
		{name: "StreamSpace/jws.Verify", verify: func() error {
			_, err := jws.Verify(ssBytes, jws.WithKey(jwa.HS256(), []byte(secret)))
			return err
		}},
	}
	for _, bm := range benchmarks {
		b.Run(bm.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := bm.verify(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	require.EqualValues(b, 1, users.queries.Load(), "user queries: the check must come from the cache")
	require.EqualValues(b, 1, jwksEnv.jwks.hits.Load(), "JWKS fetches: the key must come from the cache")
}

// oneUser is a users table holding one active user.
type oneUser struct{ queries atomic.Int64 }

func (u *oneUser) QueryRow(context.Context, string, ...any) pgx.Row {
	u.queries.Add(1)
	return userRow{}
}

type userRow struct{}

func (userRow) Scan(dest ...any) error {
	*dest[0].(**string) = ptr("user")
	*dest[1].(**bool) = ptr(true)
	return nil
}
