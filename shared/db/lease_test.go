package db_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
	"github.com/streamspace-dev/functions/shared/errs"
)

func acquire(t *testing.T, pool *pgxpool.Pool, name, owner string, ttl time.Duration) (*db.Lease, bool) {
	t.Helper()
	l, ok, err := db.AcquireLease(context.Background(), pool, name, owner, ttl)
	if err != nil {
		t.Fatalf("acquire %s as %s: %v", name, owner, err)
	}
	if ok != (l != nil) {
		t.Fatalf("acquire %s as %s: got acquired=%v with lease %v", name, owner, ok, l)
	}
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
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func TestLease(t *testing.T) {
	t.Parallel()
	pool := dbtest.New(t)
	ctx := context.Background()
	const name = "snapshot/s1"

	a, ok := acquire(t, pool, name, "pod-a", time.Minute)
	if !ok {
		t.Fatal("first owner: not acquired")
	}
	if until := a.Until(); time.Until(until) < 50*time.Second {
		t.Errorf("got lease until %v, want about a minute from now", until)
	}

	if _, ok := acquire(t, pool, name, "pod-b", time.Minute); ok {
		t.Error("second owner acquired a held lease")
	}
	if _, ok := acquire(t, pool, name, "pod-a", time.Minute); !ok {
		t.Error("the holder could not acquire again")
	}
	if err := a.Heartbeat(ctx); err != nil {
		t.Errorf("heartbeat while held: %v", err)
	}

	expire(t, pool, name)
	b, ok := acquire(t, pool, name, "pod-b", time.Minute)
	if !ok {
		t.Fatal("second owner could not take over an expired lease")
	}

	err := a.Heartbeat(ctx)
	if got := errs.KindOf(err); got != errs.Conflict {
		t.Errorf("heartbeat after takeover: got kind %q, want %q (error %v)", got, errs.Conflict, err)
	}
	select {
	case <-a.Lost():
	default:
		t.Error("Lost is not closed after a heartbeat found the lease taken")
	}

	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if got := owner(t, pool, name); got != "pod-b" {
		t.Errorf("release by the old owner: got owner %q, want pod-b", got)
	}
	if err := b.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if got := owner(t, pool, name); got != "" {
		t.Errorf("release by the holder: got owner %q, want no row", got)
	}
	if _, ok := acquire(t, pool, name, "pod-c", time.Minute); !ok {
		t.Error("could not acquire a released lease")
	}
}

func TestLeaseConcurrentAcquire(t *testing.T) {
	t.Parallel()
	pool := dbtest.New(t)
	results := make(chan bool)
	for _, o := range []string{"a", "b", "c", "d", "e", "f"} {
		go func() {
			_, ok, err := db.AcquireLease(context.Background(), pool, "race", o, time.Minute)
			if err != nil {
				t.Error(err)
			}
			results <- ok
		}()
	}
	acquired := 0
	for range 6 {
		if <-results {
			acquired++
		}
	}
	if acquired != 1 {
		t.Errorf("got %d owners, want 1", acquired)
	}
}

func TestLeaseKeep(t *testing.T) {
	t.Parallel()
	pool := dbtest.New(t)
	ctx := context.Background()
	const name = "restore/r1"

	a, _ := acquire(t, pool, name, "pod-a", 2*time.Second)
	first := a.Until()
	stop := a.Keep(ctx, 50*time.Millisecond)
	defer stop()

	deadline := time.Now().Add(5 * time.Second)
	for !a.Until().After(first) {
		if time.Now().After(deadline) {
			t.Fatal("Keep did not extend the lease")
		}
		time.Sleep(20 * time.Millisecond)
	}

	expire(t, pool, name)
	if _, ok := acquire(t, pool, name, "pod-b", time.Minute); !ok {
		t.Fatal("could not take over the expired lease")
	}
	select {
	case <-a.Lost():
	case <-time.After(5 * time.Second):
		t.Fatal("Keep did not notice the takeover")
	}
	stop()
	if got := owner(t, pool, name); got != "pod-b" {
		t.Errorf("got owner %q, want pod-b", got)
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
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		pool, err := pgxpool.NewWithConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Close()
		const every = time.Minute
		renewed := func() bool {
			t.Helper()
			var b bool
			if err := pool.QueryRow(ctx, `select heartbeat_at <> '-infinity' from job_leases where name = 'job'`).Scan(&b); err != nil {
				t.Fatal(err)
			}
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
		if !renewed() {
			t.Fatal("Keep sent no heartbeat in its first interval")
		}

		unmark()
		stop()
		stop() // a second stop is harmless
		time.Sleep(60 * every)
		synctest.Wait()
		if renewed() {
			t.Error("Keep renewed the lease after stop returned")
		}
		if err := a.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if got := owner(t, pool, "job"); got != "" {
			t.Errorf("got owner %q after stop and release, want no row", got)
		}
	})
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
			if got := errs.KindOf(err); got != errs.Invalid {
				t.Errorf("got kind %q, want %q", got, errs.Invalid)
			}
		})
	}
}
