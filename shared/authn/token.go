package authn

import (
	"bytes"
	"encoding/base64"
	"math"
	"strings"

	"github.com/valyala/fastjson"
)

// b64 decodes the parts of a compact JWS: unpadded base64url, canonical.
var b64 = base64.RawURLEncoding.Strict()

// parsers decode headers and claims. fastjson (the parser jwx itself uses
// for headers) matches keys exactly: encoding/json would also take "Role"
// or "EXP" for "role" and "exp", and an identity provider may let users
// set claims of their own.
var parsers fastjson.ParserPool

// compact is a token split into its three parts, its header decoded.
type compact struct {
	signingInput string // header "." payload: what the signature covers
	payload      string
	signature    string

	alg  string
	kid  string
	crit bool
}

// splitToken splits token and reads the header fields that decide how it is
// verified. Nothing of the token is trusted yet.
func splitToken(token string) (compact, error) {
	hdr, rest, ok := strings.Cut(token, ".")
	if !ok {
		return compact{}, malformed()
	}
	payload, sig, ok := strings.Cut(rest, ".")
	if !ok || strings.Contains(sig, ".") || hdr == "" || payload == "" {
		return compact{}, malformed()
	}
	t := compact{
		signingInput: token[:len(hdr)+1+len(payload)],
		payload:      payload,
		signature:    sig,
	}
	raw, err := b64.DecodeString(hdr)
	if err != nil {
		return compact{}, malformed()
	}
	p := parsers.Get()
	defer parsers.Put(p)
	v, err := p.ParseBytes(raw)
	if err != nil {
		return compact{}, malformed()
	}
	obj, err := v.Object()
	if err != nil || hasDuplicateKeys(obj) {
		return compact{}, malformed()
	}
	// A non-string alg or kid reads as empty and is refused as such below.
	t.alg = string(obj.Get("alg").GetStringBytes())
	t.kid = string(obj.Get("kid").GetStringBytes())
	t.crit = obj.Get("crit") != nil
	return t, nil
}

// decodeSignature returns the raw signature bytes.
func (t *compact) decodeSignature() ([]byte, error) {
	sig, err := b64.DecodeString(t.signature)
	if err != nil || len(sig) == 0 {
		return nil, unauthenticated("invalid signature")
	}
	return sig, nil
}

// claims is a verified token's payload, parsed. Its values point into the
// parser, so it is used only until release.
type claims struct {
	obj    *fastjson.Object
	parser *fastjson.Parser
	raw    []byte // the decoded payload, which fastjson parses in place
}

// parseClaims decodes the payload of a token whose signature has been
// verified. A payload with a key twice is refused: readers that keep the
// first and readers that keep the last would see different tokens.
func parseClaims(payload string) (*claims, error) {
	raw, err := b64.DecodeString(payload)
	if err != nil {
		return nil, malformed()
	}
	p := parsers.Get()
	v, err := p.ParseBytes(raw)
	if err != nil {
		parsers.Put(p)
		return nil, malformed()
	}
	obj, err := v.Object()
	if err != nil || hasDuplicateKeys(obj) {
		parsers.Put(p)
		return nil, malformed()
	}
	return &claims{obj: obj, parser: p, raw: raw}, nil
}

func (c *claims) release() { parsers.Put(c.parser) }

// str reads a string claim; ok is false when it is absent or null, err set
// when it is another type.
func (c *claims) str(name string) (s string, ok bool, err error) {
	v := c.obj.Get(name)
	if v == nil || v.Type() == fastjson.TypeNull {
		return "", false, nil
	}
	b, err := v.StringBytes()
	if err != nil {
		return "", false, malformed()
	}
	return string(b), true, nil
}

// strIs reports whether string claim name equals want, without copying it.
func (c *claims) strIs(name, want string) (bool, error) {
	v := c.obj.Get(name)
	if v == nil || v.Type() == fastjson.TypeNull {
		return false, nil
	}
	b, err := v.StringBytes()
	if err != nil {
		return false, malformed()
	}
	return string(b) == want, nil
}

// date reads a NumericDate claim (seconds since the epoch, possibly
// fractional). NaN and infinities, which fastjson would accept, are not
// dates.
func (c *claims) date(name string) (float64, bool, error) {
	v := c.obj.Get(name)
	if v == nil || v.Type() == fastjson.TypeNull {
		return 0, false, nil
	}
	f, err := v.Float64()
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, false, malformed()
	}
	return f, true, nil
}

// audienceHas reports whether "aud", a string or a list of strings,
// contains want.
func (c *claims) audienceHas(want string) (bool, error) {
	v := c.obj.Get("aud")
	if v == nil {
		return false, nil
	}
	switch v.Type() {
	case fastjson.TypeNull:
		return false, nil
	case fastjson.TypeString:
		return string(v.GetStringBytes()) == want, nil
	case fastjson.TypeArray:
		found := false
		for _, e := range v.GetArray() {
			b, err := e.StringBytes()
			if err != nil {
				return false, malformed()
			}
			found = found || string(b) == want
		}
		return found, nil
	}
	return false, malformed()
}

// strings reads a claim holding a list of strings (absent or null: none).
func (c *claims) strings(name string) ([]string, error) {
	v := c.obj.Get(name)
	if v == nil || v.Type() == fastjson.TypeNull {
		return nil, nil
	}
	arr, err := v.Array()
	if err != nil {
		return nil, malformed()
	}
	out := make([]string, 0, len(arr))
	for _, e := range arr {
		b, err := e.StringBytes()
		if err != nil {
			return nil, malformed()
		}
		out = append(out, string(b))
	}
	return out, nil
}

// times checks exp (required), nbf and iat against now, each allowing
// leeway for clock skew; all in seconds.
func (c *claims) times(now, leeway float64) error {
	exp, ok, err := c.date("exp")
	if err != nil {
		return err
	}
	if !ok {
		return unauthenticated("token has no exp claim")
	}
	if now >= exp+leeway {
		return unauthenticated("token expired")
	}
	if nbf, ok, err := c.date("nbf"); err != nil {
		return err
	} else if ok && now+leeway < nbf {
		return unauthenticated("token not yet valid")
	}
	if iat, ok, err := c.date("iat"); err != nil {
		return err
	} else if ok && now+leeway < iat {
		return unauthenticated("token issued in the future")
	}
	return nil
}

// roleAt reads a role from v, the value at the configured claim path: none
// (absent or null) is User, one of the three role strings is that role, and
// anything else, a list of groups included, is refused rather than guessed
// at.
func roleAt(v *fastjson.Value) (Role, error) {
	if v == nil || v.Type() == fastjson.TypeNull {
		return User, nil
	}
	if b, err := v.StringBytes(); err == nil {
		if r, ok := parseRole(string(b)); ok {
			return r, nil
		}
	}
	return "", unauthenticated("unrecognised role")
}

// hasDuplicateKeys reports whether obj names a key twice. Tokens are small:
// up to 32 keys a quadratic scan costs less than a set, and past that (a
// header or payload made to be expensive) a set keeps the cost linear.
func hasDuplicateKeys(obj *fastjson.Object) bool {
	dup := false
	if obj.Len() > 32 {
		seen := make(map[string]struct{}, obj.Len())
		obj.Visit(func(k []byte, _ *fastjson.Value) {
			if _, ok := seen[string(k)]; ok {
				dup = true
			}
			seen[string(k)] = struct{}{}
		})
		return dup
	}
	var stack [32][]byte
	keys := stack[:0]
	obj.Visit(func(k []byte, _ *fastjson.Value) {
		for _, prev := range keys {
			if bytes.Equal(prev, k) {
				dup = true
			}
		}
		keys = append(keys, k)
	})
	return dup
}

func malformed() error { return unauthenticated("malformed token") }
