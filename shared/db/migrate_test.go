package db_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/tern/v2/migrate"

	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
)

var tables = []string{
	"audit_log",
	"batch_operations",
	"catalog_tag_counts",
	"catalog_templates",
	"event_outbox",
	"job_leases",
	"notifications",
	"processed_events",
	"schema_version",
	"sessions",
	"team_members",
	"teams",
	"template_shares",
	"template_versions",
	"user_session_templates",
	"users",
}

func TestMigrateFromEmptyThenAgain(t *testing.T) {
	t.Parallel()
	pool := dbtest.NewEmpty(t)
	ctx := context.Background()

	if v, err := db.SchemaVersion(ctx, pool); err != nil || v != 0 {
		t.Fatalf("empty database: got version %d, %v; want 0, nil", v, err)
	}
	migrateOnce(t, pool)
	first := schema(t, pool)
	if v, _ := db.SchemaVersion(ctx, pool); v != db.LatestVersion() {
		t.Errorf("got version %d, want %d", v, db.LatestVersion())
	}

	migrateOnce(t, pool)
	if v, _ := db.SchemaVersion(ctx, pool); v != db.LatestVersion() {
		t.Errorf("second run: got version %d, want %d", v, db.LatestVersion())
	}
	if second := schema(t, pool); !slices.Equal(first, second) {
		t.Errorf("second run changed the schema:\nbefore %v\nafter  %v", first, second)
	}
	if got := tableNames(t, pool); !slices.Equal(got, tables) {
		t.Errorf("got tables %v, want %v", got, tables)
	}
}

func TestMigrationsReverse(t *testing.T) {
	t.Parallel()
	pool := dbtest.New(t)
	ctx := context.Background()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()

	m, err := migrate.NewMigrator(ctx, conn.Conn(), db.VersionTable)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.LoadMigrations(db.Migrations()); err != nil {
		t.Fatal(err)
	}
	before := schema(t, pool)
	if err := m.MigrateTo(ctx, 0); err != nil {
		t.Fatalf("migrate down to 0: %v", err)
	}
	if got := tableNames(t, pool); !slices.Equal(got, []string{"schema_version"}) {
		t.Errorf("after migrating down: got tables %v, want only schema_version", got)
	}
	if err := db.Migrate(ctx, conn.Conn()); err != nil {
		t.Fatalf("migrate up again: %v", err)
	}
	if after := schema(t, pool); !slices.Equal(before, after) {
		t.Errorf("down and up again changed the schema:\nbefore %v\nafter  %v", before, after)
	}
}

func TestTemplateDatabaseHasEveryTable(t *testing.T) {
	t.Parallel()
	pool := dbtest.New(t)
	if got := tableNames(t, pool); !slices.Equal(got, tables) {
		t.Errorf("got tables %v, want %v", got, tables)
	}
	if v, err := db.SchemaVersion(context.Background(), pool); err != nil || v != db.LatestVersion() {
		t.Errorf("got version %d, %v; want %d, nil", v, err, db.LatestVersion())
	}
}

func TestLatestVersion(t *testing.T) {
	if got := db.LatestVersion(); got < 1 {
		t.Errorf("got %d migrations, want at least 1", got)
	}
}

func migrateOnce(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if err := db.Migrate(ctx, conn.Conn()); err != nil {
		t.Fatalf("migrate: %v", err)
	}
}

func tableNames(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	return strs(t, pool, `select table_name from information_schema.tables
	                      where table_schema = current_schema() order by 1`)
}

// schema lists columns, constraints and indexes, enough to see a change.
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
		order by 1`)
}

func strs(t *testing.T, pool *pgxpool.Pool, sql string) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), sql)
	if err != nil {
		t.Fatalf("%s: %v", strings.TrimSpace(sql), err)
	}
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
