// Package authn verifies the bearer JWT on every REST route and carries the
// resulting identity through the request context.
//
// Tokens are checked against the issuer's JWKS, which is fetched on first use
// and cached; an unknown key id triggers one rate-limited refetch so key
// rotation at the issuer needs no restart. Only the asymmetric algorithms in
// an explicit allow-list are accepted, and iss, aud, exp and sub are required.
package authn

import "context"

// Role is what a caller may do beyond touching their own data.
type Role string

// The roles a token may carry. A token without a role claim is a User.
const (
	Admin    Role = "admin"
	Operator Role = "operator"
	User     Role = "user"
)

// parseRole maps a claim value to a Role; any other string is not a role.
func parseRole(s string) (Role, bool) {
	switch r := Role(s); r {
	case Admin, Operator, User:
		return r, true
	}
	return "", false
}

// Identity is the verified caller of a request: Subject is the user id that
// scopes every query touching user data.
type Identity struct {
	Subject string
	Role    Role
}

// IsAdmin reports whether the caller has the admin role.
func (i Identity) IsAdmin() bool { return i.Role == Admin }

type identityKey struct{}

// WithIdentity returns a context carrying id, for handlers further down.
func WithIdentity(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// FromContext returns the identity stored by WithIdentity. The boolean is
// false when the request was never authenticated.
func FromContext(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(Identity)
	return id, ok
}
