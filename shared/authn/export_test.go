package authn

import "time"

// SetClock replaces v's clock, which drives token time checks, the JWKS
// refetch rate limit and cache expiry. Call it before v is used.
func SetClock(v *Verifier, now func() time.Time) { v.now = now }

// MaxKeyAge is how old a cached JWKS may get before it is refetched.
const MaxKeyAge = maxKeyAge
