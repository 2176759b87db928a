package function

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/redis/go-redis/v9"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/errs"
)

// streamSpaceClaims are the claims of StreamSpace's own tokens
// (api/internal/auth/jwt.go, Claims), in the order its API writes them.
type streamSpaceClaims struct {
	UserID    string   `json:"user_id"`
	Username  string   `json:"username"`
	Email     string   `json:"email"`
	Role      string   `json:"role"`
	Groups    []string `json:"groups,omitempty"`
	Issuer    string   `json:"iss"`
	Subject   string   `json:"sub"`
	ExpiresAt int64    `json:"exp"`
	NotBefore int64    `json:"nbf"`
	IssuedAt  int64    `json:"iat"`
	ID        string   `json:"jti"`
}

// sessionRecord is the JSON StreamSpace's session store keeps at
// session:{jti} (api/internal/auth/session_store.go, SessionData).
type sessionRecord struct {
	SessionID string    `json:"session_id"`
	UserID    string    `json:"user_id"`
	Username  string    `json:"username"`
	Role      string    `json:"role"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	IPAddress string    `json:"ip_address,omitempty"`
	UserAgent string    `json:"user_agent,omitempty"`
}

// Issued is a signed token and when it expires.
type Issued struct {
	Token     string
	ExpiresAt time.Time
}

// issuer signs StreamSpace tokens with its JWT secret and, when StreamSpace
// runs its Redis session store, records each token's session there.
type issuer struct {
	secret []byte
	ttl    time.Duration
	redis  *redis.Client // nil without STREAMSPACE_REDIS_URL
}

// issue signs the token StreamSpace's API would sign at login for u.
func (is *issuer) issue(ctx context.Context, u User, ip, userAgent string) (Issued, error) {
	jti := make([]byte, 32)
	if _, err := rand.Read(jti); err != nil {
		return Issued{}, err
	}
	now := time.Now()
	exp := now.Add(is.ttl)
	c := streamSpaceClaims{
		UserID: u.ID, Username: u.Username, Email: u.Email, Role: u.Role, Groups: u.Groups,
		Issuer: authn.StreamSpaceIssuer, Subject: u.ID,
		ExpiresAt: exp.Unix(), NotBefore: now.Unix(), IssuedAt: now.Unix(),
		ID: hex.EncodeToString(jti),
	}
	tok, err := signHS256(c, is.secret)
	if err != nil {
		return Issued{}, err
	}
	if is.redis != nil {
		rec, err := json.Marshal(sessionRecord{
			SessionID: c.ID, UserID: u.ID, Username: u.Username, Role: u.Role,
			CreatedAt: now, ExpiresAt: exp, IPAddress: ip, UserAgent: userAgent,
		})
		if err != nil {
			return Issued{}, err
		}
		// Without its session the token would be refused everywhere, so a
		// failed write fails the login (the user can retry).
		if err := is.redis.Set(ctx, "session:"+c.ID, rec, is.ttl).Err(); err != nil {
			return Issued{}, errs.Wrap(errs.Unavailable, err, "session store unavailable")
		}
	}
	return Issued{Token: tok, ExpiresAt: exp}, nil
}

// signHS256 signs claims as golang-jwt does: header {"alg":"HS256","typ":"JWT"}.
func signHS256(claims any, secret []byte) (string, error) {
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	hdr := jws.NewHeaders()
	if err := hdr.Set(jws.TypeKey, "JWT"); err != nil {
		return "", err
	}
	tok, err := jws.Sign(payload, jws.WithKey(jwa.HS256(), secret, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		return "", err
	}
	return string(tok), nil
}
