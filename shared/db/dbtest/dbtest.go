// Package dbtest gives each test its own fresh PostgreSQL database.
//
// The server is the one DATABASE_URL names or, when it is unset, the one the
// PG* environment names, which is what `pg_virtualenv -t go test ./...` sets.
// A database starts as an install of StreamSpace has it: StreamSpace's own
// schema (testdata/streamspace/schema.sql) with the rows its API seeds, then
// the embedded migrations. That is built once into a template database named
// after a hash of both; each test then gets a copy made with
// `create database ... template ...`, which takes milliseconds.
package dbtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/streamspace-dev/functions/shared/db"
)

// templateLock serialises template creation across test binaries that run
// at the same time against one server (`go test ./...` runs packages in
// parallel). It is an arbitrary constant.
const templateLock = int64(7_193_406_218_554_031)

// setupTimeout bounds connecting, building the template and cloning it.
const setupTimeout = 2 * time.Minute

var (
	templateMu   sync.Mutex
	templateName string // set once the template exists
)

// New returns a pool on a new database holding the latest schema and no
// rows. The database is dropped when the test ends. If no server can be
// reached the test fails, saying how to provide one.
func New(tb testing.TB) *pgxpool.Pool {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	tmpl, err := ensureTemplate(ctx)
	if err != nil {
		tb.Fatalf("dbtest: %v", err)
	}
	return create(ctx, tb, tmpl)
}

// NewEmpty is New without any schema: a new, empty database, for tests of
// the migrations themselves.
func NewEmpty(tb testing.TB) *pgxpool.Pool {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	// template0 is the pristine database every server has.
	return create(ctx, tb, "template0")
}

// NewStreamSpace is a new database holding StreamSpace's schema and seeded
// rows but none of our migrations: a StreamSpace install before the
// functions arrive.
func NewStreamSpace(tb testing.TB) *pgxpool.Pool {
	tb.Helper()
	pool := NewEmpty(tb)
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	schema, err := StreamSpaceSchema()
	if err != nil {
		tb.Fatalf("dbtest: %v", err)
	}
	if _, err := pool.Exec(ctx, schema); err != nil {
		tb.Fatalf("dbtest: load StreamSpace's schema: %v", err)
	}
	return pool
}

// SchemaFile is StreamSpace's schema, relative to the repository root.
const SchemaFile = "testdata/streamspace/schema.sql"

// StreamSpaceSchema returns the SQL of SchemaFile, found by walking up from
// the working directory (a test's package directory) to the repository root,
// the directory holding go.work.
func StreamSpaceSchema() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			b, err := os.ReadFile(filepath.Join(dir, SchemaFile))
			if err != nil {
				return "", fmt.Errorf("read StreamSpace's schema: %w", err)
			}
			return string(b), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.work above the working directory, so no %s", SchemaFile)
		}
		dir = parent
	}
}

// URL returns a connection string for pool's test database, for a test that
// starts a binary and hands it DATABASE_URL. When DATABASE_URL is unset the
// result names only the database, and the binary must inherit the PG*
// environment for the rest.
func URL(tb testing.TB, pool *pgxpool.Pool) string {
	tb.Helper()
	s, err := withDatabase(os.Getenv("DATABASE_URL"), pool.Config().ConnConfig.Database)
	if err != nil {
		tb.Fatalf("dbtest: %v", err)
	}
	return s
}

// LimitedRole creates a login role that may hold at most limit connections
// (PostgreSQL answers the next one with SQLSTATE 53300, as a server at
// max_connections does; superusers are exempt, so this role is not one),
// grants it every privilege on pool's tables, and returns a connection
// string for it on pool's database. The role is dropped when the test ends.
func LimitedRole(tb testing.TB, pool *pgxpool.Pool, limit int) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	database := pool.Config().ConnConfig.Database
	name := "limited_" + strings.TrimPrefix(database, "test_")
	if len(name) > 63 {
		name = name[:63]
	}
	password := strings.ToLower(rand.Text())
	role := ident(name)
	// A role is the cluster's, not the database's, and cleanups run last
	// first, so this one runs while the database and perhaps the role's
	// connections still exist: they are ended, and its privileges dropped,
	// before the role.
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		admin, err := connect(ctx, database)
		if err != nil {
			tb.Errorf("dbtest: drop role %s: %v", name, err)
			return
		}
		defer admin.Close(ctx)
		for _, s := range []string{
			"select pg_terminate_backend(pid, 60000) from pg_stat_activity where usename = '" + name + "'",
			"drop owned by " + role,
			"drop role " + role,
		} {
			if _, err := admin.Exec(ctx, s); err != nil {
				tb.Errorf("dbtest: drop role %s: %v", name, err)
				return
			}
		}
	})
	stmts := []string{
		fmt.Sprintf("create role %s login password '%s' connection limit %d", role, password, limit),
		"grant all on all tables in schema public to " + role,
		"grant all on all sequences in schema public to " + role,
	}
	for _, s := range stmts {
		if _, err := pool.Exec(ctx, s); err != nil {
			tb.Fatalf("dbtest: role %s: %v", name, err)
		}
	}
	s, err := withUser(URL(tb, pool), name, password)
	if err != nil {
		tb.Fatalf("dbtest: %v", err)
	}
	return s
}

// WithDatabase returns base, a connection string in either form (such as
// PgBouncer's in front of this server), with its database replaced by name.
func WithDatabase(base, name string) (string, error) { return withDatabase(base, name) }

func create(ctx context.Context, tb testing.TB, tmpl string) *pgxpool.Pool {
	tb.Helper()
	admin, err := connect(ctx, "")
	if err != nil {
		tb.Fatalf("dbtest: %v", err)
	}
	defer admin.Close(ctx)

	name := databaseName(tb.Name())
	if _, err := admin.Exec(ctx, "create database "+ident(name)+" template "+ident(tmpl)); err != nil {
		tb.Fatalf("dbtest: create database %s from %s: %v", name, tmpl, err)
	}
	tb.Cleanup(func() { drop(tb, name) })

	cfg, err := pgxpool.ParseConfig(os.Getenv("DATABASE_URL"))
	if err != nil {
		tb.Fatalf("dbtest: DATABASE_URL cannot be parsed")
	}
	cfg.ConnConfig.Database = name
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		tb.Fatalf("dbtest: open %s: %v", name, err)
	}
	// Registered after drop, so it runs first: the pool must be closed
	// before its database can be dropped.
	tb.Cleanup(pool.Close)
	return pool
}

func drop(tb testing.TB, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin, err := connect(ctx, "")
	if err != nil {
		tb.Errorf("dbtest: drop %s: %v", name, err)
		return
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "drop database if exists "+ident(name)+" with (force)"); err != nil {
		tb.Errorf("dbtest: drop %s: %v", name, err)
	}
}

// ensureTemplate returns the name of the migrated template database,
// building it first if no test binary has yet.
func ensureTemplate(ctx context.Context) (string, error) {
	templateMu.Lock()
	defer templateMu.Unlock()
	if templateName != "" {
		return templateName, nil
	}
	schema, err := StreamSpaceSchema()
	if err != nil {
		return "", err
	}
	name, err := templateNameFor(schema, db.Migrations())
	if err != nil {
		return "", err
	}
	admin, err := connect(ctx, "")
	if err != nil {
		return "", err
	}
	defer admin.Close(ctx)
	// Session-level, so it holds across the statements below; closing the
	// connection releases it even if this function fails midway.
	if _, err := admin.Exec(ctx, "select pg_advisory_lock($1)", templateLock); err != nil {
		return "", fmt.Errorf("lock template creation: %w", err)
	}
	var exists bool
	err = admin.QueryRow(ctx, "select exists (select 1 from pg_database where datname = $1)", name).Scan(&exists)
	if err != nil {
		return "", fmt.Errorf("look for template %s: %w", name, err)
	}
	if !exists {
		if err := buildTemplate(ctx, admin, name, schema); err != nil {
			return "", err
		}
	}
	templateName = name
	return name, nil
}

// buildTemplate loads StreamSpace's schema into a scratch database, migrates
// it and only then renames it to name, so a template that exists is always
// complete even if a test binary was killed while building one. The caller
// holds templateLock.
func buildTemplate(ctx context.Context, admin *pgx.Conn, name, schema string) error {
	scratch := name + "_build"
	if _, err := admin.Exec(ctx, "drop database if exists "+ident(scratch)+" with (force)"); err != nil {
		return fmt.Errorf("drop leftover %s: %w", scratch, err)
	}
	if _, err := admin.Exec(ctx, "create database "+ident(scratch)+" template template0"); err != nil {
		return fmt.Errorf("create %s: %w", scratch, err)
	}
	conn, err := connect(ctx, scratch)
	if err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, schema); err != nil {
		conn.Close(ctx)
		return fmt.Errorf("load StreamSpace's schema into %s: %w", scratch, err)
	}
	err = db.Migrate(ctx, conn)
	conn.Close(ctx)
	if err != nil {
		return fmt.Errorf("migrate template %s: %w", scratch, err)
	}
	// Nobody may connect to a template while it is copied, so connections
	// are refused outright.
	stmts := []string{
		"alter database " + ident(scratch) + " rename to " + ident(name),
		"alter database " + ident(name) + " with is_template true allow_connections false",
	}
	for _, s := range stmts {
		if _, err := admin.Exec(ctx, s); err != nil {
			return fmt.Errorf("finish template %s: %w", name, err)
		}
	}
	return nil
}

// connect opens a connection to database, or to the configured database when
// database is empty. A failure explains how to provide a server.
func connect(ctx context.Context, database string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(os.Getenv("DATABASE_URL"))
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL cannot be parsed")
	}
	if database != "" {
		cfg.Database = database
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("no PostgreSQL server reachable (%v); run the tests under "+
			"pg_virtualenv (pg_virtualenv -t go test ./...) or set DATABASE_URL to a server "+
			"where this user may create databases", err)
	}
	return conn, nil
}

// templateNameFor derives the template's name from StreamSpace's schema and
// the migrations' names and contents, so a change to either gets a new
// template.
func templateNameFor(schema string, fsys fs.FS) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%d\x00%s", len(schema), schema)
	err := fs.WalkDir(fsys, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(fsys, path)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s\x00%d\x00", path, len(b))
		h.Write(b)
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("hash migrations: %w", err)
	}
	return "streamspace_tmpl_" + hex.EncodeToString(h.Sum(nil))[:16], nil
}

// databaseName is unique, and starts with the test's name so a database left
// behind by a killed run says where it came from. PostgreSQL truncates names
// at 63 bytes; this stays under that.
func databaseName(testName string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(testName) {
		if b.Len() == 24 {
			break
		}
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return "test_" + b.String() + "_" + strings.ToLower(rand.Text()[:12])
}

// withDatabase returns base, a connection string in either form, with its
// database replaced by name.
func withDatabase(base, name string) (string, error) {
	if strings.HasPrefix(base, "postgres://") || strings.HasPrefix(base, "postgresql://") {
		u, err := url.Parse(base)
		if err != nil {
			return "", fmt.Errorf("DATABASE_URL cannot be parsed")
		}
		u.Path, u.RawPath = "/"+name, ""
		q := u.Query()
		q.Del("dbname")
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	// In keyword/value form the last setting of a keyword wins.
	return strings.TrimSpace(base + " dbname=" + name), nil
}

// withUser returns base, a connection string in either form, with its user
// and password replaced.
func withUser(base, user, password string) (string, error) {
	if strings.HasPrefix(base, "postgres://") || strings.HasPrefix(base, "postgresql://") {
		u, err := url.Parse(base)
		if err != nil {
			return "", fmt.Errorf("DATABASE_URL cannot be parsed")
		}
		u.User = url.UserPassword(user, password)
		return u.String(), nil
	}
	return strings.TrimSpace(base + " user=" + user + " password=" + password), nil
}

func ident(name string) string { return pgx.Identifier{name}.Sanitize() }
