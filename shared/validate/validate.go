// Package validate checks the client input every function takes at its
// edge — ids, tag lists — with one set of rules and error messages that name
// the offending value. Every failure is an errs.Invalid.
package validate

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/streamspace-dev/functions/shared/errs"
)

// MaxIDLength bounds every identifier, as the varchar(255) ids of the
// StreamSpace API do.
const MaxIDLength = 255

// ID checks an identifier: 1 to MaxIDLength bytes of UTF-8 with no control
// characters.
func ID(field, id string) error { return Text(field, id, MaxIDLength) }

// PathID returns r's path value name, checked with ID and reported as field.
func PathID(r *http.Request, name, field string) (string, error) {
	id := r.PathValue(name)
	if err := ID(field, id); err != nil {
		return "", err
	}
	return id, nil
}

// Limit reads the page-size parameter "limit" of q: def when absent, else
// an integer from 1 to max.
func Limit(q url.Values, def, max int) (int, error) {
	if !q.Has("limit") {
		return def, nil
	}
	v := q.Get("limit")
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > max {
		return 0, errs.E(errs.Invalid, "limit %q: want an integer from 1 to %d", Quote(v), max)
	}
	return n, nil
}

// Tags trims each tag, drops repeats (keeping request order), and checks
// there are at most max tags of 1 to maxLen characters without control
// characters.
func Tags(in []string, max, maxLen int) ([]string, error) {
	if len(in) > max {
		return nil, errs.E(errs.Invalid, "tags: %d tags, at most %d", len(in), max)
	}
	out := make([]string, 0, len(in))
	seen := make(map[string]struct{}, len(in))
	for i, raw := range in {
		t := strings.TrimSpace(raw)
		if n := utf8.RuneCountInString(t); n == 0 || n > maxLen {
			return nil, errs.E(errs.Invalid, "tags[%d] %q: want 1-%d characters after trimming", i, Quote(raw), maxLen)
		}
		if err := Text(fmt.Sprintf("tags[%d]", i), t, 4*maxLen); err != nil {
			return nil, err
		}
		if _, dup := seen[t]; dup {
			continue
		}
		seen[t] = struct{}{}
		out = append(out, t)
	}
	return out, nil
}

// HasControl reports whether s holds a character that has no place in a
// name: a control character, a bidirectional override or isolate (which
// make text display as other than it is), or an invisible zero-width space
// or byte-order mark. Joiners stay allowed: emoji sequences need them.
func HasControl(s string) bool { return strings.IndexFunc(s, disallowed) >= 0 }

func disallowed(r rune) bool {
	switch {
	case unicode.IsControl(r):
		return true
	case r >= 0x202A && r <= 0x202E, r >= 0x2066 && r <= 0x2069, r == 0x200E, r == 0x200F, r == 0x061C:
		return true
	case r == 0x200B, r == 0xFEFF:
		return true
	}
	return false
}

// Text checks a short free-text value such as a category: 1 to max bytes
// of UTF-8 without the characters HasControl refuses.
func Text(field, s string, max int) error {
	switch {
	case s == "" || len(s) > max:
		return errs.E(errs.Invalid, "%s %q: want 1-%d bytes", field, Quote(s), max)
	case !utf8.ValidString(s):
		return errs.E(errs.Invalid, "%s %q: not valid UTF-8", field, Quote(s))
	case HasControl(s):
		return errs.E(errs.Invalid, "%s %q: control, bidirectional and zero-width characters are not allowed", field, Quote(s))
	}
	return nil
}

// Quote shortens client input echoed in an error message to 60 bytes,
// cutting on a character boundary.
func Quote(s string) string {
	if len(s) <= 60 {
		return s
	}
	s = s[:60]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "…"
}
