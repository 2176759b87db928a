package db_test

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
)

// projectTables are the tables the migrations create; nothing else is ours.
var projectTables = []string{"auth_identities", "auth_login_states", "auth_provider_groups", "autoscale_policy_state", "autoscale_recommendations", "event_dead_letters", "event_outbox", "job_leases", "mailtest_env_integration", "processed_events", "schema_version"}

func TestMigrateRefusesADatabaseWithoutStreamSpace(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// setup prepares the database before Migrate runs.
		setup       string
		wantMissing []string
	}{
		{name: "empty", setup: "", wantMissing: sortedCopy(db.StreamSpaceTables)},
		{
			name:        "some of StreamSpace's tables",
			setup:       "create table users (id varchar(255) primary key); create table sessions (id varchar(255) primary key)",
			wantMissing: without(db.StreamSpaceTables, "users", "sessions"),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pool := dbtest.NewEmpty(t)
			ctx := context.Background()
			if tc.setup != "" {
				_, err := pool.Exec(ctx, tc.setup)
				require.NoError(t, err)
			}
			before := tableNames(t, pool)

			err := migrate(t, pool)

			var missing *db.MissingTablesError
			require.ErrorAs(t, err, &missing)
			assert.Equal(t, tc.wantMissing, missing.Tables)
			assert.Contains(t, err.Error(), "StreamSpace's tables "+strings.Join(tc.wantMissing, ", ")+" are missing")
			assert.Equal(t, before, tableNames(t, pool), "a refused migration must create nothing")
		})
	}
}

func TestMigrateLeavesStreamSpaceAsItWas(t *testing.T) {
	t.Parallel()
	pool := dbtest.NewStreamSpace(t)
	ctx := context.Background()
	rows, err := os.ReadFile(filepath.Join(repoRoot(t), "testdata/streamspace/rows.sql"))
	require.NoError(t, err)
	_, err = pool.Exec(ctx, string(rows))
	require.NoError(t, err)

	streamspace := tableNames(t, pool)
	columns := columnsOf(t, pool, streamspace)
	before := snapshot(t, pool, columns)
	constraintsBefore := strs(t, pool, constraintsSQL, streamspace)
	columnsBefore := strs(t, pool, columnsSQL)

	require.NoError(t, migrate(t, pool))
	first := schema(t, pool)

	tests := []struct {
		name  string
		check func(t *testing.T)
	}{
		{"every StreamSpace row is unchanged", func(t *testing.T) {
			assert.Equal(t, before, snapshot(t, pool, columns))
		}},
		{"only the project's tables are new", func(t *testing.T) {
			assert.ElementsMatch(t, append(append([]string{}, streamspace...), projectTables...), tableNames(t, pool))
		}},
		{"no StreamSpace column is retyped or dropped", func(t *testing.T) {
			assert.Subset(t, strs(t, pool, columnsSQL), columnsBefore)
		}},
		{"no constraint is added to or taken from StreamSpace's tables", func(t *testing.T) {
			assert.Equal(t, constraintsBefore, strs(t, pool, constraintsSQL, streamspace))
		}},
		{"no trigger is installed on StreamSpace's tables", func(t *testing.T) {
			assert.Empty(t, strs(t, pool, `
				select tgrelid::regclass::text || ' ' || tgname from pg_trigger
				where not tgisinternal and tgrelid::regclass::text = any($1)`, streamspace))
		}},
		{"the schema is at the latest version", func(t *testing.T) {
			v, err := db.SchemaVersion(ctx, pool)
			require.NoError(t, err)
			assert.Equal(t, db.LatestVersion(), v)
		}},
		{"a second migrate changes nothing", func(t *testing.T) {
			require.NoError(t, migrate(t, pool))
			assert.Equal(t, first, schema(t, pool))
			assert.Equal(t, before, snapshot(t, pool, columns))
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, tc.check)
	}
}

// TestDownMigrationsLeaveStreamSpaceAlone reads every migration's down
// section: rolling back may drop what the project created, never a
// StreamSpace table or column.
func TestDownMigrationsLeaveStreamSpaceAlone(t *testing.T) {
	t.Parallel()
	entries, err := fs.ReadDir(db.Migrations(), ".")
	require.NoError(t, err)
	require.NotEmpty(t, entries)
	for _, e := range entries {
		t.Run(e.Name(), func(t *testing.T) {
			b, err := fs.ReadFile(db.Migrations(), e.Name())
			require.NoError(t, err)
			_, down, _ := strings.Cut(string(b), "---- create above / drop below ----")
			for _, table := range db.StreamSpaceTables {
				assert.NotRegexp(t, regexp.MustCompile(`(?i)\b`+table+`\b`), down,
					"the down section names StreamSpace's table %s", table)
			}
		})
	}
}

func TestTemplateDatabaseIsMigratedStreamSpace(t *testing.T) {
	t.Parallel()
	pool := dbtest.New(t)
	v, err := db.SchemaVersion(context.Background(), pool)
	require.NoError(t, err)
	assert.Equal(t, db.LatestVersion(), v)
	assert.Subset(t, tableNames(t, pool), append(append([]string{}, db.StreamSpaceTables...), projectTables...))
	assert.Equal(t, 1, count(t, pool, "select count(*) from users where id = 'admin'"), "StreamSpace's seeded admin")
}

func migrate(t *testing.T, pool *pgxpool.Pool) error {
	t.Helper()
	ctx := context.Background()
	conn, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	return db.Migrate(ctx, conn.Conn())
}

const columnsSQL = `
	select format('%s.%s %s %s %s', table_name, column_name, data_type, is_nullable, column_default)
	from information_schema.columns where table_schema = current_schema() order by 1`

const constraintsSQL = `
	select format('%s %s %s', conrelid::regclass, conname, pg_get_constraintdef(oid))
	from pg_constraint
	where connamespace = current_schema()::regnamespace and conrelid::regclass::text = any($1) order by 1`

// columnsOf lists each table's columns, quoted for SQL.
func columnsOf(t *testing.T, pool *pgxpool.Pool, tables []string) map[string][]string {
	t.Helper()
	out := make(map[string][]string, len(tables))
	for _, table := range tables {
		out[table] = strs(t, pool, `select quote_ident(column_name) from information_schema.columns
			where table_schema = current_schema() and table_name = $1 order by ordinal_position`, table)
	}
	return out
}

// snapshot is every row of each table as JSON, in a stable order, restricted
// to the given columns: a column added later does not count as a change to a
// row.
func snapshot(t *testing.T, pool *pgxpool.Pool, columns map[string][]string) map[string][]string {
	t.Helper()
	out := make(map[string][]string, len(columns))
	for table, cols := range columns {
		list := strings.Join(cols, ", ")
		out[table] = strs(t, pool, `select to_jsonb(r)::text from (select `+list+` from `+table+`) r order by 1`)
	}
	return out
}

func tableNames(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	return strs(t, pool, `select table_name from information_schema.tables
	                      where table_schema = current_schema() and table_type = 'BASE TABLE' order by 1`)
}

// schema lists columns, constraints, indexes and views, enough to see a change.
func schema(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	return strs(t, pool, `
		select format('column %s.%s %s %s %s', table_name, column_name, data_type, is_nullable, column_default)
		  from information_schema.columns where table_schema = current_schema()
		union all
		select format('constraint %s %s', conname, pg_get_constraintdef(oid))
		  from pg_constraint where connamespace = current_schema()::regnamespace
		union all
		select format('index %s', indexdef) from pg_indexes where schemaname = current_schema()
		union all
		select format('matview %s %s', matviewname, definition) from pg_matviews where schemaname = current_schema()
		order by 1`)
}

func count(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(context.Background(), sql, args...).Scan(&n), sql)
	return n
}

func strs(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), sql, args...)
	require.NoError(t, err, sql)
	defer rows.Close()
	out := []string{}
	for rows.Next() {
		var s string
		require.NoError(t, rows.Scan(&s))
		out = append(out, s)
	}
	require.NoError(t, rows.Err())
	return out
}

func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	require.NoError(t, err)
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		require.NotEqual(t, dir, parent, "no go.work above the working directory")
		dir = parent
	}
}

func sortedCopy(s []string) []string { return slices.Sorted(slices.Values(s)) }

// without is s less drop, sorted.
func without(s []string, drop ...string) []string {
	out := slices.DeleteFunc(slices.Clone(s), func(x string) bool { return slices.Contains(drop, x) })
	slices.Sort(out)
	return out
}
