package outbox_test

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/outbox"
)

func newEvent(i int) cloudevents.Event {
	e := cloudevents.NewEvent()
	e.SetID(uuid.NewString())
	e.SetSource("/test")
	e.SetType("io.test.queued.v1")
	e.SetData(cloudevents.ApplicationJSON, map[string]int{"n": i})
	return e
}

func queue(t *testing.T, pool *pgxpool.Pool, o *outbox.Outbox, events ...cloudevents.Event) {
	t.Helper()
	if err := db.InTx(context.Background(), pool, func(tx pgx.Tx) error { return o.Add(context.Background(), tx, events...) }); err != nil {
		t.Fatal(err)
	}
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestQueuedEventsAreSentOnceInOrder(t *testing.T) {
	pool := dbtest.New(t)
	sink := fntest.NewSink(t)
	o, err := outbox.New(pool, "test", sink.URL, quiet())
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := range 30 {
		e := newEvent(i)
		want = append(want, e.ID())
		queue(t, pool, o, e)
	}
	// Concurrent flushes (several requests, several instances) share the work.
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := o.Flush(context.Background()); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	got := sink.Events()
	if len(got) != len(want) {
		t.Fatalf("sink got %d events, want %d", len(got), len(want))
	}
	seen := map[string]bool{}
	for _, e := range got {
		if seen[e.ID()] {
			t.Errorf("event %s sent twice", e.ID())
		}
		seen[e.ID()] = true
	}
	var left int
	pool.QueryRow(context.Background(), `select count(*) from event_outbox`).Scan(&left)
	if left != 0 {
		t.Errorf("%d events left queued", left)
	}
}

func TestRolledBackChangeQueuesNothing(t *testing.T) {
	pool := dbtest.New(t)
	sink := fntest.NewSink(t)
	o, _ := outbox.New(pool, "test", sink.URL, quiet())
	err := db.InTx(context.Background(), pool, func(tx pgx.Tx) error {
		if err := o.Add(context.Background(), tx, newEvent(1)); err != nil {
			return err
		}
		return context.Canceled
	})
	if err == nil {
		t.Fatal("transaction committed")
	}
	if n, _ := o.Flush(context.Background()); n != 0 || len(sink.Events()) != 0 {
		t.Errorf("sent %d events of a rolled-back change", n)
	}
}

func TestRefusedEventsBackOffAndClaimsExpire(t *testing.T) {
	pool := dbtest.New(t)
	sink := fntest.NewSink(t)
	o, _ := outbox.New(pool, "test", sink.URL, quiet())
	e := newEvent(1)
	queue(t, pool, o, e)

	sink.FailNext(1 << 20)
	if n, err := o.Flush(context.Background()); n != 0 || err != nil {
		t.Fatalf("flush while refused: %d, %v", n, err)
	}
	var attempts int
	var lastError string
	var due bool
	pool.QueryRow(context.Background(), `select attempts, last_error, next_attempt_at <= now() from event_outbox`).Scan(&attempts, &lastError, &due)
	if attempts != 1 || lastError == "" || due {
		t.Errorf("after a refusal: attempts %d, last_error %q, due now %v; want 1, the error, not yet due", attempts, lastError, due)
	}
	sink.FailNext(0)
	if n, _ := o.Flush(context.Background()); n != 0 {
		t.Errorf("flushed %d events before their backoff ended", n)
	}
	// An instance that claimed the event and died: the claim expires.
	pool.Exec(context.Background(), `update event_outbox set next_attempt_at = now() - interval '1 second'`)
	if n, err := o.Flush(context.Background()); n != 1 || err != nil {
		t.Fatalf("flush after backoff: %d, %v", n, err)
	}
	if got := sink.Events(); len(got) != 1 || got[0].ID() != e.ID() {
		t.Errorf("sink got %v, want %s", got, e.ID())
	}
}

func TestEventsOfOtherFunctionsAreLeftAlone(t *testing.T) {
	pool := dbtest.New(t)
	sink := fntest.NewSink(t)
	mine, _ := outbox.New(pool, "mine", sink.URL, quiet())
	theirs, _ := outbox.New(pool, "theirs", sink.URL, quiet())
	queue(t, pool, theirs, newEvent(1))
	if n, _ := mine.Flush(context.Background()); n != 0 {
		t.Errorf("flushed %d events of another function", n)
	}
}

func TestARefusingSinkStopsTheBatch(t *testing.T) {
	pool := dbtest.New(t)
	sink := fntest.NewSink(t)
	o, _ := outbox.New(pool, "test", sink.URL, quiet())
	for i := range 5 {
		queue(t, pool, o, newEvent(i))
	}
	sink.FailNext(1 << 20)
	if n, err := o.Drain(context.Background()); n != 0 || err != nil {
		t.Fatalf("drain against a refusing sink: %d, %v", n, err)
	}
	// Only the first event was tried (the client retries it); the rest were
	// put back untried, all with the error and a backoff.
	tried := sink.Refused()
	var rescheduled int
	pool.QueryRow(context.Background(), `select count(*) from event_outbox where last_error is not null and next_attempt_at > now()`).Scan(&rescheduled)
	if rescheduled != 5 {
		t.Errorf("%d events rescheduled, want all 5", rescheduled)
	}
	sink.FailNext(0)
	pool.Exec(context.Background(), `update event_outbox set next_attempt_at = now()`)
	if n, err := o.Drain(context.Background()); n != 5 || err != nil {
		t.Fatalf("drain after recovery: %d, %v", n, err)
	}
	if tried > 4 {
		t.Errorf("the sink was tried %d times for one refused event (1 try + 3 retries at most)", tried)
	}
}
