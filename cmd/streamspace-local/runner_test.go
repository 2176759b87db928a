package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/logging"
	"github.com/streamspace-dev/functions/shared/runtime"
)

// localRun is the runner started as main starts it, on free ports, against
// a fresh database.
type localRun struct {
	*runner
	Pool       *pgxpool.Pool
	Deliveries chan Delivery
	Logs       *fntest.Buffer
}

func startLocalRun(t *testing.T) *localRun {
	t.Helper()
	return startLocalRunWith(t, func(*Config) {})
}

// startLocalRunWith is startLocalRun with configure's changes to the
// config.
func startLocalRunWith(t *testing.T, configure func(*Config)) *localRun {
	t.Helper()
	pool := dbtest.New(t)
	cfg := Config{
		DatabaseURL:    dbtest.URL(t, pool),
		Overlay:        "deploy/overlays/all-in-one",
		DeadLetterFile: filepath.Join(t.TempDir(), "dead-letters.jsonl"),
		Seed:           true,
	}
	configure(&cfg)
	environ := runtime.Environ()
	// The operator's cluster and bucket are not the local run's.
	delete(environ, "KUBECONFIG")
	delete(environ, "S3_BUCKET")
	// Long enough that only the template.updated event can clear the
	// popular-tag cache during a test.
	environ["TAGS_CACHE_TTL"] = "1h"
	// An operator's shell may hold the cluster's settings; the local run
	// must not take them for its own issuer's.
	environ["EVENT_AUTH_ISSUER"] = "https://kubernetes.default.svc.cluster.local"
	environ["EVENT_AUTH_JWKS_URL"] = "https://kubernetes.default.svc.cluster.local/openid/v1/jwks"
	lr := &localRun{Pool: pool, Deliveries: make(chan Delivery, 100), Logs: &fntest.Buffer{}}
	// Generous: start only takes long on a busy machine.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r, err := start(ctx, cfg, environ, logging.New(lr.Logs, slog.LevelDebug), func(d Delivery) { lr.Deliveries <- d })
	require.NoError(t, err, "start; log:\n%s", lr.Logs.String())
	lr.runner = r
	t.Cleanup(func() {
		// The test's idle keep-alive connections would hold up the broker
		// port's bounded shutdown (a connection that never sent a request
		// counts as busy for its first seconds), so they go first.
		http.DefaultClient.CloseIdleConnections()
		assert.NoError(t, r.shutdown(context.Background()), "shutdown")
		if t.Failed() {
			t.Logf("log:\n%s", lr.Logs.String())
		}
	})
	return lr
}

// do sends a REST request to the function with token.
func (lr *localRun) do(t *testing.T, method, path, token, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, lr.FunctionURL+path, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, err = buf.ReadFrom(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, buf.Bytes()
}

// nextDelivery waits for the next delivery result.
func (lr *localRun) nextDelivery(t *testing.T) Delivery {
	t.Helper()
	select {
	case d := <-lr.Deliveries:
		return d
	case <-time.After(waitTimeout):
		require.FailNow(t, "no delivery", "none within %s", waitTimeout)
		return Delivery{}
	}
}

func (lr *localRun) popularTags(t *testing.T, token string) map[string]int {
	t.Helper()
	status, body := lr.do(t, http.MethodGet, demoTagsQuery, token, "")
	require.Equal(t, http.StatusOK, status, "popular tags: %s", body)
	var rows []struct {
		Tag   string `json:"tag"`
		Count int    `json:"count"`
	}
	require.NoError(t, json.Unmarshal(body, &rows), "popular tags %s", body)
	out := map[string]int{}
	for _, r := range rows {
		out[r.Tag] = r.Count
	}
	return out
}

func TestLocalRunEndToEnd(t *testing.T) {
	lr := startLocalRun(t)
	admin, user, err := lr.tokens()
	require.NoError(t, err)

	t.Run("tokens and demo rows", func(t *testing.T) {
		tests := []struct {
			name, token string
			wantStatus  int
			wantBody    string
		}{
			{"admin tags dev's session", admin, http.StatusOK, `"updated":1`},
			{"a plain user cannot tag dev's session", user, http.StatusOK, `"updated":0`},
			{"a bad token is refused", "not-a-token", http.StatusUnauthorized, `"message"`},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				status, body := lr.do(t, http.MethodPost, "/api/v1/batch/sessions/update-tags", tc.token, demoTagsBody)
				assert.Equal(t, tc.wantStatus, status, "%s", body)
				assert.Contains(t, string(body), tc.wantBody)
			})
		}
	})

	t.Run("event auth is on, with the local issuer", func(t *testing.T) {
		assert.Equal(t, "streamspace-functions", lr.EventAudience)
		e, err := events.New("versioning", events.TemplateUpdated, map[string]string{"templateId": demoTemplate, "change": "updated"})
		require.NoError(t, err)
		// Straight to the function, bypassing the broker: no token.
		status, _ := fntest.Deliver(t, lr.FunctionURL+"/events/tags", e, false)
		assert.Equal(t, http.StatusUnauthorized, status, "an event without the broker's token")
	})

	t.Run("template.updated reaches tags only through its Trigger", func(t *testing.T) {
		require.Equal(t, 3, lr.popularTags(t, admin)["web"], "web counted 3 times from the demo rows")
		_, err := lr.Pool.Exec(context.Background(),
			`insert into catalog_templates (name, display_name, category, tags) values ('fresh', 'Fresh', 'misc', array['fresh'])`)
		require.NoError(t, err)
		require.Zero(t, lr.popularTags(t, admin)["fresh"], "the cache should still hide the new template")

		e, err := events.New("versioning", events.TemplateUpdated, map[string]string{"templateId": "fresh", "change": "updated"})
		require.NoError(t, err)
		status, _ := fntest.Deliver(t, lr.BrokerURL+"/", e, true)
		require.Equal(t, http.StatusAccepted, status, "broker ingress")
		d := lr.nextDelivery(t)
		assert.Equal(t, e.ID(), d.EventID)
		assert.Equal(t, events.FunctionsNamespace+"/tags-template-updated", d.Trigger)
		assert.Equal(t, lr.FunctionURL+"/events/tags", d.Subscriber)
		require.Equal(t, Delivered, d.Outcome, "%+v", d)
		assert.Equal(t, 1, d.Attempts)
		assert.Equal(t, 1, lr.popularTags(t, admin)["fresh"], "fresh counted once after template.updated")
	})

	t.Run("emitted events enter the broker through K_SINK", func(t *testing.T) {
		// update-tags above emitted session.tags.updated.v1 to K_SINK; no
		// Trigger routes it, so the broker logged it and delivered nothing.
		var line map[string]any
		require.Eventually(t, func() bool {
			line = logged(lr.Logs, "event received", events.SessionTagsUpdated)
			return line != nil
		}, waitTimeout, 20*time.Millisecond, "no %s reached the broker ingress", events.SessionTagsUpdated)
		triggers, _ := line["triggers"].([]any)
		assert.Empty(t, triggers, "%s matched Triggers", events.SessionTagsUpdated)
		select {
		case d := <-lr.Deliveries:
			assert.Failf(t, "unexpected delivery", "%+v", d)
		default:
		}
	})
}

// logged returns the first log line with msg that names eventType, or nil.
func logged(logs *fntest.Buffer, msg, eventType string) map[string]any {
	for _, l := range logs.Lines() {
		if l["msg"] == msg && l["eventType"] == eventType {
			return l
		}
	}
	return nil
}

// TestPrintedCommandsWork runs the curl commands of the banner exactly as
// printed.
func TestPrintedCommandsWork(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed")
	}
	lr := startLocalRun(t)
	var out bytes.Buffer
	require.NoError(t, lr.banner(&out))
	assert.True(t, strings.HasPrefix(out.String(), "streamspace-local ready: function "+lr.FunctionURL), "banner starts with the ready line")
	assert.Contains(t, out.String(), "event auth    each delivery carries its Trigger's token")
	// LOCAL_KUBE=false: no demo session pod, and the banner says what to build.
	assert.Contains(t, out.String(), "snapshots     off: the demo session's pod needs the local kube-apiserver (autoscale LOCAL_KUBE=false; `scripts/tools etcd kube-apiserver minio`")
	cmds := printedCommands(out.String())
	want := []string{`"updated":1`, `{"tag":"web","count":3}`, "HTTP/1.1 202 Accepted"}
	if lr.Mail != nil {
		// Mailpit is built: the env integration's test reaches it.
		want = append(want, `"success":true`)
	}
	require.Len(t, cmds, len(want), "curl commands in:\n%s", out.String())
	for i, cmd := range cmds {
		t.Run(strings.Fields(cmd)[0]+" "+want[i], func(t *testing.T) {
			// Only stdout is the answer; curl's own messages go to stderr.
			c := exec.Command("bash", "-c", cmd)
			var stderr strings.Builder
			c.Stderr = &stderr
			got, err := c.Output()
			require.NoError(t, err, "%s\n-> %s (stderr %s)", cmd, got, stderr.String())
			assert.Contains(t, string(got), want[i], cmd)
		})
	}
	d := lr.nextDelivery(t)
	assert.Equal(t, demoEventID, d.EventID)
	assert.Equal(t, Delivered, d.Outcome, "%+v", d)
}

// printedCommands returns each curl command of the banner with its
// continuation lines.
func printedCommands(banner string) []string {
	var cmds []string
	var cur strings.Builder
	for _, line := range strings.Split(banner, "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(trimmed, "curl "), strings.Contains(trimmed, "=$(curl "):
			cur.Reset()
			cur.WriteString(line + "\n")
		case cur.Len() > 0:
			cur.WriteString(line + "\n")
		default:
			continue
		}
		if !strings.HasSuffix(trimmed, `\`) {
			cmds = append(cmds, cur.String())
			cur.Reset()
		}
	}
	return cmds
}

// TestPrepareDatabase: make run's throwaway database gets StreamSpace's
// schema before the migrations; a database the operator named never does,
// and the migrations refuse it with their message; a StreamSpace database is
// only migrated.
func TestPrepareDatabase(t *testing.T) {
	tests := []struct {
		name       string
		pool       func(tb testing.TB) *pgxpool.Pool
		throwaway  bool
		wantLoaded bool
		wantErr    string
	}{
		{name: "throwaway and empty: StreamSpace's schema is loaded", pool: dbtest.NewEmpty, throwaway: true, wantLoaded: true},
		{name: "the operator's empty database is refused", pool: dbtest.NewEmpty, wantErr: "StreamSpace's tables"},
		{name: "StreamSpace's database is migrated", pool: dbtest.NewStreamSpace},
		{name: "throwaway with StreamSpace's schema is only migrated", pool: dbtest.NewStreamSpace, throwaway: true},
		{name: "a partial StreamSpace schema is refused, not completed", pool: func(t testing.TB) *pgxpool.Pool {
			pool := dbtest.NewEmpty(t)
			_, err := pool.Exec(context.Background(), `create table users (id varchar(255) primary key)`)
			require.NoError(t, err)
			return pool
		}, throwaway: true, wantErr: "StreamSpace's tables"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pool := tc.pool(t)
			ctx := context.Background()
			st, err := prepareDatabase(ctx, dbtest.URL(t, pool), tc.throwaway)
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErr)
				var n int
				require.NoError(t, pool.QueryRow(ctx, `select count(*) from pg_tables where schemaname = 'public' and tablename = any($1)`,
					db.StreamSpaceTables).Scan(&n))
				assert.LessOrEqual(t, n, 1, "no StreamSpace table was created")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.wantLoaded, st.LoadedSchema)
			assert.Equal(t, db.LatestVersion(), st.Version)
			var missing []string
			require.NoError(t, pool.QueryRow(ctx, `select coalesce(array_agg(t), '{}') from unnest($1::text[]) t where to_regclass(t) is null`,
				db.StreamSpaceTables).Scan(&missing))
			assert.Empty(t, missing)
		})
	}
}

// TestSeedDemo: the demo rows sit in StreamSpace's own tables and columns,
// the popular-tag view counts them, and seeding again adds nothing.
func TestSeedDemo(t *testing.T) {
	pool := dbtest.New(t)
	url := dbtest.URL(t, pool)
	ctx := context.Background()
	require.NoError(t, seedDemo(ctx, url))
	counts := func() map[string]int {
		out := map[string]int{}
		for _, table := range []string{"users", "groups", "group_memberships", "sessions", "catalog_templates", "user_session_templates"} {
			var n int
			require.NoError(t, pool.QueryRow(ctx, "select count(*) from "+table).Scan(&n))
			out[table] = n
		}
		return out
	}
	first := counts()

	tests := []struct {
		name, sql string
		args      []any
		want      any
	}{
		{"dev is an active admin with an email", `select role || ' ' || email || ' ' || active::text from users where id = $1`, []any{demoOwner}, "admin dev@streamspace.local true"},
		{"alice is a user", `select role from users where id = $1`, []any{demoUser}, "user"},
		{"both are in the demo team", `select count(*)::int from group_memberships where group_id = $1`, []any{demoTeam}, 2},
		{"the demo session is dev's", `select user_id || ' ' || state from sessions where id = $1`, []any{demoSession}, "dev running"},
		{"the demo session has no tags yet", `select tags::text from sessions where id = $1`, []any{demoSession}, "[]"},
		{"catalog tags are text[] on integer ids", `select array_to_string(tags, ',') from catalog_templates where name = 'vscode' and id > 0`, nil, "dev,editor,web"},
		{"the popular-tag view counts them", `select sum(templates)::int from catalog_tag_counts where tag = 'web'`, nil, 3},
		{"the user template is dev's, with StreamSpace's columns", `select user_id || ' ' || base_template || ' ' || (configuration->>'homepage') from user_session_templates where id = $1`,
			[]any{demoTemplate}, "dev firefox https://streamspace.local"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got any
			switch tc.want.(type) {
			case int:
				var n int
				require.NoError(t, pool.QueryRow(ctx, tc.sql, tc.args...).Scan(&n))
				got = n
			default:
				var s string
				require.NoError(t, pool.QueryRow(ctx, tc.sql, tc.args...).Scan(&s))
				got = s
			}
			assert.Equal(t, tc.want, got)
		})
	}

	t.Run("seeding again adds nothing", func(t *testing.T) {
		require.NoError(t, seedDemo(ctx, url))
		assert.Equal(t, first, counts())
	})
}

// TestFunctionEnv: the function gets the runner's environment with what the
// runner provides on top, and EVENT_AUTH_* only from the local issuer.
func TestFunctionEnv(t *testing.T) {
	environ := map[string]string{"HOME": "/root", "PORT": "1", "EVENT_AUTH_ISSUER": "https://cluster", "EVENT_AUTH_SUBJECTS": "x"}
	tests := []struct {
		name      string
		eventAuth map[string]string
		want      map[string]string
	}{
		{"no event auth: none inherited", nil, map[string]string{"HOME": "/root", "PORT": "8080"}},
		{"event auth from the local issuer", map[string]string{"EVENT_AUTH_ISSUER": "http://127.0.0.1:8081"},
			map[string]string{"HOME": "/root", "PORT": "8080", "EVENT_AUTH_ISSUER": "http://127.0.0.1:8081"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, functionEnv(environ, map[string]string{"PORT": "8080"}, tc.eventAuth))
		})
	}
}
