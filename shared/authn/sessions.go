package authn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/streamspace-dev/functions/shared/errs"
)

// SessionStore tells whether StreamSpace's session store still holds a
// login session: StreamSpace deletes it on logout and clears them all when
// its API restarts.
type SessionStore interface {
	SessionExists(ctx context.Context, id string) (bool, error)
}

// checkSession refuses a token whose session is gone. StreamSpace's own
// middleware skips the check for a token without a jti; every token its API
// signs has one, so here a token without one is refused: it could never be
// logged out.
func checkSession(ctx context.Context, s SessionStore, jti string) error {
	if jti == "" {
		return unauthenticated("token has no session id")
	}
	ok, err := s.SessionExists(ctx, jti)
	if err != nil {
		return errs.Wrap(errs.Unavailable, err, "session store unavailable")
	}
	if !ok {
		return unauthenticated("session expired or invalidated")
	}
	return nil
}

// RedisSessions is StreamSpace's Redis session store
// (api/internal/auth/session_store.go, with CACHE_ENABLED): a login's
// session is the key session:{jti}, with the token's lifetime as its TTL.
type RedisSessions struct {
	client *redis.Client
}

var _ SessionStore = (*RedisSessions)(nil)

// NewRedisSessions returns the session store at rawURL (redis://, rediss://
// or unix://, from STREAMSPACE_REDIS_URL). It connects on first use. Errors
// never repeat the URL, which may hold a password.
func NewRedisSessions(rawURL string) (*RedisSessions, error) {
	redisLogOnce.Do(func() { redis.SetLogger(redisLog{}) })
	opts, err := redis.ParseURL(rawURL)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			return nil, errors.New("STREAMSPACE_REDIS_URL is not a URL")
		}
		return nil, fmt.Errorf("STREAMSPACE_REDIS_URL: %w", err)
	}
	return &RedisSessions{client: redis.NewClient(opts)}, nil
}

// redisLog sends go-redis's own log lines (dial failures, pool trouble) to
// slog's default logger, so they are JSON like every other line of the
// function. go-redis has one logger per process.
type redisLog struct{}

var redisLogOnce sync.Once

func (redisLog) Printf(ctx context.Context, format string, v ...any) {
	slog.WarnContext(ctx, "redis: "+fmt.Sprintf(format, v...))
}

// SessionExists reports whether session:{id} exists.
func (s *RedisSessions) SessionExists(ctx context.Context, id string) (bool, error) {
	n, err := s.client.Exists(ctx, "session:"+id).Result()
	if err != nil {
		return false, fmt.Errorf("redis exists: %w", err)
	}
	return n == 1, nil
}

// Close closes the connections.
func (s *RedisSessions) Close() error { return s.client.Close() }
