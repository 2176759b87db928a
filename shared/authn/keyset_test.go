package authn_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/authn/localissuer"
	"github.com/streamspace-dev/functions/shared/errs"
)

// step is one moment of a key-set scenario: something happens (do), then a
// token is verified and the outcome and the issuer's hit count checked.
type step struct {
	name     string
	do       func(e *env)
	token    func(e *env) string
	wantErr  string    // message of an Unauthenticated error; empty for success
	wantKind errs.Kind // another kind of error, instead of wantErr
	wantSub  string
	wantHits int64
	// settle waits for a background refresh the step started before the
	// hits are counted.
	settle bool
}

func runSteps(t *testing.T, e *env, steps []step) {
	t.Helper()
	for _, s := range steps {
		ok := t.Run(s.name, func(t *testing.T) {
			if s.do != nil {
				s.do(e)
			}
			token := s.token(e)
			id, err := e.v.Verify(context.Background(), token)
			switch {
			case s.wantKind != "":
				assert.Equal(t, s.wantKind, errs.KindOf(err), "kind of %v", err)
				if err != nil {
					assert.NotContains(t, err.Error(), token)
				}
			case s.wantErr != "":
				assertRefused(t, err, s.wantErr, token)
			default:
				require.NoError(t, err)
				if s.wantSub != "" {
					assert.Equal(t, s.wantSub, id.Subject)
				}
			}
			if s.settle {
				authn.WaitForRefresh(e.v)
			}
			assert.Equal(t, s.wantHits, e.jwks.hits.Load(), "JWKS fetches so far")
		})
		if !ok {
			return // later steps build on this one
		}
	}
}

func TestRotation(t *testing.T) {
	iss := newIssuer(t)
	e := setup(t, iss, func(c *authn.Config) { c.MinRefetchInterval = time.Minute })
	before := mustToken(t, iss, "user-1", authn.User)
	var after string
	runSteps(t, e, []step{
		{name: "first use fetches", token: func(*env) string { return before }, wantSub: "user-1", wantHits: 1},
		{name: "a known kid is served from the cache", token: func(*env) string { return before }, wantSub: "user-1", wantHits: 1},
		{
			name: "a new kid within the refetch interval is not looked for",
			do: func(e *env) {
				require.NoError(t, iss.Rotate())
				after = mustToken(t, iss, "user-2", authn.Admin)
			},
			token: func(*env) string { return after }, wantErr: "unknown signing key", wantHits: 1,
		},
		{
			name:  "after the interval one refetch finds it",
			do:    func(e *env) { e.clock.Advance(time.Minute + time.Second) },
			token: func(*env) string { return after }, wantSub: "user-2", wantHits: 2,
		},
		{name: "the issuer still publishes the replaced key", token: func(*env) string { return before }, wantSub: "user-1", wantHits: 2},
	})
}

func TestUnknownKidFloodIsRateLimited(t *testing.T) {
	iss := newIssuer(t)
	e := setup(t, iss, func(c *authn.Config) { c.MinRefetchInterval = time.Minute })
	ctx := context.Background()
	_, err := e.v.Verify(ctx, mustToken(t, iss, "user-1", ""))
	require.NoError(t, err, "warm-up")
	e.clock.Advance(2 * time.Minute)

	tests := []struct {
		name     string
		kids     int
		wantHits int64
	}{
		{name: "50 unknown kids cost one refetch", kids: 50, wantHits: 2},
		{name: "50 more cost none", kids: 50, wantHits: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var wg sync.WaitGroup
			for i := range tc.kids {
				token := sign(t, iss, claims(), localissuer.WithKeyID(fmt.Sprintf("made-up-%d", i)))
				wg.Go(func() {
					_, err := e.v.Verify(ctx, token)
					assertRefused(t, err, "unknown signing key", token)
				})
			}
			wg.Wait()
			assert.Equal(t, tc.wantHits, e.jwks.hits.Load(), "JWKS fetches")
		})
	}
}

func TestConcurrentMissesShareOneFetch(t *testing.T) {
	iss := newIssuer(t)
	e := setup(t, iss, func(c *authn.Config) { c.MinRefetchInterval = time.Minute })
	ctx := context.Background()
	_, err := e.v.Verify(ctx, mustToken(t, iss, "user-1", ""))
	require.NoError(t, err, "warm-up")
	require.NoError(t, iss.Rotate())
	e.clock.Advance(2 * time.Minute)
	token := mustToken(t, iss, "user-2", authn.Operator)

	tests := []struct {
		name    string
		callers int
	}{
		{name: "20 callers with the new kid", callers: 20},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// The refetch waits at the issuer until the first caller has
			// reached it, so the others find it running.
			release := e.jwks.hang(t)
			var wg sync.WaitGroup
			for range tc.callers {
				wg.Go(func() {
					_, err := e.v.Verify(ctx, token)
					assert.NoError(t, err)
				})
			}
			e.jwks.waitEntered(t)
			release()
			wg.Wait()
			assert.EqualValues(t, 2, e.jwks.hits.Load(), "JWKS fetches: warm-up and one shared refetch")
		})
	}
}

func TestStaleKeySetIsRefreshedInTheBackground(t *testing.T) {
	iss := newIssuer(t)
	e := setup(t, iss, func(c *authn.Config) { c.MinRefetchInterval = time.Minute })
	first := mustToken(t, iss, "user-1", "")
	runSteps(t, e, []step{
		{name: "first use fetches", token: func(*env) string { return first }, wantHits: 1},
		{
			// Two rotations drop the first key from the JWKS.
			name: "before the set is stale its keys are used as they are",
			do: func(e *env) {
				require.NoError(t, iss.Rotate())
				require.NoError(t, iss.Rotate())
				e.clock.Advance(2 * time.Minute)
			},
			token: func(*env) string { return first }, wantHits: 1,
		},
		{
			// Past maxKeyAge the known kid is still served, and a refresh
			// starts. The token's hour-long lifetime outlives the jump.
			name:  "a stale set serves a known kid and refreshes",
			do:    func(e *env) { e.clock.Advance(authn.MaxKeyAge) },
			token: func(*env) string { return first }, wantHits: 2, settle: true,
		},
		{
			name:  "once refreshed, the withdrawn key no longer verifies",
			token: func(*env) string { return first }, wantErr: "unknown signing key", wantHits: 2,
		},
	})
}

// TestStaleKeySetNeverWaitsOnTheIssuer is the review finding: a stale set
// made requests wait on the issuer, up to the fetch timeout when it hung.
// The issuer here hangs until the test releases it, after the requests are
// done; had they waited, its request would have been abandoned by the
// fetch's own timeout first.
func TestStaleKeySetNeverWaitsOnTheIssuer(t *testing.T) {
	iss := newIssuer(t)
	e := setup(t, iss, func(c *authn.Config) { c.MinRefetchInterval = time.Minute })
	ctx := context.Background()
	token := mustToken(t, iss, "user-1", authn.Admin)
	_, err := e.v.Verify(ctx, token)
	require.NoError(t, err, "warm-up")
	release := e.jwks.hang(t)
	e.clock.Advance(authn.MaxKeyAge + time.Second)

	tests := []struct {
		name    string
		callers int
	}{
		{name: "the request that finds the set stale", callers: 1},
		{name: "requests while the refresh hangs", callers: 20},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var wg sync.WaitGroup
			for range tc.callers {
				wg.Go(func() {
					id, err := e.v.Verify(ctx, token)
					assert.NoError(t, err)
					assert.Equal(t, "user-1", id.Subject)
				})
			}
			wg.Wait()
			assert.False(t, e.jwks.abandoned.Load(), "a request waited for the hung issuer until the fetch gave up")
			// The refresh did start and is stuck at the issuer; it is the
			// only one.
			require.Eventually(t, func() bool { return e.jwks.hits.Load() >= 2 }, time.Minute, time.Millisecond)
			assert.EqualValues(t, 2, e.jwks.hits.Load(), "JWKS fetches: warm-up and one background refresh at a time")
		})
	}
	release()
	authn.WaitForRefresh(e.v)
	assert.EqualValues(t, 2, e.jwks.hits.Load(), "JWKS fetches after the refresh")
	_, err = e.v.Verify(ctx, token)
	require.NoError(t, err, "after the refresh")
	assert.EqualValues(t, 2, e.jwks.hits.Load(), "a fresh set needs no fetch")
}

func TestJWKSUnavailable(t *testing.T) {
	iss := newIssuer(t)
	e := setup(t, iss, func(c *authn.Config) { c.MinRefetchInterval = time.Minute })
	token := mustToken(t, iss, "user-1", "")
	tok := func(*env) string { return token }
	runSteps(t, e, []step{
		{name: "never fetched, issuer down", do: func(e *env) { e.jwks.fail.Store(true) }, token: tok, wantKind: errs.Unavailable, wantHits: 1},
		{name: "failed fetches count against the rate limit", token: tok, wantKind: errs.Unavailable, wantHits: 1},
		{
			name:  "recovered",
			do:    func(e *env) { e.jwks.fail.Store(false); e.clock.Advance(time.Minute + time.Second) },
			token: tok, wantHits: 2,
		},
		{
			name:  "a stale set is kept while the issuer is down",
			do:    func(e *env) { e.jwks.fail.Store(true); e.clock.Advance(authn.MaxKeyAge + time.Second) },
			token: tok, wantHits: 3, settle: true,
		},
		{name: "and still after the failed refresh", token: tok, wantHits: 3},
	})
}

func TestReady(t *testing.T) {
	iss := newIssuer(t)
	tests := []struct {
		name      string
		down      bool
		wantReady bool
		wantErr   string
	}{
		{name: "issuer answers", wantReady: true},
		{name: "issuer down", down: true, wantErr: "AUTH_JWKS_URL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := setup(t, iss, nil)
			e.jwks.fail.Store(tc.down)
			ok, err := e.v.Ready(context.Background())
			assert.Equal(t, tc.wantReady, ok)
			if tc.wantErr == "" {
				require.NoError(t, err)
				assert.EqualValues(t, 1, e.jwks.hits.Load(), "JWKS fetches")
				ok, err = e.v.Ready(context.Background())
				assert.True(t, ok)
				assert.NoError(t, err)
				assert.EqualValues(t, 1, e.jwks.hits.Load(), "JWKS fetches once fetched")
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.wantErr)
			assert.Contains(t, err.Error(), e.jwks.URL, "the error names the JWKS")
		})
	}

	t.Run("StreamSpace tokens only: always ready", func(t *testing.T) {
		v, err := authn.NewVerifier(context.Background(), authn.Config{StreamSpaceSecret: []byte(secret), Users: noUsers{}})
		require.NoError(t, err)
		ok, err := v.Ready(context.Background())
		assert.True(t, ok)
		assert.NoError(t, err)
	})
}
