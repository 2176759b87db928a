// Package logging builds the JSON slog logger every function uses. It
// redacts secrets by attribute name and by shape, so a password or token that
// reaches a log call by mistake is still not written.
package logging

import (
	"io"
	"log/slog"
	"regexp"
	"strings"
)

// Redacted replaces a secret in log output.
const Redacted = "[REDACTED]"

// secretKeys are attribute names whose values are never logged.
var secretKeys = []string{"password", "passwd", "secret", "token", "authorization", "cookie", "credential", "apikey", "api_key", "private"}

var (
	// userinfo in URLs and DSNs: scheme://user:password@host. The password
	// runs to the last @ of the word, so an @ (or :, /) written unescaped
	// in it never leaves a tail behind; a query holding an @ then loses
	// more than the password, which is the safe side.
	urlPassword = regexp.MustCompile(`([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)\S*@`)
	// key=value DSN form: password=secret
	kvPassword = regexp.MustCompile(`(?i)(password\s*=\s*)('[^']*'|\S+)`)
	// bearer tokens and bare JWTs
	bearer = regexp.MustCompile(`(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+`)
	jwt    = regexp.MustCompile(`eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*`)
)

// New returns a JSON logger writing to w at level.
func New(w io.Writer, level slog.Leveler) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{
		Level:       level,
		ReplaceAttr: redact,
	}))
}

func redact(_ []string, a slog.Attr) slog.Attr {
	if isSecretKey(a.Key) {
		return slog.String(a.Key, Redacted)
	}
	switch a.Value.Kind() {
	case slog.KindString:
		if s := Scrub(a.Value.String()); s != a.Value.String() {
			return slog.String(a.Key, s)
		}
	case slog.KindAny:
		if err, ok := a.Value.Any().(error); ok {
			return slog.String(a.Key, Scrub(err.Error()))
		}
	}
	return a
}

func isSecretKey(key string) bool {
	k := strings.ToLower(key)
	for _, s := range secretKeys {
		if strings.Contains(k, s) {
			return true
		}
	}
	return false
}

// Scrub removes credentials from s: URL userinfo passwords, password=
// pairs, bearer tokens and JWTs. Every log attribute passes through it, so
// cheap substring checks decide which patterns can match at all.
func Scrub(s string) string {
	if strings.Contains(s, "://") && strings.Contains(s, "@") {
		s = urlPassword.ReplaceAllString(s, "${1}"+Redacted+"@")
	}
	if containsFold(s, "password") {
		s = kvPassword.ReplaceAllString(s, "${1}"+Redacted)
	}
	if containsFold(s, "bearer") {
		s = bearer.ReplaceAllString(s, "${1}"+Redacted)
	}
	if strings.Contains(s, "eyJ") {
		s = jwt.ReplaceAllString(s, Redacted)
	}
	return s
}

// containsFold reports whether s contains the lowercase ASCII word sub in
// any letter case, without allocating.
func containsFold(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if strings.EqualFold(s[i:i+len(sub)], sub) {
			return true
		}
	}
	return false
}
