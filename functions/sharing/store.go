package function

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/streamspace-dev/functions/shared/access"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/validate"
)

// Share is one share of a template.
type Share struct {
	ID              int64      `json:"id"`
	TemplateID      string     `json:"templateId"`
	Grantee         Grantee    `json:"grantee"`
	PermissionLevel string     `json:"permissionLevel"`
	SharedBy        string     `json:"sharedBy"`
	CreatedAt       time.Time  `json:"createdAt"`
	UpdatedAt       time.Time  `json:"updatedAt"`
	RevokedAt       *time.Time `json:"revokedAt,omitempty"`
	RevokedBy       string     `json:"revokedBy,omitempty"`
}

// Actions a change records, as audit_log.action.
const (
	ActionCreated = "template.share.created"
	ActionUpdated = "template.share.updated"
	ActionRevoked = "template.share.revoked"
)

// Change is what a share or revoke did. Action is empty when it did nothing.
type Change struct {
	Action   string
	Actor    string
	Share    Share
	Previous string // the level before; empty for a new share
	// Notifications are the rows created for the grantee.
	Notifications []Notification
}

// Changed reports whether the request changed anything.
func (c Change) Changed() bool { return c.Action != "" }

// Store holds the sharing queries.
type Store struct {
	Pool *pgxpool.Pool
}

// listSQL returns a template's active shares with each grantee's display
// name: a user's display name, else username, else id; a team's name.
const listSQL = `
	select s.id, s.shared_with_team_id is null,
		coalesce(s.shared_with_user_id, s.shared_with_team_id),
		coalesce(nullif(u.display_name, ''), u.username, t.name, s.shared_with_user_id, s.shared_with_team_id),
		s.permission_level, s.shared_by, s.created_at, s.updated_at
	from template_shares s
	left join users u on u.id = s.shared_with_user_id
	left join teams t on t.id = s.shared_with_team_id
	where s.template_id = $1 and s.revoked_at is null
	order by s.created_at, s.id`

// List returns the active shares of templateID, which who must manage.
func (s *Store) List(ctx context.Context, who authn.Identity, templateID string) ([]Share, error) {
	if _, err := access.Require(ctx, s.Pool, who, templateID, access.Manage); err != nil {
		return nil, err
	}
	rows, err := s.Pool.Query(ctx, listSQL, templateID)
	if err != nil {
		return nil, fmt.Errorf("list shares of %s: %w", templateID, db.Classify(err))
	}
	defer rows.Close()
	out := []Share{}
	for rows.Next() {
		sh := Share{TemplateID: templateID}
		var isUser bool
		if err := rows.Scan(&sh.ID, &isUser, &sh.Grantee.ID, &sh.Grantee.Name,
			&sh.PermissionLevel, &sh.SharedBy, &sh.CreatedAt, &sh.UpdatedAt); err != nil {
			return nil, fmt.Errorf("list shares of %s: %w", templateID, err)
		}
		sh.Grantee.Type = granteeType(isUser)
		out = append(out, sh)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list shares of %s: %w", templateID, db.Classify(err))
	}
	return out, nil
}

func granteeType(isUser bool) string {
	if isUser {
		return GranteeUser
	}
	return GranteeTeam
}

// namesSQL reads, in one statement, what messages and checks need: the
// template's owner and name, the actor's display name and the grantee's
// (null when the grantee does not exist). $1 template, $2 actor, $3 user
// grantee, $4 team grantee.
const namesSQL = `
	select t.user_id, t.name,
		coalesce((select coalesce(nullif(u.display_name, ''), u.username) from users u where u.id = $2), $2),
		case when $3::text is not null
			then (select coalesce(nullif(u.display_name, ''), u.username) from users u where u.id = $3)
			else (select m.name from teams m where m.id = $4)
		end
	from user_session_templates t
	where t.id = $1`

// names is what namesSQL reads.
type names struct {
	owner, template, actor string
	grantee                *string
}

func readNames(ctx context.Context, tx pgx.Tx, templateID, actor string, g Grantee) (names, error) {
	var n names
	err := tx.QueryRow(ctx, namesSQL, templateID, actor, g.idIf(GranteeUser), g.idIf(GranteeTeam)).
		Scan(&n.owner, &n.template, &n.actor, &n.grantee)
	if errors.Is(err, pgx.ErrNoRows) {
		// The access check in the same transaction saw the template, so
		// it was deleted since; to the caller it no longer exists.
		return n, errs.E(errs.NotFound, "template %q not found", templateID)
	}
	return n, err
}

// The statements of a share. A grantee has at most one active share per
// template (the partial unique indexes of template_shares), so a new share
// is an insert that does nothing on conflict; a conflict means an active
// share exists, which is then locked and changed. Concurrent shares to one
// grantee thus wait on the index or the row lock and apply one after
// another, each seeing the level the previous one left.
const (
	insertShareSQL = `
		insert into template_shares (template_id, shared_by, shared_with_user_id, shared_with_team_id, permission_level)
		values ($1, $2, $3, $4, $5)
		on conflict do nothing
		returning id, created_at, updated_at`
	lockGranteeShareSQL = `
		select id, permission_level, shared_by, created_at, updated_at
		from template_shares
		where template_id = $1 and revoked_at is null
		  and (shared_with_user_id = $2 or shared_with_team_id = $3)
		for update`
	updateLevelSQL = `
		update template_shares set permission_level = $2, updated_at = now()
		where id = $1
		returning updated_at`
)

// upsertAttempts bounds how often a share retries when the active share it
// met was revoked before it could lock it; each retry needs another
// concurrent revoke, so more than a couple means something is wrong.
const upsertAttempts = 3

// Share shares templateID, which who must manage, with in.Grantee at
// in.Level in one transaction: the share row, its audit row and the
// grantee's notifications, and then, also in that transaction (to queue
// events). A share that would change nothing does nothing and returns a
// Change whose Changed is false.
func (s *Store) Share(ctx context.Context, who authn.Identity, templateID string, in ShareInput, then func(context.Context, pgx.Tx, Change) error) (Change, error) {
	var c Change
	err := db.InTx(ctx, s.Pool, func(tx pgx.Tx) error {
		c = Change{Actor: who.Subject}
		if _, err := access.Require(ctx, tx, who, templateID, access.Manage); err != nil {
			return err
		}
		n, err := readNames(ctx, tx, templateID, who.Subject, in.Grantee)
		if err != nil {
			return err
		}
		if err := checkGrantee(who, templateID, in.Grantee, n); err != nil {
			return err
		}
		in.Grantee.Name = *n.grantee
		sh, previous, err := upsert(ctx, tx, who, templateID, in)
		if err != nil {
			return err
		}
		c.Share = sh
		switch {
		case previous == "":
			c.Action = ActionCreated
		case previous == sh.PermissionLevel:
			return nil
		default:
			c.Action, c.Previous = ActionUpdated, previous
		}
		if err := record(ctx, tx, &c, n); err != nil {
			return err
		}
		return then(ctx, tx, c)
	})
	if err != nil {
		return Change{}, fmt.Errorf("share template %s with %s %s: %w", templateID, in.Grantee.Type, in.Grantee.ID, err)
	}
	return c, nil
}

// checkGrantee refuses shares that cannot mean anything: with oneself (the
// caller already holds the access), with the owner (who holds manage), and
// with a user or team that does not exist.
func checkGrantee(who authn.Identity, templateID string, g Grantee, n names) error {
	if g.Type == GranteeUser {
		switch g.ID {
		case who.Subject:
			return errs.E(errs.Invalid, "userId %q: you cannot share a template with yourself", validate.Quote(g.ID))
		case n.owner:
			return errs.E(errs.Invalid, "userId %q: the user owns template %q and already holds manage", validate.Quote(g.ID), templateID)
		}
	}
	if n.grantee == nil {
		return errs.E(errs.NotFound, "%s %q not found", g.Type, validate.Quote(g.ID))
	}
	return nil
}

// upsert creates the grantee's active share or changes its level. previous
// is the level before, empty when the share is new; equal to the new level,
// nothing was written.
func upsert(ctx context.Context, tx pgx.Tx, who authn.Identity, templateID string, in ShareInput) (sh Share, previous string, err error) {
	sh = Share{TemplateID: templateID, Grantee: in.Grantee, PermissionLevel: in.Level.String(), SharedBy: who.Subject}
	for range upsertAttempts {
		err = tx.QueryRow(ctx, insertShareSQL, templateID, who.Subject, in.userID(), in.teamID(), sh.PermissionLevel).
			Scan(&sh.ID, &sh.CreatedAt, &sh.UpdatedAt)
		if err == nil {
			return sh, "", nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return sh, "", err
		}
		err = tx.QueryRow(ctx, lockGranteeShareSQL, templateID, in.userID(), in.teamID()).
			Scan(&sh.ID, &previous, &sh.SharedBy, &sh.CreatedAt, &sh.UpdatedAt)
		if errors.Is(err, pgx.ErrNoRows) {
			continue // revoked since the insert met it: insert again
		}
		if err != nil {
			return sh, "", err
		}
		if previous == sh.PermissionLevel {
			return sh, previous, nil
		}
		if err := tx.QueryRow(ctx, updateLevelSQL, sh.ID, sh.PermissionLevel).Scan(&sh.UpdatedAt); err != nil {
			return sh, "", err
		}
		return sh, previous, nil
	}
	return sh, "", errs.E(errs.Conflict, "the share changed concurrently %d times; try again", upsertAttempts)
}

// The statements of a revoke. The share is locked first, so of two
// concurrent revokes the second finds it revoked.
const (
	lockShareSQL = `
		select shared_with_team_id is null, coalesce(shared_with_user_id, shared_with_team_id),
			permission_level, shared_by, created_at
		from template_shares
		where id = $1 and template_id = $2 and revoked_at is null
		for update`
	revokeShareSQL = `
		update template_shares set revoked_at = now(), revoked_by = $2, updated_at = now()
		where id = $1
		returning revoked_at, updated_at`
)

// Revoke revokes share shareID of templateID in one transaction: the row
// keeps its history (revoked_at, revoked_by), and its audit row and the
// grantee's notifications are written, and then runs in that transaction.
// Who must manage the template or have made the share. A caller with no
// access learns nothing, not even whether the share exists.
func (s *Store) Revoke(ctx context.Context, who authn.Identity, templateID string, shareID int64, then func(context.Context, pgx.Tx, Change) error) (Change, error) {
	var c Change
	err := db.InTx(ctx, s.Pool, func(tx pgx.Tx) error {
		c = Change{Action: ActionRevoked, Actor: who.Subject}
		_, denied := access.Require(ctx, tx, who, templateID, access.Manage)
		if k := errs.KindOf(denied); denied != nil && k != errs.Forbidden && k != errs.NotFound {
			return denied
		}
		sh := Share{ID: shareID, TemplateID: templateID}
		var isUser bool
		err := tx.QueryRow(ctx, lockShareSQL, shareID, templateID).
			Scan(&isUser, &sh.Grantee.ID, &sh.PermissionLevel, &sh.SharedBy, &sh.CreatedAt)
		found := err == nil
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		mine := found && sh.SharedBy == who.Subject
		// A caller who cannot see the template gets its not-found; one who
		// sees it but may not manage it learns whether the share exists.
		if denied != nil && !mine && (errs.KindOf(denied) != errs.Forbidden || found) {
			return denied
		}
		if !found {
			return errs.E(errs.NotFound, "share %d of template %q not found", shareID, templateID)
		}
		sh.Grantee.Type = granteeType(isUser)
		n, err := readNames(ctx, tx, templateID, who.Subject, sh.Grantee)
		if err != nil {
			return err
		}
		if n.grantee != nil {
			sh.Grantee.Name = *n.grantee
		} else {
			sh.Grantee.Name = sh.Grantee.ID
		}
		revokedAt := time.Time{}
		if err := tx.QueryRow(ctx, revokeShareSQL, shareID, who.Subject).Scan(&revokedAt, &sh.UpdatedAt); err != nil {
			return err
		}
		sh.RevokedAt, sh.RevokedBy = &revokedAt, who.Subject
		c.Share, c.Previous = sh, sh.PermissionLevel
		if err := record(ctx, tx, &c, n); err != nil {
			return err
		}
		return then(ctx, tx, c)
	})
	if err != nil {
		return Change{}, fmt.Errorf("revoke share %d of template %s: %w", shareID, templateID, err)
	}
	return c, nil
}
