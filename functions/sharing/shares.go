package function

import (
	"context"
	"net/http"
	"strconv"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/runtime"
)

// ShareList is the response of GET /api/v1/session-templates/{id}/shares.
type ShareList struct {
	TemplateID string  `json:"templateId"`
	Shares     []Share `json:"shares"`
	Count      int     `json:"count"`
}

// ShareResult is the response of POST /api/v1/session-templates/{id}/share:
// the grantee's active share and what the request did to it. Created and
// Updated are false together when the share already had the level asked
// for, and then Changed is false too.
type ShareResult struct {
	Share         Share  `json:"share"`
	Created       bool   `json:"created"`
	Updated       bool   `json:"updated"`
	Changed       bool   `json:"changed"`
	PreviousLevel string `json:"previousLevel,omitempty"`
}

// RevokeResult is the response of DELETE
// /api/v1/session-templates/{id}/shares/{shareId}: the share as revoked.
type RevokeResult struct {
	Share Share `json:"share"`
}

func (f *Function) listShares(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	id, err := templateID(r)
	if err != nil {
		return err
	}
	shares, err := f.store.List(r.Context(), who, id)
	if err != nil {
		return err
	}
	runtime.WriteJSON(w, http.StatusOK, ShareList{TemplateID: id, Shares: shares, Count: len(shares)})
	return nil
}

func (f *Function) share(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	id, err := templateID(r)
	if err != nil {
		return err
	}
	var req ShareRequest
	if err := runtime.DecodeJSON(r, &req); err != nil {
		return err
	}
	in, err := req.Validate()
	if err != nil {
		return err
	}
	c, err := f.store.Share(r.Context(), who, id, in, f.queueChange)
	if err != nil {
		return err
	}
	res := ShareResult{
		Share:         c.Share,
		Created:       c.Action == ActionCreated,
		Updated:       c.Action == ActionUpdated,
		Changed:       c.Changed(),
		PreviousLevel: c.Previous,
	}
	status := http.StatusOK
	if res.Created {
		status = http.StatusCreated
	}
	if res.Changed {
		f.Outbox.Kick() // the relay sends after commit; the response does not wait
	}
	runtime.WriteJSON(w, status, res)
	return nil
}

func (f *Function) revoke(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	id, err := templateID(r)
	if err != nil {
		return err
	}
	sid, err := shareID(r)
	if err != nil {
		return err
	}
	c, err := f.store.Revoke(r.Context(), who, id, sid, f.queueChange)
	if err != nil {
		return err
	}
	f.Outbox.Kick() // the relay sends after commit; the response does not wait
	runtime.WriteJSON(w, http.StatusOK, RevokeResult{Share: c.Share})
	return nil
}

// queueChange queues, in tx, the events of a change: template.shared or
// template.share.revoked, one notification.created per notification, and
// template.updated so caches of the template's access are dropped. The
// sharedBy of template.shared is who made this change, which for a level
// change may differ from who first made the share.
func (f *Function) queueChange(ctx context.Context, tx pgx.Tx, c Change) error {
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
	shareID := strconv.FormatInt(sh.ID, 10)
	userID, teamID := deref(sh.Grantee.idIf(GranteeUser)), deref(sh.Grantee.idIf(GranteeTeam))
	change := "shared"
	var err error
	if c.Action == ActionRevoked {
		change = "unshared"
		err = add(events.TemplateShareRevoked, events.TemplateShareRevokedData{
			TemplateID: sh.TemplateID, ShareID: shareID, RevokedBy: c.Actor,
			UserID: userID, TeamID: teamID, PermissionLevel: c.Previous,
		})
	} else {
		err = add(events.TemplateShared, events.TemplateSharedData{
			TemplateID: sh.TemplateID, ShareID: shareID, SharedBy: c.Actor,
			UserID: userID, TeamID: teamID, PermissionLevel: sh.PermissionLevel, PreviousLevel: c.Previous,
		})
	}
	if err != nil {
		return err
	}
	for _, n := range c.Notifications {
		if err := add(events.NotificationCreated, events.NotificationCreatedData{
			NotificationID: strconv.FormatInt(n.ID, 10), UserID: n.UserID,
			Kind: n.Kind, Title: n.Title, Message: n.Message,
		}); err != nil {
			return err
		}
	}
	if err := add(events.TemplateUpdated, events.TemplateUpdatedData{
		TemplateID: sh.TemplateID, UserID: c.Actor, Change: change,
	}); err != nil {
		return err
	}
	return f.Outbox.Add(ctx, tx, out...)
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
