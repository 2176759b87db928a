package fntest_test

import (
	"context"
	"net/http"
	"os"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/service"
)

// idle is a function with no routes: Start is all the test needs.
type idle struct{ svc *service.Service }

func (f *idle) Start(ctx context.Context, env map[string]string) error {
	var cfg service.Base
	svc, err := service.Start(ctx, "idle", env, &cfg, func(cloudevents.Event) error { return nil })
	f.svc = svc
	return err
}
func (f *idle) Stop(ctx context.Context) error                { return f.svc.Stop(ctx) }
func (f *idle) Handle(w http.ResponseWriter, r *http.Request) { f.svc.Handle(w, r) }

// querier runs one query; a pool and a connection both do.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// sameQueryTwice runs one query, then, while another client keeps the
// server connection that PgBouncer handed out last inside a transaction,
// the same query again: through a transaction-mode pooler the second run
// lands on another server connection, where nothing the first one left
// exists.
func sameQueryTwice(ctx context.Context, t *testing.T, q querier, url string) error {
	var n int
	if err := q.QueryRow(ctx, `select $1::int`, 1).Scan(&n); err != nil {
		return err
	}
	other, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer other.Close(ctx)
	tx, err := other.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx)
	_, err = tx.Exec(ctx, `select 1`)
	require.NoError(t, err)
	return q.QueryRow(ctx, `select $1::int`, 2).Scan(&n)
}

// quietDatabase is a new database that only the caller uses, reached through
// PgBouncer: with no other client, PgBouncer's server connections there are
// handed out as sameQueryTwice expects (the last released first).
func quietDatabase(t *testing.T) string {
	t.Helper()
	pool := dbtest.New(t)
	url, err := dbtest.WithDatabase(os.Getenv(fntest.PgBouncerEnv), pool.Config().ConnConfig.Database)
	require.NoError(t, err)
	return url
}

// TestThroughPgBouncer runs in `make test`'s PgBouncer pass (it needs
// TEST_PGBOUNCER_URL): it checks that the functions really reach their
// database through PgBouncer in transaction mode there, and that db.Open's
// pool works through it where pgx's default would not.
func TestThroughPgBouncer(t *testing.T) {
	if os.Getenv(fntest.PgBouncerEnv) == "" {
		t.Skipf("%s is not set: this runs in make test's PgBouncer pass (scripts/with-pgbouncer)", fntest.PgBouncerEnv)
	}
	h := fntest.Start(t, &idle{}, nil)
	ctx := context.Background()
	tests := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"the function is a PgBouncer client", func(t *testing.T) {
			n, err := fntest.BouncerClients(os.Getenv(fntest.PgBouncerEnv), h.Pool.Config().ConnConfig.Database)
			require.NoError(t, err)
			assert.Positive(t, n)
		}},
		{"pgx's default named statements fail there", func(t *testing.T) {
			url := quietDatabase(t)
			conn, err := pgx.Connect(ctx, url)
			require.NoError(t, err)
			defer conn.Close(ctx)
			err = sameQueryTwice(ctx, t, conn, url)
			var pgErr *pgconn.PgError
			require.ErrorAs(t, err, &pgErr, "transaction mode would lose a named statement")
			assert.Equal(t, "26000", pgErr.Code, "prepared statement does not exist")
		}},
		{"db.Open's pool works there", func(t *testing.T) {
			url := quietDatabase(t)
			pool, err := db.Open(ctx, url)
			require.NoError(t, err)
			defer pool.Close()
			assert.NoError(t, sameQueryTwice(ctx, t, pool, url))
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, tc.run)
	}
}
