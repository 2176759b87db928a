package db

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/tern/v2/migrate"
)

// VersionTable is where tern records how many migrations have been applied.
// It is unqualified so it lives in the same schema as the tables.
const VersionTable = "schema_version"

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Migrations returns the embedded migration files, named NNN_name.sql in
// tern's format, at the root of the returned file system.
func Migrations() fs.FS {
	sub, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		// fs.Sub fails only for an invalid path, and this one is a constant.
		panic(err)
	}
	return sub
}

// LatestVersion is the schema version Migrate brings a database to: the
// number of embedded migrations.
func LatestVersion() int {
	names, err := migrate.FindMigrations(Migrations())
	if err != nil {
		// The embedded set is fixed at build time and tested.
		panic(err)
	}
	return len(names)
}

// StreamSpaceTables are StreamSpace's own tables that the functions use. Its
// API creates them (Migrate in api/internal/db/database.go); the migrations
// here never do, so StreamSpace's own `create table if not exists` can never
// adopt a shape of ours (docs/data.md).
var StreamSpaceTables = []string{
	"users", "groups", "group_memberships", "sessions", "catalog_templates",
	"user_session_templates", "user_session_template_versions", "template_shares",
	"notifications", "audit_log", "batch_operations", "session_snapshots",
	"snapshot_restore_jobs", "integrations", "autoscaling_policies", "scaling_events",
}

// MissingTablesError is Migrate's refusal of a database without StreamSpace's
// schema.
type MissingTablesError struct{ Tables []string }

func (e *MissingTablesError) Error() string {
	return fmt.Sprintf("StreamSpace's tables %s are missing: point DATABASE_URL at the database "+
		"StreamSpace's API uses, after its API has started once and created its schema",
		strings.Join(e.Tables, ", "))
}

// Migrate applies the embedded migrations that conn's database does not have
// yet, each in its own transaction. It first checks that StreamSpace's own
// tables are there and touches nothing when any is missing. tern holds an
// advisory lock while it works, so concurrent runs apply each migration once;
// a database that is already current is left untouched.
func Migrate(ctx context.Context, conn *pgx.Conn) error {
	var missing []string
	err := conn.QueryRow(ctx,
		`select coalesce(array_agg(t order by t), '{}') from unnest($1::text[]) as t where to_regclass(t) is null`,
		StreamSpaceTables).Scan(&missing)
	if err != nil {
		return fmt.Errorf("migrate: look for StreamSpace's tables: %w", err)
	}
	if len(missing) > 0 {
		return fmt.Errorf("migrate: %w", &MissingTablesError{Tables: missing})
	}
	m, err := migrate.NewMigrator(ctx, conn, VersionTable)
	if err != nil {
		return fmt.Errorf("migrate: prepare %s: %w", VersionTable, err)
	}
	if err := m.LoadMigrations(Migrations()); err != nil {
		return fmt.Errorf("migrate: load migrations: %w", err)
	}
	if err := m.Migrate(ctx); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return nil
}

// RowQuerier runs a query that returns one row; pools, connections and
// transactions all do.
type RowQuerier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// SchemaVersion reports the schema version of q's database, 0 if it has never
// been migrated. A function can compare it with LatestVersion to refuse to
// serve against a schema older than its code.
func SchemaVersion(ctx context.Context, q RowQuerier) (int, error) {
	var v int
	err := q.QueryRow(ctx, "select version from "+VersionTable).Scan(&v)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // undefined_table
		return 0, nil
	}
	if err != nil {
		return 0, Classify(fmt.Errorf("read schema version: %w", err))
	}
	return v, nil
}
