package function

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
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

// issuer signs the tokens: StreamSpace's own with its JWT secret (and,
// when StreamSpace runs its Redis session store, each token's session
// there), or, without that secret, ES256 tokens with a key of this
// function's, which only these functions accept (docs/auth.md).
type issuer struct {
	secret []byte
	ttl    time.Duration
	redis  *redis.Client // nil without STREAMSPACE_REDIS_URL
	es     *esKey        // set in ES256 mode, when secret is not
}

// esKey is the ES256 signing key, its kid and what its tokens say.
type esKey struct {
	key      jwk.Key
	kid      string
	issuer   string
	audience string
	jwks     []byte // the public key as a JWK set
}

// esClaims are an ES256 token's claims: StreamSpace's, with this
// function's issuer and an audience for the verifiers' AUTH_AUDIENCE.
type esClaims struct {
	streamSpaceClaims
	Audience string `json:"aud"`
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
	if is.es != nil {
		c.Issuer = is.es.issuer
		tok, err := signES256(esClaims{c, is.es.audience}, is.es)
		if err != nil {
			return Issued{}, err
		}
		return Issued{Token: tok, ExpiresAt: exp}, nil
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

// signES256 signs claims with k, its kid in the header.
func signES256(claims any, k *esKey) (string, error) {
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	hdr := jws.NewHeaders()
	if err := hdr.Set(jws.TypeKey, "JWT"); err != nil {
		return "", err
	}
	if err := hdr.Set(jws.KeyIDKey, k.kid); err != nil {
		return "", err
	}
	tok, err := jws.Sign(payload, jws.WithKey(jwa.ES256(), k.key, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		return "", err
	}
	return string(tok), nil
}

// maxKeyFile bounds what is read of AUTH_SIGNING_KEY_FILE.
const maxKeyFile = 64 << 10

// loadSigningKey reads a P-256 private key (PEM, PKCS#8 or SEC 1) and
// returns it with its kid (the RFC 7638 thumbprint of its public half) and
// the public JWK set. Errors never contain the file's content.
func loadSigningKey(path, issuerURL, audience string) (*esKey, []byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("AUTH_SIGNING_KEY_FILE: %w", err)
	}
	if len(raw) > maxKeyFile {
		return nil, nil, errors.New("AUTH_SIGNING_KEY_FILE: larger than 64 KiB")
	}
	block, _ := pem.Decode(raw)
	if block == nil {
		return nil, nil, errors.New("AUTH_SIGNING_KEY_FILE: no PEM block")
	}
	var priv *ecdsa.PrivateKey
	if k, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
		ec, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			return nil, nil, errors.New("AUTH_SIGNING_KEY_FILE: not an EC key")
		}
		priv = ec
	} else if priv, err = x509.ParseECPrivateKey(block.Bytes); err != nil {
		return nil, nil, errors.New("AUTH_SIGNING_KEY_FILE: not a PKCS#8 or SEC 1 EC private key")
	}
	if priv.Curve != elliptic.P256() {
		return nil, nil, errors.New("AUTH_SIGNING_KEY_FILE: want a P-256 key (ES256)")
	}
	key, err := jwk.Import(priv)
	if err != nil {
		return nil, nil, fmt.Errorf("AUTH_SIGNING_KEY_FILE: %w", err)
	}
	pub, err := jwk.Import(&priv.PublicKey)
	if err != nil {
		return nil, nil, fmt.Errorf("AUTH_SIGNING_KEY_FILE: %w", err)
	}
	tp, err := pub.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, nil, err
	}
	kid := base64.RawURLEncoding.EncodeToString(tp)
	for _, k := range []jwk.Key{key, pub} {
		if err := k.Set(jwk.KeyIDKey, kid); err != nil {
			return nil, nil, err
		}
	}
	if err := pub.Set(jwk.AlgorithmKey, jwa.ES256()); err != nil {
		return nil, nil, err
	}
	if err := pub.Set(jwk.KeyUsageKey, jwk.ForSignature); err != nil {
		return nil, nil, err
	}
	set := jwk.NewSet()
	if err := set.AddKey(pub); err != nil {
		return nil, nil, err
	}
	jwks, err := json.Marshal(set)
	if err != nil {
		return nil, nil, err
	}
	material, err := priv.Bytes()
	if err != nil {
		return nil, nil, err
	}
	return &esKey{key: key, kid: kid, issuer: issuerURL, audience: audience, jwks: jwks}, material, nil
}
