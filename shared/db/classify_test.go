package db_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
	"github.com/streamspace-dev/functions/shared/errs"
)

// TestClassifyServerErrors provokes each error from a real server and checks
// its kind and that the server's error stays reachable as the cause.
func TestClassifyServerErrors(t *testing.T) {
	t.Parallel()
	pool := dbtest.New(t)
	ctx := context.Background()
	mustExec(t, pool, `insert into users (id, username, email) values ('u1', 'alice', 'alice@example.com'), ('u2', 'bob', 'bob@example.com')`)

	tests := []struct {
		name     string
		run      func() error
		wantKind errs.Kind
		wantCode string // SQLSTATE of the cause; empty when there is none
	}{
		{
			name:     "duplicate key",
			run:      exec(ctx, pool, `insert into users (id, username, email) values ('u1', 'carol', 'carol@example.com')`),
			wantKind: errs.Conflict,
			wantCode: "23505",
		},
		{
			name: "second share with the same grantee",
			run: func() error {
				const share = `insert into template_shares (id, template_id, shared_by, shared_with_user_id)
				               values ($1, 'tpl1', 'u1', 'u2')`
				if _, err := pool.Exec(ctx, share, "share-1"); err != nil {
					return err
				}
				_, err := pool.Exec(ctx, share, "share-2")
				return err
			},
			wantKind: errs.Conflict,
			wantCode: "23505",
		},
		{
			name:     "missing referenced row",
			run:      exec(ctx, pool, `insert into template_shares (id, template_id, shared_by, shared_with_user_id) values ('share-3', 'tpl2', 'u1', 'ghost')`),
			wantKind: errs.NotFound,
			wantCode: "23503",
		},
		{
			name:     "share with neither a user nor a team",
			run:      exec(ctx, pool, `insert into template_shares (id, template_id, shared_by) values ('share-4', 'tpl1', 'u1')`),
			wantKind: errs.Invalid,
			wantCode: "23514",
		},
		{
			name:     "an outbox event that is not a CloudEvent",
			run:      exec(ctx, pool, `insert into event_outbox (id, function, event) values (gen_random_uuid(), 'tags', '[]')`),
			wantKind: errs.Invalid,
			wantCode: "23514",
		},
		{
			name:     "not null violation",
			run:      exec(ctx, pool, `insert into users (id, username) values ('u5', 'eve')`),
			wantKind: errs.Invalid,
			wantCode: "23502",
		},
		{
			name:     "value too long",
			run:      exec(ctx, pool, `insert into users (id, username, email) values ('u6', repeat('x', 300), 'x@example.com')`),
			wantKind: errs.Invalid,
			wantCode: "22001",
		},
		{
			name: "invalid text representation",
			run: func() error {
				_, err := pool.Exec(ctx, `select * from catalog_templates where id = $1::text::integer`, "not-a-number")
				return err
			},
			wantKind: errs.Invalid,
			wantCode: "22P02",
		},
		{
			name: "no rows",
			run: func() error {
				var id string
				return pool.QueryRow(ctx, `select id from users where id = 'ghost'`).Scan(&id)
			},
			wantKind: errs.NotFound,
		},
		{
			name:     "serialization failure",
			run:      func() error { return serializationFailure(ctx, t, pool) },
			wantKind: errs.Unavailable,
			wantCode: "40001",
		},
		{
			name:     "backend terminated by an administrator",
			run:      func() error { return terminatedBackend(ctx, t, pool) },
			wantKind: errs.Unavailable,
		},
		{
			name:     "syntax error stays internal",
			run:      exec(ctx, pool, `selec 1`),
			wantKind: errs.Internal,
			wantCode: "42601",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			raw := tc.run()
			require.Error(t, raw)
			err := db.Classify(raw)
			assert.Equal(t, tc.wantKind, errs.KindOf(err), "error %v", err)
			assert.ErrorIs(t, err, raw, "the original error is not in the chain")
			if tc.wantCode == "" {
				return
			}
			var pgErr *pgconn.PgError
			require.ErrorAs(t, err, &pgErr)
			assert.Equal(t, tc.wantCode, pgErr.Code)
		})
	}
}

// TestClassifyCodes covers SQLSTATEs that a test cannot easily make a
// server produce, such as running out of connections.
func TestClassifyCodes(t *testing.T) {
	tests := []struct {
		code string
		want errs.Kind
	}{
		{"23505", errs.Conflict},
		{"23P01", errs.Conflict},
		{"23503", errs.NotFound},
		{"23514", errs.Invalid},
		{"22001", errs.Invalid},
		{"08006", errs.Unavailable},
		{"08001", errs.Unavailable},
		{"53300", errs.Unavailable},
		{"53100", errs.Unavailable},
		{"57P01", errs.Unavailable},
		{"57P03", errs.Unavailable},
		{"40P01", errs.Unavailable},
		{"55P03", errs.Unavailable},
		{"42P01", errs.Internal},
		{"XX000", errs.Internal},
	}
	for _, tc := range tests {
		t.Run(tc.code, func(t *testing.T) {
			err := db.Classify(&pgconn.PgError{Code: tc.code, Message: "synthetic"})
			assert.Equal(t, tc.want, errs.KindOf(err))
		})
	}
}

func TestClassifyConnectionRefused(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		conn func(t *testing.T) string
	}{
		{"closed port", func(t *testing.T) string {
			return "postgres://someone@127.0.0.1:" + closedPort(t) + "/db?sslmode=disable"
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := pgx.Connect(context.Background(), tc.conn(t))
			require.Error(t, err)
			assert.Equal(t, errs.Unavailable, errs.KindOf(db.Classify(err)), "error %v", err)
		})
	}
}

func exec(ctx context.Context, pool *pgxpool.Pool, sql string) func() error {
	return func() error {
		_, err := pool.Exec(ctx, sql)
		return err
	}
}

func mustExec(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) {
	t.Helper()
	_, err := pool.Exec(context.Background(), sql, args...)
	require.NoError(t, err, sql)
}

// serializationFailure updates a row that a concurrent repeatable-read
// transaction changed and committed after this one took its snapshot.
func serializationFailure(ctx context.Context, t *testing.T, pool *pgxpool.Pool) error {
	mustExec(t, pool, `insert into job_leases (name, owner, lease_until, heartbeat_at) values ('ser', 'a', now(), now())`)
	tx, err := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	require.NoError(t, err)
	defer tx.Rollback(ctx)
	var owner string
	require.NoError(t, tx.QueryRow(ctx, `select owner from job_leases where name = 'ser'`).Scan(&owner))
	mustExec(t, pool, `update job_leases set owner = 'b' where name = 'ser'`)
	_, err = tx.Exec(ctx, `update job_leases set owner = 'c' where name = 'ser'`)
	return err
}

// terminatedBackend runs a query on a connection whose server process an
// administrator has terminated.
func terminatedBackend(ctx context.Context, t *testing.T, pool *pgxpool.Pool) error {
	conn, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	pid := conn.Conn().PgConn().PID()
	// pg_terminate_backend waits up to its timeout for the backend to exit;
	// a generous one, since on a busy machine that can take a while.
	var ok bool
	require.NoError(t, pool.QueryRow(ctx, `select pg_terminate_backend($1, 60000)`, pid).Scan(&ok))
	require.True(t, ok, "backend %d not terminated", pid)
	_, err = conn.Exec(ctx, `select 1`)
	return err
}
