package outbox_test

import (
	"context"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/logging"
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
	err := db.InTx(context.Background(), pool, func(tx pgx.Tx) error { return o.Add(context.Background(), tx, events...) })
	require.NoError(t, err)
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

// newOutbox is the outbox of function "test" on a fresh database, sending to
// a recording sink.
func newOutbox(t *testing.T, maxAttempts int, log *slog.Logger) (*pgxpool.Pool, *fntest.Sink, *outbox.Outbox) {
	t.Helper()
	pool := dbtest.New(t)
	sink := fntest.NewSink(t)
	o, err := outbox.New(pool, "test", sink.URL, maxAttempts, log)
	require.NoError(t, err)
	return pool, sink, o
}

// row is an event's state in event_outbox.
type row struct {
	Attempts  int
	LastError *string
	Due       bool
}

func outboxRow(t *testing.T, pool *pgxpool.Pool, id string) (row, bool) {
	t.Helper()
	var r row
	err := pool.QueryRow(context.Background(),
		`select attempts, last_error, next_attempt_at <= now() from event_outbox where id = $1`, id).
		Scan(&r.Attempts, &r.LastError, &r.Due)
	if err == pgx.ErrNoRows {
		return row{}, false
	}
	require.NoError(t, err)
	return r, true
}

func count(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(context.Background(), sql, args...).Scan(&n), sql)
	return n
}

func TestQueuedEventsAreSentOnce(t *testing.T) {
	tests := []struct {
		name    string
		events  int
		flushes int
	}{
		{"one flush sends in order", 30, 1},
		// Concurrent flushes (several requests, several instances) share
		// the work and never send an event twice.
		{"concurrent flushes share the work", 30, 4},
		{"more than a batch", 250, 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pool, sink, o := newOutbox(t, 0, quiet())
			var want []string
			for i := range tc.events {
				e := newEvent(i)
				want = append(want, e.ID())
				queue(t, pool, o, e)
			}
			var wg sync.WaitGroup
			for range tc.flushes {
				wg.Go(func() {
					_, err := o.Drain(context.Background())
					assert.NoError(t, err)
				})
			}
			wg.Wait()
			var got []string
			for _, e := range sink.Events() {
				got = append(got, e.ID())
			}
			if tc.flushes == 1 {
				assert.Equal(t, want, got, "one flush sends oldest first")
			} else {
				assert.ElementsMatch(t, want, got, "every event sent exactly once")
			}
			assert.Zero(t, count(t, pool, `select count(*) from event_outbox`), "events left queued")
		})
	}
}

func TestRolledBackChangeQueuesNothing(t *testing.T) {
	tests := []struct {
		name     string
		rollback error
	}{
		{"error", context.Canceled},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pool, sink, o := newOutbox(t, 0, quiet())
			err := db.InTx(context.Background(), pool, func(tx pgx.Tx) error {
				require.NoError(t, o.Add(context.Background(), tx, newEvent(1)))
				return tc.rollback
			})
			require.Error(t, err, "transaction committed")
			n, err := o.Flush(context.Background())
			require.NoError(t, err)
			assert.Zero(t, n, "events of a rolled-back change sent")
			assert.Empty(t, sink.Events())
		})
	}
}

func TestRefusedEventsBackOffAndClaimsExpire(t *testing.T) {
	tests := []struct {
		name   string
		status int
	}{
		{"unavailable", http.StatusServiceUnavailable},
		{"too many requests", http.StatusTooManyRequests},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pool, sink, o := newOutbox(t, 0, quiet())
			e := newEvent(1)
			queue(t, pool, o, e)

			sink.AnswerNext(1<<20, tc.status)
			n, err := o.Flush(context.Background())
			require.NoError(t, err)
			require.Zero(t, n, "flushed while refused")
			r, ok := outboxRow(t, pool, e.ID())
			require.True(t, ok, "a retryable refusal removed the event")
			assert.Equal(t, 1, r.Attempts)
			require.NotNil(t, r.LastError)
			assert.NotEmpty(t, *r.LastError)
			assert.False(t, r.Due, "due again at once, without a backoff")

			sink.AnswerNext(0, 0)
			n, err = o.Flush(context.Background())
			require.NoError(t, err)
			assert.Zero(t, n, "flushed before the backoff ended")

			// An instance that claimed the event and died: the claim expires.
			_, err = pool.Exec(context.Background(), `update event_outbox set next_attempt_at = now() - interval '1 second'`)
			require.NoError(t, err)
			n, err = o.Flush(context.Background())
			require.NoError(t, err)
			assert.Equal(t, 1, n)
			got := sink.Events()
			require.Len(t, got, 1)
			assert.Equal(t, e.ID(), got[0].ID())
		})
	}
}

func TestBackoffIsCappedAtAnyAttemptCount(t *testing.T) {
	tests := []struct {
		name     string
		attempts int // refusals before this one
		want     time.Duration
	}{
		{"first refusal", 0, 2 * time.Second},
		{"second refusal", 1, 4 * time.Second},
		{"eleventh refusal", 10, 2048 * time.Second},
		{"past the cap", 11, time.Hour},
		{"where power(2, n) overflowed", 1024, time.Hour},
		{"2000 attempts", 2000, time.Hour},
		{"the largest count the column holds but one", math.MaxInt32 - 1, time.Hour},
	}
	pool, sink, o := newOutbox(t, math.MaxInt, quiet())
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			_, err := pool.Exec(ctx, `truncate event_outbox`)
			require.NoError(t, err)
			e := newEvent(1)
			queue(t, pool, o, e)
			_, err = pool.Exec(ctx, `update event_outbox set attempts = $1`, tc.attempts)
			require.NoError(t, err)

			sink.FailNext(1 << 20)
			var before, after time.Time
			require.NoError(t, pool.QueryRow(ctx, `select now()`).Scan(&before))
			_, err = o.Flush(ctx)
			require.NoError(t, err)
			require.NoError(t, pool.QueryRow(ctx, `select now()`).Scan(&after))

			var attempts int
			var next time.Time
			require.NoError(t, pool.QueryRow(ctx, `select attempts, next_attempt_at from event_outbox where id = $1`, e.ID()).Scan(&attempts, &next))
			assert.Equal(t, tc.attempts+1, attempts)
			assert.False(t, next.Before(before.Add(tc.want)), "next attempt %v, want at least %v after %v", next, tc.want, before)
			assert.False(t, next.After(after.Add(tc.want)), "next attempt %v, want at most %v after %v", next, tc.want, after)
		})
	}
}

func TestRefusedEventsAreDeadLettered(t *testing.T) {
	tests := []struct {
		name        string
		status      int
		maxAttempts int
		attempts    int // refusals before this flush
		wantDead    bool
		wantTries   int // sends the sink saw; 0 for "the client's retries"
	}{
		{"400 is permanent", http.StatusBadRequest, 20, 0, true, 1},
		{"403 is permanent", http.StatusForbidden, 20, 0, true, 1},
		{"413 is permanent", http.StatusRequestEntityTooLarge, 20, 0, true, 1},
		{"422 is permanent", http.StatusUnprocessableEntity, 20, 0, true, 1},
		{"404 is retried", http.StatusNotFound, 20, 0, false, 0},
		{"408 is retried", http.StatusRequestTimeout, 20, 0, false, 0},
		{"409 is retried", http.StatusConflict, 20, 0, false, 0},
		{"429 is retried", http.StatusTooManyRequests, 20, 0, false, 0},
		{"503 is retried", http.StatusServiceUnavailable, 20, 0, false, 0},
		{"500 below the limit is retried", http.StatusInternalServerError, 3, 1, false, 0},
		{"500 at the limit", http.StatusInternalServerError, 3, 2, true, 0},
		{"503 at the default limit", http.StatusServiceUnavailable, 0, outbox.DefaultMaxAttempts - 1, true, 0},
	}
	pool := dbtest.New(t)
	sink := fntest.NewSink(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			_, err := pool.Exec(ctx, `truncate event_outbox`)
			require.NoError(t, err)
			logs := &fntest.Buffer{}
			o, err := outbox.New(pool, "test", sink.URL, tc.maxAttempts, logging.New(logs, slog.LevelInfo))
			require.NoError(t, err)
			e := newEvent(1)
			queue(t, pool, o, e)
			_, err = pool.Exec(ctx, `update event_outbox set attempts = $1`, tc.attempts)
			require.NoError(t, err)

			sink.AnswerNext(1<<20, tc.status)
			refusedBefore := sink.Refused()
			n, err := o.Flush(ctx)
			require.NoError(t, err)
			assert.Zero(t, n)
			tries := sink.Refused() - refusedBefore
			if tc.wantTries > 0 {
				assert.Equal(t, tc.wantTries, tries, "a permanent refusal is not retried by the client")
			} else {
				assert.LessOrEqual(t, tries, 4, "1 try and 3 client retries at most")
			}

			r, queued := outboxRow(t, pool, e.ID())
			var dead struct {
				Function  string
				Type      string
				Attempts  int
				LastError string
				Queued    bool
			}
			err = pool.QueryRow(ctx, `
				select d.function, d.event->>'type', d.attempts, d.last_error, d.queued_at <= d.dead_at
				from event_dead_letters d where id = $1`, e.ID()).
				Scan(&dead.Function, &dead.Type, &dead.Attempts, &dead.LastError, &dead.Queued)
			if !tc.wantDead {
				assert.ErrorIs(t, err, pgx.ErrNoRows, "dead-lettered a retryable refusal")
				require.True(t, queued, "event left the outbox")
				assert.Equal(t, tc.attempts+1, r.Attempts)
				assert.False(t, r.Due)
				return
			}
			require.NoError(t, err, "not in event_dead_letters")
			assert.False(t, queued, "dead-lettered event still in the outbox")
			assert.Equal(t, "test", dead.Function)
			assert.Equal(t, e.Type(), dead.Type)
			assert.Equal(t, tc.attempts+1, dead.Attempts)
			assert.Contains(t, dead.LastError, strconv.Itoa(tc.status))
			assert.True(t, dead.Queued)

			var logged bool
			for _, line := range logs.Lines() {
				if line["level"] == "ERROR" && line["eventId"] == e.ID() && line["eventType"] == e.Type() {
					logged = true
				}
			}
			assert.True(t, logged, "no error log line with the event's id and type:\n%s", logs.String())
		})
	}
}

func TestADeadLetteredIdCanDieAgain(t *testing.T) {
	tests := []struct {
		name string
		dies int
	}{
		{"re-queued once", 2},
		{"re-queued twice", 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pool, sink, o := newOutbox(t, 0, quiet())
			e := newEvent(1)
			sink.AnswerNext(1<<20, http.StatusBadRequest)
			for range tc.dies {
				queue(t, pool, o, e)
				_, err := o.Flush(context.Background())
				require.NoError(t, err)
			}
			assert.Equal(t, 1, count(t, pool, `select count(*) from event_dead_letters where id = $1`, e.ID()))
			assert.Zero(t, count(t, pool, `select count(*) from event_outbox`))
		})
	}
}

func TestEventsOfOtherFunctionsAreLeftAlone(t *testing.T) {
	tests := []struct {
		name, mine, theirs string
	}{
		{"another function's queue", "mine", "theirs"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pool := dbtest.New(t)
			sink := fntest.NewSink(t)
			mine, err := outbox.New(pool, tc.mine, sink.URL, 0, quiet())
			require.NoError(t, err)
			theirs, err := outbox.New(pool, tc.theirs, sink.URL, 0, quiet())
			require.NoError(t, err)
			queue(t, pool, theirs, newEvent(1))
			n, err := mine.Flush(context.Background())
			require.NoError(t, err)
			assert.Zero(t, n, "flushed events of another function")
			assert.Equal(t, 1, count(t, pool, `select count(*) from event_outbox where function = $1`, tc.theirs))
		})
	}
}

func TestARefusingSinkStopsTheBatch(t *testing.T) {
	tests := []struct {
		name   string
		events int
		status int
	}{
		{"retryable refusal", 5, http.StatusServiceUnavailable},
		{"permanent refusal", 5, http.StatusBadRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pool, sink, o := newOutbox(t, 0, quiet())
			var ids []string
			for i := range tc.events {
				e := newEvent(i)
				ids = append(ids, e.ID())
				queue(t, pool, o, e)
			}
			sink.AnswerNext(1<<20, tc.status)
			n, err := o.Drain(context.Background())
			require.NoError(t, err)
			require.Zero(t, n, "sent to a refusing sink")
			assert.LessOrEqual(t, sink.Refused(), 4, "one refused event is tried once, plus 3 client retries at most")

			// Only the oldest event was tried; the rest were released
			// untouched: no attempt counted, no error, due now.
			for _, id := range ids[1:] {
				r, ok := outboxRow(t, pool, id)
				require.True(t, ok, "untried event %s left the outbox", id)
				assert.Zero(t, r.Attempts, "untried event %s counted an attempt", id)
				assert.Nil(t, r.LastError, "untried event %s got an error", id)
				assert.True(t, r.Due, "untried event %s is not due", id)
			}

			// The untried events go out as soon as the sink takes them.
			sink.AnswerNext(0, 0)
			n, err = o.Drain(context.Background())
			require.NoError(t, err)
			assert.Equal(t, tc.events-1, n)
			if tc.status == http.StatusBadRequest {
				assert.Equal(t, 1, count(t, pool, `select count(*) from event_dead_letters where id = $1`, ids[0]))
				return
			}
			r, ok := outboxRow(t, pool, ids[0])
			require.True(t, ok)
			assert.Equal(t, 1, r.Attempts)
			assert.False(t, r.Due)
		})
	}
}

func TestAStoppedSendCountsNothing(t *testing.T) {
	tests := []struct {
		name   string
		events int
	}{
		{"one event", 1},
		{"a batch", 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pool, sink, o := newOutbox(t, 0, quiet())
			var ids []string
			for i := range tc.events {
				e := newEvent(i)
				ids = append(ids, e.ID())
				queue(t, pool, o, e)
			}
			release := sink.Hold()
			defer release()
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				_, err := o.Flush(ctx)
				done <- err
			}()
			require.Eventually(t, func() bool { return sink.Arrived() > 0 }, time.Minute, 10*time.Millisecond,
				"the send never reached the sink")
			// The instance stops while the sink has not answered.
			cancel()
			require.NoError(t, <-done)
			for _, id := range ids {
				r, ok := outboxRow(t, pool, id)
				require.True(t, ok, "event %s left the outbox", id)
				assert.Zero(t, r.Attempts, "event %s counted an attempt", id)
				assert.Nil(t, r.LastError, "event %s got an error", id)
				assert.True(t, r.Due, "event %s is not due", id)
			}
		})
	}
}

func TestNewRefusesANegativeLimit(t *testing.T) {
	tests := []struct {
		name        string
		maxAttempts int
		wantErr     bool
	}{
		{"negative", -1, true},
		{"zero takes the default", 0, false},
		{"one", 1, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := outbox.New(nil, "test", "", tc.maxAttempts, quiet())
			if tc.wantErr {
				assert.Error(t, err)
				return
			}
			assert.NoError(t, err)
		})
	}
}

// TestSendsCarryTheSinkToken covers Knative's authentication-oidc: the broker
// ingress wants the SinkBinding's token on every event, and the token file
// rotates under the running function.
func TestSendsCarryTheSinkToken(t *testing.T) {
	pool := dbtest.New(t)
	var (
		mu   sync.Mutex
		auth []string
	)
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auth = append(auth, r.Header.Get("Authorization"))
		mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(sink.Close)
	tokenFile := filepath.Join(t.TempDir(), "token")
	o, err := outbox.New(pool, "test", sink.URL, 0, quiet(), outbox.WithTokenFile(tokenFile))
	require.NoError(t, err)

	tests := []struct {
		name     string
		token    *string // nil: no file
		wantAuth string
	}{
		{"no token file sends no token", nil, ""},
		{"the mounted token", ptr("eyJ.first.sig"), "Bearer eyJ.first.sig"},
		{"a rotated token, newline trimmed", ptr("eyJ.second.sig\n"), "Bearer eyJ.second.sig"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.token != nil {
				require.NoError(t, os.WriteFile(tokenFile, []byte(*tc.token), 0o600))
			}
			queue(t, pool, o, newEvent(i))
			sent, err := o.Drain(context.Background())
			require.NoError(t, err)
			require.Equal(t, 1, sent)
			mu.Lock()
			defer mu.Unlock()
			require.Len(t, auth, i+1)
			assert.Equal(t, tc.wantAuth, auth[i])
		})
	}
}

func ptr(s string) *string { return &s }

func TestStatsCountOnlyTheFunctionsOwnEvents(t *testing.T) {
	pool, sink, o := newOutbox(t, 0, quiet())
	other, err := outbox.New(pool, "other", sink.URL, 0, quiet())
	require.NoError(t, err)
	ctx := context.Background()
	// The steps run in order against one database; want is o's stats after
	// each. Nothing flushes, so what is queued stays.
	tests := []struct {
		name string
		step func(t *testing.T)
		want outbox.Stats
	}{
		{"empty", func(*testing.T) {}, outbox.Stats{}},
		{"another function's events are not ours", func(t *testing.T) {
			queue(t, pool, other, newEvent(1), newEvent(2))
			_, err := pool.Exec(ctx, `
				insert into event_dead_letters (id, function, event, attempts, last_error, queued_at)
				values ($1, 'other', '{}', 1, 'refused', now())`, uuid.NewString())
			require.NoError(t, err)
		}, outbox.Stats{}},
		{"two queued, the oldest an hour ago", func(t *testing.T) {
			queue(t, pool, o, newEvent(3), newEvent(4))
			_, err := pool.Exec(ctx, `
				update event_outbox set created_at = now() - interval '1 hour'
				where id = (select id from event_outbox where function = 'test' limit 1)`)
			require.NoError(t, err)
		}, outbox.Stats{Queued: 2, OldestAge: time.Hour}},
		{"one dead letter", func(t *testing.T) {
			_, err := pool.Exec(ctx, `
				insert into event_dead_letters (id, function, event, attempts, last_error, queued_at)
				values ($1, 'test', '{}', 20, 'refused', now())`, uuid.NewString())
			require.NoError(t, err)
		}, outbox.Stats{Queued: 2, OldestAge: time.Hour, DeadLetters: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.step(t)
			got, err := o.Stats(ctx)
			require.NoError(t, err)
			assert.Equal(t, tc.want.Queued, got.Queued)
			assert.Equal(t, tc.want.DeadLetters, got.DeadLetters)
			// The age grows while the test runs; a minute is far more than
			// it takes.
			assert.GreaterOrEqual(t, got.OldestAge, tc.want.OldestAge)
			assert.Less(t, got.OldestAge, tc.want.OldestAge+time.Minute)
		})
	}
	t.Run("a cancelled query is an error, not zeros", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_, err := o.Stats(cctx)
		assert.Error(t, err)
	})
}
