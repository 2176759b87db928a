package db_test

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/streamspace-dev/functions/shared/db/dbtest"
)

// recount is the oracle: the counts computed from catalog_templates by a
// full scan, as catalog_tag_counts must always hold them.
func recount(t *testing.T, pool *pgxpool.Pool) (want, got map[string]int64) {
	t.Helper()
	read := func(sql string) map[string]int64 {
		rows, err := pool.Query(context.Background(), sql)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		out := map[string]int64{}
		for rows.Next() {
			var cat, tag string
			var n int64
			if err := rows.Scan(&cat, &tag, &n); err != nil {
				t.Fatal(err)
			}
			out[cat+"/"+tag] = n
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return out
	}
	want = read(`
		select coalesce(c.category, ''), t.tag, count(distinct c.id)
		from catalog_templates c
		cross join lateral jsonb_array_elements(case when jsonb_typeof(c.tags) = 'array' then c.tags else '[]' end) as e
		cross join lateral (select e #>> '{}' as tag) as t
		where jsonb_typeof(e) = 'string' and btrim(t.tag) <> ''
		group by 1, 2`)
	got = read(`select category, tag, templates from catalog_tag_counts`)
	return want, got
}

func checkCounts(t *testing.T, pool *pgxpool.Pool, step string) {
	t.Helper()
	want, got := recount(t, pool)
	if !maps.Equal(want, got) {
		t.Fatalf("after %s:\n got  %v\n want %v", step, got, want)
	}
}

func TestCatalogTagCountsFollowEveryWrite(t *testing.T) {
	t.Parallel()
	pool := dbtest.New(t)
	ctx := context.Background()
	steps := []struct{ name, sql string }{
		{"insert", `insert into catalog_templates (id, name, category, tags) values
			('a', 'a', 'web', '["x","y","x"]'), ('b', 'b', 'web', '["x"]'), ('c', 'c', null, '["x", 1, null, "", " ", {"k":"v"}]'),
			('d', 'd', 'ide', null), ('e', 'e', 'ide', '{"x":1}'), ('f', 'f', 'ide', '"x"'), ('g', 'g', 'ide', '[]')`},
		{"update tags", `update catalog_templates set tags = '["y","z"]' where id = 'a'`},
		{"update category", `update catalog_templates set category = 'ide' where id = 'b'`},
		{"update to non-array", `update catalog_templates set tags = '{"y":1}' where id = 'a'`},
		{"update from non-array", `update catalog_templates set tags = '["w"]' where id = 'e'`},
		{"no-op update", `update catalog_templates set name = 'renamed'`},
		{"delete", `delete from catalog_templates where id in ('b', 'c')`},
		{"truncate", `truncate catalog_templates`},
		{"insert after truncate", `insert into catalog_templates (id, name, category, tags) values ('h', 'h', 'web', '["x"]')`},
	}
	for _, s := range steps {
		if _, err := pool.Exec(ctx, s.sql); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		checkCounts(t, pool, s.name)
	}
	var zeros int
	pool.QueryRow(ctx, `select count(*) from catalog_tag_counts where templates = 0`).Scan(&zeros)
	if zeros != 0 {
		t.Errorf("%d zero rows left behind", zeros)
	}
}

func TestCatalogTagCountsUnderConcurrentWriters(t *testing.T) {
	t.Parallel()
	pool := dbtest.New(t)
	ctx := context.Background()
	tags := []string{"a", "b", "c", "d"}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for i := range 40 {
				id := fmt.Sprintf("w%d-%d", w, i%10)
				tagset := fmt.Sprintf(`["%s","%s"]`, tags[r.IntN(len(tags))], tags[r.IntN(len(tags))])
				var err error
				switch r.IntN(3) {
				case 0:
					_, err = pool.Exec(ctx, `insert into catalog_templates (id, name, category, tags) values ($1, $1, 'c', $2)
						on conflict (id) do update set tags = excluded.tags`, id, tagset)
				case 1:
					_, err = pool.Exec(ctx, `update catalog_templates set tags = $2 where id = $1`, id, tagset)
				default:
					_, err = pool.Exec(ctx, `delete from catalog_templates where id = $1`, id)
				}
				if err != nil {
					t.Errorf("writer %d: %v", w, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	checkCounts(t, pool, "concurrent writers")
}
