package function

import (
	"net/http"
	"net/url"
	"slices"
	"strings"
	"unicode"

	"github.com/streamspace-dev/functions/shared/errs"
)

// Limits of the auth routes' inputs.
const (
	MaxReturnURL = 2048
	maxState     = 256
	maxCode      = 4096
)

// ReturnPolicy decides where a user may be sent after login or logout: a
// path on the public URL's origin, or a URL on one of the allowed origins
// (AUTH_ALLOWED_RETURN_ORIGINS). Nothing else, so no open redirect.
type ReturnPolicy struct {
	// Public is AUTH_PUBLIC_URL's origin, "https://host[:port]".
	Public string
	// Origins are the other allowed origins, in the same form.
	Origins []string
}

// maxDecodes is how many rounds of percent-decoding a returnUrl is checked
// through; a value still encoded after that is refused.
const maxDecodes = 3

// Check returns the returnUrl to use: "/" when raw is empty, a same-origin
// path, or an absolute URL on an allowed origin. Protocol-relative URLs
// (//evil), backslashes (/\evil, which browsers read as //evil), other
// schemes (javascript:, data:), credentials, control characters and any of
// these percent-encoded are refused with an error naming returnUrl.
func (p ReturnPolicy) Check(raw string) (string, error) {
	if raw == "" {
		return "/", nil
	}
	bad := func(why string) (string, error) {
		return "", errs.E(errs.Invalid, "returnUrl: %s", why)
	}
	if len(raw) > MaxReturnURL {
		return bad("longer than 2048 bytes")
	}
	// Every decoding of raw must be harmless on its own, since a browser,
	// a proxy or the UI's router may decode it again.
	form := raw
	for i := 0; ; i++ {
		if strings.IndexFunc(form, func(r rune) bool { return unicode.IsControl(r) || unicode.IsSpace(r) }) >= 0 {
			return bad("control characters or spaces are not allowed")
		}
		if strings.ContainsRune(form, '\\') {
			return bad("backslashes are not allowed")
		}
		if strings.HasPrefix(form, "//") {
			return bad("protocol-relative URLs are not allowed")
		}
		if i > 0 && !strings.HasPrefix(form, "/") && hasScheme(form) {
			return bad("an encoded URL is not allowed")
		}
		next, err := url.PathUnescape(form)
		if err != nil {
			return bad("invalid percent-encoding")
		}
		if next == form {
			break
		}
		if i == maxDecodes {
			return bad("encoded too many times")
		}
		form = next
	}
	u, err := url.Parse(raw)
	if err != nil {
		return bad("not a URL")
	}
	if strings.HasPrefix(raw, "/") {
		if u.Scheme != "" || u.Host != "" || u.User != nil {
			return bad("not a same-origin path")
		}
		return raw, nil
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return bad("only a path or an http(s) URL on an allowed origin")
	}
	if u.User != nil || u.Host == "" || u.Opaque != "" {
		return bad("not an allowed origin")
	}
	origin := u.Scheme + "://" + strings.ToLower(u.Host)
	if origin != p.Public && !slices.Contains(p.Origins, origin) {
		return bad("not an allowed origin")
	}
	if u.Path != "" && !strings.HasPrefix(u.Path, "/") {
		return bad("not an allowed origin")
	}
	return raw, nil
}

// hasScheme reports whether s starts with a URL scheme and a colon.
func hasScheme(s string) bool {
	i := strings.IndexByte(s, ':')
	if i <= 0 {
		return false
	}
	for j, r := range s[:i] {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || j > 0 && (r >= '0' && r <= '9' || r == '+' || r == '-' || r == '.')) {
			return false
		}
	}
	return true
}

// providerFrom returns the configured provider named by the {provider}
// path value; an unknown one is 404.
func (f *Function) providerFrom(r *http.Request) (*provider, error) {
	id := r.PathValue("provider")
	if !providerID.MatchString(id) {
		return nil, errs.E(errs.NotFound, "provider not found")
	}
	p, ok := f.providers[id]
	if !ok {
		return nil, errs.E(errs.NotFound, "provider not found")
	}
	return p, nil
}

// CallbackQuery is the query the provider redirects back with.
type CallbackQuery struct {
	State            string
	Code             string
	Error            string
	ErrorDescription string
}

// Callback is a checked CallbackQuery: a state and a code.
type Callback struct {
	State string
	Code  string
}

// Validate returns the state and code, or an error naming the field; a
// provider's error answer is refused without repeating its text.
func (q CallbackQuery) Validate() (Callback, error) {
	if q.Error != "" {
		return Callback{}, errs.E(errs.Unauthenticated, "the provider refused the login")
	}
	if q.State == "" || len(q.State) > maxState {
		return Callback{}, errs.E(errs.Invalid, "state: missing or too long")
	}
	if q.Code == "" || len(q.Code) > maxCode {
		return Callback{}, errs.E(errs.Invalid, "code: missing or too long")
	}
	return Callback{State: q.State, Code: q.Code}, nil
}

func callbackQuery(r *http.Request) CallbackQuery {
	q := r.URL.Query()
	return CallbackQuery{State: q.Get("state"), Code: q.Get("code"), Error: q.Get("error"), ErrorDescription: q.Get("error_description")}
}

// wantsJSON reports whether the callback should answer with JSON instead
// of redirecting to the complete page.
func wantsJSON(r *http.Request) bool {
	return strings.Contains(r.Header.Get("Accept"), "application/json")
}
