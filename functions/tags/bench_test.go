package function

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
)

const benchSessions = 10000

var benchTags = []string{"dev", "gpu", "team-a", "long-running", "eu-west"}

// benchSessionsDB is a StreamSpace database with user alice owning
// benchSessions sessions tagged ["base"].
func benchSessionsDB(b *testing.B) *pgxpool.Pool {
	b.Helper()
	pool := dbtest.New(b)
	seedUsers(b, pool, "alice")
	_, err := pool.Exec(context.Background(), `
		insert into sessions (id, user_id, template_name, state, tags)
		select 'bench-' || g, 'alice', 'firefox', 'running', '["base"]'::jsonb
		from generate_series(1, $1::int) as g`, benchSessions)
	require.NoError(b, err)
	_, err = pool.Exec(context.Background(), `analyze sessions`)
	require.NoError(b, err)
	return pool
}

func benchIDs() []string {
	ids := make([]string, benchSessions)
	for i := range ids {
		ids[i] = fmt.Sprintf("bench-%d", i+1)
	}
	return ids
}

func resetTags(b *testing.B, pool *pgxpool.Pool) {
	b.Helper()
	b.StopTimer()
	_, err := pool.Exec(context.Background(), `update sessions set tags = '["base"]'`)
	require.NoError(b, err)
	b.StartTimer()
}

// BenchmarkBatchAdd adds 5 tags to 10,000 sessions as the route does: one
// statement, the batch_operations row and the queued event, one transaction.
func BenchmarkBatchAdd(b *testing.B) {
	pool := benchSessionsDB(b)
	f := newTestFunction(b, pool)
	batch := Batch{Operation: OpAdd, SessionIDs: benchIDs(), Tags: benchTags}
	who := authn.Identity{Subject: "alice", Role: authn.User}
	for b.Loop() {
		resetTags(b, pool)
		res, err := f.apply(context.Background(), who, batch)
		require.NoError(b, err)
		require.Equal(b, benchSessions, res.Updated)
	}
}

// BenchmarkBatchAddPerSessionLoop is the baseline: StreamSpace's own
// handler's loop, one autocommitted UPDATE per session plus one progress
// update of the batch_operations row.
func BenchmarkBatchAddPerSessionLoop(b *testing.B) {
	pool := benchSessionsDB(b)
	ids := benchIDs()
	ctx := context.Background()
	tagsJSON := `["dev","gpu","team-a","long-running","eu-west"]`
	job := "batchjob-bench"
	_, err := pool.Exec(ctx, `
		insert into batch_operations (id, user_id, operation_type, resource_type, status, total_items)
		values ($1, 'alice', 'update_tags', 'sessions', 'running', $2)`, job, len(ids))
	require.NoError(b, err)
	for b.Loop() {
		resetTags(b, pool)
		for i, id := range ids {
			tag, err := pool.Exec(ctx, `
				update sessions set tags = (
					select jsonb_agg(distinct elem) from jsonb_array_elements(tags || $1::jsonb) elem),
					updated_at = current_timestamp
				where id = $2 and user_id = $3`, tagsJSON, id, "alice")
			require.NoError(b, err)
			require.EqualValues(b, 1, tag.RowsAffected(), "session %s", id)
			_, err = pool.Exec(ctx, `
				update batch_operations set processed_items = processed_items + 1, success_count = $1
				where id = $2`, i+1, job)
			require.NoError(b, err)
		}
	}
}

// BenchmarkBatchAddPerSessionLoopInTx is the loop at its best: the same
// UPDATEs in one transaction, no progress writes.
func BenchmarkBatchAddPerSessionLoopInTx(b *testing.B) {
	pool := benchSessionsDB(b)
	ids := benchIDs()
	ctx := context.Background()
	for b.Loop() {
		resetTags(b, pool)
		err := db.InTx(ctx, pool, func(tx pgx.Tx) error {
			for _, id := range ids {
				tag, err := tx.Exec(ctx, `
					update sessions set tags = (
						select jsonb_agg(distinct elem) from jsonb_array_elements(tags || to_jsonb($1::text[])) elem),
						updated_at = current_timestamp
					where id = $2 and user_id = $3`, benchTags, id, "alice")
				if err != nil {
					return err
				}
				if tag.RowsAffected() != 1 {
					return fmt.Errorf("session %s not updated", id)
				}
			}
			return nil
		})
		require.NoError(b, err)
	}
}

// benchCatalog is a StreamSpace database holding rows catalog templates
// from testdata/catalog_zipf.sql.
func benchCatalog(b *testing.B, rows int) *pgxpool.Pool {
	b.Helper()
	pool := dbtest.New(b)
	gen, err := os.ReadFile("../../testdata/catalog_zipf.sql")
	require.NoError(b, err)
	ctx := context.Background()
	_, err = pool.Exec(ctx, string(gen), rows)
	require.NoError(b, err)
	_, err = pool.Exec(ctx, `analyze catalog_templates`)
	require.NoError(b, err)
	return pool
}

// BenchmarkPopularTags measures popular tags over 100,000 catalog templates
// with Zipf-distributed text[] tags: a refresh of catalog_tag_counts, and
// reads of it uncached (through the staleness check, as a cache miss does),
// uncached in one category, and cached.
func BenchmarkPopularTags(b *testing.B) {
	pool := benchCatalog(b, 100000)
	f := newTestFunction(b, pool)
	ctx := context.Background()
	outcome, err := f.refresh(ctx, false)
	require.NoError(b, err)
	require.Equal(b, Refreshed, outcome)
	_, err = pool.Exec(ctx, `analyze catalog_tag_counts`)
	require.NoError(b, err)
	category := "category-1"

	b.Run("refresh", func(b *testing.B) {
		for b.Loop() {
			outcome, err := f.refresh(ctx, false)
			require.NoError(b, err)
			require.Equal(b, Refreshed, outcome)
		}
	})
	b.Run("uncached", func(b *testing.B) {
		for b.Loop() {
			tags, err := f.loadPopular(ctx, nil, DefaultPopularLimit)
			require.NoError(b, err)
			require.Len(b, tags, DefaultPopularLimit)
		}
	})
	b.Run("uncached-category", func(b *testing.B) {
		for b.Loop() {
			tags, err := f.loadPopular(ctx, &category, DefaultPopularLimit)
			require.NoError(b, err)
			require.Len(b, tags, DefaultPopularLimit)
		}
	})
	b.Run("cached", func(b *testing.B) {
		_, err := f.cache.get(ctx, nil, DefaultPopularLimit, f.loadPopular)
		require.NoError(b, err)
		for b.Loop() {
			if _, err := f.cache.get(ctx, nil, DefaultPopularLimit, f.loadPopular); err != nil {
				b.Fatal(err)
			}
		}
	})
}
