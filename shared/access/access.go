// Package access answers one question for every function that touches
// session templates: may this caller act at this level on this template?
//
// Levels are ordered read < write < manage. A caller's effective level is the
// highest of: owning the template (user_session_templates.user_id, manage),
// an active template_shares row for the caller, and one for any team the
// caller belongs to (a StreamSpace group, through group_memberships); admins
// hold manage everywhere. A caller with no access at all is told the
// template does not exist, so template ids cannot be probed.
package access

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/errs"
)

// ResourceType is audit_log.resource_type of a template. Every function that
// audits a template writes this one value, so a template's history is one
// lookup on audit_log_resource_idx.
const ResourceType = "session_template"

// Level is a permission level on a template.
type Level int

// The levels, in order.
const (
	None Level = iota
	Read
	Write
	Manage
)

var names = [...]string{"none", "read", "write", "manage"}

func (l Level) String() string {
	if l < None || l > Manage {
		return "invalid"
	}
	return names[l]
}

// ParseLevel parses a share's permission level: read, write or manage.
func ParseLevel(s string) (Level, error) {
	for l := Read; l <= Manage; l++ {
		if names[l] == s {
			return l, nil
		}
	}
	return None, errs.E(errs.Invalid, "permissionLevel %q: want read, write or manage", s)
}

// Querier runs the one query Check needs; a pool and a transaction both do.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// levelSQL computes the caller's level on a template in one statement.
// $1 template id, $2 user id. No row: the template does not exist.
//
// A team is a StreamSpace group: a share whose shared_with_team_id names a
// group applies to every user with a group_memberships row in it, for as
// long as that row exists. A permission_level StreamSpace does not define
// counts as no share at all.
const levelSQL = `
	select t.user_id is not distinct from $2 as owner,
		coalesce((
			select max(case s.permission_level when 'read' then 1 when 'write' then 2 when 'manage' then 3 end)
			from template_shares s
			where s.template_id = t.id
			  and s.revoked_at is null
			  and (s.shared_with_user_id = $2
			       or s.shared_with_team_id in (select m.group_id from group_memberships m where m.user_id = $2))
		), 0) as shared
	from user_session_templates t
	where t.id = $1`

// Effective returns who's level on template. A template that does not exist
// is errs.NotFound.
func Effective(ctx context.Context, q Querier, who authn.Identity, templateID string) (Level, error) {
	var owner bool
	var shared int
	err := q.QueryRow(ctx, levelSQL, templateID, who.Subject).Scan(&owner, &shared)
	if errors.Is(err, pgx.ErrNoRows) {
		return None, notFound(templateID)
	}
	if err != nil {
		return None, db.Classify(err)
	}
	switch {
	case owner || who.IsAdmin():
		return Manage, nil
	default:
		return Level(shared), nil
	}
}

// Require returns who's level on template if it is at least need. A caller
// with no access gets errs.NotFound, as if the template did not exist; one
// who can see the template but not act at need gets errs.Forbidden.
func Require(ctx context.Context, q Querier, who authn.Identity, templateID string, need Level) (Level, error) {
	l, err := Effective(ctx, q, who, templateID)
	if err != nil {
		return None, err
	}
	if l == None {
		return None, notFound(templateID)
	}
	if l < need {
		return l, errs.E(errs.Forbidden, "template %q: %s access required, you have %s", templateID, need, l)
	}
	return l, nil
}

func notFound(templateID string) error {
	return errs.E(errs.NotFound, "template %q not found", templateID)
}
