package access_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/access"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
	"github.com/streamspace-dev/functions/shared/errs"
)

func exec(tb testing.TB, pool *pgxpool.Pool, sql string, args ...any) {
	tb.Helper()
	_, err := pool.Exec(context.Background(), sql, args...)
	require.NoError(tb, err, sql)
}

func user(id string) authn.Identity { return authn.Identity{Subject: id, Role: authn.User} }

// seedLevels builds, on StreamSpace's tables, one template t1 owned by
// owner and shared in every way a level can reach a caller: directly, through
// a group (StreamSpace's teams), through two groups at once, and by a share
// that was revoked. t2 has no owner, as a row StreamSpace leaves behind.
func seedLevels(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	exec(t, pool, `insert into users (id, username, email) select u, u, u || '@example.com'
		from unnest(array['owner', 'reader', 'member', 'both', 'stranger', 'revoked', 'oddlevel']) u`)
	exec(t, pool, `insert into groups (id, name) values ('devs', 'devs'), ('ops', 'ops'), ('qa', 'qa')`)
	exec(t, pool, `insert into group_memberships (id, user_id, group_id) values
		('m1', 'member', 'devs'), ('m2', 'both', 'devs'), ('m3', 'both', 'ops'), ('m4', 'oddlevel', 'qa')`)
	exec(t, pool, `insert into user_session_templates (id, user_id, name, base_template) values
		('t1', 'owner', 'T1', 'firefox'), ('t2', null, 'T2', 'firefox')`)
	exec(t, pool, `insert into template_shares (id, template_id, shared_by, shared_with_user_id, shared_with_team_id, permission_level, revoked_at) values
		('s1', 't1', 'owner', 'reader', null, 'read', null),
		('s2', 't1', 'owner', 'both', null, 'read', null),
		('s3', 't1', 'owner', null, 'devs', 'write', null),
		('s4', 't1', 'owner', null, 'ops', 'manage', null),
		('s5', 't1', 'owner', 'revoked', null, 'manage', now()),
		('s6', 't1', 'owner', null, 'qa', 'owner', null)`)
}

func TestEffective(t *testing.T) {
	pool := dbtest.New(t)
	seedLevels(t, pool)
	ctx := context.Background()

	tests := []struct {
		name     string
		who      authn.Identity
		template string
		want     access.Level
		wantErr  errs.Kind
	}{
		{name: "owner manages", who: user("owner"), template: "t1", want: access.Manage},
		{name: "direct share", who: user("reader"), template: "t1", want: access.Read},
		{name: "share to a group the caller is in", who: user("member"), template: "t1", want: access.Write},
		{name: "highest of a user share and two groups", who: user("both"), template: "t1", want: access.Manage},
		{name: "no share at all", who: user("stranger"), template: "t1", want: access.None},
		{name: "a revoked share gives nothing", who: user("revoked"), template: "t1", want: access.None},
		{name: "a level StreamSpace does not define gives nothing", who: user("oddlevel"), template: "t1", want: access.None},
		{name: "admins manage everything", who: authn.Identity{Subject: "admin", Role: authn.Admin}, template: "t1", want: access.Manage},
		{name: "template without owner", who: user("owner"), template: "t2", want: access.None},
		{name: "admin on a template without owner", who: authn.Identity{Subject: "admin", Role: authn.Admin}, template: "t2", want: access.Manage},
		{name: "missing template", who: user("owner"), template: "missing", wantErr: errs.NotFound},
		{name: "missing template for an admin", who: authn.Identity{Subject: "admin", Role: authn.Admin}, template: "missing", wantErr: errs.NotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := access.Effective(ctx, pool, tc.who, tc.template)
			if tc.wantErr != "" {
				assert.Equal(t, tc.wantErr, errs.KindOf(err), "error %v", err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestRequire(t *testing.T) {
	pool := dbtest.New(t)
	seedLevels(t, pool)
	ctx := context.Background()

	tests := []struct {
		name     string
		who      string
		template string
		need     access.Level
		want     access.Level
		wantErr  errs.Kind
		wantMsg  string
	}{
		{name: "enough", who: "member", template: "t1", need: access.Write, want: access.Write},
		{name: "more than enough", who: "owner", template: "t1", need: access.Read, want: access.Manage},
		// Never forbidden for a caller with no access, so ids cannot be probed.
		{name: "stranger", who: "stranger", template: "t1", need: access.Read, wantErr: errs.NotFound, wantMsg: `template "t1" not found`},
		{name: "visible but not enough", who: "reader", template: "t1", need: access.Write, want: access.Read, wantErr: errs.Forbidden, wantMsg: "write access required, you have read"},
		{name: "missing template", who: "owner", template: "missing", need: access.Read, wantErr: errs.NotFound, wantMsg: `template "missing" not found`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := access.Require(ctx, pool, user(tc.who), tc.template, tc.need)
			assert.Equal(t, tc.want, got)
			if tc.wantErr == "" {
				assert.NoError(t, err)
				return
			}
			assert.Equal(t, tc.wantErr, errs.KindOf(err))
			assert.Contains(t, errs.Message(err), tc.wantMsg)
		})
	}
}

// TestMembershipChangesApplyAtOnce checks that what a group gives follows
// group_memberships as StreamSpace changes it: no cache, no copy.
func TestMembershipChangesApplyAtOnce(t *testing.T) {
	pool := dbtest.New(t)
	seedLevels(t, pool)
	ctx := context.Background()

	tests := []struct {
		name   string
		change string
		who    string
		want   access.Level
	}{
		{name: "leaving a group takes what it gave", change: `delete from group_memberships where id = 'm1'`, who: "member", want: access.None},
		{name: "joining a group gives what it has", change: `insert into group_memberships (id, user_id, group_id) values ('m9', 'stranger', 'ops')`, who: "stranger", want: access.Manage},
		{name: "deleting a group takes its shares", change: `delete from groups where id = 'ops'`, who: "both", want: access.Write},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			exec(t, pool, tc.change)
			got, err := access.Effective(ctx, pool, user(tc.who), "t1")
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestParseLevel(t *testing.T) {
	tests := []struct {
		in      string
		want    access.Level
		wantErr bool
	}{
		{in: "read", want: access.Read},
		{in: "write", want: access.Write},
		{in: "manage", want: access.Manage},
		{in: "", wantErr: true},
		{in: "none", wantErr: true},
		{in: "READ", wantErr: true},
		{in: "admin", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%q", tc.in), func(t *testing.T) {
			got, err := access.ParseLevel(tc.in)
			if tc.wantErr {
				assert.Equal(t, errs.Invalid, errs.KindOf(err))
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
			assert.Equal(t, tc.in, got.String())
		})
	}
}

func TestLevelString(t *testing.T) {
	tests := []struct {
		level access.Level
		want  string
	}{
		{access.None, "none"},
		{access.Read, "read"},
		{access.Write, "write"},
		{access.Manage, "manage"},
		{access.Level(-1), "invalid"},
		{access.Level(4), "invalid"},
	}
	for _, tc := range tests {
		t.Run(tc.want, func(t *testing.T) {
			assert.Equal(t, tc.want, tc.level.String())
		})
	}
}

// BenchmarkRequire checks a member's level with 1,000 groups and 10,000
// shares in StreamSpace's tables.
func BenchmarkRequire(b *testing.B) {
	pool := dbtest.New(b)
	ctx := context.Background()
	exec(b, pool, `insert into users (id, username, email) select 'u' || g, 'u' || g, 'u' || g || '@example.com' from generate_series(1, 5000) g`)
	exec(b, pool, `insert into groups (id, name) select 'team' || g, 'team' || g from generate_series(1, 1000) g`)
	exec(b, pool, `insert into group_memberships (id, group_id, user_id) select 'm' || g, 'team' || (g % 1000 + 1), 'u' || g from generate_series(1, 5000) g`)
	exec(b, pool, `insert into group_memberships (id, group_id, user_id) select 'x' || g, 'team' || g, 'u42' from generate_series(1, 1000, 50) g on conflict do nothing`)
	exec(b, pool, `insert into user_session_templates (id, user_id, name, base_template) select 'tpl' || g, 'u' || (g % 5000 + 1), 'T', 'firefox' from generate_series(1, 2000) g`)
	exec(b, pool, `insert into template_shares (id, template_id, shared_by, shared_with_team_id, permission_level)
		select 'st' || g, 'tpl' || (g % 2000 + 1), 'u1', 'team' || ((g + g / 2000) % 1000 + 1), (array['read','write','manage'])[g % 3 + 1]
		from generate_series(1, 5000) g on conflict do nothing`)
	exec(b, pool, `insert into template_shares (id, template_id, shared_by, shared_with_user_id, permission_level)
		select 'su' || g, 'tpl' || (g % 2000 + 1), 'u1', 'u' || (g % 5000 + 1), 'read'
		from generate_series(1, 5000) g on conflict do nothing`)
	exec(b, pool, `analyze`)
	var shares, groups int
	require.NoError(b, pool.QueryRow(ctx, `select (select count(*) from template_shares), (select count(*) from groups)`).Scan(&shares, &groups))
	require.Equal(b, 10000, shares)
	require.Equal(b, 1001, groups) // and StreamSpace's all-users
	who := user("u42")
	i := 0
	for b.Loop() {
		i++
		_, err := access.Effective(ctx, pool, who, fmt.Sprintf("tpl%d", i%2000+1))
		if err != nil {
			b.Fatal(err)
		}
	}
}
