// Package authn verifies the bearer JWT on every REST route.
//
// Two kinds of token are accepted, each only if configured, and each only
// with its own keys:
//
//   - an identity provider's tokens, checked against its JWKS: asymmetric
//     algorithms from an explicit allow-list, iss, aud, exp and sub
//     required. The JWKS is fetched on first use and cached; an unknown key
//     id triggers one rate-limited refetch, and a set past its age is
//     refreshed in the background while its keys keep verifying.
//   - StreamSpace's own API tokens: HS256 with StreamSpace's JWT_SECRET,
//     issuer "streamspace-api", exp required. Like StreamSpace's middleware,
//     the user must exist in its users table and be active, the role comes
//     from that row, and with its Redis session store configured the token's
//     session:{jti} key must exist.
//
// The header's "alg" picks the path before any key is touched, so an HMAC
// token never meets a JWKS key and an asymmetric token never meets the
// secret: algorithm confusion has no way in.
package authn

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
// scopes every query touching user data. Groups are the groups a StreamSpace
// token lists (none for other tokens).
type Identity struct {
	Subject string
	Role    Role
	Groups  []string
}

// IsAdmin reports whether the caller has the admin role.
func (i Identity) IsAdmin() bool { return i.Role == Admin }
