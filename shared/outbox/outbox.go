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
}

// New returns the outbox of function, sending to sink (K_SINK). An empty
// sink keeps events queued until a sink is configured.
func New(pool *pgxpool.Pool, function, sink string, log *slog.Logger) (*Outbox, error) {
	c, err := cloudevents.NewClientHTTP()
	if err != nil {
		return nil, fmt.Errorf("cloudevents client: %w", err)
	}
	return &Outbox{pool: pool, function: function, sink: sink, client: c, log: log}, nil
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

// Flush sends the queued events that are due and reports how many the sink
// acknowledged. Rows are locked with skip locked, so concurrent flushes
// (other requests, other instances) never send one event twice at once.
func (o *Outbox) Flush(ctx context.Context) (int, error) {
	if o.sink == "" {
		o.warnOnce.Do(func() {
			o.log.Warn("K_SINK is not set: emitted events stay queued in event_outbox", "function", o.function)
		})
		return 0, nil
	}
	sent := 0
	err := db.InTx(ctx, o.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `
			select id, event, attempts from event_outbox
			where function = $1 and coalesce(next_attempt_at, created_at) <= now()
			order by created_at
			limit $2
			for update skip locked`, o.function, batchSize)
		if err != nil {
			return err
		}
		type pending struct {
			id       string
			event    cloudevents.Event
			attempts int
		}
		var due []pending
		for rows.Next() {
			var p pending
			var raw []byte
			if err := rows.Scan(&p.id, &raw, &p.attempts); err != nil {
				return err
			}
			if err := json.Unmarshal(raw, &p.event); err != nil {
				return fmt.Errorf("decode queued event %s: %w", p.id, err)
			}
			due = append(due, p)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		var done []string
		for _, p := range due {
			if err := o.send(ctx, p.event); err != nil {
				o.log.Warn("emit failed; will retry", "eventId", p.id, "eventType", p.event.Type(), "attempt", p.attempts+1, "err", err)
				if _, uerr := tx.Exec(ctx, `
					update event_outbox
					set attempts = attempts + 1, last_error = $2,
					    next_attempt_at = now() + make_interval(secs => least(300, power(2, attempts)))
					where id = $1`, p.id, err.Error()); uerr != nil {
					return uerr
				}
				continue
			}
			done = append(done, p.id)
		}
		if len(done) > 0 {
			if _, err := tx.Exec(ctx, `delete from event_outbox where id = any($1)`, done); err != nil {
				return err
			}
		}
		sent = len(done)
		return nil
	})
	return sent, err
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

// Run flushes every interval until ctx ends, so events queued while the sink
// was down, or by an instance that stopped, are delivered.
func (o *Outbox) Run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if _, err := o.Flush(ctx); err != nil && ctx.Err() == nil {
			o.log.Warn("outbox flush failed", "function", o.function, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
