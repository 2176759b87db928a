package db_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

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
	mustExec(t, pool, `insert into users (id, username) values ('u1', 'alice')`)
	mustExec(t, pool, `insert into user_session_templates (id, user_id, name) values ('tpl1', 'u1', 'Desk')`)

	tests := []struct {
		name     string
		run      func() error
		wantKind errs.Kind
		wantCode string // SQLSTATE of the cause; empty when there is none
	}{
		{
			name:     "duplicate key",
			run:      exec(ctx, pool, `insert into users (id, username) values ('u1', 'bob')`),
			wantKind: errs.Conflict,
			wantCode: "23505",
		},
		{
			name: "second active share for the same grantee",
			run: func() error {
				const share = `insert into template_shares (template_id, shared_by, shared_with_user_id)
				               values ('tpl1', 'u1', 'u2')`
				if err := exec(ctx, pool, share)(); err != nil {
					return err
				}
				return exec(ctx, pool, share)()
			},
			wantKind: errs.Conflict,
			wantCode: "23505",
		},
		{
			name:     "missing referenced row",
			run:      exec(ctx, pool, `insert into template_shares (template_id, shared_by, shared_with_user_id) values ('nope', 'u1', 'u2')`),
			wantKind: errs.NotFound,
			wantCode: "23503",
		},
		{
			name:     "check violation",
			run:      exec(ctx, pool, `insert into users (id, username, role) values ('u3', 'carol', 'root')`),
			wantKind: errs.Invalid,
			wantCode: "23514",
		},
		{
			name:     "share with neither a user nor a team",
			run:      exec(ctx, pool, `insert into template_shares (template_id, shared_by) values ('tpl1', 'u1')`),
			wantKind: errs.Invalid,
			wantCode: "23514",
		},
		{
			name:     "tags that are not an array",
			run:      exec(ctx, pool, `insert into sessions (id, user_id, tags) values ('s1', 'u1', '{"a": 1}')`),
			wantKind: errs.Invalid,
			wantCode: "23514",
		},
		{
			name:     "not null violation",
			run:      exec(ctx, pool, `insert into users (id, username) values ('u5', null)`),
			wantKind: errs.Invalid,
			wantCode: "23502",
		},
		{
			name: "invalid text representation",
			run: func() error {
				_, err := pool.Exec(ctx, `select * from batch_operations where id = $1::text::uuid`, "not-a-uuid")
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
			if raw == nil {
				t.Fatal("got no error, want one")
			}
			err := db.Classify(raw)
			if got := errs.KindOf(err); got != tc.wantKind {
				t.Errorf("got kind %q, want %q (error %v)", got, tc.wantKind, err)
			}
			if !errors.Is(err, raw) {
				t.Errorf("the original error %v is not in the chain of %v", raw, err)
			}
			if tc.wantCode == "" {
				return
			}
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) {
				t.Fatalf("no *pgconn.PgError in %v", err)
			}
			if pgErr.Code != tc.wantCode {
				t.Errorf("got SQLSTATE %s, want %s", pgErr.Code, tc.wantCode)
			}
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
			if got := errs.KindOf(err); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestClassifyConnectionRefused(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := pgx.Connect(ctx, "postgres://someone@127.0.0.1:"+closedPort(t)+"/db?sslmode=disable")
	if err == nil {
		t.Fatal("got no error, want one")
	}
	if got := errs.KindOf(db.Classify(err)); got != errs.Unavailable {
		t.Errorf("got kind %q, want %q (error %v)", got, errs.Unavailable, err)
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
	if _, err := pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// serializationFailure updates a row that a concurrent repeatable-read
// transaction changed and committed after this one took its snapshot.
func serializationFailure(ctx context.Context, t *testing.T, pool *pgxpool.Pool) error {
	mustExec(t, pool, `insert into job_leases (name, owner, lease_until, heartbeat_at) values ('ser', 'a', now(), now())`)
	tx, err := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	var owner string
	if err := tx.QueryRow(ctx, `select owner from job_leases where name = 'ser'`).Scan(&owner); err != nil {
		t.Fatal(err)
	}
	mustExec(t, pool, `update job_leases set owner = 'b' where name = 'ser'`)
	_, err = tx.Exec(ctx, `update job_leases set owner = 'c' where name = 'ser'`)
	return err
}

// terminatedBackend runs a query on a connection whose server process an
// administrator has terminated.
func terminatedBackend(ctx context.Context, t *testing.T, pool *pgxpool.Pool) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	pid := conn.Conn().PgConn().PID()
	var ok bool
	if err := pool.QueryRow(ctx, `select pg_terminate_backend($1, 5000)`, pid).Scan(&ok); err != nil || !ok {
		t.Fatalf("terminate backend %d: %v %v", pid, ok, err)
	}
	_, err = conn.Exec(ctx, `select 1`)
	return err
}
