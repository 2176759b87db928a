package function

import (
	"context"
	"encoding/json"
	"log/slog"
	"strconv"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
	"github.com/streamspace-dev/functions/shared/outbox"
)

const benchVersions = 1000

// benchConfig is a template configuration of a realistic size (about 1 KiB).
const benchConfig = `{
	"image": "lscr.io/linuxserver/firefox:128.0.3",
	"env": ["TZ=Europe/Berlin", "LANG=en_US.UTF-8", "PUID=1000", "PGID=1000", "FF_OPEN_URL=https://intranet.example.com"],
	"ports": [{"name": "vnc", "port": 3000}, {"name": "audio", "port": 3001}],
	"volumes": [{"name": "home", "mountPath": "/config", "size": "10Gi"}, {"name": "downloads", "mountPath": "/downloads", "size": "5Gi"}],
	"idleTimeout": "30m", "maxDuration": "8h", "persistHome": true, "clipboard": "bidirectional",
	"network": {"egress": ["10.0.0.0/8", "192.168.0.0/16"], "proxy": "http://proxy.example.com:3128"},
	"labels": {"team": "platform", "cost-center": "cc-1234", "tier": "standard"}
}`

var benchOwner = authn.Identity{Subject: "alice", Role: authn.User}

// benchDB returns a fresh StreamSpace-shaped database holding template
// "tpl" of user alice with 1,000 versions, each tagged when tagged is true.
func benchDB(b *testing.B, tagged bool) *pgxpool.Pool {
	b.Helper()
	pool := dbtest.New(b)
	ctx := context.Background()
	for _, q := range []struct {
		sql  string
		args []any
	}{
		{`insert into users (id, username, email) values ('alice', 'alice', 'alice@example.com')`, nil},
		{`insert into user_session_templates (id, user_id, name, category, tags, base_template, configuration, resources, environment)
			values ('tpl', 'alice', 'Firefox', 'browsers', '["web","stable"]', 'firefox', $1::jsonb,
				'{"cpu": "2", "memory": "4Gi", "gpu": 0, "shm": "1Gi"}', '{"TZ": "Europe/Berlin"}')`, []any{benchConfig}},
		{`insert into user_session_template_versions (template_id, version_number, template_data, description, created_by, created_at, tags)
			select 'tpl', g, ` + snapshotSQL + `, 'version ' || g, 'alice',
				localtimestamp - make_interval(hours => $1 - g),
				case when $2 then array['release-' || g] else '{}' end
			from user_session_templates t, generate_series(1, $1::int) g`, []any{benchVersions, tagged}},
		{`analyze user_session_template_versions`, nil},
	} {
		if _, err := pool.Exec(ctx, q.sql, q.args...); err != nil {
			b.Fatal(err)
		}
	}
	return pool
}

// BenchmarkCreateVersion creates versions on a template that already has
// 1,000, through the route's whole unit of work: access check, lock,
// insert, retention delete, the cap's count, and the version.created event
// queued in the outbox, in one transaction. VERSION_LIMIT is set above the
// count so that no case is refused.
//
// tagged-retention-50: the default retention with every old version
// tagged, so none may go; the delete reads the prunable-version index,
// which holds none of them.
// untagged-retention-2000: a retention above the count, so nothing is
// pruned.
func BenchmarkCreateVersion(b *testing.B) {
	tests := []struct {
		name   string
		rules  Rules
		tagged bool
	}{
		{"tagged-retention-50", Rules{Retention: 50, BackupRetention: 720 * time.Hour, Limit: 1_000_000}, true},
		{"untagged-retention-2000", Rules{Retention: 2000, BackupRetention: 720 * time.Hour, Limit: 1_000_000}, false},
	}
	for _, tc := range tests {
		b.Run(tc.name, func(b *testing.B) {
			pool := benchDB(b, tc.tagged)
			ob, err := outbox.New(pool, Name, "", outbox.DefaultMaxAttempts, slog.New(slog.DiscardHandler))
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			in := CreateInput{Description: "benchmark", Tags: []string{}}
			for b.Loop() {
				err := db.InTx(ctx, pool, func(tx pgx.Tx) error {
					v, err := createVersion(ctx, tx, tc.rules, benchOwner, "tpl", in)
					if err != nil {
						return err
					}
					e, err := versionCreated(v, benchOwner.Subject)
					if err != nil {
						return err
					}
					return ob.Add(ctx, tx, []cloudevents.Event{e}...)
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			var n int
			if err := pool.QueryRow(ctx, countSQL, "tpl").Scan(&n); err != nil || n < benchVersions {
				b.Fatalf("%d versions left: %v", n, err)
			}
		})
	}
}

// BenchmarkListVersions reads a page of 50 of 1,000 versions, each with its
// templateData, and the total: the first page, and one from a cursor in the
// middle.
func BenchmarkListVersions(b *testing.B) {
	pool := benchDB(b, true)
	ctx := context.Background()
	middle := benchVersions / 2
	tests := []struct {
		name string
		q    ListQuery
	}{
		{"first-page", ListQuery{Limit: 50}},
		{"cursor-page", ListQuery{Limit: 50, Before: &middle}},
	}
	for _, tc := range tests {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				page, more, _, err := listVersions(ctx, pool, benchOwner, "tpl", tc.q)
				if err != nil || len(page) != 50 || !more {
					b.Fatalf("%d versions, more %v: %v", len(page), more, err)
				}
			}
		})
	}
}

// BenchmarkDiff compares two documents whose configurations differ in n
// keys, each value changed. 40,000 is the size the review measured at 2.4 s
// a request with a quadratic summary; it is now answered with the cap's
// 422 once the patch is computed. 10,000 is the most a diff returns,
// summary included.
func BenchmarkDiff(b *testing.B) {
	tests := []struct {
		name    string
		keys    int
		wantErr bool
	}{
		{"40000-changed-keys", 40000, true},
		{"10000-changed-keys", MaxOperations, false},
	}
	for _, tc := range tests {
		b.Run(tc.name, func(b *testing.B) {
			a, c := make(map[string]int, tc.keys), make(map[string]int, tc.keys)
			for i := range tc.keys {
				k := "key" + strconv.Itoa(i)
				a[k], c[k] = i+1, -(i + 1)
			}
			from, err := json.Marshal(map[string]any{"configuration": a})
			if err != nil {
				b.Fatal(err)
			}
			to, err := json.Marshal(map[string]any{"configuration": c})
			if err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				d, err := Compare(from, to)
				if (err != nil) != tc.wantErr || (err == nil && len(d.Summary.Changed) != tc.keys) {
					b.Fatalf("%d fields changed, error %v; want %d, error %v", len(d.Summary.Changed), err, tc.keys, tc.wantErr)
				}
			}
		})
	}
}
