package authn

import "time"

// SetClock replaces v's clock, which drives token time checks, the JWKS
// refetch rate limit, cache expiry and the user cache. Call it before v is
// used.
func SetClock(v *Verifier, now func() time.Time) { v.now = now }

// WaitForRefresh blocks until no JWKS fetch of v is running.
func WaitForRefresh(v *Verifier) { v.jwks.keys.wait() }

// CachedUsers is the number of user checks v keeps.
func CachedUsers(v *Verifier) int { return v.ss.users.size() }

// MaxKeyAge is how old a cached JWKS may get before it is refreshed.
const MaxKeyAge = maxKeyAge
