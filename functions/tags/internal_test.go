package function

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/outbox"
	"github.com/streamspace-dev/functions/shared/service"
)

// newTestFunction is a started tags function without its HTTP side: the
// unit-of-work methods on pool, for benchmarks and store tests that call
// them directly.
func newTestFunction(tb testing.TB, pool *pgxpool.Pool) *Function {
	tb.Helper()
	log := slog.New(slog.DiscardHandler)
	ob, err := outbox.New(pool, Name, "", 20, log)
	require.NoError(tb, err)
	return &Function{
		svc:          &service.Service{Name: Name, Pool: pool, Outbox: ob, Log: log},
		cache:        newPopularCache(time.Minute),
		maxStaleness: 5 * time.Minute,
		instance:     "test-" + tb.Name(),
	}
}

// seedUsers adds StreamSpace users (email is NOT NULL UNIQUE) with the given ids.
func seedUsers(tb testing.TB, pool *pgxpool.Pool, ids ...string) {
	tb.Helper()
	for _, id := range ids {
		_, err := pool.Exec(context.Background(),
			`insert into users (id, username, email) values ($1::text, $1::text, $1::text || '@example.com') on conflict do nothing`, id)
		require.NoError(tb, err)
	}
}
