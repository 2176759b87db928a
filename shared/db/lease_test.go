package db_test

import (
	"context"
	"strconv"
	"testing"
	"testing/synctest"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
	"github.com/streamspace-dev/functions/shared/errs"
)

// patience bounds every wait on a condition: generous, so a busy machine
// never fails a test, and only spent when something is wrong.
const patience = time.Minute

func acquire(t *testing.T, pool *pgxpool.Pool, name, owner string, ttl time.Duration) (*db.Lease, bool) {
	t.Helper()
	l, ok, err := db.AcquireLease(context.Background(), pool, name, owner, ttl)
	require.NoError(t, err, "acquire %s as %s", name, owner)
	require.Equal(t, ok, l != nil, "acquire %s as %s: acquired=%v with lease %v", name, owner, ok, l)
	return l, ok
}

// expire ends a lease by the database clock without waiting for it.
func expire(t *testing.T, pool *pgxpool.Pool, name string) {
	t.Helper()
	mustExec(t, pool, `update job_leases set lease_until = now() - interval '1 second' where name = $1`, name)
}

func owner(t *testing.T, pool *pgxpool.Pool, name string) string {
	t.Helper()
	var o string
	err := pool.QueryRow(context.Background(), `select coalesce((select owner from job_leases where name = $1), '')`, name).Scan(&o)
	require.NoError(t, err)
	return o
}

func dbNow(t *testing.T, pool *pgxpool.Pool) time.Time {
	t.Helper()
	var now time.Time
	require.NoError(t, pool.QueryRow(context.Background(), `select now()`).Scan(&now))
	return now
}

func lost(l *db.Lease) bool {
	select {
	case <-l.Lost():
		return true
	default:
		return false
	}
}

// TestLease runs its steps in order against one lease; holders keeps the
// leases acquired so far by owner.
func TestLease(t *testing.T) {
	t.Parallel()
	pool := dbtest.New(t)
	ctx := context.Background()
	const name = "snapshot/s1"
	holders := map[string]*db.Lease{}

	tests := []struct {
		name  string
		step  func(t *testing.T)
		owner string // who holds the lease afterwards; "" for no row
	}{
		{"the first owner acquires for the TTL by the database clock", func(t *testing.T) {
			before := dbNow(t, pool)
			a, ok := acquire(t, pool, name, "pod-a", time.Minute)
			require.True(t, ok, "not acquired")
			after := dbNow(t, pool)
			assert.False(t, a.Until().Before(before.Add(time.Minute)), "until %v, before %v", a.Until(), before)
			assert.False(t, a.Until().After(after.Add(time.Minute)), "until %v, after %v", a.Until(), after)
			holders["pod-a"] = a
		}, "pod-a"},
		{"a second owner cannot acquire a held lease", func(t *testing.T) {
			_, ok := acquire(t, pool, name, "pod-b", time.Minute)
			assert.False(t, ok)
		}, "pod-a"},
		{"the holder acquires again", func(t *testing.T) {
			_, ok := acquire(t, pool, name, "pod-a", time.Minute)
			assert.True(t, ok)
		}, "pod-a"},
		{"the holder heartbeats", func(t *testing.T) {
			assert.NoError(t, holders["pod-a"].Heartbeat(ctx))
		}, "pod-a"},
		{"a second owner takes over an expired lease", func(t *testing.T) {
			expire(t, pool, name)
			b, ok := acquire(t, pool, name, "pod-b", time.Minute)
			require.True(t, ok)
			holders["pod-b"] = b
		}, "pod-b"},
		{"the old owner's heartbeat finds it lost", func(t *testing.T) {
			err := holders["pod-a"].Heartbeat(ctx)
			assert.Equal(t, errs.Conflict, errs.KindOf(err), "error %v", err)
			assert.True(t, lost(holders["pod-a"]), "Lost is not closed")
		}, "pod-b"},
		{"a release by the old owner changes nothing", func(t *testing.T) {
			require.NoError(t, holders["pod-a"].Release(ctx))
		}, "pod-b"},
		{"a release by the holder removes the row", func(t *testing.T) {
			require.NoError(t, holders["pod-b"].Release(ctx))
		}, ""},
		{"a released lease can be acquired", func(t *testing.T) {
			_, ok := acquire(t, pool, name, "pod-c", time.Minute)
			assert.True(t, ok)
		}, "pod-c"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.step(t)
			assert.Equal(t, tc.owner, owner(t, pool, name))
		})
	}
}

// TestLeaseContext checks the context a lease gives ends with cause
// ErrLeaseLost once the lease is lost, and only then.
func TestLeaseContext(t *testing.T) {
	t.Parallel()
	pool := dbtest.New(t)
	tests := []struct {
		name  string
		end   func(t *testing.T, l *db.Lease, cancel func())
		cause error
	}{
		{name: "the lease is lost to another owner", end: func(t *testing.T, l *db.Lease, _ func()) {
			expire(t, pool, l.Name)
			acquire(t, pool, l.Name, "pod-b", time.Minute)
			assert.Error(t, l.Heartbeat(context.Background()))
		}, cause: db.ErrLeaseLost},
		{name: "cancelled while held", end: func(_ *testing.T, _ *db.Lease, cancel func()) { cancel() },
			cause: context.Canceled},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l, ok := acquire(t, pool, "job/"+strconv.Itoa(i), "pod-a", time.Minute)
			require.True(t, ok)
			ctx, cancel := l.Context(context.Background())
			defer cancel()
			require.NoError(t, ctx.Err(), "a held lease's context has not ended")
			tc.end(t, l, cancel)
			select {
			case <-ctx.Done():
			case <-time.After(patience):
				t.Fatal("the context did not end")
			}
			assert.ErrorIs(t, context.Cause(ctx), tc.cause)
		})
	}
}

func TestLeaseConcurrentAcquire(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		owners []string
	}{
		{"six owners at once", []string{"a", "b", "c", "d", "e", "f"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pool := dbtest.New(t)
			results := make(chan bool)
			for _, o := range tc.owners {
				go func() {
					_, ok, err := db.AcquireLease(context.Background(), pool, "race", o, time.Minute)
					assert.NoError(t, err)
					results <- ok
				}()
			}
			acquired := 0
			for range tc.owners {
				if <-results {
					acquired++
				}
			}
			assert.Equal(t, 1, acquired, "owners")
		})
	}
}

func TestLeaseKeep(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		every time.Duration
	}{
		{"frequent heartbeats", 50 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pool := dbtest.New(t)
			ctx := context.Background()
			const name = "restore/r1"

			a, _ := acquire(t, pool, name, "pod-a", time.Minute)
			first := a.Until()
			stop := a.Keep(ctx, tc.every)
			defer stop()
			require.Eventually(t, func() bool { return a.Until().After(first) }, patience, 10*time.Millisecond,
				"Keep did not extend the lease")

			// a's heartbeats keep renewing the lease, and one may land between
			// the expiry and pod-b's attempt; pod-b retries until it wins.
			require.Eventually(t, func() bool {
				expire(t, pool, name)
				_, ok := acquire(t, pool, name, "pod-b", time.Minute)
				return ok
			}, patience, 10*time.Millisecond, "could not take over the expired lease")
			require.Eventually(t, func() bool { return lost(a) }, patience, 10*time.Millisecond,
				"Keep did not notice the takeover")
			stop()
			assert.Equal(t, "pod-b", owner(t, pool, name))
		})
	}
}

// TestLeaseKeepStops runs Keep in a synctest bubble, whose clock moves only
// once every goroutine in it is blocked: a heartbeat in flight holds the
// clock until it is done, so sleeping there runs every tick due and nothing
// can come late. heartbeat_at is set to -infinity before each check, so any
// renewal shows.
func TestLeaseKeepStops(t *testing.T) {
	t.Parallel()
	cfg := dbtest.New(t).Config().Copy()
	cfg.HealthCheckPeriod = 24 * time.Hour // no pool ticks in the bubble's hour
	tests := []struct {
		name  string
		every time.Duration
	}{
		{"a minute", time.Minute},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ctx := context.Background()
				pool, err := pgxpool.NewWithConfig(ctx, cfg)
				require.NoError(t, err)
				defer pool.Close()
				every := tc.every
				renewed := func() bool {
					t.Helper()
					var b bool
					require.NoError(t, pool.QueryRow(ctx, `select heartbeat_at <> '-infinity' from job_leases where name = 'job'`).Scan(&b))
					return b
				}
				unmark := func() {
					t.Helper()
					mustExec(t, pool, `update job_leases set heartbeat_at = '-infinity' where name = 'job'`)
				}

				a, _ := acquire(t, pool, "job", "pod-a", 3*every)
				unmark()
				stop := a.Keep(ctx, every)
				time.Sleep(every)
				synctest.Wait()
				require.True(t, renewed(), "Keep sent no heartbeat in its first interval")

				unmark()
				stop()
				stop() // a second stop is harmless
				time.Sleep(60 * every)
				synctest.Wait()
				assert.False(t, renewed(), "Keep renewed the lease after stop returned")
				require.NoError(t, a.Release(ctx))
				assert.Equal(t, "", owner(t, pool, "job"), "owner after stop and release")
			})
		})
	}
}

func TestAcquireLeaseInvalid(t *testing.T) {
	tests := []struct {
		name, lname, owner string
		ttl                time.Duration
	}{
		{"no name", "", "o", time.Second},
		{"no owner", "n", "", time.Second},
		{"no ttl", "n", "o", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := db.AcquireLease(context.Background(), nil, tc.lname, tc.owner, tc.ttl)
			assert.Equal(t, errs.Invalid, errs.KindOf(err))
		})
	}
}
