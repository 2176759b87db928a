package dbtest

import (
	"context"
	"testing"
	"testing/fstest"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestNewGivesEachTestItsOwnDatabase(t *testing.T) {
	ctx := context.Background()
	var first string
	tests := []struct {
		name string
		run  func(t *testing.T, pool *pgxpool.Pool)
	}{
		{"a adds a group", func(t *testing.T, pool *pgxpool.Pool) {
			first = pool.Config().ConnConfig.Database
			_, err := pool.Exec(ctx, `insert into groups (id, name) values ('t1', 'one')`)
			require.NoError(t, err)
		}},
		{"b does not see it", func(t *testing.T, pool *pgxpool.Pool) {
			assert.NotEqual(t, first, pool.Config().ConnConfig.Database, "the same database twice")
			var n int
			require.NoError(t, pool.QueryRow(ctx, `select count(*) from groups where id = 't1'`).Scan(&n))
			assert.Zero(t, n, "a group of another test's database")
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, New(t)) })
	}

	admin, err := connect(ctx, "")
	require.NoError(t, err)
	defer admin.Close(ctx)
	var exists bool
	require.NoError(t, admin.QueryRow(ctx, `select exists (select 1 from pg_database where datname = $1)`, first).Scan(&exists))
	assert.False(t, exists, "database %s still exists after its test ended", first)
}

func TestConstructorsGiveTheirSchema(t *testing.T) {
	tests := []struct {
		name        string
		new         func(testing.TB) *pgxpool.Pool
		streamspace bool // StreamSpace's tables and seeded rows
		migrated    bool // the project's tables
	}{
		{"New", New, true, true},
		{"NewStreamSpace", NewStreamSpace, true, false},
		{"NewEmpty", NewEmpty, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pool := tc.new(t)
			ctx := context.Background()
			var users, outbox, admins bool
			require.NoError(t, pool.QueryRow(ctx,
				`select to_regclass('users') is not null, to_regclass('event_outbox') is not null`).Scan(&users, &outbox))
			assert.Equal(t, tc.streamspace, users, "StreamSpace's users table")
			assert.Equal(t, tc.migrated, outbox, "the project's event_outbox table")
			if tc.streamspace {
				require.NoError(t, pool.QueryRow(ctx, `select exists (select 1 from users where id = 'admin')`).Scan(&admins))
				assert.True(t, admins, "StreamSpace's seeded admin")
			}
		})
	}
}

func TestURL(t *testing.T) {
	tests := []struct{ name string }{{"the test database"}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pool := New(t)
			ctx := context.Background()
			conn, err := pgx.Connect(ctx, URL(t, pool))
			require.NoError(t, err)
			defer conn.Close(ctx)
			var got string
			require.NoError(t, conn.QueryRow(ctx, `select current_database()`).Scan(&got))
			assert.Equal(t, pool.Config().ConnConfig.Database, got)
		})
	}
}

func TestWithDatabase(t *testing.T) {
	tests := []struct{ name, base, want string }{
		{"empty", "", "dbname=test_x"},
		{"keyword/value", "host=h user=u dbname=app", "host=h user=u dbname=app dbname=test_x"},
		{"URL", "postgres://u:p@h:5432/app?sslmode=disable", "postgres://u:p@h:5432/test_x?sslmode=disable"},
		{"URL with a dbname parameter", "postgresql://u@h/app?dbname=other", "postgresql://u@h/test_x"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := withDatabase(tc.base, "test_x")
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestTemplateNameFollowsSchemaAndMigrations(t *testing.T) {
	const schema = "create table s (id int);"
	migrations := fstest.MapFS{"001_a.sql": {Data: []byte("create table a (id int);")}}
	base, err := templateNameFor(schema, migrations)
	require.NoError(t, err)
	tests := []struct {
		name       string
		schema     string
		migrations fstest.MapFS
		wantSame   bool
	}{
		{"the same schema and migrations", schema, migrations, true},
		{"changed migrations", schema, fstest.MapFS{"001_a.sql": {Data: []byte("create table a (id bigint);")}}, false},
		{"a renamed migration", schema, fstest.MapFS{"001_b.sql": {Data: []byte("create table a (id int);")}}, false},
		{"a changed StreamSpace schema", "create table s (id bigint);", migrations, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := templateNameFor(tc.schema, tc.migrations)
			require.NoError(t, err)
			if tc.wantSame {
				assert.Equal(t, base, got)
			} else {
				assert.NotEqual(t, base, got)
			}
		})
	}
}

func TestDatabaseName(t *testing.T) {
	tests := []struct {
		name     string
		testName string
	}{
		{"subtest with a space", "TestX/sub case"},
		{"long", "TestAVeryLongNameThatGoesOnAndOnAndOnForeverAndEver/with/subtests"},
		{"non-ASCII", "TestÜber/ß"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, b := databaseName(tc.testName), databaseName(tc.testName)
			assert.NotEqual(t, a, b, "names must be unique")
			assert.LessOrEqual(t, len(a), 63, "PostgreSQL truncates names past 63 bytes: %q", a)
			assert.Regexp(t, `^test_[a-z0-9_]+$`, a)
		})
	}
}
