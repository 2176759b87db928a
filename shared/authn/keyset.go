package authn

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
)

// keySet caches the issuer's JWKS. Lookups of a known kid are lock-free and
// never wait on the issuer: when the set has grown old, they are served from
// it while one refresh runs in the background. Only an unknown kid, or no
// set at all, makes a request wait for a fetch. Fetches are serialised, so
// concurrent misses wait for one request, and rate-limited, so a stream of
// tokens with made-up kids cannot become a stream of requests to the issuer.
type keySet struct {
	url         string
	client      *http.Client
	minInterval time.Duration // at most one fetch per interval
	maxAge      time.Duration // a set older than this is refreshed on use
	now         func() time.Time

	cur atomic.Pointer[fetchedSet]

	mu          sync.Mutex
	inflight    chan struct{} // non-nil while a fetch runs; closed when it ends
	lastAttempt time.Time
	lastErr     error
}

type fetchedSet struct {
	keys map[string]*verifyKey // by kid
	at   time.Time
}

// verifyKey is one JWKS entry, exported once to the crypto key that
// verifies with it, with what keyFits needs to know about it.
type verifyKey struct {
	raw any
	kty string
	crv string // empty when the key type has no curve
	alg string // empty when the JWK names no algorithm
	use string // empty when the JWK names no use
}

// fits reports whether k may verify a signature made with alg: it must be a
// signing key of the algorithm's type and curve, and a key that names its
// algorithm must name this one.
func (k *verifyKey) fits(alg string, req keyRequirement) bool {
	switch {
	case k.use != "" && k.use != jwk.ForSignature.String():
		return false
	case k.alg != "" && k.alg != alg:
		return false
	case k.kty != req.kty:
		return false
	}
	return req.crv == "" || k.crv == req.crv
}

// lookup returns the key with the given kid. A known kid is served from the
// cache, even from a set past its age, whose refresh then starts in the
// background. An unknown kid or an empty cache waits for a refetch, subject
// to the rate limit. When no set was ever fetched the error is Unavailable:
// the token may be fine, the issuer is not.
func (k *keySet) lookup(ctx context.Context, kid string) (*verifyKey, error) {
	if fs := k.cur.Load(); fs != nil {
		if key, ok := fs.keys[kid]; ok {
			if k.now().Sub(fs.at) >= k.maxAge {
				k.refreshInBackground()
			}
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
	if key, ok := fs.keys[kid]; ok {
		return key, nil
	}
	return nil, unauthenticated("unknown signing key")
}

// ensure makes sure a set has been fetched, fetching one now if none was
// (rate-limited like every fetch), and returns why not otherwise.
func (k *keySet) ensure(ctx context.Context) error {
	if k.cur.Load() != nil {
		return nil
	}
	fs, err := k.refresh(ctx)
	if fs != nil {
		return nil
	}
	if err == nil {
		err = errors.New("no key set fetched yet")
	}
	return err
}

// begin claims the one fetch slot: it fails while a fetch runs (returning
// that fetch's channel) or within minInterval of the last attempt. The
// caller must then call finish with the returned channel.
func (k *keySet) begin() (ch chan struct{}, at time.Time, running chan struct{}, ok bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.inflight != nil {
		return nil, time.Time{}, k.inflight, false
	}
	now := k.now()
	if !k.lastAttempt.IsZero() && now.Sub(k.lastAttempt) < k.minInterval {
		return nil, time.Time{}, nil, false
	}
	k.inflight = make(chan struct{})
	k.lastAttempt = now
	return k.inflight, now, nil, true
}

// run fetches the set and releases the slot begin claimed.
func (k *keySet) run(ch chan struct{}, at time.Time) {
	keys, err := k.fetch()
	k.mu.Lock()
	if err == nil {
		k.cur.Store(&fetchedSet{keys: keys, at: at})
	}
	k.lastErr = err
	k.inflight = nil
	close(ch)
	k.mu.Unlock()
}

// refresh fetches the JWKS unless a fetch is already running (then it waits
// for that one, or for ctx) or the last attempt was less than minInterval
// ago (then it returns what is cached). It returns the current set, possibly
// nil, and the error of the most recent fetch.
func (k *keySet) refresh(ctx context.Context) (*fetchedSet, error) {
	ch, at, running, ok := k.begin()
	switch {
	case ok:
		k.run(ch, at)
	case running != nil:
		select {
		case <-running:
		case <-ctx.Done():
			return k.cur.Load(), ctx.Err()
		}
	}
	k.mu.Lock()
	err := k.lastErr
	k.mu.Unlock()
	return k.cur.Load(), err
}

// refreshInBackground starts a fetch that nobody waits for, unless one is
// running or the rate limit says no.
func (k *keySet) refreshInBackground() {
	if ch, at, _, ok := k.begin(); ok {
		go k.run(ch, at)
	}
}

// wait blocks until no fetch is running.
func (k *keySet) wait() {
	k.mu.Lock()
	ch := k.inflight
	k.mu.Unlock()
	if ch != nil {
		<-ch
	}
}

// fetch runs detached from any request: other requests may be waiting on
// the same fetch, or none at all. The timeout bounds it instead.
func (k *keySet) fetch() (map[string]*verifyKey, error) {
	ctx, cancel := context.WithTimeout(context.Background(), fetchTimeout)
	defer cancel()
	set, err := jwk.Fetch(ctx, k.url,
		jwk.WithHTTPClient(k.client),
		jwk.WithMaxFetchBodySize(maxJWKSBytes),
	)
	if err != nil {
		return nil, err
	}
	return exportKeys(set), nil
}

// exportKeys turns each keyed JWK into the crypto key it verifies with, once
// per fetch rather than once per token. The first key with a kid wins, as
// in jwk.Set's own lookup; keys without a kid can never be selected, and
// keys that are not valid or that jwx cannot export could never verify.
func exportKeys(set jwk.Set) map[string]*verifyKey {
	keys := make(map[string]*verifyKey, set.Len())
	for i := range set.Len() {
		key, _ := set.Key(i)
		kid, ok := key.KeyID()
		if !ok || kid == "" {
			continue
		}
		if _, dup := keys[kid]; dup {
			continue
		}
		var raw any
		if key.Validate() != nil || jwk.Export(key, &raw) != nil {
			continue
		}
		vk := &verifyKey{raw: raw, kty: key.KeyType().String()}
		if alg, ok := key.Algorithm(); ok {
			vk.alg = alg.String()
		}
		if use, ok := key.KeyUsage(); ok {
			vk.use = use
		}
		if ck, ok := key.(interface {
			Crv() (jwa.EllipticCurveAlgorithm, bool)
		}); ok {
			if crv, ok := ck.Crv(); ok {
				vk.crv = crv.String()
			}
		}
		keys[kid] = vk
	}
	return keys
}
