package main

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
)

func TestRun(t *testing.T) {
	tests := []struct {
		name string
		// database is where DATABASE_URL points.
		database func(testing.TB) *pgxpool.Pool
		runs     int
		// wantErr, when set, is what every run's error says; the database
		// is then left as it was.
		wantErr []string
	}{
		{name: "StreamSpace's database, migrated twice", database: dbtest.NewStreamSpace, runs: 2},
		{name: "an already migrated database", database: dbtest.New, runs: 1},
		{name: "an empty database is refused", database: dbtest.NewEmpty, runs: 2,
			wantErr: []string{"StreamSpace's tables", "users", "sessions", "are missing", "DATABASE_URL"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pool := tc.database(t)
			t.Setenv("DATABASE_URL", dbtest.URL(t, pool))
			ctx := context.Background()
			for i := range tc.runs {
				err := run(ctx)
				v, verr := db.SchemaVersion(ctx, pool)
				require.NoError(t, verr)
				if tc.wantErr != nil {
					require.Error(t, err, "run %d", i+1)
					for _, want := range tc.wantErr {
						assert.Contains(t, err.Error(), want, "run %d", i+1)
					}
					assert.Zero(t, v, "run %d: a refused database got a schema version", i+1)
					var tables int
					require.NoError(t, pool.QueryRow(ctx,
						`select count(*) from information_schema.tables where table_schema = current_schema()`).Scan(&tables))
					assert.Zero(t, tables, "run %d: a refused database got tables", i+1)
					continue
				}
				require.NoError(t, err, "run %d", i+1)
				assert.Equal(t, db.LatestVersion(), v, "run %d", i+1)
			}
		})
	}
}

// TestSaysItConnectsDirectly checks the -h text and the log note tell an
// operator not to point the migrations at PgBouncer.
func TestSaysItConnectsDirectly(t *testing.T) {
	tests := []struct {
		name string
		text string
	}{
		{"usage", usage},
		{"log note", directNote},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Contains(t, tc.text, "PgBouncer")
			assert.Contains(t, tc.text, "directly")
		})
	}
}
