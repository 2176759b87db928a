package function

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/db/dbtest"
)

// BenchmarkListPage reads one page of 50 shares of a template that has
// 10,000 active shares (and 10,000 revoked ones), first and deep in the list.
func BenchmarkListPage(b *testing.B) {
	pool := dbtest.New(b)
	ctx := context.Background()
	mustExec := func(pool *pgxpool.Pool, sql string) {
		_, err := pool.Exec(ctx, sql)
		require.NoError(b, err, sql)
	}
	mustExec(pool, `insert into users (id, username, email) select 'u' || g, 'u' || g, 'u' || g || '@example.com' from generate_series(1, 20000) g`)
	mustExec(pool, `insert into user_session_templates (id, user_id, name, base_template) values ('big', 'u1', 'Big', 'firefox'), ('small', 'u1', 'Small', 'firefox')`)
	mustExec(pool, `insert into template_shares (id, template_id, shared_by, shared_with_user_id, permission_level, created_at, revoked_at)
		select gen_random_uuid()::text, 'big', 'u1', 'u' || g, 'read', timestamp '2026-01-01' + g * interval '1 second',
			case when g % 2 = 0 then timestamp '2026-06-01' end
		from generate_series(1, 20000) g`)
	mustExec(pool, `insert into template_shares (id, template_id, shared_by, shared_with_user_id, permission_level)
		select gen_random_uuid()::text, 'small', 'u1', 'u' || g, 'read' from generate_series(2, 51) g`)
	mustExec(pool, `analyze`)

	first, next, err := listShares(ctx, pool, "big", ListQuery{Limit: DefaultLimit})
	require.NoError(b, err)
	require.Len(b, first, DefaultLimit)
	require.NotNil(b, next)
	deep := ListQuery{Limit: DefaultLimit}
	for range 150 {
		_, next, err = listShares(ctx, pool, "big", ListQuery{Limit: DefaultLimit, After: deep.After})
		require.NoError(b, err)
		deep.After = next
	}
	tests := []struct {
		name     string
		template string
		q        ListQuery
	}{
		{"first page of 10000", "big", ListQuery{Limit: DefaultLimit}},
		{"page 150 of 10000", "big", deep},
		{"all 50 of a small template", "small", ListQuery{Limit: DefaultLimit}},
	}
	for _, tc := range tests {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				page, _, err := listShares(ctx, pool, tc.template, tc.q)
				if err != nil || len(page) == 0 {
					b.Fatal(fmt.Sprint(len(page), err))
				}
			}
		})
	}
}
