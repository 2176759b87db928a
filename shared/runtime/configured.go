package runtime

import "errors"

// ErrNotConfigured is what a function's Start wraps when none of the
// variables that turn it on is set (the auth function without any OpenID
// provider). Alone, such a function stops there like on any configuration
// error; the all-in-one leaves it out, logs why, and serves the others, so
// one Service can carry a function an install does not use.
var ErrNotConfigured = errors.New("not configured")
