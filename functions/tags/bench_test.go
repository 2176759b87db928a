package function

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
)

const benchSessions = 10000

var benchTags = []string{"dev", "gpu", "team-a", "long-running", "eu-west"}

func benchStore(b *testing.B) *Store {
	b.Helper()
	pool := dbtest.New(b)
	_, err := pool.Exec(context.Background(), `
		insert into sessions (id, user_id, template_id, state, tags)
		select 'bench-' || g, 'alice', 'firefox', 'running', '["base"]'::jsonb
		from generate_series(1, $1::int) as g`, benchSessions)
	if err != nil {
		b.Fatal(err)
	}
	return &Store{Pool: pool}
}

func benchIDs() []string {
	ids := make([]string, benchSessions)
	for i := range ids {
		ids[i] = fmt.Sprintf("bench-%d", i+1)
	}
	return ids
}

func resetTags(b *testing.B, s *Store) {
	b.Helper()
	b.StopTimer()
	if _, err := s.Pool.Exec(context.Background(), `update sessions set tags = '["base"]'`); err != nil {
		b.Fatal(err)
	}
	b.StartTimer()
}

// BenchmarkBatchAdd adds 5 tags to 10,000 sessions with the one-statement
// batch the route uses.
func BenchmarkBatchAdd(b *testing.B) {
	s := benchStore(b)
	batch := Batch{Operation: OpAdd, SessionIDs: benchIDs(), Tags: benchTags}
	who := authn.Identity{Subject: "alice", Role: authn.User}
	noop := func(context.Context, pgx.Tx, BatchResult) error { return nil }
	for b.Loop() {
		resetTags(b, s)
		res, err := s.Apply(context.Background(), who, batch, noop)
		if err != nil || res.Updated != benchSessions {
			b.Fatalf("updated %d: %v", res.Updated, err)
		}
	}
}

// BenchmarkBatchAddPerSessionLoop is the baseline: the original StreamSpace
// handler's loop, one autocommitted UPDATE per session plus one progress
// update of the batch_operations row.
func BenchmarkBatchAddPerSessionLoop(b *testing.B) {
	s := benchStore(b)
	ids := benchIDs()
	ctx := context.Background()
	tagsJSON := `["dev","gpu","team-a","long-running","eu-west"]`
	var job string
	if err := s.Pool.QueryRow(ctx, `
		insert into batch_operations (user_id, operation_type, resource_type, status, total_items)
		values ('alice', 'tags.add', 'session', 'running', $1) returning id::text`, len(ids)).Scan(&job); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		resetTags(b, s)
		for i, id := range ids {
			tag, err := s.Pool.Exec(ctx, `
				update sessions set tags = (
					select jsonb_agg(distinct elem) from jsonb_array_elements(tags || $1::jsonb) elem),
					updated_at = now()
				where id = $2 and user_id = $3`, tagsJSON, id, "alice")
			if err != nil || tag.RowsAffected() != 1 {
				b.Fatalf("session %s: %v", id, err)
			}
			if _, err := s.Pool.Exec(ctx, `update batch_operations set success_count = $1 where id = $2`, i+1, job); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkBatchAddPerSessionLoopInTx is the loop at its best: the same
// UPDATEs in one transaction, no progress writes.
func BenchmarkBatchAddPerSessionLoopInTx(b *testing.B) {
	s := benchStore(b)
	ids := benchIDs()
	ctx := context.Background()
	for b.Loop() {
		resetTags(b, s)
		err := db.InTx(ctx, s.Pool, func(tx pgx.Tx) error {
			for _, id := range ids {
				tag, err := tx.Exec(ctx, `
					update sessions set tags = (
						select jsonb_agg(distinct elem) from jsonb_array_elements(tags || to_jsonb($1::text[])) elem),
						updated_at = now()
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
		if err != nil {
			b.Fatal(err)
		}
	}
}

func benchCatalog(b *testing.B, rows int) *Store {
	b.Helper()
	pool := dbtest.New(b)
	gen, err := os.ReadFile("../../testdata/catalog_zipf.sql")
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if _, err := pool.Exec(ctx, string(gen), rows); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `analyze catalog_templates`); err != nil {
		b.Fatal(err)
	}
	return &Store{Pool: pool}
}

// BenchmarkPopularTags measures the aggregation over 100,000 catalog
// templates with Zipf-distributed tags, uncached and cached.
func BenchmarkPopularTags(b *testing.B) {
	s := benchCatalog(b, 100000)
	ctx := context.Background()
	category := "category-1"
	b.Run("uncached", func(b *testing.B) {
		for b.Loop() {
			tags, err := s.PopularTags(ctx, nil, DefaultPopularLimit)
			if err != nil || len(tags) != DefaultPopularLimit {
				b.Fatalf("%d tags: %v", len(tags), err)
			}
		}
	})
	b.Run("uncached-category", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.PopularTags(ctx, &category, DefaultPopularLimit); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cached", func(b *testing.B) {
		c := newPopularCache(time.Minute)
		if _, err := c.get(ctx, nil, DefaultPopularLimit, s.PopularTags); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if _, err := c.get(ctx, nil, DefaultPopularLimit, s.PopularTags); err != nil {
				b.Fatal(err)
			}
		}
	})
}
