package function

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/validate"
)

// Limits of the versioning routes.
const (
	MaxDescription = 1000 // characters
	MaxTags        = 20
	MaxTagLength   = 50 // characters
	DefaultLimit   = 20
	MaxLimit       = 100
)

// AutoBackupTag marks the version a restore saves of the state it replaces.
// Users cannot set it, so retention can trust it.
const AutoBackupTag = "auto-backup"

// CurrentTemplate is the diff target that means the template as it is now.
const CurrentTemplate = "current"

// CreateRequest is the body of POST …/versions.
type CreateRequest struct {
	Description string   `json:"description"`
	Tags        []string `json:"tags"`
}

// CreateInput is a validated CreateRequest.
type CreateInput struct {
	Description string
	// Tags are trimmed, in request order, each once; never nil.
	Tags []string
}

// Validate returns the description and the tags to store. The error names
// the offending field.
func (r CreateRequest) Validate() (CreateInput, error) {
	if n := utf8.RuneCountInString(r.Description); n > MaxDescription {
		return CreateInput{}, errs.E(errs.Invalid, "description: %d characters, at most %d", n, MaxDescription)
	}
	// Line breaks and tabs are text; other control characters (NUL, which
	// PostgreSQL refuses, and escape sequences that garble a terminal) are not.
	if strings.IndexFunc(r.Description, func(c rune) bool { return unicode.IsControl(c) && c != '\n' && c != '\r' && c != '\t' }) >= 0 {
		return CreateInput{}, errs.E(errs.Invalid, "description: control characters other than line breaks and tabs are not allowed")
	}
	tags, err := validate.Tags(r.Tags, MaxTags, MaxTagLength)
	if err != nil {
		return CreateInput{}, err
	}
	// Any spelling is refused, so no user tag can be mistaken for the
	// marker by a person reading the list.
	for i, t := range tags {
		if strings.EqualFold(t, AutoBackupTag) {
			return CreateInput{}, errs.E(errs.Invalid, "tags[%d] %q: reserved for the backups a restore makes", i, t)
		}
	}
	if tags == nil {
		tags = []string{}
	}
	return CreateInput{Description: r.Description, Tags: tags}, nil
}

// templateID returns the {id} path value: 1-255 printable characters.
func templateID(r *http.Request) (string, error) {
	return validate.PathID(r, "id", "template id")
}

// parseVersion parses a version number written in decimal with no sign,
// leading zero or padding, as a client that got it from us writes it.
func parseVersion(name, s string) (int, error) {
	bad := errs.E(errs.Invalid, "%s %q: want a version number from 1 to %d", name, validate.Quote(s), math.MaxInt32)
	if s == "" || s[0] == '0' || len(s) > 10 {
		return 0, bad
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, bad
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil || n > math.MaxInt32 {
		return 0, bad
	}
	return n, nil
}

// MaxPage bounds the page number of offset paging, so an offset stays
// within what a template can hold.
const MaxPage = 10000

// ListQuery is a validated GET …/versions query.
type ListQuery struct {
	Limit int
	// Before, when set, starts the page below this version number.
	Before *int
	// Page is the 1-based page number of StreamSpace's offset paging; 0
	// when the query pages by cursor.
	Page int
}

// Offset is how many versions, newest first, come before the page.
func (q ListQuery) Offset() int {
	if q.Page < 2 {
		return 0
	}
	return (q.Page - 1) * q.Limit
}

// parseListQuery reads limit (1-100, default 20) and either cursor (as
// issued by an earlier page of the same template; empty means the first
// page) or page (1-MaxPage, the offset paging StreamSpace's own API and its
// clients use).
func parseListQuery(r *http.Request, template string) (ListQuery, error) {
	q := r.URL.Query()
	var lq ListQuery
	var err error
	if lq.Limit, err = validate.Limit(q, DefaultLimit, MaxLimit); err != nil {
		return lq, err
	}
	if q.Has("cursor") && q.Has("page") {
		return lq, errs.E(errs.Invalid, "cursor and page: use one or the other")
	}
	if c := q.Get("cursor"); c != "" {
		n, err := decodeCursor(template, c)
		if err != nil {
			return lq, err
		}
		lq.Before = &n
	}
	if q.Has("page") {
		p := q.Get("page")
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > MaxPage {
			return lq, errs.E(errs.Invalid, "page %q: want an integer from 1 to %d", validate.Quote(p), MaxPage)
		}
		lq.Page = n
	}
	return lq, nil
}

// parseAgainst reads the diff target: "current" (the default) or a version
// number. A nil result means the template as it is now.
func parseAgainst(r *http.Request) (*int, error) {
	q := r.URL.Query()
	if !q.Has("against") || q.Get("against") == CurrentTemplate {
		return nil, nil
	}
	n, err := parseVersion("against", q.Get("against"))
	if err != nil {
		return nil, errs.E(errs.Invalid, "against %q: want %q or a version number from 1 to %d", validate.Quote(q.Get("against")), CurrentTemplate, math.MaxInt32)
	}
	return &n, nil
}

// A cursor marks where the next page of a template's versions starts: below
// version n. It is base64url (unpadded) of "n.check", where check is a hash
// of the template id and n. The check is not a secret — any position in a
// list the caller may read is fair to ask for — but it turns a cursor that
// was edited, truncated or carried over to another template into a 400
// instead of a silently wrong page.
const maxCursorLength = 64

func encodeCursor(template string, n int) string {
	s := strconv.Itoa(n)
	return base64.RawURLEncoding.EncodeToString([]byte(s + "." + cursorCheck(template, s)))
}

func decodeCursor(template, cursor string) (int, error) {
	bad := errs.E(errs.Invalid, "cursor %q: not a cursor issued for this template's versions", validate.Quote(cursor))
	if len(cursor) > maxCursorLength {
		return 0, bad
	}
	raw, err := base64.RawURLEncoding.DecodeString(cursor)
	if err != nil {
		return 0, bad
	}
	num, check, ok := strings.Cut(string(raw), ".")
	if !ok || check != cursorCheck(template, num) {
		return 0, bad
	}
	n, err := parseVersion("cursor", num)
	if err != nil {
		return 0, bad
	}
	return n, nil
}

func cursorCheck(template, num string) string {
	sum := sha256.Sum256([]byte("versioning-cursor\x00" + template + "\x00" + num))
	return hex.EncodeToString(sum[:8])
}

// clientIP is the address audit_log.ip_address records: the first
// X-Forwarded-For entry, which the ingress in front of the functions sets,
// as StreamSpace's own audit rows take it, or else the peer's address. It
// is "" when neither is an IP address, so the column never holds free text.
func clientIP(r *http.Request) string {
	if xff := r.Header.Get("X-Forwarded-For"); xff != "" {
		first, _, _ := strings.Cut(xff, ",")
		if a, err := netip.ParseAddr(strings.TrimSpace(first)); err == nil {
			return a.WithZone("").String()
		}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return a.WithZone("").String()
	}
	return ""
}
