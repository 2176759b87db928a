package main

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// The demo rows the printed curl commands act on.
const (
	demoSession  = "demo-1"
	demoOwner    = "dev"
	demoUser     = "alice"
	demoTeam     = "demo-team"
	demoTemplate = "demo"
)

// seedStatements add the demo rows in StreamSpace's own tables and columns
// (testdata/streamspace/schema.sql), as its API would have written them:
// two users (dev is an admin), a team (a StreamSpace group) with both in
// it, a running session of dev's, catalog templates with text[] tags and
// StreamSpace's integer ids, and a user session template of dev's. Each
// statement leaves a row that exists alone, so seeding twice adds nothing,
// and none assumes the others' rows exist beyond StreamSpace's foreign keys.
var seedStatements = []struct {
	name string
	sql  string
	args []any
}{
	{"users", `
		insert into users (id, username, email, full_name, role, provider, active)
		values ($1::text, $1::text, $1::text || '@streamspace.local', 'Developer', 'admin', 'local', true),
		       ($2::text, $2::text, $2::text || '@streamspace.local', 'Alice', 'user', 'local', true)
		on conflict do nothing`,
		[]any{demoOwner, demoUser}},
	{"groups", `
		insert into groups (id, name, display_name, description, type)
		values ($1::text, $1::text, 'Demo Team', 'The team the demo users share templates with', 'team')
		on conflict do nothing`,
		[]any{demoTeam}},
	{"group_memberships", `
		insert into group_memberships (id, user_id, group_id, role)
		select v.id, v.user_id, v.group_id, v.role
		from (values ($1::text || '-' || $2::text, $2::text, $1::text, 'owner'), ($1::text || '-' || $3::text, $3::text, $1::text, 'member'))
		     as v (id, user_id, group_id, role)
		where exists (select 1 from users u where u.id = v.user_id)
		  and exists (select 1 from groups g where g.id = v.group_id)
		on conflict do nothing`,
		[]any{demoTeam, demoOwner, demoUser}},
	{"sessions", `
		insert into sessions (id, user_id, template_name, state, app_type)
		select $1::text, u.id, 'firefox', 'running', 'desktop' from users u where u.id = $2::text
		on conflict (id) do nothing`,
		[]any{demoSession, demoOwner}},
	// catalog_templates is unique on (repository_id, name), which a null
	// repository does not enforce, so a name already there is skipped.
	{"catalog_templates", `
		insert into catalog_templates (repository_id, name, display_name, description, category, app_type, tags)
		select (select id from repositories where name = 'Official Templates'), v.name, v.display_name,
		       v.description, v.category, 'desktop', v.tags
		from (values
		    ('firefox', 'Firefox', 'Web browser', 'browsers', array['web', 'browser', 'privacy']),
		    ('chromium', 'Chromium', 'Web browser', 'browsers', array['web', 'browser']),
		    ('vscode', 'VS Code', 'Code editor', 'development', array['dev', 'editor', 'web']),
		    ('gimp', 'GIMP', 'Image editor', 'graphics', array['graphics', 'editor'])
		) as v (name, display_name, description, category, tags)
		where not exists (select 1 from catalog_templates c where c.name = v.name)`,
		nil},
	{"user_session_templates", `
		insert into user_session_templates (id, user_id, team_id, name, description, category, tags,
		                                    visibility, base_template, configuration, resources, environment)
		select $1::text, u.id, null, 'Demo Firefox', 'Firefox with a home page', 'browsers', '["web"]',
		       'private', 'firefox', '{"homepage": "https://streamspace.local"}',
		       '{"cpu": "1", "memory": "2Gi"}', '{"TZ": "UTC"}'
		from users u where u.id = $2::text
		on conflict (id) do nothing`,
		[]any{demoTemplate, demoOwner}},
	// The popular-tag counts are a materialized view over catalog_templates
	// (docs/data.md); refreshed here so the first request already counts
	// the demo templates.
	{"catalog_tag_counts", `refresh materialized view catalog_tag_counts`, nil},
}

// seedDemo adds the demo rows in one transaction, so the printed commands
// show results on a fresh database. Rows that already exist are left as
// they are.
func seedDemo(ctx context.Context, url string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("seed: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		for _, s := range seedStatements {
			if _, err := tx.Exec(ctx, s.sql, s.args...); err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	return nil
}
