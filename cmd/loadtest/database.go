package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/shared/db"
)

// database is the one the instances share: StreamSpace's schema, the
// migrations and the seed rows, created afresh on every run.
const database = "streamspace_load"

// schemaFile is StreamSpace's schema, relative to the repository root.
const schemaFile = "testdata/streamspace/schema.sql"

// The seed: one StreamSpace user per client, each with sessions to tag, a
// user session template with versions, and shares of it with two other
// users, so every read the clients make returns rows.
const (
	sessionsPerUser = 10
	versionsPerUser = 20
)

// seedSQL inserts the rows of $1 users named load-0 … load-($1-1).
const seedSQL = `
	insert into users (id, username, email, role, active)
	select 'load-' || u, 'load-' || u, 'load-' || u || '@streamspace.test', 'user', true
	from generate_series(0, $1 - 1) as u;

	insert into sessions (id, user_id, template_name, state, app_type)
	select 'load-' || u || '-s' || s, 'load-' || u, 'firefox', 'running', 'desktop'
	from generate_series(0, $1 - 1) as u, generate_series(0, $2 - 1) as s;

	insert into user_session_templates (id, user_id, name, base_template, tags)
	select 'load-' || u || '-tpl', 'load-' || u, 'Template ' || u, 'firefox', '["load"]'
	from generate_series(0, $1 - 1) as u;

	insert into user_session_template_versions (template_id, version_number, template_data, description, created_by)
	select 'load-' || u || '-tpl', v, jsonb_build_object('name', 'Template ' || u, 'base_template', 'firefox'),
		'version ' || v, 'load-' || u
	from generate_series(0, $1 - 1) as u, generate_series(1, $3) as v;

	insert into template_shares (id, template_id, shared_by, shared_with_user_id, permission_level)
	select 'load-' || u || '-share-' || k, 'load-' || u || '-tpl', 'load-' || u,
		'load-' || ((u + k) % $1), 'read'
	from generate_series(0, $1 - 1) as u, generate_series(1, 2) as k;

	insert into catalog_templates (name, display_name, category, app_type, tags)
	select 'load-catalog-' || i, 'Catalog ' || i, (array['web', 'office', 'dev'])[i % 3 + 1], 'desktop',
		case i % 4 when 0 then null when 1 then '{}'::text[] else array['web', 'load', 'tag-' || i % 7] end
	from generate_series(0, 99) as i;`

// prepareDatabase creates the load database on the server admin reaches
// (its previous run's is dropped), loads StreamSpace's schema, applies the
// migrations directly, as the migration Job does, and seeds the rows for
// users clients.
func prepareDatabase(ctx context.Context, admin *pgx.Conn, root string, users int) error {
	schema, err := os.ReadFile(filepath.Join(root, schemaFile))
	if err != nil {
		return fmt.Errorf("StreamSpace's schema: %w", err)
	}
	for _, sql := range []string{
		"drop database if exists " + database + " with (force)",
		"create database " + database,
	} {
		if _, err := admin.Exec(ctx, sql); err != nil {
			return fmt.Errorf("%s: %w", sql, err)
		}
	}
	cfg := admin.Config().Copy()
	cfg.Database = database
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", database, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, string(schema)); err != nil {
		return fmt.Errorf("load StreamSpace's schema: %w", err)
	}
	if err := db.Migrate(ctx, conn); err != nil {
		return err
	}
	// The seed is several statements in one, which only the simple
	// protocol sends; pgx writes the arguments into it.
	if _, err := conn.Exec(ctx, seedSQL, pgx.QueryExecModeSimpleProtocol, users, sessionsPerUser, versionsPerUser); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	_, err = conn.Exec(ctx, "analyze")
	return err
}
