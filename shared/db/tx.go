package db

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/streamspace-dev/functions/shared/errs"
)

// Beginner starts transactions. *pgxpool.Pool and *pgx.Conn do, and so does
// pgx.Tx, which makes InTx inside a transaction use a savepoint.
type Beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// InTx runs fn in a transaction and commits it if fn returns nil. It rolls
// back if fn returns an error or panics; a panic is re-raised after the
// rollback. Errors come back through Classify.
func InTx(ctx context.Context, db Beginner, fn func(pgx.Tx) error) error {
	tx, err := db.Begin(ctx)
	if err != nil {
		return Classify(fmt.Errorf("begin transaction: %w", err))
	}
	committed := false
	defer func() {
		if !committed {
			// A failed rollback closes the connection, which ends the
			// transaction just the same, so its error adds nothing.
			_ = tx.Rollback(ctx)
		}
	}()
	if err := fn(tx); err != nil {
		return Classify(err)
	}
	if err := tx.Commit(ctx); err != nil {
		return Classify(fmt.Errorf("commit transaction: %w", err))
	}
	committed = true
	return nil
}

// MarkProcessed records in tx that function has handled the event (source,
// id). first is false when the record already exists: the event was handled
// before and the caller must skip its effect.
//
// Call it before the effect, in the same transaction: the effect and the
// record then commit together, and a concurrent duplicate waits on the
// primary key until this transaction ends, then sees first=false (or, if
// this transaction rolled back, takes over as the first).
func MarkProcessed(ctx context.Context, tx pgx.Tx, function, source, id string) (first bool, err error) {
	if function == "" || source == "" || id == "" {
		return false, errs.E(errs.Invalid, "mark processed: function, source and id are required")
	}
	tag, err := tx.Exec(ctx,
		`insert into processed_events (source, id, function) values ($1, $2, $3)
		 on conflict do nothing`,
		source, id, function)
	if err != nil {
		return false, Classify(fmt.Errorf("mark event %s/%s processed by %s: %w", source, id, function, err))
	}
	return tag.RowsAffected() == 1, nil
}

// pruneProcessed deletes function $1's records of events processed more than
// $2 seconds ago. The processed_at index finds the old rows: a range at the
// index's low end, so the cost follows the rows deleted, not the table.
const pruneProcessed = `
	delete from processed_events
	where function = $1 and processed_at < now() - make_interval(secs => $2)`

// PruneProcessed deletes function's records of events processed more than
// olderThan ago and reports how many it deleted. The processed_at index finds
// them without a scan.
func PruneProcessed(ctx context.Context, db Execer, function string, olderThan time.Duration) (int64, error) {
	if olderThan <= 0 {
		return 0, errs.E(errs.Invalid, "prune processed events: retention must be positive")
	}
	tag, err := db.Exec(ctx, pruneProcessed, function, olderThan.Seconds())
	if err != nil {
		return 0, Classify(fmt.Errorf("prune processed events of %s: %w", function, err))
	}
	return tag.RowsAffected(), nil
}

// Execer runs a statement; pools, connections and transactions all do.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}
