// Package outbox sends the events a function emits outside a broker reply
// (from REST routes and long jobs) to K_SINK without losing any: an event is
// written to the event_outbox table in the same transaction as the change it
// reports, sent after commit, and deleted only once the sink acknowledged it.
// What cannot be sent stays, is logged with its id, and is retried with
// backoff.
package outbox

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/streamspace-dev/functions/shared/db"
)

// batchSize bounds the events one Flush sends.
const batchSize = 100

// Outbox is one function's outgoing event queue.
type Outbox struct {
	pool     *pgxpool.Pool
	function string
	sink     string
	client   cloudevents.Client
	log      *slog.Logger
	warnOnce sync.Once
	kick     chan struct{}
}

// New returns the outbox of function, sending to sink (K_SINK). An empty
// sink keeps events queued until a sink is configured.
func New(pool *pgxpool.Pool, function, sink string, log *slog.Logger) (*Outbox, error) {
	c, err := cloudevents.NewClientHTTP()
	if err != nil {
		return nil, fmt.Errorf("cloudevents client: %w", err)
	}
	return &Outbox{pool: pool, function: function, sink: sink, client: c, log: log, kick: make(chan struct{}, 1)}, nil
}

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
	if _, err := tx.Exec(ctx, `
		insert into event_outbox (id, function, event)
		select id, $1, doc::jsonb from unnest($2::uuid[], $3::text[]) as e(id, doc)`,
		o.function, ids, docs); err != nil {
		return fmt.Errorf("queue %d events: %w", len(events), db.Classify(err))
	}
	return nil
}

// claimFor is how long a flush owns the events it claimed. An instance that
// dies mid-send leaves them due again after this, and they are resent.
const claimFor = time.Minute

// Flush sends the queued events that are due and reports how many the sink
// acknowledged. Events are claimed in a short transaction (skip locked, so
// concurrent flushes never claim the same event), sent with no transaction
// open, then deleted if acknowledged or given a backoff if not. Delivery is
// at least once: consumers deduplicate by event id.
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
	var sent, failed []string
	var reasons []string
	for i, p := range due {
		if err := o.send(ctx, p.event); err != nil {
			o.log.Warn("emit failed; will retry", "eventId", p.id, "eventType", p.event.Type(), "attempt", p.attempts, "err", err)
			// A sink that refuses one event will likely refuse the next, and
			// each try can take the whole send timeout: put the rest of the
			// batch back with the same backoff instead of trying them all.
			for _, rest := range due[i:] {
				failed = append(failed, rest.id)
				reasons = append(reasons, err.Error())
			}
			break
		}
		sent = append(sent, p.id)
	}
	if len(sent) > 0 {
		if _, err := o.pool.Exec(ctx, `delete from event_outbox where id = any($1)`, sent); err != nil {
			return len(sent), false, fmt.Errorf("mark %d events sent: %w", len(sent), db.Classify(err))
		}
	}
	if len(failed) > 0 {
		if _, err := o.pool.Exec(ctx, `
			update event_outbox o
			set last_error = f.reason,
			    next_attempt_at = now() + make_interval(secs => least(300, power(2, o.attempts)))
			from unnest($1::uuid[], $2::text[]) as f(id, reason)
			where o.id = f.id`, failed, reasons); err != nil {
			return len(sent), false, fmt.Errorf("reschedule %d events: %w", len(failed), db.Classify(err))
		}
	}
	// More may be due only if a whole batch went out.
	more := len(due) == batchSize && len(failed) == 0
	return len(sent), more, nil
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

func (o *Outbox) claim(ctx context.Context) ([]pending, error) {
	rows, err := o.pool.Query(ctx, `
		update event_outbox
		set attempts = attempts + 1, next_attempt_at = now() + $3::interval
		where id in (
			select id from event_outbox
			where function = $1 and next_attempt_at <= now()
			order by created_at
			limit $2
			for update skip locked)
		returning id::text, event, attempts, created_at`, o.function, batchSize, claimFor)
	if err != nil {
		return nil, fmt.Errorf("claim queued events: %w", db.Classify(err))
	}
	defer rows.Close()
	var due []pending
	for rows.Next() {
		var p pending
		var raw []byte
		if err := rows.Scan(&p.id, &raw, &p.attempts, &p.created); err != nil {
			return nil, fmt.Errorf("claim queued events: %w", err)
		}
		if err := json.Unmarshal(raw, &p.event); err != nil {
			return nil, fmt.Errorf("decode queued event %s: %w", p.id, err)
		}
		due = append(due, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("claim queued events: %w", db.Classify(err))
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
	for {
		if _, err := o.Drain(ctx); err != nil && ctx.Err() == nil {
			o.log.Warn("outbox flush failed", "function", o.function, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-o.kick:
		}
	}
}
