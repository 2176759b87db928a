package authn

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

// keySet caches the issuer's JWKS. Lookups of a known kid are lock-free.
// Fetches are serialised, so concurrent misses wait for one request, and
// rate-limited, so a stream of tokens with made-up kids cannot become a
// stream of requests to the issuer.
type keySet struct {
	url         string
	client      *http.Client
	minInterval time.Duration // at most one fetch per interval
	maxAge      time.Duration // a set older than this is refetched on use
	now         func() time.Time

	cur atomic.Pointer[fetchedSet]

	mu          sync.Mutex
	inflight    chan struct{} // non-nil while a fetch runs; closed when it ends
	lastAttempt time.Time
	lastErr     error
}

type fetchedSet struct {
	set jwk.Set
	at  time.Time
}

// lookup returns the key with the given kid. A miss, a stale set or an empty
// cache triggers a refetch, subject to the rate limit. When no set was ever
// fetched the error is Unavailable: the token may be fine, the issuer is not.
func (k *keySet) lookup(ctx context.Context, kid string) (jwk.Key, error) {
	if fs := k.cur.Load(); fs != nil && k.now().Sub(fs.at) < k.maxAge {
		if key, ok := fs.set.LookupKeyID(kid); ok {
			return key, nil
		}
	}
	fs, err := k.refresh(ctx)
	if fs == nil {
		return nil, unavailable(err)
	}
	// A failed refresh keeps the previous set: an issuer outage should not
	// log everybody out, and a withdrawn key stops verifying once the issuer
	// answers again.
	if key, ok := fs.set.LookupKeyID(kid); ok {
		return key, nil
	}
	return nil, unauthenticated("unknown signing key")
}

// refresh fetches the JWKS unless a fetch is already running (then it waits
// for that one) or the last attempt was less than minInterval ago (then it
// returns what is cached). It returns the current set, possibly nil, and the
// error of the most recent fetch.
func (k *keySet) refresh(ctx context.Context) (*fetchedSet, error) {
	k.mu.Lock()
	if ch := k.inflight; ch != nil {
		k.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return k.cur.Load(), ctx.Err()
		}
		k.mu.Lock()
		err := k.lastErr
		k.mu.Unlock()
		return k.cur.Load(), err
	}
	now := k.now()
	if !k.lastAttempt.IsZero() && now.Sub(k.lastAttempt) < k.minInterval {
		err := k.lastErr
		k.mu.Unlock()
		return k.cur.Load(), err
	}
	ch := make(chan struct{})
	k.inflight = ch
	k.lastAttempt = now
	k.mu.Unlock()

	set, err := k.fetch(ctx)

	k.mu.Lock()
	if err == nil {
		k.cur.Store(&fetchedSet{set: set, at: now})
	}
	k.lastErr = err
	k.inflight = nil
	close(ch)
	k.mu.Unlock()
	return k.cur.Load(), err
}

// fetch detaches from the caller's cancellation because other requests may
// be waiting on the same fetch; the timeout bounds it instead.
func (k *keySet) fetch(ctx context.Context) (jwk.Set, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fetchTimeout)
	defer cancel()
	return jwk.Fetch(ctx, k.url,
		jwk.WithHTTPClient(k.client),
		jwk.WithMaxFetchBodySize(maxJWKSBytes),
	)
}
