package db_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
	"github.com/streamspace-dev/functions/shared/errs"
)

func TestSettingsValidate(t *testing.T) {
	ok := db.Defaults()
	with := func(change func(*db.Settings)) db.Settings {
		s := ok
		change(&s)
		return s
	}
	tests := []struct {
		name     string
		settings db.Settings
		wantVars []string // variables the error names; none: valid
	}{
		{name: "defaults", settings: ok},
		{name: "timeouts off", settings: with(func(s *db.Settings) { s.StatementTimeout, s.LockTimeout = 0, 0 })},
		{name: "min equal to max", settings: with(func(s *db.Settings) { s.PoolMin = s.PoolMax })},
		{name: "no connections", settings: with(func(s *db.Settings) { s.PoolMax = 0 }), wantVars: []string{"DATABASE_POOL_MAX"}},
		{name: "min above max", settings: with(func(s *db.Settings) { s.PoolMin = 5 }), wantVars: []string{"DATABASE_POOL_MIN"}},
		{name: "negative min", settings: with(func(s *db.Settings) { s.PoolMin = -1 }), wantVars: []string{"DATABASE_POOL_MIN"}},
		{name: "no idle time", settings: with(func(s *db.Settings) { s.PoolIdle = 0 }), wantVars: []string{"DATABASE_POOL_IDLE"}},
		{
			name:     "negative timeouts, both named",
			settings: with(func(s *db.Settings) { s.StatementTimeout, s.LockTimeout = -time.Second, -time.Second }),
			wantVars: []string{"DATABASE_STATEMENT_TIMEOUT", "DATABASE_LOCK_TIMEOUT"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.settings.Validate()
			if len(tc.wantVars) == 0 {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			for _, v := range tc.wantVars {
				assert.Contains(t, err.Error(), v)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	tests := []struct {
		name string
		got  any
		want any
	}{
		{"pool max", db.Defaults().PoolMax, 4},
		{"pool min", db.Defaults().PoolMin, 0},
		{"idle", db.Defaults().PoolIdle, 30 * time.Second},
		{"statement timeout", db.Defaults().StatementTimeout, 5 * time.Second},
		{"lock timeout", db.Defaults().LockTimeout, 2 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { assert.Equal(t, tc.want, tc.got) })
	}
}

// openOne opens the test database through db.OpenWith with one connection,
// so what a test sees on it is what the next transaction gets.
func openOne(t *testing.T, pool *pgxpool.Pool) *pgxpool.Pool {
	t.Helper()
	s := db.Defaults()
	s.PoolMax = 1
	p, err := db.OpenWith(context.Background(), dbtest.URL(t, pool), s)
	require.NoError(t, err)
	t.Cleanup(p.Close)
	return p
}

func TestOpenWithSizesThePool(t *testing.T) {
	t.Parallel()
	pool := dbtest.New(t)
	tests := []struct {
		name     string
		settings db.Settings
	}{
		{"defaults", db.Defaults()},
		{"configured", db.Settings{PoolMax: 7, PoolMin: 2, PoolIdle: time.Minute, StatementTimeout: time.Second}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := db.OpenWith(context.Background(), dbtest.URL(t, pool), tc.settings)
			require.NoError(t, err)
			defer p.Close()
			cfg := p.Config()
			assert.Equal(t, int32(tc.settings.PoolMax), cfg.MaxConns)
			assert.Equal(t, int32(tc.settings.PoolMin), cfg.MinConns)
			assert.Equal(t, tc.settings.PoolIdle, cfg.MaxConnIdleTime)
			assert.Equal(t, pgx.QueryExecModeCacheDescribe, cfg.ConnConfig.DefaultQueryExecMode)
		})
	}
	t.Run("settings out of range stop it before it connects", func(t *testing.T) {
		_, err := db.OpenWith(context.Background(), "host=/nonexistent", db.Settings{PoolMax: 0, PoolIdle: time.Second})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "DATABASE_POOL_MAX")
	})
}

// TestNoNamedPreparedStatements runs queries, in and out of transactions,
// and checks the server holds no prepared statement for the connection:
// PgBouncer in transaction mode could not route one.
func TestNoNamedPreparedStatements(t *testing.T) {
	t.Parallel()
	p := openOne(t, dbtest.New(t))
	ctx := context.Background()
	tests := []struct {
		name string
		run  func() error
	}{
		{"query outside a transaction", func() error {
			var n int
			return p.QueryRow(ctx, `select count(*) from users where id = $1`, "admin").Scan(&n)
		}},
		{"the same query again", func() error {
			var n int
			return p.QueryRow(ctx, `select count(*) from users where id = $1`, "admin").Scan(&n)
		}},
		{"in a transaction", func() error {
			return db.InTx(ctx, p, func(tx pgx.Tx) error {
				_, err := tx.Exec(ctx, `insert into groups (id, name) values ($1, $1)`, "prepared")
				return err
			})
		}},
		{"a batch", func() error {
			b := &pgx.Batch{}
			b.Queue(`select $1::int`, 1)
			b.Queue(`select $1::text`, "x")
			return p.SendBatch(ctx, b).Close()
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.NoError(t, tc.run())
			var named int
			require.NoError(t, p.QueryRow(ctx, `select count(*) from pg_prepared_statements`).Scan(&named))
			assert.Zero(t, named, "named prepared statements on the server")
		})
	}
}

// setting reads a setting as a transaction sees it.
func setting(ctx context.Context, tx pgx.Tx, name string) (string, error) {
	var v string
	err := tx.QueryRow(ctx, `select current_setting($1)`, name).Scan(&v)
	return v, err
}

func TestTransactionsSetTheirBounds(t *testing.T) {
	t.Parallel()
	p := openOne(t, dbtest.New(t))
	ctx := context.Background()
	configured := db.WithTimeouts(ctx, db.Timeouts{Statement: 1500 * time.Millisecond, Lock: 250 * time.Millisecond})
	tests := []struct {
		name               string
		ctx                context.Context
		read               bool
		wantStmt, wantLock string
		wantReadOnly       string
	}{
		{name: "defaults", ctx: ctx, wantStmt: "5s", wantLock: "2s", wantReadOnly: "off"},
		{name: "configured", ctx: configured, wantStmt: "1500ms", wantLock: "250ms", wantReadOnly: "off"},
		{name: "read, configured", ctx: configured, read: true, wantStmt: "1500ms", wantLock: "250ms", wantReadOnly: "on"},
		{name: "off", ctx: db.WithTimeouts(ctx, db.Timeouts{}), wantStmt: "0", wantLock: "0", wantReadOnly: "off"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			run := db.InTx
			if tc.read {
				run = db.Read
			}
			err := run(tc.ctx, p, func(tx pgx.Tx) error {
				for name, want := range map[string]string{
					"statement_timeout":     tc.wantStmt,
					"lock_timeout":          tc.wantLock,
					"transaction_read_only": tc.wantReadOnly,
				} {
					got, err := setting(tc.ctx, tx, name)
					if err != nil {
						return err
					}
					assert.Equal(t, want, got, name)
				}
				return nil
			})
			require.NoError(t, err)
			// SET LOCAL ended with the transaction: the connection, which
			// PgBouncer would hand to another client, is as it was.
			var stmt, lock string
			require.NoError(t, p.QueryRow(ctx, `select current_setting('statement_timeout'), current_setting('lock_timeout')`).Scan(&stmt, &lock))
			assert.Equal(t, "0", stmt)
			assert.Equal(t, "0", lock)
		})
	}
	t.Run("a savepoint keeps the transaction's bounds", func(t *testing.T) {
		err := db.InTx(configured, p, func(outer pgx.Tx) error {
			return db.InTx(ctx, outer, func(tx pgx.Tx) error {
				got, err := setting(ctx, tx, "lock_timeout")
				assert.Equal(t, "250ms", got)
				return err
			})
		})
		require.NoError(t, err)
	})
	t.Run("a read transaction refuses writes", func(t *testing.T) {
		err := db.Read(ctx, p, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `insert into groups (id, name) values ('ro', 'ro')`)
			return err
		})
		var pgErr *pgconn.PgError
		require.ErrorAs(t, err, &pgErr)
		assert.Equal(t, "25006", pgErr.Code)
	})
}

func TestBeginSQL(t *testing.T) {
	tests := []struct {
		name string
		mode pgx.TxAccessMode
		t    db.Timeouts
		want string
	}{
		{"write", pgx.ReadWrite, db.Timeouts{Statement: 5 * time.Second, Lock: 2 * time.Second},
			"begin; set local statement_timeout = 5000; set local lock_timeout = 2000"},
		{"read", pgx.ReadOnly, db.Timeouts{Statement: 1500 * time.Millisecond},
			"begin read only; set local statement_timeout = 1500; set local lock_timeout = 0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { assert.Equal(t, tc.want, db.BeginSQL(tc.mode, tc.t)) })
	}
}

// TestTransientErrorsAreRetryable makes a real server time out and run out
// of connections, and checks each is Unavailable (503 with Retry-After on
// REST, 5xx on the event path) and comes back within a bound instead of
// hanging.
func TestTransientErrorsAreRetryable(t *testing.T) {
	t.Parallel()
	pool := dbtest.New(t)
	ctx := context.Background()
	mustExec(t, pool, `insert into groups (id, name) values ('locked', 'locked')`)
	short := db.WithTimeouts(ctx, db.Timeouts{Statement: 300 * time.Millisecond, Lock: 200 * time.Millisecond})

	tests := []struct {
		name     string
		run      func(t *testing.T) error
		wantCode string
	}{
		{
			name: "a row another connection keeps locked",
			run: func(t *testing.T) error {
				// StreamSpace's API, say, in a long transaction on the row.
				holder, err := pool.Begin(ctx)
				require.NoError(t, err)
				defer holder.Rollback(ctx)
				_, err = holder.Exec(ctx, `update groups set description = 'busy' where id = 'locked'`)
				require.NoError(t, err)
				return db.InTx(short, pool, func(tx pgx.Tx) error {
					_, err := tx.Exec(short, `update groups set name = 'renamed' where id = 'locked'`)
					return err
				})
			},
			wantCode: "55P03",
		},
		{
			name: "a statement that runs too long",
			run: func(t *testing.T) error {
				return db.Read(short, pool, func(tx pgx.Tx) error {
					_, err := tx.Exec(short, `select pg_sleep(60)`)
					return err
				})
			},
			wantCode: "57014",
		},
		{
			name:     "too many connections",
			run:      func(t *testing.T) error { return tooManyConnections(ctx, t, pool) },
			wantCode: "53300",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			began := time.Now()
			err := tc.run(t)
			// Far below the minute the sleep or the lock would take.
			assert.Less(t, time.Since(began), 30*time.Second, "no bound")
			require.Error(t, err)
			assert.Equal(t, errs.Unavailable, errs.KindOf(err), "error %v", err)
			assert.True(t, errs.Retryable(err), "the broker must retry")
			assert.Equal(t, 503, errs.HTTPStatus(err))
			var pgErr *pgconn.PgError
			require.ErrorAs(t, err, &pgErr)
			assert.Equal(t, tc.wantCode, pgErr.Code)
		})
	}
}

// tooManyConnections connects as a role allowed one connection while that
// one is taken, the way a database at max_connections refuses the next
// client. Superusers are exempt from the limit, so the role is an ordinary
// one, created for the test.
func tooManyConnections(ctx context.Context, t *testing.T, pool *pgxpool.Pool) error {
	role := dbtest.LimitedRole(t, pool, 1)
	first, err := db.Open(ctx, role)
	require.NoError(t, err)
	defer first.Close()
	held, err := first.Acquire(ctx)
	require.NoError(t, err)
	defer held.Release()
	second, err := db.Open(ctx, role)
	if err == nil {
		second.Close()
	}
	return err
}
