package db_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
	"github.com/streamspace-dev/functions/shared/errs"
)

// insertGroup adds a StreamSpace group (a team) named id.
func insertGroup(ctx context.Context, id string) func(pgx.Tx) error {
	return func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `insert into groups (id, name) values ($1, $1)`, id)
		return err
	}
}

func groupExists(t *testing.T, pool *pgxpool.Pool, id string) bool {
	t.Helper()
	var ok bool
	err := pool.QueryRow(context.Background(), `select exists (select 1 from groups where id = $1)`, id).Scan(&ok)
	require.NoError(t, err)
	return ok
}

func TestInTx(t *testing.T) {
	t.Parallel()
	pool := dbtest.New(t)
	ctx := context.Background()
	require.NoError(t, db.InTx(ctx, pool, insertGroup(ctx, "existing")))
	boom := errs.E(errs.Forbidden, "boom")

	tests := []struct {
		name      string
		run       func(t *testing.T) error
		wantErr   error     // errors.Is the returned error; nil: no error
		wantKind  errs.Kind // of the returned error, when set
		wantPanic any
		kept      []string // groups that must exist afterwards
		gone      []string // groups that must not
	}{
		{
			name: "commits",
			run:  func(*testing.T) error { return db.InTx(ctx, pool, insertGroup(ctx, "committed")) },
			kept: []string{"committed"},
		},
		{
			name: "rolls back on error",
			run: func(*testing.T) error {
				return db.InTx(ctx, pool, func(tx pgx.Tx) error {
					if err := insertGroup(ctx, "failed")(tx); err != nil {
						return err
					}
					return boom
				})
			},
			wantErr: boom,
			gone:    []string{"failed"},
		},
		{
			name:     "classifies errors",
			run:      func(*testing.T) error { return db.InTx(ctx, pool, insertGroup(ctx, "existing")) },
			wantKind: errs.Conflict,
		},
		{
			name: "rolls back on panic",
			run: func(t *testing.T) error {
				return db.InTx(ctx, pool, func(tx pgx.Tx) error {
					require.NoError(t, insertGroup(ctx, "panicked")(tx))
					panic("boom")
				})
			},
			wantPanic: "boom",
			gone:      []string{"panicked"},
		},
		{
			name: "savepoint inside a transaction",
			run: func(t *testing.T) error {
				return db.InTx(ctx, pool, func(outer pgx.Tx) error {
					if err := insertGroup(ctx, "outer")(outer); err != nil {
						return err
					}
					inner := db.InTx(ctx, outer, func(tx pgx.Tx) error {
						if err := insertGroup(ctx, "inner")(tx); err != nil {
							return err
						}
						return errors.New("undo the inner part only")
					})
					assert.Error(t, inner, "no error from the inner transaction")
					return nil
				})
			},
			kept: []string{"outer"},
			gone: []string{"inner"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.wantPanic != nil {
				assert.PanicsWithValue(t, tc.wantPanic, func() { err = tc.run(t) })
			} else {
				err = tc.run(t)
			}
			switch {
			case tc.wantErr != nil:
				assert.ErrorIs(t, err, tc.wantErr)
			case tc.wantKind != "":
				assert.Equal(t, tc.wantKind, errs.KindOf(err), "error %v", err)
			default:
				assert.NoError(t, err)
			}
			for _, id := range tc.kept {
				assert.True(t, groupExists(t, pool, id), "group %s missing", id)
			}
			for _, id := range tc.gone {
				assert.False(t, groupExists(t, pool, id), "group %s survived", id)
			}
			assert.Zero(t, pool.Stat().AcquiredConns(), "connections still acquired")
		})
	}
}

// TestMarkProcessedOnce delivers one event ten times, five of them at once;
// each delivery increments a counter unless the event was processed before.
func TestMarkProcessedOnce(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name                   string
		concurrent, sequential int
	}{
		{"five at once, then five in a row", 5, 5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pool := dbtest.New(t)
			ctx := context.Background()
			mustExec(t, pool, `create table counter (n int not null)`)
			mustExec(t, pool, `insert into counter values (0)`)

			deliver := func() (bool, error) {
				var first bool
				err := db.InTx(ctx, pool, func(tx pgx.Tx) error {
					var err error
					first, err = db.MarkProcessed(ctx, tx, "tags", "/streamspace/ui", "event-1")
					if err != nil || !first {
						return err
					}
					_, err = tx.Exec(ctx, `update counter set n = n + 1`)
					return err
				})
				return first, err
			}

			var (
				wg     sync.WaitGroup
				mu     sync.Mutex
				firsts int
			)
			for range tc.concurrent {
				wg.Go(func() {
					first, err := deliver()
					assert.NoError(t, err, "concurrent delivery")
					if first {
						mu.Lock()
						firsts++
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			for range tc.sequential {
				first, err := deliver()
				assert.NoError(t, err, "sequential delivery")
				if first {
					firsts++
				}
			}
			var n int
			require.NoError(t, pool.QueryRow(ctx, `select n from counter`).Scan(&n))
			assert.Equal(t, 1, n, "effects")
			assert.Equal(t, 1, firsts, "first deliveries")
		})
	}
}

func TestMarkProcessed(t *testing.T) {
	t.Parallel()
	pool := dbtest.New(t)
	ctx := context.Background()
	rollback := errors.New("roll back")
	// The steps run in order against one database.
	tests := []struct {
		name                 string
		function, source, id string
		commit               bool
		wantFirst            bool
		wantKind             errs.Kind // of the error, when one is expected
	}{
		{"first delivery", "tags", "src", "a", false, true, ""},
		{"after a rollback the record is gone", "tags", "src", "a", true, true, ""},
		{"redelivery", "tags", "src", "a", true, false, ""},
		{"another function records its own", "sharing", "src", "a", true, true, ""},
		{"same id from another source", "tags", "other-src", "a", true, true, ""},
		{"empty source", "tags", "", "a", true, false, errs.Invalid},
		{"empty id", "tags", "src", "", true, false, errs.Invalid},
		{"empty function", "", "src", "a", true, false, errs.Invalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var first bool
			err := db.InTx(ctx, pool, func(tx pgx.Tx) error {
				var err error
				first, err = db.MarkProcessed(ctx, tx, tc.function, tc.source, tc.id)
				if err == nil && !tc.commit {
					return rollback
				}
				return err
			})
			if tc.wantKind != "" {
				assert.Equal(t, tc.wantKind, errs.KindOf(err), "error %v", err)
				return
			}
			if !tc.commit {
				require.ErrorIs(t, err, rollback)
			} else {
				require.NoError(t, err)
			}
			assert.Equal(t, tc.wantFirst, first)
		})
	}
}

func TestPruneProcessed(t *testing.T) {
	t.Parallel()
	pool := dbtest.New(t)
	ctx := context.Background()
	// Rows of two functions, each with one record per day for ten days.
	mustExec(t, pool, `
		insert into processed_events (source, id, function, processed_at)
		select '/test', 'e' || d, f, now() - make_interval(days => d) - interval '1 minute'
		from unnest(array['tags', 'sharing']) as f, generate_series(0, 9) as d`)

	tests := []struct {
		name      string
		function  string
		retention time.Duration
		wantErr   errs.Kind
		wantGone  int64
		wantLeft  map[string]int // rows left per function afterwards
	}{
		{"keeps everything younger than the retention", "tags", 30 * 24 * time.Hour, "", 0,
			map[string]int{"tags": 10, "sharing": 10}},
		{"deletes only this function's old rows", "tags", 7 * 24 * time.Hour, "", 3,
			map[string]int{"tags": 7, "sharing": 10}},
		{"again: nothing more to delete", "tags", 7 * 24 * time.Hour, "", 0,
			map[string]int{"tags": 7, "sharing": 10}},
		{"another function, a shorter retention", "sharing", 24 * time.Hour, "", 9,
			map[string]int{"tags": 7, "sharing": 1}},
		{"a zero retention is refused", "tags", 0, errs.Invalid, 0,
			map[string]int{"tags": 7, "sharing": 1}},
		{"a negative retention is refused", "tags", -time.Hour, errs.Invalid, 0,
			map[string]int{"tags": 7, "sharing": 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n, err := db.PruneProcessed(ctx, pool, tc.function, tc.retention)
			if tc.wantErr != "" {
				assert.Equal(t, tc.wantErr, errs.KindOf(err), "error %v", err)
			} else {
				require.NoError(t, err)
			}
			assert.Equal(t, tc.wantGone, n)
			for function, want := range tc.wantLeft {
				var left int
				require.NoError(t, pool.QueryRow(ctx, `select count(*) from processed_events where function = $1`, function).Scan(&left))
				assert.Equal(t, want, left, "rows of %s", function)
			}
		})
	}
}

// TestPruneProcessedUsesTheIndex checks the plan of the prune statement over
// many rows, most of them too young to prune: the processed_at index finds
// the old ones instead of a scan of the whole table.
func TestPruneProcessedUsesTheIndex(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		rows int
		old  int
	}{
		{"100,000 rows, 100 to prune", 100_000, 100},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pool := dbtest.New(t)
			ctx := context.Background()
			mustExec(t, pool, `
				insert into processed_events (source, id, function, processed_at)
				select '/test', 'e' || i, case when i % 3 = 0 then 'sharing' else 'tags' end,
				       case when i <= $2 then now() - interval '30 days' else now() - make_interval(secs => i) end
				from generate_series(1, $1::int) as i`, tc.rows, tc.old)
			mustExec(t, pool, `analyze processed_events`)

			tx, err := pool.Begin(ctx)
			require.NoError(t, err)
			defer tx.Rollback(ctx)
			rows, err := tx.Query(ctx, `explain (format text) `+db.PruneProcessedSQL, "tags", (7 * 24 * time.Hour).Seconds())
			require.NoError(t, err)
			var plan []string
			for rows.Next() {
				var line string
				require.NoError(t, rows.Scan(&line))
				plan = append(plan, line)
			}
			require.NoError(t, rows.Err())
			text := strings.Join(plan, "\n")
			assert.Contains(t, text, "processed_events_processed_at_idx", "plan:\n%s", text)
			assert.NotContains(t, text, "Seq Scan", "plan:\n%s", text)
			t.Logf("plan:\n%s", text)
		})
	}
}
