package db

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// The defaults of Settings, the one place they are written down
// (docs/data.md, "Connections, PgBouncer and timeouts").
const (
	// DefaultPoolMax is the most connections one instance holds: with
	// Knative's max-scale it bounds what a function can take from the
	// database StreamSpace's own API shares.
	DefaultPoolMax = 4
	// DefaultPoolMin keeps no connection open while idle, so an instance
	// waiting to be scaled to zero holds none.
	DefaultPoolMin = 0
	// DefaultPoolIdle closes a connection unused this long, well before
	// Knative's scale-to-zero grace period ends.
	DefaultPoolIdle = 30 * time.Second
	// DefaultStatementTimeout bounds every statement a function runs.
	DefaultStatementTimeout = 5 * time.Second
	// DefaultLockTimeout bounds every wait for a lock, such as a row that
	// StreamSpace's API holds in a long transaction.
	DefaultLockTimeout = 2 * time.Second
)

// Settings size a function's pool and bound its transactions. service.Base
// embeds them, so each comes from the variable its tag names.
type Settings struct {
	// PoolMax is the most connections the pool opens.
	PoolMax int `env:"DATABASE_POOL_MAX"`
	// PoolMin is how many connections the pool keeps open when idle.
	PoolMin int `env:"DATABASE_POOL_MIN"`
	// PoolIdle is how long an unused connection stays open.
	PoolIdle time.Duration `env:"DATABASE_POOL_IDLE"`
	// StatementTimeout is every transaction's statement_timeout; 0 turns
	// it off.
	StatementTimeout time.Duration `env:"DATABASE_STATEMENT_TIMEOUT"`
	// LockTimeout is every transaction's lock_timeout; 0 turns it off.
	LockTimeout time.Duration `env:"DATABASE_LOCK_TIMEOUT"`
}

// Defaults are the Settings of a function that sets none of the variables.
func Defaults() Settings {
	return Settings{
		PoolMax:          DefaultPoolMax,
		PoolMin:          DefaultPoolMin,
		PoolIdle:         DefaultPoolIdle,
		StatementTimeout: DefaultStatementTimeout,
		LockTimeout:      DefaultLockTimeout,
	}
}

// Validate reports every setting out of range, naming its variable.
func (s Settings) Validate() error {
	var all []error
	if s.PoolMax < 1 {
		all = append(all, fmt.Errorf("DATABASE_POOL_MAX is %d: want at least 1", s.PoolMax))
	}
	if s.PoolMin < 0 || s.PoolMin > s.PoolMax {
		all = append(all, fmt.Errorf("DATABASE_POOL_MIN is %d: want 0 to DATABASE_POOL_MAX (%d)", s.PoolMin, s.PoolMax))
	}
	if s.PoolIdle <= 0 {
		all = append(all, fmt.Errorf("DATABASE_POOL_IDLE is %s: want a positive duration", s.PoolIdle))
	}
	if s.StatementTimeout < 0 {
		all = append(all, fmt.Errorf("DATABASE_STATEMENT_TIMEOUT is %s: want 0 (off) or a positive duration", s.StatementTimeout))
	}
	if s.LockTimeout < 0 {
		all = append(all, fmt.Errorf("DATABASE_LOCK_TIMEOUT is %s: want 0 (off) or a positive duration", s.LockTimeout))
	}
	if len(all) > 0 {
		return fmt.Errorf("config: %w", errors.Join(all...))
	}
	return nil
}

// Timeouts are the bounds every transaction sets on itself with SET LOCAL.
type Timeouts struct {
	Statement time.Duration
	Lock      time.Duration
}

// Timeouts returns the transaction bounds of s.
func (s Settings) Timeouts() Timeouts {
	return Timeouts{Statement: s.StatementTimeout, Lock: s.LockTimeout}
}

type timeoutsKey struct{}

// WithTimeouts returns ctx carrying t, which InTx and Read set on every
// transaction they begin under it. The service puts its configured bounds
// on every request and event it handles.
func WithTimeouts(ctx context.Context, t Timeouts) context.Context {
	return context.WithValue(ctx, timeoutsKey{}, t)
}

// timeoutsFrom is what ctx carries, or the defaults.
func timeoutsFrom(ctx context.Context) Timeouts {
	if t, ok := ctx.Value(timeoutsKey{}).(Timeouts); ok {
		return t
	}
	return Defaults().Timeouts()
}
