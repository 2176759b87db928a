package access_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/streamspace-dev/functions/shared/access"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
	"github.com/streamspace-dev/functions/shared/errs"
)

func exec(t testing.TB, pool *pgxpool.Pool, sql string, args ...any) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func user(id string) authn.Identity { return authn.Identity{Subject: id, Role: authn.User} }

func TestEffectiveLevel(t *testing.T) {
	pool := dbtest.New(t)
	ctx := context.Background()
	exec(t, pool, `insert into users (id, username) values ('owner','owner'), ('reader','reader'), ('member','member'), ('both','both'), ('stranger','stranger'), ('revoked','revoked')`)
	exec(t, pool, `insert into teams (id, name) values ('devs', 'devs'), ('ops', 'ops')`)
	exec(t, pool, `insert into team_members (team_id, user_id) values ('devs', 'member'), ('devs', 'both'), ('ops', 'both')`)
	exec(t, pool, `insert into user_session_templates (id, user_id, name) values ('t1', 'owner', 'T1')`)
	exec(t, pool, `insert into template_shares (template_id, shared_by, shared_with_user_id, permission_level) values
		('t1', 'owner', 'reader', 'read'), ('t1', 'owner', 'both', 'read')`)
	exec(t, pool, `insert into template_shares (template_id, shared_by, shared_with_team_id, permission_level) values
		('t1', 'owner', 'devs', 'write'), ('t1', 'owner', 'ops', 'manage')`)
	exec(t, pool, `insert into template_shares (template_id, shared_by, shared_with_user_id, permission_level, revoked_at, revoked_by) values
		('t1', 'owner', 'revoked', 'manage', now(), 'owner')`)

	tests := []struct {
		who  authn.Identity
		want access.Level
	}{
		{user("owner"), access.Manage},
		{user("reader"), access.Read},
		{user("member"), access.Write},                                      // through team devs
		{user("both"), access.Manage},                                       // highest of user read, devs write, ops manage
		{user("stranger"), access.None},                                     // nothing
		{user("revoked"), access.None},                                      // revoked shares give nothing
		{authn.Identity{Subject: "root", Role: authn.Admin}, access.Manage}, // admins manage everything
	}
	for _, tc := range tests {
		got, err := access.Effective(ctx, pool, tc.who, "t1")
		if err != nil || got != tc.want {
			t.Errorf("%s: got %v, %v; want %v", tc.who.Subject, got, err, tc.want)
		}
	}

	if _, err := access.Require(ctx, pool, user("stranger"), "t1", access.Read); errs.KindOf(err) != errs.NotFound {
		t.Errorf("stranger: got %v, want not_found (never forbidden, so ids cannot be probed)", err)
	}
	if _, err := access.Require(ctx, pool, user("reader"), "t1", access.Write); errs.KindOf(err) != errs.Forbidden {
		t.Errorf("reader wanting write: got %v, want forbidden", err)
	}
	if _, err := access.Require(ctx, pool, user("owner"), "missing", access.Read); errs.KindOf(err) != errs.NotFound {
		t.Errorf("missing template: got %v, want not_found", err)
	}

	// Leaving a team removes what the team gave, at once.
	exec(t, pool, `delete from team_members where team_id = 'devs' and user_id = 'member'`)
	if got, _ := access.Effective(ctx, pool, user("member"), "t1"); got != access.None {
		t.Errorf("after leaving devs: %v, want none", got)
	}
}

func TestParseLevel(t *testing.T) {
	for _, s := range []string{"read", "write", "manage"} {
		l, err := access.ParseLevel(s)
		if err != nil || l.String() != s {
			t.Errorf("ParseLevel(%q) = %v, %v", s, l, err)
		}
	}
	for _, s := range []string{"", "none", "READ", "admin"} {
		if _, err := access.ParseLevel(s); errs.KindOf(err) != errs.Invalid {
			t.Errorf("ParseLevel(%q): got %v, want invalid", s, err)
		}
	}
}

// BenchmarkRequire checks a member's level with 1,000 teams and 10,000
// shares in the database.
func BenchmarkRequire(b *testing.B) {
	pool := dbtest.New(b)
	ctx := context.Background()
	exec(b, pool, `insert into users (id, username) select 'u' || g, 'u' || g from generate_series(1, 5000) g`)
	exec(b, pool, `insert into teams (id, name) select 'team' || g, 'team' || g from generate_series(1, 1000) g`)
	exec(b, pool, `insert into team_members (team_id, user_id) select 'team' || (g % 1000 + 1), 'u' || g from generate_series(1, 5000) g`)
	exec(b, pool, `insert into team_members (team_id, user_id) select 'team' || g, 'u42' from generate_series(1, 1000, 50) g on conflict do nothing`)
	exec(b, pool, `insert into user_session_templates (id, user_id, name) select 'tpl' || g, 'u' || (g % 5000 + 1), 'T' from generate_series(1, 2000) g`)
	exec(b, pool, `insert into template_shares (template_id, shared_by, shared_with_team_id, permission_level)
		select 'tpl' || (g % 2000 + 1), 'u1', 'team' || ((g + g / 2000) % 1000 + 1), (array['read','write','manage'])[g % 3 + 1]
		from generate_series(1, 5000) g on conflict do nothing`)
	exec(b, pool, `insert into template_shares (template_id, shared_by, shared_with_user_id, permission_level)
		select 'tpl' || (g % 2000 + 1), 'u1', 'u' || (g % 5000 + 1), 'read'
		from generate_series(1, 5000) g on conflict do nothing`)
	exec(b, pool, `analyze`)
	var shares int
	pool.QueryRow(ctx, `select count(*) from template_shares`).Scan(&shares)
	if shares != 10000 {
		b.Fatalf("%d shares, want 10000", shares)
	}
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
