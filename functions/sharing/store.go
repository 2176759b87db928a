package function

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/shared/access"
	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/errs"
)

// The store works on StreamSpace's own tables (docs/data.md):
// template_shares, with one row per grantee and template for good (its
// unique constraints are not partial, so a revoked share is made active
// again rather than shared anew); groups and group_memberships, which are
// teams; audit_log and notifications. Every function here takes the
// transaction of the unit of work it is part of.

// Share is one template_shares row, in the JSON shape StreamSpace's API
// gives it. The grantee is a user or a team, never both; the name is the
// user's username or the group's name, as StreamSpace lists them.
type Share struct {
	ID                 string     `json:"id"`
	TemplateID         string     `json:"templateId"`
	SharedBy           string     `json:"sharedBy"`
	SharedWithUserID   *string    `json:"sharedWithUserId,omitempty"`
	SharedWithTeamID   *string    `json:"sharedWithTeamId,omitempty"`
	SharedWithUserName string     `json:"sharedWithUserName,omitempty"`
	SharedWithTeamName string     `json:"sharedWithTeamName,omitempty"`
	PermissionLevel    string     `json:"permissionLevel"`
	CreatedAt          time.Time  `json:"createdAt"`
	RevokedAt          *time.Time `json:"revokedAt,omitempty"`
}

// grantee is who sh is for.
func (sh Share) grantee() Grantee {
	if sh.SharedWithTeamID != nil {
		return Grantee{Type: GranteeTeam, ID: *sh.SharedWithTeamID}
	}
	return Grantee{Type: GranteeUser, ID: deref(sh.SharedWithUserID)}
}

// setGrantee fills sh's grantee columns and list name.
func (sh *Share) setGrantee(g Grantee, listName string) {
	sh.SharedWithUserID, sh.SharedWithTeamID = g.idIf(GranteeUser), g.idIf(GranteeTeam)
	sh.SharedWithUserName, sh.SharedWithTeamName = "", ""
	if g.Type == GranteeTeam {
		sh.SharedWithTeamName = listName
	} else {
		sh.SharedWithUserName = listName
	}
}

// querier is what listing needs: a pool or a transaction.
type querier interface {
	access.Querier
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// listSQL is one page of a template's active shares, newest first, after
// the position ($2, $3) when set. It reads one row past the page to learn
// whether there is a next one. The page is chosen from template_shares alone
// (idx_template_shares_active finds a template's active shares) and only its
// rows are then named, one index lookup each: joined before the limit, a
// generic plan sized for the average template hash-joined every user for a
// template with few shares. StreamSpace leaves created_at nullable, so a
// null sorts as the epoch rather than breaking the order.
// $1 template, $2 created_at, $3 id, $4 rows.
const listSQL = `
	select p.id, p.shared_by, p.shared_with_user_id, p.shared_with_team_id,
		coalesce((select u.username from users u where u.id = p.shared_with_user_id), ''),
		coalesce((select g.name from groups g where g.id = p.shared_with_team_id), ''),
		p.permission_level, p.created_at
	from (
		select s.id, coalesce(s.shared_by, '') as shared_by, s.shared_with_user_id, s.shared_with_team_id,
			s.permission_level, coalesce(s.created_at, 'epoch') as created_at
		from template_shares s
		where s.template_id = $1 and s.revoked_at is null
		  and ($2::timestamp is null or (coalesce(s.created_at, 'epoch'), s.id) < ($2::timestamp, $3::text))
		order by coalesce(s.created_at, 'epoch') desc, s.id desc
		limit $4
	) as p
	order by p.created_at desc, p.id desc`

// listShares returns a page of templateID's active shares and, when more
// follow, the position the next page starts after.
func listShares(ctx context.Context, q querier, templateID string, lq ListQuery) (page []Share, next *position, err error) {
	var after time.Time
	var afterID string
	var afterAt *time.Time
	if lq.After != nil {
		after, afterID = lq.After.CreatedAt, lq.After.ID
		afterAt = &after
	}
	rows, err := q.Query(ctx, listSQL, templateID, afterAt, afterID, lq.Limit+1)
	if err != nil {
		return nil, nil, fmt.Errorf("list shares of %q: %w", templateID, db.Classify(err))
	}
	defer rows.Close()
	page = make([]Share, 0, min(lq.Limit+1, 64))
	for rows.Next() {
		sh := Share{TemplateID: templateID}
		if err := rows.Scan(&sh.ID, &sh.SharedBy, &sh.SharedWithUserID, &sh.SharedWithTeamID,
			&sh.SharedWithUserName, &sh.SharedWithTeamName, &sh.PermissionLevel, &sh.CreatedAt); err != nil {
			return nil, nil, fmt.Errorf("list shares of %q: %w", templateID, err)
		}
		page = append(page, sh)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("list shares of %q: %w", templateID, db.Classify(err))
	}
	if len(page) > lq.Limit {
		page = page[:lq.Limit]
		last := page[len(page)-1]
		next = &position{CreatedAt: last.CreatedAt, ID: last.ID}
	}
	return page, next, nil
}

// namesSQL reads, in one statement, what the checks and messages of a
// change need: the template's owner and name, the actor's display name, the
// grantee's display name and list name (both null when the grantee does not
// exist), and whether the actor is a member of the grantee team. A user's
// display name is StreamSpace's full_name, else the username; a group's is
// its display_name, else its name. $1 template, $2 actor, $3 user grantee,
// $4 team grantee.
const namesSQL = `
	select t.user_id, t.name,
		coalesce((select coalesce(nullif(u.full_name, ''), u.username) from users u where u.id = $2), $2),
		case when $3::text is not null
			then (select coalesce(nullif(u.full_name, ''), u.username) from users u where u.id = $3)
			else (select coalesce(nullif(g.display_name, ''), g.name) from groups g where g.id = $4)
		end,
		case when $3::text is not null
			then (select u.username from users u where u.id = $3)
			else (select g.name from groups g where g.id = $4)
		end,
		$4::text is not null and exists (
			select 1 from group_memberships m where m.group_id = $4 and m.user_id = $2)
	from user_session_templates t
	where t.id = $1`

// names is what namesSQL reads.
type names struct {
	owner            *string
	template, actor  string
	grantee, listing *string
	member           bool
}

// granteeName is the grantee's display name, or its id when it no longer
// exists.
func (n names) granteeName(g Grantee) string {
	if n.grantee != nil {
		return *n.grantee
	}
	return g.ID
}

func readNames(ctx context.Context, tx pgx.Tx, templateID, actor string, g Grantee) (names, error) {
	var n names
	err := tx.QueryRow(ctx, namesSQL, templateID, actor, g.idIf(GranteeUser), g.idIf(GranteeTeam)).
		Scan(&n.owner, &n.template, &n.actor, &n.grantee, &n.listing, &n.member)
	if errors.Is(err, pgx.ErrNoRows) {
		// The access check in the same transaction saw the template, so
		// it was deleted since; to the caller it no longer exists.
		return n, errs.E(errs.NotFound, "template %q not found", templateID)
	}
	if err != nil {
		return n, fmt.Errorf("read names: %w", err)
	}
	return n, nil
}

// The statements of a share. template_shares holds one row per template and
// grantee for good (UNIQUE(template_id, shared_with_user_id) and
// UNIQUE(template_id, shared_with_team_id), not partial), so a share is an
// insert that does nothing on conflict; a conflict means the row exists,
// active or revoked, and it is then locked and changed. Concurrent shares to
// one grantee thus wait on the unique index or the row lock and apply one
// after another, each seeing what the previous one left.
const (
	insertShareSQL = `
		insert into template_shares (id, template_id, shared_by, shared_with_user_id, shared_with_team_id, permission_level)
		values (gen_random_uuid()::text, $1, $2, $3, $4, $5)
		on conflict do nothing
		returning id, coalesce(created_at, 'epoch')`
	lockGranteeShareSQL = `
		select id, permission_level, coalesce(shared_by, ''), coalesce(created_at, 'epoch'), revoked_at is not null
		from template_shares
		where template_id = $1 and (shared_with_user_id = $2 or shared_with_team_id = $3)
		for update`
	// reactivateSQL makes a revoked share active again, as a new share
	// made now by the actor: created_at restarts, since the row can hold
	// only its current life (audit_log holds the earlier ones).
	reactivateSQL = `
		update template_shares
		set revoked_at = null, permission_level = $2, shared_by = $3, created_at = localtimestamp
		where id = $1
		returning created_at`
	// changeLevelSQL sets the level and makes the actor the share's
	// sharer: whoever last decided a share's level answers for it, and
	// whoever made it before holds no right over it any more.
	changeLevelSQL = `
		update template_shares set permission_level = $2, shared_by = $3
		where id = $1`
)

// upsertAttempts bounds how often a share retries when the row it met was
// deleted before it could lock it (StreamSpace cascades a user's or a
// group's deletion to its shares); each retry needs another concurrent
// deletion, so more than a couple means something is wrong.
const upsertAttempts = 3

// upsertShare creates the grantee's share, makes a revoked one active
// again, or changes its level. previous is the level before a level change.
// An unchanged share was not written.
func upsertShare(ctx context.Context, tx pgx.Tx, actor, templateID string, in ShareInput) (sh Share, outcome Outcome, previous string, err error) {
	sh = Share{TemplateID: templateID, SharedBy: actor, PermissionLevel: in.Level.String()}
	userID, teamID := in.Grantee.idIf(GranteeUser), in.Grantee.idIf(GranteeTeam)
	for range upsertAttempts {
		err = tx.QueryRow(ctx, insertShareSQL, templateID, actor, userID, teamID, sh.PermissionLevel).Scan(&sh.ID, &sh.CreatedAt)
		if err == nil {
			return sh, Created, "", nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return sh, "", "", fmt.Errorf("insert share: %w", err)
		}
		var revoked bool
		var sharedBy string
		err = tx.QueryRow(ctx, lockGranteeShareSQL, templateID, userID, teamID).Scan(&sh.ID, &previous, &sharedBy, &sh.CreatedAt, &revoked)
		if errors.Is(err, pgx.ErrNoRows) {
			continue // deleted since the insert met it: insert again
		}
		if err != nil {
			return sh, "", "", fmt.Errorf("lock share: %w", err)
		}
		switch {
		case revoked:
			if err := tx.QueryRow(ctx, reactivateSQL, sh.ID, sh.PermissionLevel, actor).Scan(&sh.CreatedAt); err != nil {
				return sh, "", "", fmt.Errorf("reactivate share %s: %w", sh.ID, err)
			}
			return sh, Created, "", nil
		case previous == sh.PermissionLevel:
			// Unchanged: the row and its sharer stay as they were.
			sh.SharedBy = sharedBy
			return sh, Unchanged, previous, nil
		default:
			if _, err := tx.Exec(ctx, changeLevelSQL, sh.ID, sh.PermissionLevel, actor); err != nil {
				return sh, "", "", fmt.Errorf("change level of share %s: %w", sh.ID, err)
			}
			return sh, Updated, previous, nil
		}
	}
	return sh, "", "", errs.E(errs.Conflict, "the share changed concurrently %d times; try again", upsertAttempts)
}

// The statements of a revoke. The share is locked first, so of two
// concurrent revokes the second finds it revoked.
const (
	lockShareSQL = `
		select coalesce(shared_by, ''), shared_with_user_id, shared_with_team_id,
			permission_level, coalesce(created_at, 'epoch')
		from template_shares
		where id = $1 and template_id = $2 and revoked_at is null
		for update`
	revokeShareSQL = `
		update template_shares set revoked_at = localtimestamp
		where id = $1
		returning revoked_at`
)

// lockShare locks share shareID of templateID if it is active; found is
// false when there is no such active share.
func lockShare(ctx context.Context, tx pgx.Tx, templateID, shareID string) (sh Share, found bool, err error) {
	sh = Share{ID: shareID, TemplateID: templateID}
	err = tx.QueryRow(ctx, lockShareSQL, shareID, templateID).
		Scan(&sh.SharedBy, &sh.SharedWithUserID, &sh.SharedWithTeamID, &sh.PermissionLevel, &sh.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return sh, false, nil
	}
	if err != nil {
		return sh, false, fmt.Errorf("lock share %s: %w", shareID, err)
	}
	return sh, true, nil
}

// revokeShare marks share id revoked now and returns when.
func revokeShare(ctx context.Context, tx pgx.Tx, id string) (time.Time, error) {
	var at time.Time
	if err := tx.QueryRow(ctx, revokeShareSQL, id).Scan(&at); err != nil {
		return at, fmt.Errorf("revoke share %s: %w", id, err)
	}
	return at, nil
}

// auditSQL writes a share change's audit row in StreamSpace's audit_log.
// $1 actor, $2 action, $3 resource type (access.ResourceType), $4 template,
// $5 changes, $6 client address.
const auditSQL = `
	insert into audit_log (user_id, action, resource_type, resource_id, changes, ip_address)
	values ($1, $2, $3, $4, $5, $6)`

// auditChanges is audit_log.changes of a share change. A level is null
// where there was none: OldLevel of a new share, NewLevel of a revoked one.
type auditChanges struct {
	ShareID     string      `json:"shareId"`
	GranteeType GranteeType `json:"granteeType"`
	GranteeID   string      `json:"granteeId"`
	OldLevel    *string     `json:"oldLevel"`
	NewLevel    *string     `json:"newLevel"`
	SharedBy    string      `json:"sharedBy"`
}

// writeAudit writes c's audit row, from address ip (nil when unknown).
func writeAudit(ctx context.Context, tx pgx.Tx, c *Change, ip *string) error {
	g := c.Share.grantee()
	d := auditChanges{ShareID: c.Share.ID, GranteeType: g.Type, GranteeID: g.ID, SharedBy: c.Share.SharedBy}
	if c.Outcome != Created {
		d.OldLevel = &c.Previous
	}
	if c.Outcome != Revoked {
		d.NewLevel = &c.Share.PermissionLevel
	}
	changes, err := json.Marshal(d)
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, auditSQL, c.Actor, c.Outcome.auditAction(), access.ResourceType, c.Share.TemplateID, changes, ip); err != nil {
		return fmt.Errorf("audit %s: %w", c.Outcome.auditAction(), err)
	}
	return nil
}

// notifySQL notifies, in one statement, the grantee user or every member
// of the grantee team at this moment, each once. The actor is left out:
// they made the change. $1 user, $2 team, $3 actor, $4 type, $5 title,
// $6 message, $7 data, $8 action_url, $9 action_text.
const notifySQL = `
	insert into notifications (id, user_id, type, title, message, data, priority, action_url, action_text)
	select gen_random_uuid()::text, r.user_id, $4, $5, $6, $7, 'normal', $8, $9
	from (
		select $1::text as user_id where $1::text is not null
		union
		select m.user_id from group_memberships m where m.group_id = $2::text and m.user_id is not null
	) as r
	where r.user_id <> $3
	order by r.user_id
	returning id, user_id`

// Notification is one notifications row created for a grantee.
type Notification struct {
	ID      string
	UserID  string
	Kind    Kind
	Title   string
	Message string
}

// notificationData is notifications.data: what a client needs to link the
// notification to the template and the share.
type notificationData struct {
	TemplateID      string `json:"templateId"`
	ShareID         string `json:"shareId"`
	Actor           string `json:"actor"`
	PermissionLevel string `json:"permissionLevel,omitempty"`
	PreviousLevel   string `json:"previousLevel,omitempty"`
	TeamID          string `json:"teamId,omitempty"`
}

// writeNotifications stores the notifications of c, worded by note, and
// adds them to c.
func writeNotifications(ctx context.Context, tx pgx.Tx, c *Change, note notice) error {
	g := c.Share.grantee()
	data := notificationData{TemplateID: c.Share.TemplateID, ShareID: c.Share.ID, Actor: c.Actor, PreviousLevel: c.Previous}
	if c.Outcome != Revoked {
		data.PermissionLevel = c.Share.PermissionLevel
	}
	if g.Type == GranteeTeam {
		data.TeamID = g.ID
	}
	raw, err := json.Marshal(data)
	if err != nil {
		return err
	}
	rows, err := tx.Query(ctx, notifySQL, g.idIf(GranteeUser), g.idIf(GranteeTeam), c.Actor,
		note.Kind, note.Title, note.Message, raw, note.ActionURL, note.ActionText)
	if err != nil {
		return fmt.Errorf("notify %s %s: %w", g.Type, g.ID, err)
	}
	defer rows.Close()
	for rows.Next() {
		n := Notification{Kind: note.Kind, Title: note.Title, Message: note.Message}
		if err := rows.Scan(&n.ID, &n.UserID); err != nil {
			return fmt.Errorf("notify %s %s: %w", g.Type, g.ID, err)
		}
		c.Notifications = append(c.Notifications, n)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("notify %s %s: %w", g.Type, g.ID, err)
	}
	return nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
