package db

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/streamspace-dev/functions/shared/errs"
)

// Lease is a held row in job_leases: while it is held and unexpired, no other
// owner can acquire the same name. A long job (a snapshot, a restore) takes
// one so a redelivery of its event while it runs is recognised, and so a
// redelivery after its pod died can take over once the lease runs out.
type Lease struct {
	Name  string
	Owner string
	TTL   time.Duration

	pool *pgxpool.Pool

	mu    sync.Mutex
	until time.Time // lease_until as the database set it
	// valid is when the lease may have run out, by this process's monotonic
	// clock: the send time of the last successful write plus TTL. The
	// database's now() was no earlier than that send time.
	valid time.Time

	lost     chan struct{}
	loseOnce sync.Once
}

// AcquireLease takes the lease name for owner for ttl, measured by the
// database clock. In one statement it creates the lease, takes over one
// that has expired, or renews one owner already holds. acquired is false,
// with a nil lease and error, when another owner holds it.
//
// owner should identify one attempt at the job (for example the pod name and
// a random suffix): an owner that acquires again renews its own lease, so a
// shared owner would let two copies of the job run.
func AcquireLease(ctx context.Context, pool *pgxpool.Pool, name, owner string, ttl time.Duration) (lease *Lease, acquired bool, err error) {
	if name == "" || owner == "" || ttl <= 0 {
		return nil, false, errs.E(errs.Invalid, "acquire lease: a name, an owner and a positive ttl are required")
	}
	sent := time.Now()
	var until time.Time
	err = InTx(ctx, pool, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `insert into job_leases (name, owner, lease_until, heartbeat_at)
		 values ($1, $2, now() + make_interval(secs => $3), now())
		 on conflict (name) do update
		    set owner = excluded.owner,
		        lease_until = excluded.lease_until,
		        heartbeat_at = excluded.heartbeat_at
		  where job_leases.lease_until < now() or job_leases.owner = excluded.owner
		 returning lease_until`,
			name, owner, ttl.Seconds()).Scan(&until)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, Classify(fmt.Errorf("acquire lease %s: %w", name, err))
	}
	l := &Lease{Name: name, Owner: owner, TTL: ttl, pool: pool, lost: make(chan struct{})}
	l.extended(until, sent)
	return l, true, nil
}

// Until is when the lease runs out by the database clock, as of the last
// acquire or heartbeat.
func (l *Lease) Until() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.until
}

// Lost is closed once the lease is known to be lost: a heartbeat found
// another owner, or Keep could not renew it before it ran out. A job should
// stop writing when it is closed.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// ErrLeaseLost is the cause that ends a Context when the lease is lost,
// and what a job that finds another owner holding its lease answers.
var ErrLeaseLost = errors.New("the job's lease was lost to another owner")

// Context returns a context derived from ctx that ends, with cause
// ErrLeaseLost, as soon as the lease is lost. cancel ends it and its watch
// of the lease.
func (l *Lease) Context(ctx context.Context) (_ context.Context, cancel func()) {
	ctx, cancelCause := context.WithCancelCause(ctx)
	go func() {
		select {
		case <-l.lost:
			cancelCause(ErrLeaseLost)
		case <-ctx.Done():
		}
	}()
	return ctx, func() { cancelCause(nil) }
}

// Heartbeat extends the lease by its TTL from now. It returns an error of
// kind Conflict, and closes Lost, if the lease is no longer this owner's.
func (l *Lease) Heartbeat(ctx context.Context) error {
	sent := time.Now()
	var until time.Time
	err := InTx(ctx, l.pool, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `update job_leases
		    set lease_until = now() + make_interval(secs => $3), heartbeat_at = now()
		  where name = $1 and owner = $2
		 returning lease_until`,
			l.Name, l.Owner, l.TTL.Seconds()).Scan(&until)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		l.markLost()
		return errs.E(errs.Conflict, "lease %s lost: another owner took it over", l.Name)
	}
	if err != nil {
		return Classify(fmt.Errorf("heartbeat lease %s: %w", l.Name, err))
	}
	l.extended(until, sent)
	return nil
}

// Release gives the lease up so the next delivery need not wait for it to
// expire. It deletes the row only while this owner still holds it, so a
// release after a takeover changes nothing.
func (l *Lease) Release(ctx context.Context) error {
	err := InTx(ctx, l.pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `delete from job_leases where name = $1 and owner = $2`, l.Name, l.Owner)
		return err
	})
	if err != nil {
		return Classify(fmt.Errorf("release lease %s: %w", l.Name, err))
	}
	return nil
}

// Keep sends a heartbeat every interval (a third of the TTL if every is not
// positive) until stop is called, ctx ends, or the lease is lost. Transient
// failures are retried at the next tick; once the lease may have run out
// without a successful heartbeat it is treated as lost. stop waits for the
// heartbeat goroutine to finish, so a Release after it cannot race a renewal.
func (l *Lease) Keep(ctx context.Context, every time.Duration) (stop func()) {
	if every <= 0 {
		every = l.TTL / 3
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.keep(ctx, every)
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
}

func (l *Lease) keep(ctx context.Context, every time.Duration) {
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.lost:
			return
		case <-ticker.C:
		}
		err := l.Heartbeat(ctx)
		if ctx.Err() != nil || errs.KindOf(err) == errs.Conflict {
			return
		}
		if err != nil && time.Now().After(l.validUntil()) {
			l.markLost()
			return
		}
	}
}

func (l *Lease) extended(until, sent time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.until = until
	l.valid = sent.Add(l.TTL)
}

func (l *Lease) validUntil() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.valid
}

func (l *Lease) markLost() {
	l.loseOnce.Do(func() { close(l.lost) })
}
