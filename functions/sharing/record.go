package function

import (
	"context"
	"encoding/json"
	"fmt"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/shared/access"
)

// Notification is one notifications row created for a grantee.
type Notification struct {
	ID      int64
	UserID  string
	Kind    string
	Title   string
	Message string
}

// auditDetails is audit_log.details of a share change. A level is null where
// there was none: OldLevel of a new share, NewLevel of a revoked one.
type auditDetails struct {
	ShareID  int64   `json:"shareId"`
	Grantee  Grantee `json:"grantee"`
	OldLevel *string `json:"oldLevel"`
	NewLevel *string `json:"newLevel"`
	SharedBy string  `json:"sharedBy"`
}

// notificationData is notifications.data: what a client needs to link the
// notification to the template and the share.
type notificationData struct {
	TemplateID      string `json:"templateId"`
	ShareID         int64  `json:"shareId"`
	Actor           string `json:"actor"`
	PermissionLevel string `json:"permissionLevel,omitempty"`
	PreviousLevel   string `json:"previousLevel,omitempty"`
	TeamID          string `json:"teamId,omitempty"`
}

// auditSQL writes a share change's audit row. $1 actor, $2 action,
// $3 resource type (access.ResourceType), $4 template, $5 details.
const auditSQL = `
	insert into audit_log (actor, action, resource_type, resource_id, details)
	values ($1, $2, $3, $4, $5)`

// notifySQL notifies, in one statement, the grantee user, or every member of
// the grantee team at this moment. The actor is left out: they made the
// change. $1 user, $2 team, $3 actor, $4 kind, $5 title, $6 message, $7 data.
const notifySQL = `
	insert into notifications (user_id, kind, title, message, data)
	select r.user_id, $4, $5, $6, $7
	from (
		select $1::text as user_id where $1::text is not null
		union all
		select m.user_id from team_members m where m.team_id = $2::text
	) as r
	where r.user_id <> $3
	order by r.user_id
	returning id, user_id`

// record writes c's audit row and notifications in tx and adds the
// notifications to c.
func record(ctx context.Context, tx pgx.Tx, c *Change, n names) error {
	d := auditDetails{ShareID: c.Share.ID, Grantee: c.Share.Grantee, SharedBy: c.Share.SharedBy}
	if c.Action != ActionCreated {
		d.OldLevel = &c.Previous
	}
	if c.Action != ActionRevoked {
		d.NewLevel = &c.Share.PermissionLevel
	}
	details, err := json.Marshal(d)
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, auditSQL, c.Actor, c.Action, access.ResourceType, c.Share.TemplateID, details); err != nil {
		return fmt.Errorf("audit %s: %w", c.Action, err)
	}

	kind, title, message := describe(c, n)
	data := notificationData{TemplateID: c.Share.TemplateID, ShareID: c.Share.ID, Actor: c.Actor}
	switch c.Action {
	case ActionCreated:
		data.PermissionLevel = c.Share.PermissionLevel
	case ActionUpdated:
		data.PermissionLevel, data.PreviousLevel = c.Share.PermissionLevel, c.Previous
	case ActionRevoked:
		data.PreviousLevel = c.Previous
	}
	g := c.Share.Grantee
	if g.Type == GranteeTeam {
		data.TeamID = g.ID
	}
	raw, err := json.Marshal(data)
	if err != nil {
		return err
	}
	rows, err := tx.Query(ctx, notifySQL, g.idIf(GranteeUser), g.idIf(GranteeTeam), c.Actor, kind, title, message, raw)
	if err != nil {
		return fmt.Errorf("notify %s %s: %w", g.Type, g.ID, err)
	}
	defer rows.Close()
	for rows.Next() {
		nt := Notification{Kind: kind, Title: title, Message: message}
		if err := rows.Scan(&nt.ID, &nt.UserID); err != nil {
			return err
		}
		c.Notifications = append(c.Notifications, nt)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("notify %s %s: %w", g.Type, g.ID, err)
	}
	return nil
}

// Notification kinds, as notifications.kind.
const (
	KindShared       = "template.shared"
	KindShareUpdated = "template.share.updated"
	KindShareRevoked = "template.share.revoked"
)

// describe words the notification of c, addressed to the grantee.
func describe(c *Change, n names) (kind, title, message string) {
	actor, tmpl := clip(n.actor), clip(n.template)
	// what names the grantee's access: "your write access", or for a team
	// "the write access of your team Developers".
	with, what := "you", func(level string) string { return "your " + level + "access" }
	if c.Share.Grantee.Type == GranteeTeam {
		team := clip(c.Share.Grantee.Name)
		with = "your team " + team
		what = func(level string) string { return "the " + level + "access of your team " + team }
	}
	switch c.Action {
	case ActionCreated:
		return KindShared, "A template was shared with you",
			fmt.Sprintf("%s shared %s with %s (%s)", actor, tmpl, with, c.Share.PermissionLevel)
	case ActionUpdated:
		return KindShareUpdated, "Your access to a template changed",
			fmt.Sprintf("%s changed %s to %s from %s to %s", actor, what(""), tmpl, c.Previous, c.Share.PermissionLevel)
	default:
		return KindShareRevoked, "Your access to a template was removed",
			fmt.Sprintf("%s revoked %s to %s", actor, what(c.Previous+" "), tmpl)
	}
}

// clip bounds a name quoted in a notification, so the message stays within
// what notification.created allows however long the names are.
func clip(s string) string {
	const maxRunes = 200
	if utf8.RuneCountInString(s) <= maxRunes {
		return s
	}
	return string([]rune(s)[:maxRunes]) + "…"
}
