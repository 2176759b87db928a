// Command migrate brings the database at DATABASE_URL (or, when it is unset,
// the one the PG* environment names) to the latest embedded schema. It is
// what `make migrate` and the Kubernetes migration Job run; functions never
// migrate on their own.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/streamspace-dev/functions/shared/db"
)

func main() {
	slog.SetDefault(slog.New(slog.NewJSONHandler(os.Stderr, nil)))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		slog.Error("migration failed", "error", err)
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
		"from_version", from, "to_version", to)
	return nil
}
