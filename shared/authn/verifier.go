package authn

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"

	"github.com/streamspace-dev/functions/shared/errs"
)

const (
	defaultRoleClaim          = "role"
	defaultLeeway             = 30 * time.Second
	defaultMinRefetchInterval = 30 * time.Second

	// maxKeyAge makes the cache refetch even when every kid is known, so a
	// key the issuer withdraws stops verifying within this time.
	maxKeyAge = 15 * time.Minute

	fetchTimeout = 10 * time.Second
	maxJWKSBytes = 1 << 20

	// maxTokenBytes bounds the work an anonymous caller can ask for; real
	// access tokens, even with many groups, stay well below it.
	maxTokenBytes = 16 << 10
)

// Config says which tokens a Verifier accepts. The fields map to the shared
// AUTH_* environment variables.
type Config struct {
	// Issuer is the exact "iss" every token must carry (AUTH_ISSUER).
	Issuer string
	// Audience must be one of the token's "aud" values (AUTH_AUDIENCE).
	Audience string
	// JWKSURL is where the issuer publishes its public keys (AUTH_JWKS_URL).
	JWKSURL string
	// RoleClaim is the dotted path of the role claim, e.g. "role" or
	// "realm_access.role" (AUTH_ROLE_CLAIM). Default "role". A top-level
	// claim whose name is the whole string, dots included, wins over the
	// nested path, so URL-named claims such as "https://example.com/role"
	// work too.
	RoleClaim string
	// Leeway is the clock skew allowed on exp, nbf and iat. Default 30s.
	Leeway time.Duration
	// Algorithms is the allow-list of signature algorithms. Default RS256,
	// RS384, RS512, PS256, ES256, ES384 and EdDSA. Symmetric algorithms and
	// "none" are refused here, because a public JWKS cannot vouch for them.
	Algorithms []jwa.SignatureAlgorithm
	// MinRefetchInterval is the least time between two JWKS fetches, so a
	// flood of unknown kids costs the issuer at most one request per
	// interval. Default 30s.
	MinRefetchInterval time.Duration
	// HTTPClient fetches the JWKS. Default: jwx's client with a 30s timeout
	// and no HTTPS-to-HTTP redirects; a given client gets the same redirect
	// rules and, if it has none, the timeout.
	HTTPClient *http.Client
	// EnvPrefix names the variables behind this config in error messages.
	// Default "AUTH_"; the event path's verifier uses "EVENT_AUTH_".
	EnvPrefix string
}

// keyRequirement is what a JWK must be for an algorithm to verify with it.
type keyRequirement struct {
	kty string
	crv string // empty when the key type has no curve
}

// supported lists the asymmetric algorithms a Config may allow.
var supported = map[string]keyRequirement{
	jwa.RS256().String():        {kty: "RSA"},
	jwa.RS384().String():        {kty: "RSA"},
	jwa.RS512().String():        {kty: "RSA"},
	jwa.PS256().String():        {kty: "RSA"},
	jwa.PS384().String():        {kty: "RSA"},
	jwa.PS512().String():        {kty: "RSA"},
	jwa.ES256().String():        {kty: "EC", crv: jwa.P256().String()},
	jwa.ES384().String():        {kty: "EC", crv: jwa.P384().String()},
	jwa.ES512().String():        {kty: "EC", crv: jwa.P521().String()},
	jwa.EdDSA().String():        {kty: "OKP", crv: jwa.Ed25519().String()},
	jwa.EdDSAEd25519().String(): {kty: "OKP", crv: jwa.Ed25519().String()},
}

func defaultAlgorithms() []jwa.SignatureAlgorithm {
	return []jwa.SignatureAlgorithm{
		jwa.RS256(), jwa.RS384(), jwa.RS512(), jwa.PS256(), jwa.ES256(), jwa.ES384(), jwa.EdDSA(),
	}
}

// Verifier checks bearer tokens. It is safe for concurrent use.
//
// The JWKS is fetched lazily, on the first Verify, so a function starts while
// its issuer is briefly unreachable; until a first fetch succeeds, Verify
// fails with errs.Unavailable rather than Unauthenticated.
type Verifier struct {
	keys      *keySet
	allowed   map[string]keyRequirement
	roleClaim string
	rolePath  []string
	parseOpts []jwt.ParseOption
	now       func() time.Time
}

// NewVerifier checks cfg and returns a Verifier. It does no network I/O.
// Errors name the AUTH_* variable that is missing or wrong.
func NewVerifier(_ context.Context, cfg Config) (*Verifier, error) {
	env := cfg.EnvPrefix
	if env == "" {
		env = "AUTH_"
	}
	if cfg.Issuer == "" {
		return nil, fmt.Errorf("%sISSUER is required", env)
	}
	if cfg.Audience == "" {
		return nil, fmt.Errorf("%sAUDIENCE is required", env)
	}
	if cfg.JWKSURL == "" {
		return nil, fmt.Errorf("%sJWKS_URL is required", env)
	}
	u, err := url.Parse(cfg.JWKSURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("%sJWKS_URL %q is not an absolute http(s) URL", env, cfg.JWKSURL)
	}

	roleClaim := cfg.RoleClaim
	if roleClaim == "" {
		roleClaim = defaultRoleClaim
	}
	path := strings.Split(roleClaim, ".")
	for _, seg := range path {
		if seg == "" {
			return nil, fmt.Errorf("%sROLE_CLAIM %q is not a dotted claim path", env, roleClaim)
		}
	}

	leeway := cfg.Leeway
	switch {
	case leeway < 0:
		return nil, fmt.Errorf("auth leeway %v is negative", leeway)
	case leeway == 0:
		leeway = defaultLeeway
	}
	interval := cfg.MinRefetchInterval
	switch {
	case interval < 0:
		return nil, fmt.Errorf("auth JWKS refetch interval %v is negative", interval)
	case interval == 0:
		interval = defaultMinRefetchInterval
	}

	algs := cfg.Algorithms
	if len(algs) == 0 {
		algs = defaultAlgorithms()
	}
	allowed := make(map[string]keyRequirement, len(algs))
	for _, alg := range algs {
		req, ok := supported[alg.String()]
		if !ok {
			return nil, fmt.Errorf("auth algorithm %q is not allowed: only asymmetric signature algorithms are", alg.String())
		}
		allowed[alg.String()] = req
	}

	client := jwk.DefaultHTTPClient()
	if cfg.HTTPClient != nil {
		client = jwk.WrapHTTPClientDefaults(cfg.HTTPClient)
	}

	v := &Verifier{
		allowed:   allowed,
		roleClaim: roleClaim,
		rolePath:  path,
		now:       time.Now,
	}
	v.keys = &keySet{
		url:         cfg.JWKSURL,
		client:      client,
		minInterval: interval,
		maxAge:      maxKeyAge,
		now:         func() time.Time { return v.now() },
	}
	v.parseOpts = []jwt.ParseOption{
		jwt.WithValidate(true),
		jwt.WithClock(jwt.ClockFunc(func() time.Time { return v.now() })),
		jwt.WithAcceptableSkew(leeway),
		jwt.WithValidator(jwt.ValidatorFunc(requireClaims)),
		jwt.WithIssuer(cfg.Issuer),
		jwt.WithAudience(cfg.Audience),
	}
	return v, nil
}

// Authenticate verifies the "Authorization: Bearer <jwt>" header of r.
func (v *Verifier) Authenticate(r *http.Request) (Identity, error) {
	values := r.Header.Values("Authorization")
	switch len(values) {
	case 0:
		return Identity{}, unauthenticated("missing bearer token")
	case 1:
	default:
		return Identity{}, unauthenticated("more than one Authorization header")
	}
	scheme, token, ok := strings.Cut(strings.TrimSpace(values[0]), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return Identity{}, unauthenticated("authorization scheme must be Bearer")
	}
	token = strings.TrimSpace(token)
	if token == "" || strings.ContainsAny(token, " \t") {
		return Identity{}, unauthenticated("malformed bearer token")
	}
	return v.Verify(r.Context(), token)
}

// Verify checks token's signature and claims and returns who it names.
// Every failure is an *errs.Error of kind Unauthenticated with a short
// message safe to show the client, except that while the JWKS has never been
// fetched successfully the kind is Unavailable. Neither the token nor parts
// of it appear in the error.
func (v *Verifier) Verify(ctx context.Context, token string) (Identity, error) {
	if token == "" {
		return Identity{}, unauthenticated("missing bearer token")
	}
	if len(token) > maxTokenBytes {
		return Identity{}, unauthenticated("token too large")
	}
	kp := &keyProvider{v: v, ctx: ctx}
	opts := make([]jwt.ParseOption, 0, len(v.parseOpts)+1)
	opts = append(opts, v.parseOpts...)
	opts = append(opts, jwt.WithKeyProvider(kp))
	tok, err := jwt.ParseString(token, opts...)
	if err != nil {
		return Identity{}, classify(err, kp)
	}
	sub, _ := tok.Subject()
	role, err := v.role(tok)
	if err != nil {
		return Identity{}, err
	}
	return Identity{Subject: sub, Role: role}, nil
}

// keyProvider picks the one key a token may be verified with, and remembers
// why it refused, since jws folds provider errors into a joined chain.
type keyProvider struct {
	v        *Verifier
	ctx      context.Context // the Verify call's; jws would pass its own background one
	err      error
	supplied bool
}

func (p *keyProvider) FetchKeys(_ context.Context, sink jws.KeySink, sig *jws.Signature, _ *jws.Message) error {
	h := sig.ProtectedHeaders()
	alg, ok := h.Algorithm()
	if !ok {
		return p.fail(unauthenticated("algorithm not allowed"))
	}
	req, ok := p.v.allowed[alg.String()]
	if !ok {
		return p.fail(unauthenticated("algorithm not allowed"))
	}
	// No extension header is understood here, so RFC 7515 says to reject
	// any that are marked critical.
	if h.Has(jws.CriticalKey) {
		return p.fail(unauthenticated("unsupported critical header"))
	}
	// Keys come only from the configured JWKS, by kid; jku, jwk and x5u
	// headers are attacker-controlled and ignored.
	kid, _ := h.KeyID()
	if kid == "" {
		return p.fail(unauthenticated("token has no key id"))
	}
	key, err := p.v.keys.lookup(p.ctx, kid)
	if err != nil {
		return p.fail(err)
	}
	if !keyFits(key, alg, req) {
		return p.fail(unauthenticated("signing key does not match algorithm"))
	}
	sink.Key(alg, key)
	p.supplied = true
	return nil
}

func (p *keyProvider) fail(err error) error {
	if p.err == nil {
		p.err = err
	}
	return err
}

// keyFits reports whether key may verify an alg signature: it must be a
// signing key of the algorithm's type and curve, and a key that names its
// algorithm must name this one.
func keyFits(key jwk.Key, alg jwa.SignatureAlgorithm, req keyRequirement) bool {
	if use, ok := key.KeyUsage(); ok && use != "" && use != jwk.ForSignature.String() {
		return false
	}
	if ka, ok := key.Algorithm(); ok && ka.String() != alg.String() {
		return false
	}
	if key.KeyType().String() != req.kty {
		return false
	}
	if req.crv == "" {
		return true
	}
	ck, ok := key.(interface {
		Crv() (jwa.EllipticCurveAlgorithm, bool)
	})
	if !ok {
		return false
	}
	crv, ok := ck.Crv()
	return ok && crv.String() == req.crv
}

// claimError is a failed claim requirement; its text is the client message.
type claimError string

func (e claimError) Error() string { return string(e) }

// requireClaims enforces what jwx leaves optional: a token without exp
// would otherwise never expire, and one without sub names nobody.
func requireClaims(_ context.Context, tok jwt.Token) error {
	if _, ok := tok.Expiration(); !ok {
		return claimError("token has no exp claim")
	}
	if sub, ok := tok.Subject(); !ok || sub == "" {
		return claimError("token has no subject")
	}
	return nil
}

// classify turns a jwt.Parse error into a client-safe message. The jwx error
// itself is dropped, not wrapped: it may quote header values from the token.
func classify(err error, kp *keyProvider) error {
	if kp.err != nil {
		return kp.err
	}
	var ce claimError
	switch {
	case errors.As(err, &ce):
		return unauthenticated(string(ce))
	case errors.Is(err, jwt.TokenExpiredError()):
		return unauthenticated("token expired")
	case errors.Is(err, jwt.TokenNotYetValidError()):
		return unauthenticated("token not yet valid")
	case errors.Is(err, jwt.InvalidIssuedAtError()):
		return unauthenticated("token issued in the future")
	case errors.Is(err, jwt.InvalidIssuerError()):
		return unauthenticated("token issuer not accepted")
	case errors.Is(err, jwt.InvalidAudienceError()):
		return unauthenticated("token audience not accepted")
	case errors.Is(err, jwt.ValidateError()):
		return unauthenticated("token claims not valid")
	case kp.supplied:
		return unauthenticated("invalid signature")
	}
	return unauthenticated("malformed token")
}

// role reads the configured role claim. No claim means User; anything but
// one of the three role strings, a list of groups included, is refused
// rather than guessed at.
func (v *Verifier) role(tok jwt.Token) (Role, error) {
	var val any
	if err := tok.Get(v.roleClaim, &val); err != nil {
		if len(v.rolePath) == 1 {
			return User, nil
		}
		if err := tok.Get(v.rolePath[0], &val); err != nil {
			return User, nil
		}
		for _, seg := range v.rolePath[1:] {
			if val == nil {
				return User, nil
			}
			obj, ok := val.(map[string]any)
			if !ok {
				return "", unauthenticated("unrecognised role")
			}
			if val, ok = obj[seg]; !ok {
				return User, nil
			}
		}
	}
	switch val := val.(type) {
	case nil:
		return User, nil
	case string:
		if r, ok := parseRole(val); ok {
			return r, nil
		}
	}
	return "", unauthenticated("unrecognised role")
}

func unauthenticated(msg string) error {
	return errs.E(errs.Unauthenticated, "%s", msg)
}

func unavailable(cause error) error {
	return errs.Wrap(errs.Unavailable, cause, "signing keys are unavailable")
}
