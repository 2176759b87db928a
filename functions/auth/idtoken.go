package function

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"

	"github.com/streamspace-dev/functions/shared/errs"
)

// refetchInterval is the least time between two JWKS fetches caused by an
// unknown kid, so tokens naming made-up kids cannot make the function hammer
// the provider.
const refetchInterval = 30 * time.Second

// clockSkew is the leeway on exp, iat and nbf.
const clockSkew = 30 * time.Second

// maxIDTokenAge refuses an ID token issued long ago: the code was just
// exchanged, so its token is fresh.
const maxIDTokenAge = 10 * time.Minute

// asymmetric are the signature algorithms an ID token may use when the
// provider lists them; HMAC ones only with AllowHMAC, never none.
var asymmetric = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

var hmacAlgs = []string{"HS256", "HS384", "HS512"}

// keyCache is a provider's JWKS: fetched on first use, fetched again when a
// token names a kid it lacks, at most once per refetchInterval (a failed
// fetch too, so a provider that is down is not hammered).
type keyCache struct {
	client *http.Client
	url    string

	mu        sync.Mutex
	set       jwk.Set
	fetchedAt time.Time
}

func newKeyCache(c *http.Client, u string) *keyCache { return &keyCache{client: c, url: u} }

// lookup returns the key with kid (any single key when kid is empty and the
// set holds exactly one).
func (k *keyCache) lookup(ctx context.Context, kid string) (jwk.Key, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.set != nil {
		if key, ok := find(k.set, kid); ok {
			return key, nil
		}
	}
	if !k.fetchedAt.IsZero() && time.Since(k.fetchedAt) < refetchInterval {
		if k.set == nil {
			return nil, errs.E(errs.Unavailable, "the provider's keys could not be fetched; try again shortly")
		}
		return nil, errs.E(errs.Unauthenticated, "ID token signed by an unknown key")
	}
	set, err := jwk.Fetch(ctx, k.url, jwk.WithHTTPClient(k.client), jwk.WithMaxFetchBodySize(maxDocument))
	k.fetchedAt = time.Now()
	if err != nil {
		return nil, errs.Wrap(errs.Unavailable, err, "fetch the provider's keys")
	}
	k.set = set
	if key, ok := find(set, kid); ok {
		return key, nil
	}
	return nil, errs.E(errs.Unauthenticated, "ID token signed by an unknown key")
}

func find(set jwk.Set, kid string) (jwk.Key, bool) {
	if kid != "" {
		return set.LookupKeyID(kid)
	}
	if set.Len() == 1 {
		return set.Key(0)
	}
	return nil, false
}

// Claims are an ID token's verified claims, merged with userinfo's.
type Claims map[string]any

// idTokenCheck is what an ID token is checked against.
type idTokenCheck struct {
	Issuer   string
	ClientID string
	Nonce    string
	Algs     []string // allowed signature algorithms
	Now      time.Time
}

// allowedAlgs is the provider's allow-list: what its discovery document
// lists (RS256 when it lists none, as OpenID Connect Discovery requires
// RS256 support), minus HMAC unless configured, never none.
func (p *provider) allowedAlgs(d *discovery) []string {
	listed := d.SigningAlgs
	if len(listed) == 0 {
		listed = []string{"RS256"}
	}
	var out []string
	for _, a := range listed {
		if slices.Contains(asymmetric, a) || (p.cfg.AllowHMAC && slices.Contains(hmacAlgs, a)) {
			out = append(out, a)
		}
	}
	return out
}

func invalidToken(format string, args ...any) error {
	return errs.E(errs.Unauthenticated, "ID token "+format, args...)
}

// verifyIDToken checks raw's signature with the provider's keys and its
// claims against c, and returns its claims.
func (p *provider) verifyIDToken(ctx context.Context, raw string, c idTokenCheck) (Claims, error) {
	msg, err := jws.ParseString(raw)
	if err != nil || len(msg.Signatures()) != 1 || strings.Count(raw, ".") != 2 {
		return nil, invalidToken("is not a compact JWS")
	}
	hdr := msg.Signatures()[0].ProtectedHeaders()
	algv, ok := hdr.Algorithm()
	if !ok {
		return nil, invalidToken("has no alg")
	}
	alg := algv.String()
	if !slices.Contains(c.Algs, alg) {
		return nil, invalidToken("algorithm %q is not allowed for this provider", alg)
	}
	sigAlg, ok := jwa.LookupSignatureAlgorithm(alg)
	if !ok {
		return nil, invalidToken("algorithm %q is unknown", alg)
	}
	var key any
	if slices.Contains(hmacAlgs, alg) {
		key = p.secret
	} else {
		kid, _ := hdr.KeyID()
		k, err := p.keys.lookup(ctx, kid)
		if err != nil {
			return nil, err
		}
		key = k
	}
	payload, err := jws.Verify([]byte(raw), jws.WithKey(sigAlg, key))
	if err != nil {
		return nil, invalidToken("signature does not verify")
	}
	claims, err := decodeClaims(payload)
	if err != nil {
		return nil, err
	}
	return claims, claims.check(c)
}

// decodeClaims decodes a JSON object, numbers kept exact.
func decodeClaims(raw []byte) (Claims, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var claims Claims
	if err := dec.Decode(&claims); err != nil || claims == nil {
		return nil, invalidToken("claims are not a JSON object")
	}
	return claims, nil
}

// check verifies iss, aud, azp, exp, iat, nbf and nonce.
func (cl Claims) check(c idTokenCheck) error {
	if iss, _ := cl["iss"].(string); iss != c.Issuer {
		return invalidToken("issuer is not the provider's")
	}
	auds, ok := audiences(cl["aud"])
	if !ok || !slices.Contains(auds, c.ClientID) {
		return invalidToken("audience does not include this client")
	}
	azp, hasAZP := cl["azp"].(string)
	if len(auds) > 1 && !hasAZP {
		return invalidToken("has several audiences and no azp")
	}
	if hasAZP && azp != c.ClientID {
		return invalidToken("azp is another client")
	}
	if _, ok := cl["azp"]; ok && !hasAZP {
		return invalidToken("azp is not a string")
	}
	exp, ok := numericDate(cl["exp"])
	if !ok {
		return invalidToken("has no exp")
	}
	if !c.Now.Before(exp.Add(clockSkew)) {
		return invalidToken("has expired")
	}
	iat, ok := numericDate(cl["iat"])
	if !ok {
		return invalidToken("has no iat")
	}
	if iat.After(c.Now.Add(clockSkew)) || c.Now.Sub(iat) > maxIDTokenAge {
		return invalidToken("iat is not recent")
	}
	if v, present := cl["nbf"]; present {
		nbf, ok := numericDate(v)
		if !ok || nbf.After(c.Now.Add(clockSkew)) {
			return invalidToken("is not valid yet")
		}
	}
	nonce, _ := cl["nonce"].(string)
	if subtle.ConstantTimeCompare([]byte(nonce), []byte(c.Nonce)) != 1 {
		return invalidToken("nonce does not match this login")
	}
	if sub, _ := cl["sub"].(string); sub == "" || len(sub) > 255 {
		return invalidToken("sub is missing or longer than 255 bytes")
	}
	return nil
}

func audiences(v any) ([]string, bool) {
	switch a := v.(type) {
	case string:
		return []string{a}, a != ""
	case []any:
		out := make([]string, 0, len(a))
		for _, x := range a {
			s, ok := x.(string)
			if !ok {
				return nil, false
			}
			out = append(out, s)
		}
		return out, len(out) > 0
	}
	return nil, false
}

func numericDate(v any) (time.Time, bool) {
	n, ok := v.(json.Number)
	if !ok {
		return time.Time{}, false
	}
	f, err := n.Float64()
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 || f > 1e11 {
		return time.Time{}, false
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), true
}

// mergeUserinfo adds the userinfo answer's claims to the ID token's; the
// ID token's own values win. Its sub must be the ID token's.
func (cl Claims) mergeUserinfo(info Claims) error {
	sub, _ := info["sub"].(string)
	if want, _ := cl["sub"].(string); sub != want {
		return errs.E(errs.Unauthenticated, "userinfo sub does not match the ID token")
	}
	for k, v := range info {
		if _, ok := cl[k]; !ok {
			cl[k] = v
		}
	}
	return nil
}

// fetchUserinfo reads the userinfo endpoint with the access token.
func (p *provider) fetchUserinfo(ctx context.Context, d *discovery, accessToken string) (Claims, error) {
	h := http.Header{"Authorization": {"Bearer " + accessToken}}
	var raw json.RawMessage
	if err := fetchJSON(ctx, p.client, d.UserinfoEndpoint, h, &raw); err != nil {
		return nil, errs.Wrap(errs.Unavailable, fmt.Errorf("userinfo: %w", err), "provider %s: userinfo", p.cfg.ID)
	}
	info, err := decodeClaims(raw)
	if err != nil {
		return nil, errs.E(errs.Unauthenticated, "userinfo answer is not a JSON object")
	}
	return info, nil
}
