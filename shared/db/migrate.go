package db

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"

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

// Migrate applies the embedded migrations that conn's database does not have
// yet, each in its own transaction. tern holds an advisory lock while it
// works, so concurrent runs apply each migration once; a database that is
// already current is left untouched.
func Migrate(ctx context.Context, conn *pgx.Conn) error {
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
