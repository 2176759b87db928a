package function

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/streamspace-dev/functions/shared/access"
	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/validate"
)

// ShareRequest is the body of POST /api/v1/session-templates/{id}/share.
// StreamSpace's API names the grantee sharedWithUserId or sharedWithTeamId;
// userId and teamId are accepted as the same fields under shorter names.
// Pointers tell an absent id from an empty one, which is an error.
type ShareRequest struct {
	SharedWithUserID *string `json:"sharedWithUserId"`
	SharedWithTeamID *string `json:"sharedWithTeamId"`
	UserID           *string `json:"userId"`
	TeamID           *string `json:"teamId"`
	PermissionLevel  string  `json:"permissionLevel"`
}

// GranteeType says whether a share is for a user or a team.
type GranteeType string

// Grantee types.
const (
	GranteeUser GranteeType = "user"
	GranteeTeam GranteeType = "team"
)

// Grantee is who a share is for: a user, or a team (a StreamSpace group).
type Grantee struct {
	Type GranteeType
	ID   string
}

// ShareInput is a validated share request.
type ShareInput struct {
	Grantee Grantee
	Level   access.Level
	// Field is the request field that named the grantee, for messages.
	Field string
}

// idIf is g's id when g is of type typ, else nil: the two nullable grantee
// columns of template_shares.
func (g Grantee) idIf(typ GranteeType) *string {
	if g.Type != typ {
		return nil
	}
	return &g.ID
}

// Validate checks r and returns the share to make. The error names the
// offending field.
func (r ShareRequest) Validate() (ShareInput, error) {
	var in ShareInput
	type given struct {
		field string
		typ   GranteeType
		id    string
	}
	var ids []given
	for _, f := range []struct {
		field string
		typ   GranteeType
		id    *string
	}{
		{"sharedWithUserId", GranteeUser, r.SharedWithUserID},
		{"sharedWithTeamId", GranteeTeam, r.SharedWithTeamID},
		{"userId", GranteeUser, r.UserID},
		{"teamId", GranteeTeam, r.TeamID},
	} {
		if f.id != nil {
			ids = append(ids, given{f.field, f.typ, *f.id})
		}
	}
	switch len(ids) {
	case 0:
		return in, errs.E(errs.Invalid, "sharedWithUserId or sharedWithTeamId is required: who to share with")
	case 1:
	default:
		return in, errs.E(errs.Invalid, "%s and %s: give exactly one grantee, a user or a team", ids[0].field, ids[1].field)
	}
	if err := validate.ID(ids[0].field, ids[0].id); err != nil {
		return in, err
	}
	in.Grantee, in.Field = Grantee{Type: ids[0].typ, ID: ids[0].id}, ids[0].field
	if r.PermissionLevel == "" {
		return in, errs.E(errs.Invalid, "permissionLevel is required: read, write or manage")
	}
	l, err := access.ParseLevel(r.PermissionLevel)
	if err != nil {
		return in, errs.E(errs.Invalid, "permissionLevel %q: want read, write or manage", validate.Quote(r.PermissionLevel))
	}
	in.Level = l
	return in, nil
}

// templateID is the {id} of a route, checked.
func templateID(r *http.Request) (string, error) {
	return validate.PathID(r, "id", "template id")
}

// shareID is the {shareId} of a route: template_shares.id, a varchar that
// StreamSpace and this function fill with UUIDs.
func shareID(r *http.Request) (string, error) {
	return validate.PathID(r, "shareId", "share id")
}

// Page sizes of GET …/shares.
const (
	DefaultLimit = 50
	MaxLimit     = 200
)

// ListQuery is a validated GET …/shares query.
type ListQuery struct {
	Limit int
	// After, when set, starts the page after this position.
	After *position
}

// position is where a share sits in the list order: newest first, by
// created_at and then id, so shares made in the same microsecond still have
// one order.
type position struct {
	CreatedAt time.Time
	ID        string
}

// parseListQuery reads limit (1-200, default 50) and cursor (as issued by an
// earlier page of the same template; empty means the first page).
func parseListQuery(r *http.Request, templateID string) (ListQuery, error) {
	q := r.URL.Query()
	var lq ListQuery
	var err error
	if lq.Limit, err = validate.Limit(q, DefaultLimit, MaxLimit); err != nil {
		return lq, err
	}
	if c := q.Get("cursor"); c != "" {
		p, err := decodeCursor(templateID, c)
		if err != nil {
			return lq, err
		}
		lq.After = &p
	}
	return lq, nil
}

// A cursor is base64url (unpadded) of "check.micros.id": the position of the
// last share of a page, created_at in microseconds since the Unix epoch and
// the share id, with check a hash of the template id and both. The check is
// no secret (any position in a list the caller may read is fair to ask for)
// but it turns a cursor that was edited, truncated or carried over to
// another template into a 400 instead of a silently wrong page.
const maxCursorLength = 512

func encodeCursor(templateID string, p position) string {
	micros := strconv.FormatInt(p.CreatedAt.UnixMicro(), 10)
	return base64.RawURLEncoding.EncodeToString([]byte(cursorCheck(templateID, micros, p.ID) + "." + micros + "." + p.ID))
}

func decodeCursor(templateID, cursor string) (position, error) {
	bad := errs.E(errs.Invalid, "cursor %q: not a cursor issued for this template's shares", validate.Quote(cursor))
	if len(cursor) > maxCursorLength {
		return position{}, bad
	}
	raw, err := base64.RawURLEncoding.DecodeString(cursor)
	if err != nil {
		return position{}, bad
	}
	parts := strings.SplitN(string(raw), ".", 3)
	if len(parts) != 3 || parts[0] != cursorCheck(templateID, parts[1], parts[2]) {
		return position{}, bad
	}
	micros, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil {
		return position{}, bad
	}
	return position{CreatedAt: time.UnixMicro(micros).UTC(), ID: parts[2]}, nil
}

func cursorCheck(templateID, micros, id string) string {
	sum := sha256.Sum256([]byte("sharing-cursor\x00" + templateID + "\x00" + micros + "\x00" + id))
	return hex.EncodeToString(sum[:8])
}

// maxIPLength is the width of audit_log.ip_address, VARCHAR(45).
const maxIPLength = 45

// clientIP is the address audit_log records for r: the first hop of
// X-Forwarded-For when it holds an IP address (behind the ingress and
// Knative's proxies, RemoteAddr is a proxy), else the host of RemoteAddr;
// nil when neither is an address. The header is only as trustworthy as the
// ingress that sets it, which is why the audit row also names the caller.
func clientIP(r *http.Request) *string {
	if xff := r.Header.Get("X-Forwarded-For"); xff != "" {
		first, _, _ := strings.Cut(xff, ",")
		if ip, ok := parseIP(strings.TrimSpace(first)); ok {
			return &ip
		}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if ip, ok := parseIP(host); ok {
		return &ip
	}
	return nil
}

// parseIP reads an address as proxies write it (bare, or with a port), in
// canonical form without a zone, so it fits maxIPLength.
func parseIP(s string) (string, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		ap, perr := netip.ParseAddrPort(s)
		if perr != nil {
			return "", false
		}
		a = ap.Addr()
	}
	ip := a.WithZone("").Unmap().String()
	if len(ip) > maxIPLength {
		return "", false
	}
	return ip, true
}
