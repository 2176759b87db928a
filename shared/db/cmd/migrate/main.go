// Command migrate brings the database at DATABASE_URL (or, when it is unset,
// the one the PG* environment names) to the latest embedded schema. It is
// what `make migrate` and the Kubernetes migration Job run; functions never
// migrate on their own.
//
// It must reach PostgreSQL directly, never through PgBouncer: the
// migrations hold a session-level advisory lock from start to end, which a
// pooler in transaction mode does not keep on one server connection
// (docs/data.md). The functions' own DATABASE_URL may point at PgBouncer;
// this one may not.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/streamspace-dev/functions/shared/db"
)

// usage is the -h text.
const usage = `usage: migrate

Brings the database at DATABASE_URL (or, unset, the one the PG* variables
name) to the latest schema of the functions, and stops, changing nothing,
if StreamSpace's tables are missing.

Migrations connect to PostgreSQL directly: DATABASE_URL must name PostgreSQL
itself, not PgBouncer, since the migrations hold a session-level advisory
lock, which PgBouncer's transaction mode does not keep. Point the
functions, not this, at the pooler.
`

// directNote goes on every log line, so the Job's log says where it must
// connect.
const directNote = "migrations connect to PostgreSQL directly, not through PgBouncer (they hold a session-level lock)"

func main() {
	flag.Usage = func() { fmt.Fprint(flag.CommandLine.Output(), usage) }
	flag.Parse()
	slog.SetDefault(slog.New(slog.NewJSONHandler(os.Stderr, nil)))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		slog.Error("migration failed", "error", err, "note", directNote)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	pool, err := db.Open(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		return err
	}
	defer pool.Close()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acquire connection: %w", db.Classify(err))
	}
	defer conn.Release()

	from, err := db.SchemaVersion(ctx, conn)
	if err != nil {
		return err
	}
	if err := db.Migrate(ctx, conn.Conn()); err != nil {
		return err
	}
	to, err := db.SchemaVersion(ctx, conn)
	if err != nil {
		return err
	}
	slog.Info("schema migrated", "database", conn.Conn().Config().Database,
		"from_version", from, "to_version", to, "note", directNote)
	return nil
}
