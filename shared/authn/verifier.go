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
	"github.com/lestrrat-go/jwx/v3/jws/jwsbb"
	"github.com/valyala/fastjson"

	"github.com/streamspace-dev/functions/shared/errs"
)

const (
	defaultRoleClaim          = "role"
	defaultLeeway             = 30 * time.Second
	defaultMinRefetchInterval = 30 * time.Second

	// maxKeyAge makes the cache refresh even when every kid is known, so a
	// key the issuer withdraws stops verifying within about this time.
	maxKeyAge = 15 * time.Minute

	fetchTimeout = 10 * time.Second
	maxJWKSBytes = 1 << 20

	// maxTokenBytes bounds the work an anonymous caller can ask for; real
	// access tokens, even with many groups, stay well below it.
	maxTokenBytes = 16 << 10
)

// Config says which tokens a Verifier accepts: an identity provider's,
// checked against its JWKS (Issuer, Audience and JWKSURL, all three or
// none), StreamSpace's own (StreamSpaceSecret), or both. The fields map to
// the shared AUTH_* and STREAMSPACE_* environment variables.
type Config struct {
	// Issuer is the exact "iss" every JWKS token must carry (AUTH_ISSUER).
	Issuer string
	// Audience must be one of the JWKS token's "aud" values (AUTH_AUDIENCE).
	Audience string
	// JWKSURL is where the issuer publishes its public keys (AUTH_JWKS_URL).
	JWKSURL string
	// RoleClaim is the dotted path of the JWKS token's role claim, e.g.
	// "role" or "realm_access.role" (AUTH_ROLE_CLAIM). Default "role". A
	// top-level claim whose name is the whole string, dots included, wins
	// over the nested path, so URL-named claims such as
	// "https://example.com/role" work too.
	RoleClaim string
	// Leeway is the clock skew allowed on exp, nbf and iat. Default 30s.
	Leeway time.Duration
	// Algorithms is the allow-list of JWKS signature algorithms. Default
	// RS256, RS384, RS512, PS256, ES256, ES384 and EdDSA. Symmetric
	// algorithms and "none" are refused here, because a public JWKS cannot
	// vouch for them.
	Algorithms []jwa.SignatureAlgorithm
	// MinRefetchInterval is the least time between two JWKS fetches, so a
	// flood of unknown kids costs the issuer at most one request per
	// interval. Default 30s.
	MinRefetchInterval time.Duration
	// HTTPClient fetches the JWKS. Default: jwx's client with a 30s timeout
	// and no HTTPS-to-HTTP redirects; a given client gets the same redirect
	// rules and, if it has none, the timeout.
	HTTPClient *http.Client
	// EnvPrefix names the JWKS variables behind this config in error
	// messages. Default "AUTH_"; the event path's verifier uses
	// "EVENT_AUTH_".
	EnvPrefix string

	// StreamSpaceSecret is StreamSpace's JWT_SECRET, read with
	// ReadSecretFile from STREAMSPACE_JWT_SECRET_FILE. Set, StreamSpace's own
	// HS256 tokens are accepted, and Users is required.
	StreamSpaceSecret []byte
	// Users is the database holding StreamSpace's users table, where every
	// StreamSpace token's user must exist and be active.
	Users Querier
	// Sessions, when set, is StreamSpace's Redis session store
	// (STREAMSPACE_REDIS_URL): a StreamSpace token is accepted only while its
	// session:{jti} key exists.
	Sessions SessionStore
	// UserCacheTTL is how long a user check is reused, and so how long a
	// deactivated user or a demoted admin keeps access
	// (STREAMSPACE_USER_CACHE_TTL). Default 5s.
	UserCacheTTL time.Duration
	// UserCacheSize bounds the number of cached user checks. Default 10000.
	UserCacheSize int
}

// StreamSpaceIssuer is the "iss" of StreamSpace's API tokens.
const StreamSpaceIssuer = "streamspace-api"

// MinSecretBytes is the shortest JWT_SECRET StreamSpace's API starts with.
const MinSecretBytes = 32

const (
	defaultUserCacheTTL  = 5 * time.Second
	defaultUserCacheSize = 10_000
)

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

// hs256 is the one algorithm StreamSpace tokens may use.
var hs256 = jwa.HS256().String()

func defaultAlgorithms() []jwa.SignatureAlgorithm {
	return []jwa.SignatureAlgorithm{
		jwa.RS256(), jwa.RS384(), jwa.RS512(), jwa.PS256(), jwa.ES256(), jwa.ES384(), jwa.EdDSA(),
	}
}

// Verifier checks bearer tokens. It is safe for concurrent use.
//
// The JWKS is fetched lazily, on the first Verify (or Ready), so a function
// starts while its issuer is briefly unreachable; until a first fetch
// succeeds, JWKS tokens fail with errs.Unavailable rather than
// Unauthenticated.
type Verifier struct {
	jwks   *jwksMode        // nil unless configured
	ss     *streamSpaceMode // nil unless configured
	leeway float64          // seconds
	now    func() time.Time
}

// jwksMode verifies an identity provider's tokens.
type jwksMode struct {
	env       string
	url       string
	issuer    string
	audience  string
	keys      *keySet
	allowed   map[string]keyRequirement
	roleClaim string
	rolePath  []string
}

// streamSpaceMode verifies StreamSpace's own tokens.
type streamSpaceMode struct {
	secret   []byte
	users    *userCheck
	sessions SessionStore
}

// Validate checks cfg as NewVerifier does, without building anything, so a
// caller can refuse a bad configuration before it connects to anything.
// Errors name the variable that is missing or wrong.
func (cfg Config) Validate() error {
	env := cfg.envPrefix()
	set := 0
	for _, v := range []string{cfg.Issuer, cfg.Audience, cfg.JWKSURL} {
		if v != "" {
			set++
		}
	}
	jwks := set == 3
	switch {
	case set == 0 && len(cfg.StreamSpaceSecret) == 0:
		if env != "AUTH_" {
			return fmt.Errorf("%sISSUER, %sAUDIENCE and %sJWKS_URL are required", env, env, env)
		}
		return fmt.Errorf("no token is accepted: set %sISSUER, %sAUDIENCE and %sJWKS_URL, or STREAMSPACE_JWT_SECRET_FILE, or both", env, env, env)
	case set > 0 && !jwks:
		for _, v := range []struct{ name, val string }{{"ISSUER", cfg.Issuer}, {"AUDIENCE", cfg.Audience}, {"JWKS_URL", cfg.JWKSURL}} {
			if v.val == "" {
				return fmt.Errorf("%s%s is required when any of %sISSUER, %sAUDIENCE and %sJWKS_URL is set (all three or none)", env, v.name, env, env, env)
			}
		}
	}
	if jwks {
		if u, err := url.Parse(cfg.JWKSURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return fmt.Errorf("%sJWKS_URL %q is not an absolute http(s) URL", env, cfg.JWKSURL)
		}
		if _, err := rolePath(cfg.roleClaim()); err != nil {
			return fmt.Errorf("%sROLE_CLAIM %w", env, err)
		}
		for _, alg := range cfg.Algorithms {
			if _, ok := supported[alg.String()]; !ok {
				return fmt.Errorf("auth algorithm %q is not allowed: only asymmetric signature algorithms are", alg.String())
			}
		}
		if cfg.MinRefetchInterval < 0 {
			return fmt.Errorf("auth JWKS refetch interval %v is negative", cfg.MinRefetchInterval)
		}
	}
	if cfg.Leeway < 0 {
		return fmt.Errorf("auth leeway %v is negative", cfg.Leeway)
	}
	if n := len(cfg.StreamSpaceSecret); n > 0 && n < MinSecretBytes {
		return fmt.Errorf("STREAMSPACE_JWT_SECRET_FILE holds a secret shorter than %d bytes; StreamSpace's API refuses such a JWT_SECRET", MinSecretBytes)
	}
	if len(cfg.StreamSpaceSecret) == 0 && cfg.Sessions != nil {
		return errors.New("STREAMSPACE_REDIS_URL applies to StreamSpace tokens: set STREAMSPACE_JWT_SECRET_FILE too")
	}
	if cfg.UserCacheTTL < 0 {
		return fmt.Errorf("STREAMSPACE_USER_CACHE_TTL %v is negative", cfg.UserCacheTTL)
	}
	if cfg.UserCacheSize < 0 {
		return fmt.Errorf("user cache size %d is negative", cfg.UserCacheSize)
	}
	return nil
}

func (cfg Config) envPrefix() string {
	if cfg.EnvPrefix == "" {
		return "AUTH_"
	}
	return cfg.EnvPrefix
}

func (cfg Config) roleClaim() string {
	if cfg.RoleClaim == "" {
		return defaultRoleClaim
	}
	return cfg.RoleClaim
}

func rolePath(claim string) ([]string, error) {
	path := strings.Split(claim, ".")
	for _, seg := range path {
		if seg == "" {
			return nil, fmt.Errorf("%q is not a dotted claim path", claim)
		}
	}
	return path, nil
}

// NewVerifier checks cfg and returns a Verifier. It does no I/O.
func NewVerifier(_ context.Context, cfg Config) (*Verifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	leeway := cfg.Leeway
	if leeway == 0 {
		leeway = defaultLeeway
	}
	v := &Verifier{leeway: leeway.Seconds(), now: time.Now}
	clock := func() time.Time { return v.now() }

	if cfg.JWKSURL != "" {
		interval := cfg.MinRefetchInterval
		if interval == 0 {
			interval = defaultMinRefetchInterval
		}
		algs := cfg.Algorithms
		if len(algs) == 0 {
			algs = defaultAlgorithms()
		}
		allowed := make(map[string]keyRequirement, len(algs))
		for _, alg := range algs {
			allowed[alg.String()] = supported[alg.String()]
		}
		client := jwk.DefaultHTTPClient()
		if cfg.HTTPClient != nil {
			client = jwk.WrapHTTPClientDefaults(cfg.HTTPClient)
		}
		path, _ := rolePath(cfg.roleClaim())
		v.jwks = &jwksMode{
			env:       cfg.envPrefix(),
			url:       cfg.JWKSURL,
			issuer:    cfg.Issuer,
			audience:  cfg.Audience,
			allowed:   allowed,
			roleClaim: cfg.roleClaim(),
			rolePath:  path,
			keys: &keySet{
				url:         cfg.JWKSURL,
				client:      client,
				minInterval: interval,
				maxAge:      maxKeyAge,
				now:         clock,
			},
		}
	}

	if len(cfg.StreamSpaceSecret) > 0 {
		if cfg.Users == nil {
			return nil, errors.New("authn: StreamSpace tokens need the users table: Config.Users is nil")
		}
		ttl := cfg.UserCacheTTL
		if ttl == 0 {
			ttl = defaultUserCacheTTL
		}
		size := cfg.UserCacheSize
		if size == 0 {
			size = defaultUserCacheSize
		}
		v.ss = &streamSpaceMode{
			secret:   append([]byte(nil), cfg.StreamSpaceSecret...),
			users:    newUserCheck(cfg.Users, ttl, size, clock),
			sessions: cfg.Sessions,
		}
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
// message safe to show the client, except that the kind is Unavailable when
// a dependency, not the token, is at fault: a JWKS never fetched, the users
// table or the session store unreachable. Neither the token nor parts of it
// appear in the error.
//
// The header's alg decides everything else: HS256 goes to the StreamSpace
// secret and nothing else, an allowed asymmetric algorithm to the JWKS and
// nothing else, and any other algorithm, "none" included, is refused.
func (v *Verifier) Verify(ctx context.Context, token string) (Identity, error) {
	if token == "" {
		return Identity{}, unauthenticated("missing bearer token")
	}
	if len(token) > maxTokenBytes {
		return Identity{}, unauthenticated("token too large")
	}
	t, err := splitToken(token)
	if err != nil {
		return Identity{}, err
	}
	if t.alg == hs256 && v.ss != nil {
		return v.verifyStreamSpace(ctx, &t)
	}
	if v.jwks != nil {
		if req, ok := v.jwks.allowed[t.alg]; ok {
			return v.verifyJWKS(ctx, &t, req)
		}
	}
	return Identity{}, unauthenticated("algorithm not allowed")
}

// Ready reports whether v can verify tokens: with a JWKS configured, a key
// set must have been fetched, and one is fetched now if none was (subject
// to the refetch rate limit). The error says why not.
func (v *Verifier) Ready(ctx context.Context) (bool, error) {
	if v == nil || v.jwks == nil {
		return true, nil
	}
	if err := v.jwks.keys.ensure(ctx); err != nil {
		return false, fmt.Errorf("%sJWKS_URL %s: signing keys cannot be fetched: %w", v.jwks.env, v.jwks.url, err)
	}
	return true, nil
}

// nowSeconds is the clock as NumericDate seconds.
func (v *Verifier) nowSeconds() float64 {
	return float64(v.now().UnixNano()) / 1e9
}

func (v *Verifier) verifyJWKS(ctx context.Context, t *compact, req keyRequirement) (Identity, error) {
	m := v.jwks
	// No extension header is understood here, so RFC 7515 says to reject
	// any that are marked critical.
	if t.crit {
		return Identity{}, unauthenticated("unsupported critical header")
	}
	// Keys come only from the configured JWKS, by kid; jku, jwk and x5u
	// headers are attacker-controlled and ignored.
	if t.kid == "" {
		return Identity{}, unauthenticated("token has no key id")
	}
	key, err := m.keys.lookup(ctx, t.kid)
	if err != nil {
		return Identity{}, err
	}
	if !key.fits(t.alg, req) {
		return Identity{}, unauthenticated("signing key does not match algorithm")
	}
	c, err := v.signedClaims(t, key.raw, t.alg, m.issuer)
	if err != nil {
		return Identity{}, err
	}
	defer c.release()
	if ok, err := c.audienceHas(m.audience); err != nil {
		return Identity{}, err
	} else if !ok {
		return Identity{}, unauthenticated("token audience not accepted")
	}
	sub, _, err := c.str("sub")
	if err != nil {
		return Identity{}, err
	}
	if sub == "" {
		return Identity{}, unauthenticated("token has no subject")
	}
	role, err := m.role(c)
	if err != nil {
		return Identity{}, err
	}
	return Identity{Subject: sub, Role: role}, nil
}

// role reads the configured role claim: the top-level claim of that exact
// name, else the dotted path through nested objects.
func (m *jwksMode) role(c *claims) (Role, error) {
	if v := c.obj.Get(m.roleClaim); v != nil || len(m.rolePath) == 1 {
		return roleAt(v)
	}
	v := c.obj.Get(m.rolePath[0])
	for _, seg := range m.rolePath[1:] {
		if v == nil || v.Type() == fastjson.TypeNull {
			return User, nil
		}
		obj, err := v.Object()
		if err != nil {
			return "", unauthenticated("unrecognised role")
		}
		v = obj.Get(seg)
	}
	return roleAt(v)
}

// verifyStreamSpace checks a token StreamSpace's API signed, as its own
// middleware does (api/internal/auth/middleware.go) and more strictly: HS256
// with the configured secret only, exp required, iss "streamspace-api". The
// caller is user_id (sub when user_id is absent). Then the session, when a
// session store is configured, and the user's row decide: the row's role is
// the caller's, not the token's.
func (v *Verifier) verifyStreamSpace(ctx context.Context, t *compact) (Identity, error) {
	m := v.ss
	if t.crit {
		return Identity{}, unauthenticated("unsupported critical header")
	}
	c, err := v.signedClaims(t, m.secret, hs256, StreamSpaceIssuer)
	if err != nil {
		return Identity{}, err
	}
	defer c.release()
	user, _, err := c.str("user_id")
	if err != nil {
		return Identity{}, err
	}
	if user == "" {
		if user, _, err = c.str("sub"); err != nil {
			return Identity{}, err
		}
	}
	if user == "" {
		return Identity{}, unauthenticated("token has no subject")
	}
	// The token's role is checked for shape only: the users row decides.
	if _, err := roleAt(c.obj.Get("role")); err != nil {
		return Identity{}, err
	}
	groups, err := c.strings("groups")
	if err != nil {
		return Identity{}, err
	}
	if m.sessions != nil {
		jti, _, err := c.str("jti")
		if err != nil {
			return Identity{}, err
		}
		if err := checkSession(ctx, m.sessions, jti); err != nil {
			return Identity{}, err
		}
	}
	role, err := m.users.check(ctx, user)
	if err != nil {
		return Identity{}, err
	}
	return Identity{Subject: user, Role: role, Groups: groups}, nil
}

// signedClaims checks t's signature with key under alg, then parses its
// claims and checks the times and the issuer, as both modes do. The caller
// releases the claims.
func (v *Verifier) signedClaims(t *compact, key any, alg, issuer string) (*claims, error) {
	sig, err := t.decodeSignature()
	if err != nil {
		return nil, err
	}
	if err := jwsbb.Verify(key, alg, []byte(t.signingInput), sig); err != nil {
		return nil, unauthenticated("invalid signature")
	}
	c, err := parseClaims(t.payload)
	if err != nil {
		return nil, err
	}
	if err := c.times(v.nowSeconds(), v.leeway); err != nil {
		c.release()
		return nil, err
	}
	if ok, err := c.strIs("iss", issuer); err != nil || !ok {
		c.release()
		if err != nil {
			return nil, err
		}
		return nil, unauthenticated("token issuer not accepted")
	}
	return c, nil
}

func unauthenticated(msg string) error {
	return errs.E(errs.Unauthenticated, "%s", msg)
}

func unavailable(cause error) error {
	return errs.Wrap(errs.Unavailable, cause, "signing keys are unavailable")
}
