package function_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/events"
	function "github.com/streamspace-dev/functions/functions/versioning"
	"github.com/streamspace-dev/functions/shared/fntest"
)

// wait bounds every wait on a condition: generous, so a busy machine is
// slow rather than failing; a passing test never waits for it.
const wait = 2 * time.Minute

func start(t *testing.T, env map[string]string) *fntest.Harness {
	t.Helper()
	h := fntest.Start(t, function.New(), env)
	// Registered after the harness's own cleanup, so it runs first: every
	// event queued by the test has left before the function is stopped, and
	// the stop's bounded flush has nothing left to race.
	t.Cleanup(func() { waitOutboxEmpty(t, h) })
	return h
}

func versionsPath(template string) string {
	return "/api/v1/session-templates/" + template + "/versions"
}

func restorePath(template string, n any) string {
	return fmt.Sprintf("%s/%v/restore", versionsPath(template), n)
}

func diffPath(template string, n any, against string) string {
	p := fmt.Sprintf("%s/%v/diff", versionsPath(template), n)
	if against != "" {
		p += "?against=" + against
	}
	return p
}

func exec(t *testing.T, h *fntest.Harness, sql string, args ...any) {
	t.Helper()
	_, err := h.Pool.Exec(context.Background(), sql, args...)
	require.NoError(t, err, sql)
}

// seedUsers adds StreamSpace users with these ids.
func seedUsers(t *testing.T, h *fntest.Harness, ids ...string) {
	t.Helper()
	for _, id := range ids {
		exec(t, h, `insert into users (id, username, email) values ($1::text, $1::text, $1::text || '@example.com') on conflict do nothing`, id)
	}
}

// seedTemplate creates template id owned by owner (a user it adds), with
// configuration config.
func seedTemplate(t *testing.T, h *fntest.Harness, id, owner, name, config string) {
	t.Helper()
	seedUsers(t, h, owner)
	exec(t, h, `insert into user_session_templates (id, user_id, name, category, tags, base_template, configuration)
		values ($1, $2, $3, 'browsers', '["web"]', 'firefox', $4::jsonb)`, id, owner, name, config)
}

// contentColumns are the columns a version saves, as docs in store.go name
// them; templateNow reads them independently of the function's SQL.
const contentColumns = `name, description, icon, category, tags, base_template, configuration, resources, environment, version`

// templateNow is the template's content as a version saves it.
func templateNow(t *testing.T, h *fntest.Harness, id string) []byte {
	t.Helper()
	var b []byte
	require.NoError(t, h.Pool.QueryRow(context.Background(),
		`select to_jsonb(r) from (select `+contentColumns+` from user_session_templates where id = $1) r`, id).Scan(&b))
	return b
}

// versionData is the stored template_data of version n of template.
func versionData(t *testing.T, h *fntest.Harness, template string, n int) []byte {
	t.Helper()
	var b []byte
	require.NoError(t, h.Pool.QueryRow(context.Background(),
		`select template_data from user_session_template_versions where template_id = $1 and version_number = $2`, template, n).Scan(&b))
	return b
}

// numbers lists template's stored version numbers in order.
func numbers(t *testing.T, h *fntest.Harness, template string) []int {
	t.Helper()
	rows, err := h.Pool.Query(context.Background(),
		`select version_number from user_session_template_versions where template_id = $1 order by 1`, template)
	require.NoError(t, err)
	defer rows.Close()
	out := []int{}
	for rows.Next() {
		var n int
		require.NoError(t, rows.Scan(&n))
		out = append(out, n)
	}
	require.NoError(t, rows.Err())
	return out
}

// seedVersions stores versions 1..n of template directly, every third one
// tagged, the last one restored from version 1, authors cycling through
// the users author-0..2 (which it adds).
func seedVersions(t *testing.T, h *fntest.Harness, template string, n int) {
	t.Helper()
	seedUsers(t, h, "author-0", "author-1", "author-2")
	exec(t, h, `
		insert into user_session_template_versions (template_id, version_number, template_data, description, created_by, tags, restored_from)
		select $1, g, jsonb_build_object('name', 'v' || g), 'version ' || g, 'author-' || (g % 3),
			case when g % 3 = 0 then array['release-' || g] else '{}' end,
			case when g = $2 then 1 end
		from generate_series(1, $2::int) g`, template, n)
}

// waitOutboxEmpty waits until the outbox has sent and deleted every queued
// event. The sink records an event before the outbox deletes its row, so
// the row can outlive the event's arrival for a moment.
func waitOutboxEmpty(t *testing.T, h *fntest.Harness) {
	t.Helper()
	require.Eventually(t, func() bool {
		var n int
		if err := h.Pool.QueryRow(context.Background(), `select count(*) from event_outbox`).Scan(&n); err != nil {
			return false
		}
		return n == 0
	}, wait, 20*time.Millisecond, "events still in the outbox")
}

// sent waits until n events of eventType reached the sink and returns them.
func sent(t *testing.T, h *fntest.Harness, eventType string, n int) []cloudevents.Event {
	t.Helper()
	got := h.Sink.WaitForN(context.Background(), eventType, n, wait)
	require.Len(t, got, n, "%s events", eventType)
	return got
}

// request sends a REST request with extra headers; it may run off the test
// goroutine, so it reports failures as errors.
func request(method, url, token string, body any, header http.Header) (int, []byte, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return 0, nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return resp.StatusCode, raw, err
}

func create(t *testing.T, h *fntest.Harness, token, template string, body any) (int, function.CreateResult) {
	t.Helper()
	status, raw := h.Do(http.MethodPost, versionsPath(template), token, body)
	var v function.CreateResult
	if status == http.StatusCreated {
		require.NoError(t, json.Unmarshal(raw, &v), "%s", raw)
	}
	return status, v
}

func list(t *testing.T, h *fntest.Harness, token, template, query string) function.ListResult {
	t.Helper()
	status, raw := h.Do(http.MethodGet, versionsPath(template)+query, token, nil)
	require.Equal(t, http.StatusOK, status, "list %s: %s", query, raw)
	var res function.ListResult
	require.NoError(t, json.Unmarshal(raw, &res))
	return res
}

// ping delivers a PingSource tick from source.
func ping(t *testing.T, h *fntest.Harness, source string) int {
	t.Helper()
	e, err := events.New("test", events.Ping, events.PingData{Job: "test"})
	require.NoError(t, err)
	e.SetSource(source)
	status, _ := h.Deliver(e, false)
	return status
}

func applyPatch(t *testing.T, doc, patch []byte) []byte {
	t.Helper()
	p, err := jsonpatch.DecodePatch(patch)
	require.NoError(t, err, "decode patch %s", patch)
	out, err := p.Apply(doc)
	require.NoError(t, err, "apply %s to %s", patch, doc)
	return out
}

// decode parses a JSON text with numbers kept as their digits.
func decode(t *testing.T, b []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	require.NoError(t, dec.Decode(&v), "decode %s", b)
	return v
}

// assertSameJSON checks two JSON texts are the same value.
func assertSameJSON(t *testing.T, want, got []byte, msgAndArgs ...any) bool {
	t.Helper()
	return assert.Equal(t, decode(t, want), decode(t, got), msgAndArgs...)
}
