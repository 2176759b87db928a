package function

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
	"github.com/streamspace-dev/functions/shared/outbox"
)

const benchVersions = 1000

// benchConfig is a template config of a realistic size (about 1 KiB).
const benchConfig = `{
	"image": "lscr.io/linuxserver/firefox:128.0.3",
	"resources": {"cpu": "2", "memory": "4Gi", "gpu": 0, "shm": "1Gi"},
	"env": ["TZ=Europe/Berlin", "LANG=en_US.UTF-8", "PUID=1000", "PGID=1000", "FF_OPEN_URL=https://intranet.example.com"],
	"ports": [{"name": "vnc", "port": 3000}, {"name": "audio", "port": 3001}],
	"volumes": [{"name": "home", "mountPath": "/config", "size": "10Gi"}, {"name": "downloads", "mountPath": "/downloads", "size": "5Gi"}],
	"idleTimeout": "30m", "maxDuration": "8h", "persistHome": true, "clipboard": "bidirectional",
	"network": {"egress": ["10.0.0.0/8", "192.168.0.0/16"], "proxy": "http://proxy.example.com:3128"},
	"labels": {"team": "platform", "cost-center": "cc-1234", "tier": "standard"}
}`

var benchOwner = authn.Identity{Subject: "alice", Role: authn.User}

// benchStore returns a store on a fresh database holding template "tpl"
// with 1,000 versions, each tagged when tagged is true.
func benchStore(b *testing.B, retention int, tagged bool) *Store {
	b.Helper()
	pool := dbtest.New(b)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `insert into user_session_templates (id, user_id, name, category, config, tags)
		values ('tpl', 'alice', 'Firefox', 'browsers', $1::jsonb, '["web","stable"]')`, benchConfig); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `
		insert into template_versions (template_id, version_number, template_data, description, created_by, created_at, tags)
		select 'tpl', g, to_jsonb(t) - 'created_at' - 'updated_at', 'version ' || g, 'alice',
			now() - make_interval(hours => $1 - g),
			case when $2 then array['release-' || g] else '{}' end
		from user_session_templates t, generate_series(1, $1::int) g`, benchVersions, tagged); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `analyze template_versions`); err != nil {
		b.Fatal(err)
	}
	return &Store{Pool: pool, Retention: retention, BackupRetention: 30 * 24 * time.Hour}
}

// BenchmarkCreateVersion creates versions on a template that already has
// 1,000, through the route's whole transaction: access check, lock, insert,
// retention delete, and the version.created event queued in the outbox.
//
// tagged-retention-50: the default retention with every old version tagged,
// so none may go and the delete examines all 950 outside the window each
// time, the template keeping its 1,000.
// untagged-retention-2000: a retention above the count, so nothing is
// pruned.
func BenchmarkCreateVersion(b *testing.B) {
	for _, tc := range []struct {
		name      string
		retention int
		tagged    bool
	}{
		{"tagged-retention-50", 50, true},
		{"untagged-retention-2000", 2000, false},
	} {
		b.Run(tc.name, func(b *testing.B) {
			s := benchStore(b, tc.retention, tc.tagged)
			ob, err := outbox.New(s.Pool, Name, "", outbox.DefaultMaxAttempts, slog.New(slog.DiscardHandler))
			if err != nil {
				b.Fatal(err)
			}
			queue := func(ctx context.Context, tx pgx.Tx, v Version) error {
				e, err := events.New(Name, events.TemplateVersionCreated, events.TemplateVersionCreatedData{
					TemplateID: v.TemplateID, Version: v.Number, CreatedBy: v.CreatedBy, Tags: v.Tags,
				})
				if err != nil {
					return err
				}
				return ob.Add(ctx, tx, e)
			}
			ctx := context.Background()
			tags := []string{}
			for b.Loop() {
				if _, err := s.Create(ctx, benchOwner, "tpl", "benchmark", tags, queue); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			var n int
			if err := s.Pool.QueryRow(ctx, `select count(*) from template_versions where template_id = 'tpl'`).Scan(&n); err != nil || n < benchVersions {
				b.Fatalf("%d versions left: %v", n, err)
			}
		})
	}
}

// BenchmarkListVersions reads a page of 50 of 1,000 versions: the first
// page, and one from a cursor in the middle.
func BenchmarkListVersions(b *testing.B) {
	s := benchStore(b, 50, true)
	ctx := context.Background()
	middle := benchVersions / 2
	for _, tc := range []struct {
		name string
		q    ListQuery
	}{
		{"first-page", ListQuery{Limit: 50}},
		{"cursor-page", ListQuery{Limit: 50, Before: &middle}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				page, more, err := s.List(ctx, benchOwner, "tpl", tc.q)
				if err != nil || len(page) != 50 || !more {
					b.Fatalf("%d versions, more %v: %v", len(page), more, err)
				}
			}
		})
	}
}
