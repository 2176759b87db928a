// Package outbox sends the events a function emits outside a broker reply
// (from REST routes and long jobs) to K_SINK without losing any: an event is
// written to the event_outbox table in the same transaction as the change it
// reports, sent after commit, and deleted only once the sink acknowledged it.
// What cannot be sent stays, is logged with its id, and is retried with
// backoff; what the sink refuses for good, or too often, moves to
// event_dead_letters and is logged as an error (docs/runtime.md).
package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/streamspace-dev/functions/shared/db"
)

// batchSize bounds the events one Flush sends.
const batchSize = 100

// DefaultMaxAttempts is how many refused sends an event gets before it is
// dead-lettered, unless New is told otherwise.
const DefaultMaxAttempts = 20

// Outbox is one function's outgoing event queue.
type Outbox struct {
	pool        *pgxpool.Pool
	function    string
	sink        string
	maxAttempts int
	client      cloudevents.Client
	log         *slog.Logger
	warnOnce    sync.Once
	kick        chan struct{}
}

// Option configures an Outbox.
type Option func(*options)

type options struct{ tokenFile string }

// WithTokenFile makes every send carry the bearer token in file, read afresh
// for each send because it rotates. It is where Knative's SinkBinding mounts
// the OIDC token the broker's ingress requires when authentication-oidc is
// on (/oidc/token); while the file does not exist, sends carry no token.
func WithTokenFile(file string) Option { return func(o *options) { o.tokenFile = file } }

// New returns the outbox of function, sending to sink (K_SINK). An empty
// sink keeps events queued until a sink is configured. An event the sink
// refused maxAttempts times (OUTBOX_MAX_ATTEMPTS; DefaultMaxAttempts when 0)
// moves to event_dead_letters.
func New(pool *pgxpool.Pool, function, sink string, maxAttempts int, log *slog.Logger, opts ...Option) (*Outbox, error) {
	if maxAttempts < 0 {
		return nil, fmt.Errorf("outbox: max attempts %d: want a positive number", maxAttempts)
	}
	if maxAttempts == 0 {
		maxAttempts = DefaultMaxAttempts
	}
	// The client retries a send a few times at once with the same rule as
	// the dead-lettering, so it never repeats a permanent refusal.
	var cfg options
	for _, opt := range opts {
		opt(&cfg)
	}
	copts := []cehttp.Option{cehttp.WithIsRetriableFunc(retryable)}
	if cfg.tokenFile != "" {
		copts = append(copts, cehttp.WithRoundTripper(tokenTransport{file: cfg.tokenFile, base: http.DefaultTransport}))
	}
	c, err := cloudevents.NewClientHTTP(copts...)
	if err != nil {
		return nil, fmt.Errorf("cloudevents client: %w", err)
	}
	return &Outbox{
		pool: pool, function: function, sink: sink, maxAttempts: maxAttempts,
		client: c, log: log, kick: make(chan struct{}, 1),
	}, nil
}

// queueEvents inserts a function's events, ids $2 and JSON documents $3, in
// one statement.
const queueEvents = `
	insert into event_outbox (id, function, event)
	select id, $1, doc::jsonb from unnest($2::uuid[], $3::text[]) as e(id, doc)`

// Add queues events in tx, in one statement; they are sent only if tx commits.
func (o *Outbox) Add(ctx context.Context, tx pgx.Tx, events ...cloudevents.Event) error {
	if len(events) == 0 {
		return nil
	}
	ids := make([]string, len(events))
	docs := make([]string, len(events))
	for i, e := range events {
		raw, err := json.Marshal(e)
		if err != nil {
			return fmt.Errorf("encode event %s: %w", e.ID(), err)
		}
		ids[i], docs[i] = e.ID(), string(raw)
	}
	if _, err := tx.Exec(ctx, queueEvents, o.function, ids, docs); err != nil {
		return fmt.Errorf("queue %d events: %w", len(events), db.Classify(err))
	}
	return nil
}

// claimFor is how long a flush owns the events it claimed. An instance that
// dies mid-send leaves them due again after this, and they are resent.
const claimFor = time.Minute

// bookkeepingTimeout bounds recording a flush's outcome once ctx has ended.
const bookkeepingTimeout = 10 * time.Second

// maxBackoff caps the wait before an event the sink refused is tried again.
// The exponent is capped too, so no attempt count overflows the arithmetic.
const maxBackoff = time.Hour

// backoff is how long an event waits after its attempts-th refusal (1, 2,
// ...): 2^attempts seconds, at most maxBackoff.
func backoff(attempts int) time.Duration {
	const maxShift = 12 // 2^12 s is past maxBackoff already
	if attempts < 0 {
		attempts = 0
	}
	return min(time.Second<<min(attempts, maxShift), maxBackoff)
}

// Flush sends the queued events that are due and reports how many the sink
// acknowledged. Events are claimed in a short transaction (skip locked, so
// concurrent flushes never claim the same event), sent with no transaction
// open, then deleted if acknowledged. A refused event counts an attempt and
// backs off, or moves to event_dead_letters when the refusal is permanent or
// its attempts reach the limit. Delivery is at least once: consumers
// deduplicate by event id.
func (o *Outbox) Flush(ctx context.Context) (int, error) {
	sent, _, err := o.flush(ctx)
	return sent, err
}

// flush is Flush that also reports whether more may be due: a full batch
// went out without a refusal.
func (o *Outbox) flush(ctx context.Context) (int, bool, error) {
	if o.sink == "" {
		o.warnOnce.Do(func() {
			o.log.Warn("K_SINK is not set: emitted events stay queued in event_outbox", "function", o.function)
		})
		return 0, false, nil
	}
	due, err := o.claim(ctx)
	if err != nil {
		return 0, false, err
	}
	var sent, untried []string
	var refused *pending
	var refusal error
	for i, p := range due {
		if err := o.send(ctx, p.event); err != nil {
			// A sink that refuses one event will likely refuse the next, and
			// each try can take the whole send timeout: release the rest of
			// the batch untried, as due as before, with no attempt counted.
			// A send cut short by ctx (the instance is stopping) is no
			// refusal and counts nothing either.
			rest := due[i+1:]
			if ctx.Err() != nil {
				rest = due[i:]
			} else {
				refused, refusal = &due[i], err
			}
			for _, p := range rest {
				untried = append(untried, p.id)
			}
			break
		}
		sent = append(sent, p.id)
	}
	// What was sent is recorded even when ctx ends meanwhile, so a stopping
	// instance does not leave its sent events to be sent again.
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), bookkeepingTimeout)
	defer cancel()
	if len(sent) > 0 {
		if err := o.exec(bctx, deleteSent, sent); err != nil {
			return len(sent), false, fmt.Errorf("mark %d events sent: %w", len(sent), err)
		}
	}
	if len(untried) > 0 {
		if err := o.exec(bctx, releaseUntried, untried); err != nil {
			return len(sent), false, fmt.Errorf("release %d untried events: %w", len(untried), err)
		}
	}
	if refused != nil {
		if err := o.refused(bctx, *refused, refusal); err != nil {
			return len(sent), false, err
		}
	}
	// More may be due only if a whole batch went out.
	more := len(due) == batchSize && refused == nil
	return len(sent), more, nil
}

const (
	// deleteSent removes the events the sink acknowledged.
	deleteSent = `delete from event_outbox where id = any($1)`

	// releaseUntried gives back claimed events that were never sent: due
	// now, attempts unchanged.
	releaseUntried = `update event_outbox set next_attempt_at = now() where id = any($1)`

	// retryLater counts a refused attempt and sets the event's backoff.
	retryLater = `
		update event_outbox
		set attempts = attempts + 1, last_error = $2, next_attempt_at = now() + $3::interval
		where id = $1`

	// moveToDeadLetters moves a refused event out of the outbox in one
	// statement, counting the attempt that killed it. An id dead-lettered
	// before (an operator re-queued it) is overwritten with its latest end.
	moveToDeadLetters = `
		with dead as (
			delete from event_outbox where id = $1
			returning id, function, event, attempts, created_at)
		insert into event_dead_letters (id, function, event, attempts, last_error, queued_at)
		select id, function, event, attempts + 1, $2, created_at from dead
		on conflict (id) do update
		set function = excluded.function, event = excluded.event, attempts = excluded.attempts,
		    last_error = excluded.last_error, queued_at = excluded.queued_at, dead_at = now()`
)

// exec runs one bookkeeping statement in its own transaction, so the
// statement and lock timeouts every transaction sets bound it too
// (docs/data.md).
func (o *Outbox) exec(ctx context.Context, sql string, args ...any) error {
	return db.InTx(ctx, o.pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, sql, args...)
		return err
	})
}

// refused records the sink's refusal of p: a retry after its backoff, or,
// when the refusal is permanent or p has had its attempts, the dead letters.
func (o *Outbox) refused(ctx context.Context, p pending, refusal error) error {
	attempt := p.attempts + 1
	status := statusOf(refusal)
	if permanent(status) || attempt >= o.maxAttempts {
		if err := o.exec(ctx, moveToDeadLetters, p.id, refusal.Error()); err != nil {
			return fmt.Errorf("dead-letter event %s: %w", p.id, err)
		}
		o.log.Error("event dead-lettered: the sink refused it for good or too often",
			"eventId", p.id, "eventType", p.event.Type(), "attempts", attempt, "status", status, "err", refusal)
		return nil
	}
	wait := backoff(attempt)
	if err := o.exec(ctx, retryLater, p.id, refusal.Error(), wait); err != nil {
		return fmt.Errorf("reschedule event %s: %w", p.id, err)
	}
	o.log.Warn("emit failed; will retry", "eventId", p.id, "eventType", p.event.Type(),
		"attempt", attempt, "retryIn", wait.String(), "status", status, "err", refusal)
	return nil
}

// retryable reports whether a sink's HTTP status asks for another try. Like
// Knative Eventing's dispatcher: 5xx and 404, 408, 409 and 429 are worth
// retrying; every other 4xx will be refused again (docs/runtime.md).
func retryable(status int) bool {
	switch status {
	case http.StatusNotFound, http.StatusRequestTimeout, http.StatusConflict, http.StatusTooManyRequests:
		return true
	}
	return status >= 500
}

// permanent reports whether status refuses an event for good.
func permanent(status int) bool { return status >= 400 && status < 500 && !retryable(status) }

// statusOf is the sink's HTTP status in a send result, 0 when the send
// failed without an answer (a refused connection, a timeout).
func statusOf(res error) int {
	var retries *cehttp.RetriesResult
	if errors.As(res, &retries) {
		res = retries.Result
	}
	var r *cehttp.Result
	if errors.As(res, &r) {
		return r.StatusCode
	}
	return 0
}

// Drain flushes until nothing more is due or the sink refuses, so a backlog
// (a team share that notified thousands) goes out in one go rather than a
// batch per tick, and a failing sink stops it at once.
func (o *Outbox) Drain(ctx context.Context) (int, error) {
	total := 0
	for {
		sent, more, err := o.flush(ctx)
		total += sent
		if err != nil || !more || ctx.Err() != nil {
			return total, err
		}
	}
}

// Kick asks Run to drain now. It never blocks: a kick while one is pending
// is the same kick.
func (o *Outbox) Kick() {
	select {
	case o.kick <- struct{}{}:
	default:
	}
}

type pending struct {
	id       string
	event    cloudevents.Event
	attempts int
	created  time.Time
}

// claimDue takes the due events of a function for claimFor, oldest first,
// skipping those another flush holds. Attempts are counted only when a send
// is refused, so a claim alone never counts one.
const claimDue = `
	update event_outbox
	set next_attempt_at = now() + $3::interval
	where id in (
		select id from event_outbox
		where function = $1 and next_attempt_at <= now()
		order by created_at
		limit $2
		for update skip locked)
	returning id::text, event, attempts, created_at`

func (o *Outbox) claim(ctx context.Context) ([]pending, error) {
	var due []pending
	err := db.InTx(ctx, o.pool, func(tx pgx.Tx) error {
		due = due[:0]
		rows, err := tx.Query(ctx, claimDue, o.function, batchSize, claimFor)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var p pending
			var raw []byte
			if err := rows.Scan(&p.id, &raw, &p.attempts, &p.created); err != nil {
				return err
			}
			if err := json.Unmarshal(raw, &p.event); err != nil {
				return fmt.Errorf("decode queued event %s: %w", p.id, err)
			}
			due = append(due, p)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("claim queued events: %w", err)
	}
	// update ... returning has no order; send oldest first.
	slices.SortFunc(due, func(a, b pending) int { return a.created.Compare(b.created) })
	return due, nil
}

func (o *Outbox) send(ctx context.Context, e cloudevents.Event) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ctx = cloudevents.ContextWithTarget(ctx, o.sink)
	ctx = cloudevents.ContextWithRetriesExponentialBackoff(ctx, 50*time.Millisecond, 3)
	if res := o.client.Send(ctx, e); !cloudevents.IsACK(res) {
		return res
	}
	return nil
}

// Run drains at start, on every Kick and every interval until ctx ends, so
// events leave right after the change that queued them commits, and events
// queued while the sink was down, or by an instance that stopped, follow.
func (o *Outbox) Run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for first := true; ; first = false {
		sent, err := o.Drain(ctx)
		if err != nil && ctx.Err() == nil {
			o.log.Warn("outbox flush failed", "function", o.function, "err", err)
		}
		if first {
			// What a previous instance left queued has now had its chance.
			o.log.Debug("outbox relay started", "function", o.function, "sent", sent)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-o.kick:
		}
	}
}

// Stats is what an operator watches of a function's outbox.
type Stats struct {
	// Queued is how many events wait in event_outbox.
	Queued int64
	// OldestAge is how long the oldest of them has waited; 0 when none.
	OldestAge time.Duration
	// DeadLetters is how many events are in event_dead_letters.
	DeadLetters int64
}

// readStats counts a function's queued events, the age in seconds of the
// oldest, and its dead letters, in one round trip. The tables hold only
// what is in flight or awaits an operator, so the scans stay small.
const readStats = `
	select q.queued, q.oldest, d.dead
	from (select count(*) as queued,
	             coalesce(extract(epoch from now() - min(created_at)), 0)::float8 as oldest
	      from event_outbox where function = $1) as q,
	     (select count(*) as dead from event_dead_letters where function = $1) as d`

// Stats reads the function's backlog and dead letters, for /metrics.
func (o *Outbox) Stats(ctx context.Context) (Stats, error) {
	var s Stats
	var oldest float64
	if err := (db.ReadOnly{DB: o.pool}).QueryRow(ctx, readStats, o.function).Scan(&s.Queued, &oldest, &s.DeadLetters); err != nil {
		return Stats{}, fmt.Errorf("read outbox stats: %w", db.Classify(err))
	}
	s.OldestAge = time.Duration(oldest * float64(time.Second))
	return s, nil
}

// tokenTransport adds the bearer token in file to every request; with no
// file, the request goes without one. The token is never logged.
type tokenTransport struct {
	file string
	base http.RoundTripper
}

func (t tokenTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	b, err := os.ReadFile(t.file)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return t.base.RoundTrip(r)
	case err != nil:
		return nil, fmt.Errorf("read sink token %s: %w", t.file, err)
	}
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(b)))
	return t.base.RoundTrip(r)
}
