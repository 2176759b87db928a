package authn

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/shared/errs"
)

// Querier runs the user check's one query: the function's *pgxpool.Pool.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// userQuery reads what StreamSpace's middleware reads of a token's user
// (api/internal/db/users.go, GetUser): whether the row exists, whether it
// is active, and its role. Both columns are nullable. StreamSpace scans them
// into a Go bool and string, which fails on NULL, and its middleware then
// refuses the token; a NULL refuses here too.
const userQuery = `select role, active from users where id = $1`

// userCheck answers "may this user sign in, and with which role?" from
// StreamSpace's users table, reusing each answer for ttl: that is how long a
// deactivated user or a demoted admin keeps access. At most max answers are
// kept. Failures to ask are not kept.
type userCheck struct {
	db  Querier
	ttl time.Duration
	max int
	now func() time.Time

	mu      sync.Mutex
	entries map[string]userEntry
}

type userEntry struct {
	role    Role
	refused string // the client message when the user may not sign in
	at      time.Time
}

func newUserCheck(db Querier, ttl time.Duration, max int, now func() time.Time) *userCheck {
	return &userCheck{db: db, ttl: ttl, max: max, now: now, entries: make(map[string]userEntry)}
}

// check returns the role of user id, or an Unauthenticated error when the
// user is missing, inactive or without a known role. A database failure is
// Unavailable: the token may be fine, the check could not be made.
func (u *userCheck) check(ctx context.Context, id string) (Role, error) {
	now := u.now()
	u.mu.Lock()
	e, ok := u.entries[id]
	u.mu.Unlock()
	if !ok || now.Sub(e.at) >= u.ttl || now.Before(e.at) {
		var err error
		if e, err = u.load(ctx, id); err != nil {
			return "", err
		}
		e.at = now
		u.store(id, e)
	}
	if e.refused != "" {
		return "", unauthenticated(e.refused)
	}
	return e.role, nil
}

func (u *userCheck) load(ctx context.Context, id string) (userEntry, error) {
	var role *string
	var active *bool
	err := u.db.QueryRow(ctx, userQuery, id).Scan(&role, &active)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return userEntry{refused: "user not found"}, nil
	case err != nil:
		return userEntry{}, errs.Wrap(errs.Unavailable, err, "user check failed")
	case active == nil || !*active:
		return userEntry{refused: "user account is disabled"}, nil
	case role == nil:
		return userEntry{refused: "user has no role"}, nil
	}
	r, ok := parseRole(*role)
	if !ok {
		return userEntry{refused: "unrecognised role"}, nil
	}
	return userEntry{role: r}, nil
}

// store keeps e for id. When the cache is full it first drops what has
// expired, then, if that was not enough, an arbitrary entry: a dropped user
// is only asked about again.
func (u *userCheck) store(id string, e userEntry) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, ok := u.entries[id]; !ok && len(u.entries) >= u.max {
		for k, old := range u.entries {
			if e.at.Sub(old.at) >= u.ttl {
				delete(u.entries, k)
			}
		}
		for k := range u.entries {
			if len(u.entries) < u.max {
				break
			}
			delete(u.entries, k)
		}
	}
	u.entries[id] = e
}

// size is the number of cached answers.
func (u *userCheck) size() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.entries)
}
