package main

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// The demo rows the printed curl commands act on.
const (
	demoSession = "demo-1"
	demoOwner   = "dev"
	demoUser    = "alice"
)

// seedDemo adds a session owned by the dev user and a few catalog templates
// with tags, in one transaction, so the printed commands show results on an
// empty database. Rows that already exist are left as they are.
func seedDemo(ctx context.Context, url string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("seed: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	stmts := []struct {
		sql  string
		args []any
	}{
		{`insert into users (id, username, email, display_name, role)
		  values ($1, $1, $1 || '@localhost', $2, 'admin'), ($3, $3, $3 || '@localhost', $4, 'user')
		  on conflict do nothing`,
			[]any{demoOwner, "Developer", demoUser, "Alice"}},
		{`insert into sessions (id, user_id, template_id, state)
		  values ($1, $2, 'firefox', 'running')
		  on conflict (id) do nothing`,
			[]any{demoSession, demoOwner}},
		{`insert into catalog_templates (id, name, description, category, tags) values
		      ('firefox', 'Firefox', 'Web browser', 'browsers', '["web", "browser", "privacy"]'),
		      ('chromium', 'Chromium', 'Web browser', 'browsers', '["web", "browser"]'),
		      ('vscode', 'VS Code', 'Code editor', 'development', '["dev", "editor", "web"]'),
		      ('gimp', 'GIMP', 'Image editor', 'graphics', '["graphics", "editor"]')
		  on conflict (id) do nothing`, nil},
	}
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		for _, s := range stmts {
			if _, err := tx.Exec(ctx, s.sql, s.args...); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	return nil
}
