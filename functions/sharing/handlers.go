package function

import (
	"context"
	"fmt"
	"net/http"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/shared/access"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/runtime"
	"github.com/streamspace-dev/functions/shared/validate"
)

// ShareList is the response of GET /api/v1/session-templates/{id}/shares:
// StreamSpace's {shares, count} for one page, count being the shares on it,
// and the cursor of the next page when there is one.
type ShareList struct {
	Shares     []Share `json:"shares"`
	Count      int     `json:"count"`
	NextCursor string  `json:"nextCursor,omitempty"`
}

// ShareResult is the response of POST /api/v1/session-templates/{id}/share:
// StreamSpace's {message, shareId}, the grantee's share as the request left
// it, and what the request did to it. PreviousLevel is set for a level
// change.
type ShareResult struct {
	Message       string  `json:"message"`
	ShareID       string  `json:"shareId"`
	Outcome       Outcome `json:"outcome"`
	PreviousLevel string  `json:"previousLevel,omitempty"`
	Share         Share   `json:"share"`
}

// RevokeResult is the response of DELETE
// /api/v1/session-templates/{id}/shares/{shareId}: StreamSpace's {message},
// the share as revoked, and who revoked it (template_shares does not keep
// that; audit_log does).
type RevokeResult struct {
	Message   string `json:"message"`
	Share     Share  `json:"share"`
	RevokedBy string `json:"revokedBy"`
}

var outcomeMessages = map[Outcome]string{
	Created:   "Template shared successfully",
	Updated:   "Share permission updated",
	Unchanged: "Template already shared at this permission level",
}

// listShares serves a page of a template's active shares to a caller who
// manages it (admins manage every template).
func (f *Function) listShares(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	id, err := templateID(r)
	if err != nil {
		return err
	}
	lq, err := parseListQuery(r, id)
	if err != nil {
		return err
	}
	var (
		page []Share
		next *position
	)
	// A read-only transaction, so the reads get the statement and lock
	// timeouts every transaction sets (docs/data.md).
	err = db.Read(r.Context(), f.svc.Pool, func(tx pgx.Tx) error {
		if _, err := access.Require(r.Context(), tx, who, id, access.Manage); err != nil {
			return err
		}
		var err error
		page, next, err = listShares(r.Context(), tx, id, lq)
		return err
	})
	if err != nil {
		return err
	}
	res := ShareList{Shares: page, Count: len(page)}
	if next != nil {
		res.NextCursor = encodeCursor(id, *next)
	}
	runtime.WriteJSON(w, http.StatusOK, res)
	return nil
}

// share shares a template, makes a revoked share active again or changes a
// share's level: 201 when a share became active, else 200.
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
	ip := clientIP(r)
	var c Change
	err = f.svc.Commit(r.Context(), func(tx pgx.Tx) ([]cloudevents.Event, error) {
		var err error
		if c, err = applyShare(r.Context(), tx, who, id, in, ip); err != nil || c.Outcome == Unchanged {
			return nil, err
		}
		return c.events()
	})
	if err != nil {
		return fmt.Errorf("share template %s with %s %s: %w", id, in.Grantee.Type, in.Grantee.ID, err)
	}
	status := http.StatusOK
	if c.Outcome == Created {
		status = http.StatusCreated
	}
	prev := ""
	if c.Outcome == Updated {
		prev = c.Previous
	}
	runtime.WriteJSON(w, status, ShareResult{
		Message: outcomeMessages[c.Outcome], ShareID: c.Share.ID, Outcome: c.Outcome, PreviousLevel: prev, Share: c.Share,
	})
	return nil
}

// applyShare is the unit of work of a share, in tx: who must manage the
// template; the share row, its audit row and the grantee's notifications
// are written together. A share at the level it has changes nothing.
func applyShare(ctx context.Context, tx pgx.Tx, who authn.Identity, templateID string, in ShareInput, ip *string) (Change, error) {
	c := Change{Actor: who.Subject}
	if _, err := access.Require(ctx, tx, who, templateID, access.Manage); err != nil {
		return c, err
	}
	n, err := readNames(ctx, tx, templateID, who.Subject, in.Grantee)
	if err != nil {
		return c, err
	}
	if err := checkGrantee(who, templateID, in, n); err != nil {
		return c, err
	}
	c.Share, c.Outcome, c.Previous, err = upsertShare(ctx, tx, who.Subject, templateID, in)
	if err != nil {
		return c, err
	}
	c.Share.setGrantee(in.Grantee, deref(n.listing))
	if c.Outcome == Unchanged {
		return c, nil
	}
	return c, record(ctx, tx, &c, n, ip)
}

// checkGrantee refuses shares that cannot mean anything, with oneself (the
// caller already holds the access) or with the owner (who holds manage),
// and shares with a user or team that does not exist.
//
// It also refuses a share with a team the caller is not a member of, unless
// the caller is an admin: such a share would let anyone who manages a
// template notify every member of any group, once per share. The answer is
// the same 404 as for a team that does not exist, so groups the caller is
// not in cannot be probed; a team member (or an admin) may then share.
func checkGrantee(who authn.Identity, templateID string, in ShareInput, n names) error {
	g := in.Grantee
	if g.Type == GranteeUser {
		switch {
		case g.ID == who.Subject:
			return errs.E(errs.Invalid, "%s %q: you cannot share a template with yourself", in.Field, validate.Quote(g.ID))
		case n.owner != nil && g.ID == *n.owner:
			return errs.E(errs.Invalid, "%s %q: the user owns template %q and already holds manage", in.Field, validate.Quote(g.ID), templateID)
		}
	}
	if n.grantee == nil || (g.Type == GranteeTeam && !n.member && !who.IsAdmin()) {
		return errs.E(errs.NotFound, "%s %q not found", g.Type, validate.Quote(g.ID))
	}
	return nil
}

// record writes the audit row of c and, when the change tells the
// grantee, the notifications.
func record(ctx context.Context, tx pgx.Tx, c *Change, n names, ip *string) error {
	if err := writeAudit(ctx, tx, c, ip); err != nil {
		return err
	}
	if !notifies(c.Outcome, c.Previous, c.Share.PermissionLevel) {
		return nil
	}
	return writeNotifications(ctx, tx, c, describe(c, n))
}

// revoke revokes an active share of a template.
func (f *Function) revoke(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	id, err := templateID(r)
	if err != nil {
		return err
	}
	sid, err := shareID(r)
	if err != nil {
		return err
	}
	ip := clientIP(r)
	var c Change
	err = f.svc.Commit(r.Context(), func(tx pgx.Tx) ([]cloudevents.Event, error) {
		var err error
		if c, err = applyRevoke(r.Context(), tx, who, id, sid, ip); err != nil {
			return nil, err
		}
		return c.events()
	})
	if err != nil {
		return fmt.Errorf("revoke share %s of template %s: %w", sid, id, err)
	}
	runtime.WriteJSON(w, http.StatusOK, RevokeResult{Message: "Share revoked successfully", Share: c.Share, RevokedBy: c.Actor})
	return nil
}

// revokeVerdict is what canRevoke decides.
type revokeVerdict string

// Revoke verdicts.
const (
	// revokeAllowed: the share is revoked.
	revokeAllowed revokeVerdict = "allowed"
	// revokeHidden: the caller has no access to the template and is told
	// it does not exist, whatever the share.
	revokeHidden revokeVerdict = "template_not_found"
	// revokeNoShare: the template has no such active share.
	revokeNoShare revokeVerdict = "share_not_found"
	// revokeForbidden: the caller sees the template but neither manages
	// it nor made the share.
	revokeForbidden revokeVerdict = "forbidden"
)

// canRevoke decides a revoke from the caller's level on the template
// (access.None when it has none or the template does not exist), whether the
// template has the active share, and whether the caller is its sharer (the
// one who last set its level). No access means not found, always: having
// made a share gives no right over it to someone who lost the template.
func canRevoke(level access.Level, found, mine bool) revokeVerdict {
	switch {
	case level <= access.None:
		return revokeHidden
	case !found:
		return revokeNoShare
	case level >= access.Manage || mine:
		return revokeAllowed
	default:
		return revokeForbidden
	}
}

// applyRevoke is the unit of work of a revoke, in tx: the row keeps its
// history (revoked_at), and the audit row and the grantee's notifications
// are written with it.
func applyRevoke(ctx context.Context, tx pgx.Tx, who authn.Identity, templateID, shareID string, ip *string) (Change, error) {
	c := Change{Outcome: Revoked, Actor: who.Subject}
	level, err := access.Effective(ctx, tx, who, templateID)
	if err != nil && errs.KindOf(err) != errs.NotFound {
		return c, err
	}
	var sh Share
	found := false
	if level > access.None {
		// Only a caller who sees the template locks its share.
		if sh, found, err = lockShare(ctx, tx, templateID, shareID); err != nil {
			return c, err
		}
	}
	switch canRevoke(level, found, found && sh.SharedBy == who.Subject) {
	case revokeAllowed:
	case revokeNoShare:
		return c, errs.E(errs.NotFound, "share %q of template %q not found", validate.Quote(shareID), templateID)
	case revokeForbidden:
		return c, errs.E(errs.Forbidden, "template %q: manage access required to revoke a share you did not make, you have %s", templateID, level)
	default:
		return c, errs.E(errs.NotFound, "template %q not found", templateID)
	}
	g := sh.grantee()
	n, err := readNames(ctx, tx, templateID, who.Subject, g)
	if err != nil {
		return c, err
	}
	sh.setGrantee(g, deref(n.listing))
	at, err := revokeShare(ctx, tx, sh.ID)
	if err != nil {
		return c, err
	}
	sh.RevokedAt = &at
	c.Share, c.Previous = sh, sh.PermissionLevel
	return c, record(ctx, tx, &c, n, ip)
}
