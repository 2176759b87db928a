package function

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
)

// countingQuerier passes statements to a real transaction and counts them.
type countingQuerier struct {
	querier
	statements int
}

func (c *countingQuerier) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	c.statements++
	return c.querier.Exec(ctx, sql, args...)
}

func (c *countingQuerier) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	c.statements++
	return c.querier.Query(ctx, sql, args...)
}

func (c *countingQuerier) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	c.statements++
	return c.querier.QueryRow(ctx, sql, args...)
}

func (c *countingQuerier) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	c.statements += b.Len()
	return c.querier.SendBatch(ctx, b)
}

// TestBatchIsOneStatement: however many sessions a batch names, applying it
// is one statement, not a round trip per session.
func TestBatchIsOneStatement(t *testing.T) {
	const sessions = 1000
	pool := dbtest.New(t)
	ctx := context.Background()
	seedUsers(t, pool, "alice")
	_, err := pool.Exec(ctx, `
		insert into sessions (id, user_id, template_name, state)
		select 's' || g, 'alice', 'firefox', 'running' from generate_series(1, $1::int) as g`, sessions)
	require.NoError(t, err)
	ids := make([]string, sessions+1)
	for i := range sessions {
		ids[i] = fmt.Sprintf("s%d", i+1)
	}
	ids[sessions] = "missing"
	alice := "alice"

	tests := []struct {
		name  string
		batch Batch
	}{
		{"add", Batch{Operation: OpAdd, SessionIDs: ids, Tags: []string{"a", "b"}}},
		{"remove", Batch{Operation: OpRemove, SessionIDs: ids, Tags: []string{"a"}}},
		{"replace", Batch{Operation: OpReplace, SessionIDs: ids, Tags: []string{"c"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var results []SessionResult
			var counted *countingQuerier
			err := db.InTx(ctx, pool, func(tx pgx.Tx) error {
				counted = &countingQuerier{querier: tx}
				var err error
				results, err = applyBatch(ctx, counted, &alice, tc.batch)
				return err
			})
			require.NoError(t, err)
			assert.Equal(t, 1, counted.statements)
			require.Len(t, results, sessions+1)
			assert.Equal(t, SessionResult{SessionID: "s1", Outcome: Updated}, results[0])
			assert.Equal(t, SessionResult{SessionID: "missing", Outcome: NotFound}, results[sessions])
		})
	}
}

// TestRefreshOutcomes drives refresh through each of its outcomes on one
// database, in order.
func TestRefreshOutcomes(t *testing.T) {
	pool := dbtest.New(t)
	ctx := context.Background()
	f := newTestFunction(t, pool)
	held := func(t *testing.T) (release func()) {
		tx, err := pool.Begin(ctx)
		require.NoError(t, err)
		_, err = tx.Exec(ctx, `select 1 from job_leases where name = $1 for update`, refreshJob)
		require.NoError(t, err)
		return func() { require.NoError(t, tx.Rollback(ctx)) }
	}

	tests := []struct {
		name        string
		before      func(t *testing.T) (after func())
		onlyIfStale bool
		want        Refresh
	}{
		{"the first refresh", nil, true, Refreshed},
		{"a conditional refresh of a fresh view", nil, true, Fresh},
		{"an unconditional refresh of a fresh view", nil, false, Refreshed},
		{"a refresh while another holds the view", held, false, Busy},
		{"a conditional refresh after a request", func(t *testing.T) func() {
			require.NoError(t, requestRefresh(ctx, pool, "other"))
			return nil
		}, true, Refreshed},
		{"a conditional refresh after that", nil, true, Fresh},
		{"a conditional refresh of an old view", func(t *testing.T) func() {
			_, err := pool.Exec(ctx, `update job_leases set heartbeat_at = now() - interval '6 minutes' where name = $1`, refreshJob)
			require.NoError(t, err)
			return nil
		}, true, Refreshed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.before != nil {
				if after := tc.before(t); after != nil {
					defer after()
				}
			}
			got, err := f.refresh(ctx, tc.onlyIfStale)
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

// TestBatchLeavesForeignKeyChecksUnblocked: while a batch's transaction is
// open, StreamSpace may still insert rows that reference the sessions it
// updates (a snapshot of one, say). The insert's foreign-key check takes a
// key-share lock on the session; the batch changes no key, so it must lock
// its sessions "for no key update", which does not conflict with that.
func TestBatchLeavesForeignKeyChecksUnblocked(t *testing.T) {
	pool := dbtest.New(t)
	ctx := context.Background()
	seedUsers(t, pool, "alice")
	_, err := pool.Exec(ctx, `insert into sessions (id, user_id, template_name, state) values ('s1', 'alice', 'firefox', 'running')`)
	require.NoError(t, err)
	alice := "alice"
	tests := []struct {
		name  string
		batch Batch
		owner *string
	}{
		{name: "a user's add", batch: Batch{Operation: OpAdd, SessionIDs: []string{"s1"}, Tags: []string{"x"}}, owner: &alice},
		{name: "an admin's replace", batch: Batch{Operation: OpReplace, SessionIDs: []string{"s1"}, Tags: []string{"y"}}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			batchTx, err := pool.Begin(ctx)
			require.NoError(t, err)
			defer batchTx.Rollback(ctx)
			got, err := applyBatch(ctx, batchTx, tc.owner, tc.batch)
			require.NoError(t, err)
			require.Equal(t, []SessionResult{{SessionID: "s1", Outcome: "updated"}}, got)

			// StreamSpace's insert, with the batch still open. Blocked, it
			// would fail at the lock timeout instead of waiting.
			insertTx, err := pool.Begin(ctx)
			require.NoError(t, err)
			defer insertTx.Rollback(ctx)
			_, err = insertTx.Exec(ctx, `set local lock_timeout = '5s'`)
			require.NoError(t, err)
			_, err = insertTx.Exec(ctx, `insert into session_snapshots (id, session_id, user_id, name, status) values ($1, 's1', 'alice', 'n', 'creating')`,
				fmt.Sprintf("snap-%d", i))
			assert.NoError(t, err, "the batch's row lock blocks a foreign-key check")
		})
	}
}
