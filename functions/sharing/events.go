package function

import (
	"fmt"
	"net/url"
	"unicode/utf8"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/access"
)

// What the sharing function emits for every change it makes, all in the
// change's transaction (docs/events.md): an audit_log row, notifications
// rows for the grantee, and the events template.shared or
// template.share.revoked, one notification.created per notification, and
// template.updated so caches of the template's access are dropped.

// Outcome is what a share or revoke request did.
type Outcome string

// Outcomes.
const (
	// Created is a new share, or a revoked one made active again.
	Created Outcome = "created"
	// Updated is a level change of an active share.
	Updated Outcome = "updated"
	// Unchanged is a share at the level it already had: nothing written.
	Unchanged Outcome = "unchanged"
	// Revoked is a revoked share.
	Revoked Outcome = "revoked"
)

// AuditAction is audit_log.action of a change.
type AuditAction string

// Audit actions.
const (
	ActionCreated AuditAction = "template.share.created"
	ActionUpdated AuditAction = "template.share.updated"
	ActionRevoked AuditAction = "template.share.revoked"
)

func (o Outcome) auditAction() AuditAction {
	switch o {
	case Created:
		return ActionCreated
	case Revoked:
		return ActionRevoked
	default:
		return ActionUpdated
	}
}

// Kind is notifications.type of a share notification, in StreamSpace's
// "noun.verb" style (its handlers use "session.shared").
type Kind string

// Notification kinds.
const (
	KindShared       Kind = "template.shared"
	KindShareUpdated Kind = "template.share.updated"
	KindShareRevoked Kind = "template.share.revoked"
)

// Change is what a share or revoke request did.
type Change struct {
	Outcome Outcome
	// Actor is who made the change.
	Actor string
	// Share is the share as the change left it.
	Share Share
	// Previous is the level before: of a level change or a revoke.
	Previous string
	// Notifications are the rows created for the grantee.
	Notifications []Notification
}

// notifies reports whether a change tells its grantee: a new share, a
// revoke, and a level change that raises the level. A lowered level is
// audited and emitted but tells no one, so that flipping a team's level
// cannot notify every member on every flip (the sharer of a team share must
// also be in the team: see checkGrantee).
func notifies(o Outcome, previous, level string) bool {
	switch o {
	case Created, Revoked:
		return true
	case Updated:
		from, err1 := access.ParseLevel(previous)
		to, err2 := access.ParseLevel(level)
		// A level StreamSpace wrote that is not one of ours counts as
		// none, so moving away from it is a raise.
		return err2 == nil && (err1 != nil || to > from)
	default:
		return false
	}
}

// notice is the wording and link of a change's notifications.
type notice struct {
	Kind       Kind
	Title      string
	Message    string
	ActionURL  *string
	ActionText *string
}

// templatePage is the UI path a notification links to. StreamSpace's UI has
// no page of its own for a user session template yet, so the link names the
// template the way its API does; a revoke links nowhere, since the grantee
// may no longer open the template.
func templatePage(templateID string) string {
	return "/session-templates/" + url.PathEscape(templateID)
}

// describe words the notifications of c, addressed to the grantee. n holds
// the display names of the actor, the template and the grantee.
func describe(c *Change, n names) notice {
	actor, tmpl := clip(n.actor), clip(n.template)
	g := c.Share.grantee()
	// with names who the share is for and what names the grantee's
	// access: "your write access", or for a team "the write access of
	// your team Developers".
	with, what := "you", func(level string) string { return "your " + level + "access" }
	if g.Type == GranteeTeam {
		team := clip(n.granteeName(g))
		with = "your team " + team
		what = func(level string) string { return "the " + level + "access of your team " + team }
	}
	link, text := templatePage(c.Share.TemplateID), "View template"
	switch c.Outcome {
	case Created:
		return notice{KindShared, "A template was shared with you",
			fmt.Sprintf("%s shared %s with %s (%s)", actor, tmpl, with, c.Share.PermissionLevel), &link, &text}
	case Updated:
		return notice{KindShareUpdated, "Your access to a template changed",
			fmt.Sprintf("%s changed %s to %s from %s to %s", actor, what(""), tmpl, c.Previous, c.Share.PermissionLevel), &link, &text}
	default:
		return notice{Kind: KindShareRevoked, Title: "Your access to a template was removed",
			Message: fmt.Sprintf("%s revoked %s to %s", actor, what(c.Previous+" "), tmpl)}
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

// events returns the events of c, to be queued in its transaction. The
// sharedBy of template.shared is who made this change.
func (c Change) events() ([]cloudevents.Event, error) {
	out := make([]cloudevents.Event, 0, len(c.Notifications)+2)
	add := func(eventType string, data any) error {
		e, err := events.New(Name, eventType, data)
		if err != nil {
			return err
		}
		out = append(out, e)
		return nil
	}
	sh := c.Share
	g := sh.grantee()
	userID, teamID := deref(g.idIf(GranteeUser)), deref(g.idIf(GranteeTeam))
	change := "shared"
	var err error
	if c.Outcome == Revoked {
		change = "unshared"
		err = add(events.TemplateShareRevoked, events.TemplateShareRevokedData{
			TemplateID: sh.TemplateID, ShareID: sh.ID, RevokedBy: c.Actor,
			UserID: userID, TeamID: teamID, PermissionLevel: c.Previous,
		})
	} else {
		err = add(events.TemplateShared, events.TemplateSharedData{
			TemplateID: sh.TemplateID, ShareID: sh.ID, SharedBy: c.Actor,
			UserID: userID, TeamID: teamID, PermissionLevel: sh.PermissionLevel, PreviousLevel: c.Previous,
		})
	}
	if err != nil {
		return nil, err
	}
	for _, n := range c.Notifications {
		if err := add(events.NotificationCreated, events.NotificationCreatedData{
			NotificationID: n.ID, UserID: n.UserID, Kind: string(n.Kind), Title: n.Title, Message: n.Message,
		}); err != nil {
			return nil, err
		}
	}
	if err := add(events.TemplateUpdated, events.TemplateUpdatedData{
		TemplateID: sh.TemplateID, UserID: c.Actor, Change: change,
	}); err != nil {
		return nil, err
	}
	return out, nil
}
