package db_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
	"github.com/streamspace-dev/functions/shared/errs"
)

func TestInTx(t *testing.T) {
	t.Parallel()
	pool := dbtest.New(t)
	ctx := context.Background()
	insert := func(id string) func(pgx.Tx) error {
		return func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `insert into teams (id, name) values ($1, $1)`, id)
			return err
		}
	}

	t.Run("commits", func(t *testing.T) {
		if err := db.InTx(ctx, pool, insert("committed")); err != nil {
			t.Fatal(err)
		}
		if !teamExists(t, pool, "committed") {
			t.Error("the row is missing after commit")
		}
	})

	t.Run("rolls back on error", func(t *testing.T) {
		boom := errs.E(errs.Forbidden, "boom")
		err := db.InTx(ctx, pool, func(tx pgx.Tx) error {
			if err := insert("failed")(tx); err != nil {
				return err
			}
			return boom
		})
		if !errors.Is(err, boom) {
			t.Errorf("got %v, want %v", err, boom)
		}
		if teamExists(t, pool, "failed") {
			t.Error("the row survived a failed transaction")
		}
	})

	t.Run("classifies errors", func(t *testing.T) {
		err := db.InTx(ctx, pool, insert("committed"))
		if got := errs.KindOf(err); got != errs.Conflict {
			t.Errorf("got kind %q, want %q (error %v)", got, errs.Conflict, err)
		}
	})

	t.Run("rolls back on panic", func(t *testing.T) {
		func() {
			defer func() {
				if r := recover(); r != "boom" {
					t.Errorf("got panic %v, want boom", r)
				}
			}()
			_ = db.InTx(ctx, pool, func(tx pgx.Tx) error {
				if err := insert("panicked")(tx); err != nil {
					t.Fatal(err)
				}
				panic("boom")
			})
		}()
		if teamExists(t, pool, "panicked") {
			t.Error("the row survived a panic")
		}
		if n := pool.Stat().AcquiredConns(); n != 0 {
			t.Errorf("got %d connections still acquired, want 0", n)
		}
	})

	t.Run("savepoint inside a transaction", func(t *testing.T) {
		err := db.InTx(ctx, pool, func(outer pgx.Tx) error {
			if err := insert("outer")(outer); err != nil {
				return err
			}
			inner := db.InTx(ctx, outer, func(tx pgx.Tx) error {
				if err := insert("inner")(tx); err != nil {
					return err
				}
				return errors.New("undo the inner part only")
			})
			if inner == nil {
				t.Error("got no error from the inner transaction")
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if !teamExists(t, pool, "outer") || teamExists(t, pool, "inner") {
			t.Error("want the outer row kept and the inner one rolled back")
		}
	})
}

func teamExists(t *testing.T, pool *pgxpool.Pool, id string) bool {
	t.Helper()
	var ok bool
	err := pool.QueryRow(context.Background(), `select exists (select 1 from teams where id = $1)`, id).Scan(&ok)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// TestMarkProcessedOnce delivers one event ten times, five of them at once;
// each delivery increments a counter unless the event was processed before.
func TestMarkProcessedOnce(t *testing.T) {
	t.Parallel()
	pool := dbtest.New(t)
	ctx := context.Background()
	mustExec(t, pool, `create table counter (n int not null)`)
	mustExec(t, pool, `insert into counter values (0)`)

	deliver := func() (bool, error) {
		var first bool
		err := db.InTx(ctx, pool, func(tx pgx.Tx) error {
			var err error
			first, err = db.MarkProcessed(ctx, tx, "tags", "/streamspace/ui", "event-1")
			if err != nil || !first {
				return err
			}
			_, err = tx.Exec(ctx, `update counter set n = n + 1`)
			return err
		})
		return first, err
	}

	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		firsts int
	)
	for range 5 {
		wg.Go(func() {
			first, err := deliver()
			if err != nil {
				t.Errorf("concurrent delivery: %v", err)
			}
			if first {
				mu.Lock()
				firsts++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for range 5 {
		first, err := deliver()
		if err != nil {
			t.Errorf("sequential delivery: %v", err)
		}
		if first {
			firsts++
		}
	}

	var n int
	if err := pool.QueryRow(ctx, `select n from counter`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("got counter %d, want 1", n)
	}
	if firsts != 1 {
		t.Errorf("got %d first deliveries, want 1", firsts)
	}
}

func TestMarkProcessed(t *testing.T) {
	t.Parallel()
	pool := dbtest.New(t)
	ctx := context.Background()
	mark := func(function, source, id string, commit bool) bool {
		t.Helper()
		var first bool
		rollback := errors.New("roll back")
		err := db.InTx(ctx, pool, func(tx pgx.Tx) error {
			var err error
			first, err = db.MarkProcessed(ctx, tx, function, source, id)
			if err == nil && !commit {
				return rollback
			}
			return err
		})
		if err != nil && !errors.Is(err, rollback) {
			t.Fatal(err)
		}
		return first
	}

	if !mark("tags", "src", "a", false) {
		t.Error("first delivery: got first=false")
	}
	if !mark("tags", "src", "a", true) {
		t.Error("after a rollback: got first=false, want the record gone")
	}
	if mark("tags", "src", "a", true) {
		t.Error("redelivery: got first=true")
	}
	if !mark("sharing", "src", "a", true) {
		t.Error("another function: got first=false, want each function to record its own")
	}
	if !mark("tags", "other-src", "a", true) {
		t.Error("same id from another source: got first=false")
	}

	err := db.InTx(ctx, pool, func(tx pgx.Tx) error {
		_, err := db.MarkProcessed(ctx, tx, "tags", "", "a")
		return err
	})
	if got := errs.KindOf(err); got != errs.Invalid {
		t.Errorf("empty source: got kind %q, want %q", got, errs.Invalid)
	}
}
