package function

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/shared/errs"
)

// User is StreamSpace's users row in the JSON shape of its models.User,
// which its login answers carry and its UI keeps.
type User struct {
	ID        string     `json:"id"`
	Username  string     `json:"username"`
	Email     string     `json:"email"`
	FullName  string     `json:"fullName"`
	Role      string     `json:"role"`
	Provider  string     `json:"provider"`
	Active    bool       `json:"active"`
	CreatedAt time.Time  `json:"createdAt"`
	UpdatedAt time.Time  `json:"updatedAt"`
	LastLogin *time.Time `json:"lastLogin,omitempty"`
	// Groups are the ids of the user's groups, as the token's groups claim.
	Groups []string `json:"groups,omitempty"`
}

// Login is what a committed login produced.
type Login struct {
	User    User
	Created bool
	// Skipped are the token's groups not synced, each with the reason
	// (already logged).
	Skipped int
}

// consumeStateSQL records that a login's state was used; no row back means
// it was used before. Expired rows go on the prune PingSource.
const consumeStateSQL = `
insert into auth_login_states (state_hash, expires_at) values ($1, $2)
on conflict (state_hash) do nothing
returning true`

// consumeState marks state used, once: a replay returns an error.
func consumeState(ctx context.Context, tx pgx.Tx, state string, expires time.Time) error {
	sum := sha256.Sum256([]byte(state))
	var first bool
	err := tx.QueryRow(ctx, consumeStateSQL, sum[:], expires).Scan(&first)
	if errors.Is(err, pgx.ErrNoRows) {
		return errs.E(errs.Unauthenticated, "state was already used; start the login again")
	}
	return err
}

// pruneStatesSQL deletes used states past their login's lifetime.
const pruneStatesSQL = `delete from auth_login_states where expires_at < now()`

// identitySQL finds the user of (provider, sub), locking the identity so
// two concurrent first logins of one person make one user.
const identitySQL = `
select user_id from auth_identities where provider = $1 and subject = $2 for update`

// lockIdentitySQL serialises the first login of (provider, sub): there is
// no row to lock yet, so a transaction-scoped advisory lock on its hash
// stands in (PgBouncer's transaction mode keeps it, docs/data.md).
const lockIdentitySQL = `select pg_advisory_xact_lock(hashtextextended($1, 7))`

// userSQL reads a StreamSpace user, locked for the login's update: "for no
// key update", the lock that update takes itself (it changes no key), so
// StreamSpace's inserts that reference the user meanwhile (a session, a
// group membership: their foreign-key checks take a key-share lock) are not
// held up.
const userSQL = `
select id, username, email, coalesce(full_name, ''), coalesce(role, 'user'),
       coalesce(provider, 'local'), coalesce(active, true),
       coalesce(created_at, now()), coalesce(updated_at, now()), last_login
from users where id = $1 for no key update`

// emailOwnerSQL finds the user holding an email (StreamSpace keeps emails
// unique, case as written).
const emailOwnerSQL = `select id from users where lower(email) = lower($1) limit 1`

// insertUserSQL creates an OIDC user; a taken id, username or email
// inserts nothing, and the caller tries the next username.
const insertUserSQL = `
insert into users (id, username, email, full_name, role, provider, active, created_at, updated_at, last_login)
values ($1, $2, $3, nullif($4, ''), $5, 'oidc', true, now(), now(), now())
on conflict do nothing
returning created_at, updated_at, last_login`

// updateUserSQL refreshes a returning user's details: the email unless
// another user holds it, the name when the token has one, the role only
// when the provider has role rules ($4 empty otherwise).
const updateUserSQL = `
update users set
    email = case when not exists (select 1 from users o where lower(o.email) = lower($2) and o.id <> $1) then $2 else email end,
    full_name = coalesce(nullif($3, ''), full_name),
    role = coalesce(nullif($4, ''), role),
    updated_at = now(),
    last_login = now()
where id = $1
returning email, coalesce(full_name, ''), coalesce(role, 'user'), updated_at, last_login`

// insertIdentitySQL records (provider, sub) for a user, replacing a row
// whose user StreamSpace deleted.
const insertIdentitySQL = `
insert into auth_identities (provider, subject, user_id, email) values ($1, $2, $3, $4)
on conflict (provider, subject) do update set user_id = excluded.user_id, email = excluded.email, last_login = now()`

// touchIdentitySQL records a returning login.
const touchIdentitySQL = `
update auth_identities set email = $3, last_login = now() where provider = $1 and subject = $2`

// providerGroupsSQL reads the StreamSpace groups a provider created for
// the given IdP group names.
const providerGroupsSQL = `
select pg.idp_group, pg.group_id from auth_provider_groups pg
join groups g on g.id = pg.group_id
where pg.provider = $1 and pg.idp_group = any($2)`

// insertGroupSQL creates a provider's group as a StreamSpace team; a name
// already taken (a local group) inserts nothing.
const insertGroupSQL = `
insert into groups (id, name, display_name, description, type, created_at, updated_at)
values ($1, $2, $3, $4, 'team', now(), now())
on conflict do nothing
returning id`

// recordGroupSQL records that the provider created a group, replacing a
// record whose group StreamSpace deleted.
const recordGroupSQL = `
insert into auth_provider_groups (group_id, provider, idp_group) values ($1, $2, $3)
on conflict (provider, idp_group) do update set group_id = excluded.group_id`

// providerMembershipsSQL lists the user's memberships in groups this
// provider created: the only memberships a sync may remove.
const providerMembershipsSQL = `
select m.group_id from group_memberships m
join auth_provider_groups pg on pg.group_id = m.group_id
where m.user_id = $1 and pg.provider = $2`

// addMembershipsSQL adds the user to groups ($2 ids, $3 new membership ids).
const addMembershipsSQL = `
insert into group_memberships (id, user_id, group_id, role, created_at)
select mid, $1, gid, 'member', now() from unnest($2::text[], $3::text[]) as t(gid, mid)
on conflict (user_id, group_id) do nothing`

// removeMembershipsSQL removes the user from provider groups ($2).
const removeMembershipsSQL = `delete from group_memberships where user_id = $1 and group_id = any($2)`

// userGroupsSQL is every group id of the user, as StreamSpace's
// GetUserGroups puts them in a token.
const userGroupsSQL = `select group_id from group_memberships where user_id = $1 and group_id is not null order by group_id`

// auditSQL writes StreamSpace's audit_log row of a login.
const auditSQL = `
insert into audit_log (user_id, action, resource_type, resource_id, changes, timestamp, ip_address)
values ($1, 'user.login', 'user', $1, $2, now(), nullif($3, ''))`

// maxUsernameTries bounds the suffixes tried for a taken username.
const maxUsernameTries = 20

// loginUser finds or creates the StreamSpace user of m at provider, syncs
// its groups when sync is set, and writes the audit row, all in tx.
func loginUser(ctx context.Context, tx pgx.Tx, log *slog.Logger, provider string, sync bool, m Mapped, ip string) (Login, error) {
	if _, err := tx.Exec(ctx, lockIdentitySQL, provider+" "+m.Subject); err != nil {
		return Login{}, err
	}
	var res Login
	var userID string
	err := tx.QueryRow(ctx, identitySQL, provider, m.Subject).Scan(&userID)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return Login{}, err
	}
	if userID != "" {
		u, err := readUser(ctx, tx, userID)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			userID = "" // StreamSpace deleted the user: a new one is made
		case err != nil:
			return Login{}, err
		default:
			if !u.Active {
				return Login{}, refuse(RefusedInactive)
			}
			err := tx.QueryRow(ctx, updateUserSQL, u.ID, m.Email, m.FullName, string(m.Role)).
				Scan(&u.Email, &u.FullName, &u.Role, &u.UpdatedAt, &u.LastLogin)
			if err != nil {
				return Login{}, err
			}
			if _, err := tx.Exec(ctx, touchIdentitySQL, provider, m.Subject, m.Email); err != nil {
				return Login{}, err
			}
			res.User = u
		}
	}
	if userID == "" {
		u, err := createUser(ctx, tx, m)
		if err != nil {
			return Login{}, err
		}
		if _, err := tx.Exec(ctx, insertIdentitySQL, provider, m.Subject, u.ID, m.Email); err != nil {
			return Login{}, err
		}
		res.User, res.Created = u, true
	}
	if sync {
		skipped, err := syncGroups(ctx, tx, log, provider, res.User.ID, m.Groups)
		if err != nil {
			return Login{}, err
		}
		res.Skipped = skipped
	}
	if res.User.Groups, err = userGroups(ctx, tx, res.User.ID); err != nil {
		return Login{}, err
	}
	changes, err := json.Marshal(map[string]any{"method": "oidc", "provider": provider, "created": res.Created, "role": res.User.Role})
	if err != nil {
		return Login{}, err
	}
	if _, err := tx.Exec(ctx, auditSQL, res.User.ID, changes, ip); err != nil {
		return Login{}, err
	}
	return res, nil
}

func readUser(ctx context.Context, tx pgx.Tx, id string) (User, error) {
	var u User
	err := tx.QueryRow(ctx, userSQL, id).Scan(&u.ID, &u.Username, &u.Email, &u.FullName, &u.Role,
		&u.Provider, &u.Active, &u.CreatedAt, &u.UpdatedAt, &u.LastLogin)
	return u, err
}

// createUser inserts a new OIDC user. The email must be free: an account
// that holds it is never taken over. A taken username gets a suffix.
func createUser(ctx context.Context, tx pgx.Tx, m Mapped) (User, error) {
	var owner string
	err := tx.QueryRow(ctx, emailOwnerSQL, m.Email).Scan(&owner)
	if err == nil {
		return User{}, refuse(RefusedEmailTaken)
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return User{}, err
	}
	role := m.Role
	if role == "" {
		role = RoleUser
	}
	u := User{ID: uuid.NewString(), Email: m.Email, FullName: m.FullName, Role: string(role), Provider: "oidc", Active: true}
	for i := range maxUsernameTries {
		u.Username = m.Username
		if i > 0 {
			suffix := "-" + strconv.Itoa(i+1)
			u.Username = clip(m.Username, 64-len(suffix)) + suffix
		}
		err := tx.QueryRow(ctx, insertUserSQL, u.ID, u.Username, u.Email, u.FullName, u.Role).
			Scan(&u.CreatedAt, &u.UpdatedAt, &u.LastLogin)
		if err == nil {
			return u, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return User{}, err
		}
	}
	return User{}, errs.E(errs.Conflict, "no free username for this user after %d tries", maxUsernameTries)
}

// syncGroups makes the user's memberships in this provider's groups match
// the token's groups: missing groups are created (as "provider/group"
// teams), memberships added and removed. A name a local group already
// holds is skipped with a logged reason, so the user never joins it.
func syncGroups(ctx context.Context, tx pgx.Tx, log *slog.Logger, provider, userID string, groups []string) (int, error) {
	known := make(map[string]string, len(groups))
	rows, err := tx.Query(ctx, providerGroupsSQL, provider, groups)
	if err != nil {
		return 0, err
	}
	for rows.Next() {
		var name, id string
		if err := rows.Scan(&name, &id); err != nil {
			rows.Close()
			return 0, err
		}
		known[name] = id
	}
	if err := rows.Err(); err != nil {
		return 0, err
	}
	skipped := 0
	want := make([]string, 0, len(groups))
	for _, g := range groups {
		id, ok := known[g]
		if !ok {
			id = uuid.NewString()
			desc := fmt.Sprintf("Synced from the %s identity provider", provider)
			err := tx.QueryRow(ctx, insertGroupSQL, id, groupName(provider, g), g, desc).Scan(&id)
			if errors.Is(err, pgx.ErrNoRows) {
				log.WarnContext(ctx, "identity provider group not synced: a StreamSpace group already has its name",
					"provider", provider, "group", groupName(provider, g))
				skipped++
				continue
			}
			if err != nil {
				return 0, err
			}
			if _, err := tx.Exec(ctx, recordGroupSQL, id, provider, g); err != nil {
				return 0, err
			}
		}
		want = append(want, id)
	}
	rows, err = tx.Query(ctx, providerMembershipsSQL, userID, provider)
	if err != nil {
		return 0, err
	}
	have, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, err
	}
	var add, ids, remove []string
	for _, id := range want {
		if !slices.Contains(have, id) {
			add = append(add, id)
			ids = append(ids, uuid.NewString())
		}
	}
	for _, id := range have {
		if !slices.Contains(want, id) {
			remove = append(remove, id)
		}
	}
	if len(add) > 0 {
		if _, err := tx.Exec(ctx, addMembershipsSQL, userID, add, ids); err != nil {
			return 0, err
		}
	}
	if len(remove) > 0 {
		if _, err := tx.Exec(ctx, removeMembershipsSQL, userID, remove); err != nil {
			return 0, err
		}
	}
	return skipped, nil
}

func userGroups(ctx context.Context, tx pgx.Tx, userID string) ([]string, error) {
	rows, err := tx.Query(ctx, userGroupsSQL, userID)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
