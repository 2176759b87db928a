package db

import (
	"context"
	"fmt"
	"strings"
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

// txBeginner begins a transaction with options: pools and connections, not
// a transaction, whose Begin makes a savepoint.
type txBeginner interface {
	BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
}

// InTx runs fn in a transaction and commits it if fn returns nil. It rolls
// back if fn returns an error or panics; a panic is re-raised after the
// rollback. Errors come back through Classify.
//
// The transaction bounds itself with SET LOCAL statement_timeout and
// lock_timeout, the Timeouts ctx carries (WithTimeouts) or the defaults: a
// row StreamSpace's API keeps locked, or a hung query, then costs a
// retryable error (Unavailable) instead of a connection held indefinitely.
// SET LOCAL ends with the transaction, so nothing is left on a connection
// PgBouncer hands to someone else. Inside a transaction (db is a pgx.Tx) it
// makes a savepoint, under the bounds the transaction already has.
func InTx(ctx context.Context, db Beginner, fn func(pgx.Tx) error) error {
	return run(ctx, db, pgx.ReadWrite, fn)
}

// Read is InTx for reads: a read-only transaction with the same bounds. A
// query outside a transaction would run without them, since PgBouncer in
// transaction mode keeps no session setting and a role setting would change
// StreamSpace's own role, so every read goes through here.
func Read(ctx context.Context, db Beginner, fn func(pgx.Tx) error) error {
	return run(ctx, db, pgx.ReadOnly, fn)
}

func run(ctx context.Context, db Beginner, mode pgx.TxAccessMode, fn func(pgx.Tx) error) error {
	tx, err := begin(ctx, db, mode)
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

// begin starts a transaction and sets its bounds in the same round trip:
// pgx sends a begin query without arguments as one simple-protocol message,
// which may hold several statements.
func begin(ctx context.Context, db Beginner, mode pgx.TxAccessMode) (pgx.Tx, error) {
	b, ok := db.(txBeginner)
	if !ok {
		return db.Begin(ctx)
	}
	return b.BeginTx(ctx, pgx.TxOptions{BeginQuery: BeginSQL(mode, timeoutsFrom(ctx))})
}

// BeginSQL is the statement that begins a transaction in mode with the
// bounds t: "begin [read only]; set local statement_timeout = <ms>; set
// local lock_timeout = <ms>". Both are whole milliseconds, 0 for none.
func BeginSQL(mode pgx.TxAccessMode, t Timeouts) string {
	var b strings.Builder
	b.WriteString("begin")
	if mode == pgx.ReadOnly {
		b.WriteString(" read only")
	}
	fmt.Fprintf(&b, "; set local statement_timeout = %d; set local lock_timeout = %d",
		t.Statement.Milliseconds(), t.Lock.Milliseconds())
	return b.String()
}

// Querier runs one-row queries, as the user check of authn and the
// permission check of access take them.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// ReadOnly is a Querier whose every QueryRow runs in its own Read
// transaction on DB, with the bounds of the context it is called with, for
// a check that would otherwise query a pool outside any transaction.
type ReadOnly struct{ DB Beginner }

// QueryRow returns a row whose Scan runs the query in a Read transaction.
// Errors come back as the query returned them (pgx.ErrNoRows included), or
// classified when the transaction itself fails.
func (r ReadOnly) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return readRow{ctx: ctx, db: r.DB, sql: sql, args: args}
}

type readRow struct {
	ctx  context.Context
	db   Beginner
	sql  string
	args []any
}

func (r readRow) Scan(dest ...any) error {
	var scanErr error
	err := Read(r.ctx, r.db, func(tx pgx.Tx) error {
		scanErr = tx.QueryRow(r.ctx, r.sql, r.args...).Scan(dest...)
		return scanErr
	})
	if scanErr != nil {
		return scanErr
	}
	return err
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
