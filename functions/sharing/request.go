package function

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/streamspace-dev/functions/shared/access"
	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/validate"
)

// ShareRequest is the body of POST /api/v1/session-templates/{id}/share.
// Pointers tell an absent id from an empty one, which is an error.
type ShareRequest struct {
	UserID          *string `json:"userId"`
	TeamID          *string `json:"teamId"`
	PermissionLevel string  `json:"permissionLevel"`
}

// Grantee is who a share is for: a user or a team.
type Grantee struct {
	Type string `json:"type"` // GranteeUser or GranteeTeam
	ID   string `json:"id"`
	// Name is the user's display name (or username) or the team's name.
	Name string `json:"name"`
}

// Grantee types.
const (
	GranteeUser = "user"
	GranteeTeam = "team"
)

// ShareInput is a validated share request.
type ShareInput struct {
	Grantee Grantee
	Level   access.Level
}

// userID and teamID return the grantee as the two nullable columns of
// template_shares.
func (in ShareInput) userID() *string { return in.Grantee.idIf(GranteeUser) }
func (in ShareInput) teamID() *string { return in.Grantee.idIf(GranteeTeam) }

func (g Grantee) idIf(typ string) *string {
	if g.Type != typ {
		return nil
	}
	return &g.ID
}

// Validate checks r and returns the share to make. The error names the
// offending field.
func (r ShareRequest) Validate() (ShareInput, error) {
	var in ShareInput
	switch {
	case r.UserID != nil && r.TeamID != nil:
		return in, errs.E(errs.Invalid, "userId and teamId: give exactly one, not both")
	case r.UserID != nil:
		if err := validate.ID("userId", *r.UserID); err != nil {
			return in, err
		}
		in.Grantee = Grantee{Type: GranteeUser, ID: *r.UserID}
	case r.TeamID != nil:
		if err := validate.ID("teamId", *r.TeamID); err != nil {
			return in, err
		}
		in.Grantee = Grantee{Type: GranteeTeam, ID: *r.TeamID}
	default:
		return in, errs.E(errs.Invalid, "userId or teamId is required: who to share with")
	}
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

// shareID is the {shareId} of a route: template_shares.id, a positive
// integer written in plain decimal digits.
func shareID(r *http.Request) (int64, error) {
	raw := r.PathValue("shareId")
	bad := errs.E(errs.Invalid, "share id %q: want a positive integer", validate.Quote(raw))
	if raw == "" || len(raw) > 19 || strings.TrimLeft(raw, "0123456789") != "" {
		return 0, bad
	}
	n, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || n < 1 {
		return 0, bad
	}
	return n, nil
}
