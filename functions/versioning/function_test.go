package function_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/streamspace-dev/functions/events"
	function "github.com/streamspace-dev/functions/functions/versioning"
	"github.com/streamspace-dev/functions/shared/access"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/fntest"
)

func start(t *testing.T, env map[string]string) *fntest.Harness {
	t.Helper()
	return fntest.Start(t, function.New(), env)
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
	if _, err := h.Pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// seedTemplate creates template id owned by owner.
func seedTemplate(t *testing.T, h *fntest.Harness, id, owner, name, config string) {
	t.Helper()
	exec(t, h, `insert into user_session_templates (id, user_id, name, category, config, tags)
		values ($1, $2, $3, 'browsers', $4::jsonb, '["web"]')`, id, owner, name, config)
}

// dbNow is the database clock's now().
func dbNow(t *testing.T, h *fntest.Harness) time.Time {
	t.Helper()
	var now time.Time
	if err := h.Pool.QueryRow(context.Background(), `select now()`).Scan(&now); err != nil {
		t.Fatal(err)
	}
	return now
}

// waitOutboxEmpty waits until the outbox has sent and deleted every queued
// event. The sink records an event before the outbox deletes its row, so
// the row can outlive the event's arrival for a moment.
func waitOutboxEmpty(t *testing.T, h *fntest.Harness) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := h.Count(`select count(*) from event_outbox`)
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d events still in the outbox after 5s, want 0", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// templateNow is the template as a version would save it.
func templateNow(t *testing.T, h *fntest.Harness, id string) []byte {
	t.Helper()
	var b []byte
	if err := h.Pool.QueryRow(context.Background(),
		`select to_jsonb(t) - 'created_at' - 'updated_at' from user_session_templates t where id = $1`, id).Scan(&b); err != nil {
		t.Fatal(err)
	}
	return b
}

func create(t *testing.T, h *fntest.Harness, token, template string, body any) (int, function.Version) {
	t.Helper()
	status, raw := h.Do(http.MethodPost, versionsPath(template), token, body)
	var v function.Version
	if status == http.StatusCreated {
		if err := json.Unmarshal(raw, &v); err != nil {
			t.Fatalf("decode %s: %v", raw, err)
		}
	}
	return status, v
}

func list(t *testing.T, h *fntest.Harness, token, template, query string) function.ListResult {
	t.Helper()
	status, raw := h.Do(http.MethodGet, versionsPath(template)+query, token, nil)
	if status != http.StatusOK {
		t.Fatalf("list %s: %d %s", query, status, raw)
	}
	var res function.ListResult
	if err := json.Unmarshal(raw, &res); err != nil {
		t.Fatal(err)
	}
	return res
}

func TestCreateSnapshotsTheWholeTemplate(t *testing.T) {
	h := start(t, nil)
	alice := h.Token("alice", authn.User)
	seedTemplate(t, h, "tpl", "alice", "Firefox", `{"image":"firefox:118","resources":{"cpu":"1"}}`)
	before := dbNow(t, h)

	status, v := create(t, h, alice, "tpl", map[string]any{"description": "first cut", "tags": []string{" v1.0 ", "stable", "v1.0"}})
	if status != http.StatusCreated {
		t.Fatalf("status %d, want 201", status)
	}
	if v.Number != 1 || v.TemplateID != "tpl" || v.CreatedBy != "alice" || v.Description != "first cut" || v.RestoredFrom != nil {
		t.Errorf("version %+v", v)
	}
	if !slices.Equal(v.Tags, []string{"v1.0", "stable"}) {
		t.Errorf("tags %q, want trimmed and folded [v1.0 stable]", v.Tags)
	}
	var stored time.Time
	var inRange bool
	if err := h.Pool.QueryRow(context.Background(),
		`select created_at, created_at between $2 and now() from template_versions where template_id = 'tpl' and version_number = $1`,
		v.Number, before).Scan(&stored, &inRange); err != nil {
		t.Fatal(err)
	}
	if !v.CreatedAt.Equal(stored) || !inRange {
		t.Errorf("createdAt %s, want the stored %s, between the request's start %s and now by the database clock", v.CreatedAt, stored, before)
	}
	want := `{"id":"tpl","user_id":"alice","name":"Firefox","description":"","category":"browsers",
		"config":{"image":"firefox:118","resources":{"cpu":"1"}},"tags":["web"]}`
	if !sameJSON(t, v.Data, []byte(want)) {
		t.Errorf("templateData %s, want every column but the timestamps: %s", v.Data, want)
	}

	// Without tags or description, and the numbers go on.
	status, v = create(t, h, alice, "tpl", map[string]any{})
	if status != http.StatusCreated || v.Number != 2 || v.Description != "" || v.Tags == nil || len(v.Tags) != 0 {
		t.Errorf("second version: %d %+v", status, v)
	}

	got := h.Sink.WaitForN(context.Background(), events.TemplateVersionCreated, 2, 5*time.Second)
	if len(got) < 1 {
		t.Fatal("no template.version.created event")
	}
	if got[0].Source() != events.SourceOf(function.Name) {
		t.Errorf("source %q", got[0].Source())
	}
	var numbers []int
	for _, e := range got {
		d, err := events.Decode[events.TemplateVersionCreatedData](e)
		if err != nil {
			t.Fatal(err)
		}
		if d.TemplateID != "tpl" || d.CreatedBy != "alice" {
			t.Errorf("event data %+v", d)
		}
		if d.Version == 1 && !slices.Equal(d.Tags, []string{"v1.0", "stable"}) {
			t.Errorf("event tags %q", d.Tags)
		}
		numbers = append(numbers, d.Version)
	}
	slices.Sort(numbers)
	if !slices.Equal(numbers, []int{1, 2}) {
		t.Errorf("events for versions %v, want [1 2]", numbers)
	}
}

func TestCreateRejectsBadInputAndChangesNothing(t *testing.T) {
	h := start(t, nil)
	alice := h.Token("alice", authn.User)
	seedTemplate(t, h, "tpl", "alice", "T", `{}`)
	tooMany := make([]string, function.MaxTags+1)
	for i := range tooMany {
		tooMany[i] = fmt.Sprintf("t%d", i)
	}
	tests := []struct {
		name, path string
		body       any
		want       string
	}{
		{"description too long", versionsPath("tpl"), map[string]any{"description": strings.Repeat("é", 1001)}, "at most 1000"},
		{"description with NUL", versionsPath("tpl"), map[string]any{"description": "a\x00b"}, "control"},
		{"too many tags", versionsPath("tpl"), map[string]any{"tags": tooMany}, "at most 20"},
		{"blank tag", versionsPath("tpl"), map[string]any{"tags": []string{"ok", "  "}}, "tags[1]"},
		{"long tag", versionsPath("tpl"), map[string]any{"tags": []string{strings.Repeat("x", 51)}}, "tags[0]"},
		{"control character in tag", versionsPath("tpl"), map[string]any{"tags": []string{"a\tb"}}, "control"},
		{"reserved tag", versionsPath("tpl"), map[string]any{"tags": []string{"auto-backup"}}, "reserved"},
		{"reserved tag in capitals", versionsPath("tpl"), map[string]any{"tags": []string{"Auto-Backup"}}, "reserved"},
		{"unknown field", versionsPath("tpl"), `{"description":"x","version":7}`, "version"},
		{"wrong type", versionsPath("tpl"), `{"tags":"v1"}`, "tags"},
		{"malformed json", versionsPath("tpl"), `{"description":`, "malformed"},
		{"no body", versionsPath("tpl"), nil, "empty"},
		{"template id with a control character", versionsPath("tp%01l"), map[string]any{}, "template id"},
		{"template id too long", versionsPath(strings.Repeat("t", 256)), map[string]any{}, "template id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, raw := h.Do(http.MethodPost, tc.path, alice, tc.body)
			if status != http.StatusBadRequest {
				t.Fatalf("status %d, want 400 (%s)", status, raw)
			}
			if _, msg := fntest.ErrorBody(t, raw); !strings.Contains(msg, tc.want) {
				t.Errorf("message %q does not name %q", msg, tc.want)
			}
		})
	}
	// The limits themselves are allowed.
	atLimits := map[string]any{"description": strings.Repeat("é", 1000), "tags": tooMany[:20]}
	if status, v := create(t, h, alice, "tpl", atLimits); status != http.StatusCreated || len(v.Tags) != 20 {
		t.Errorf("at the limits: %d, %d tags", status, len(v.Tags))
	}
	if n := h.Count(`select count(*) from template_versions`); n != 1 {
		t.Errorf("%d versions, want only the one at the limits", n)
	}
}

// TestConcurrentCreatesNumberWithoutGaps: 50 creates at once on one
// template get 1..50, each once.
func TestConcurrentCreatesNumberWithoutGaps(t *testing.T) {
	h := start(t, nil)
	seedTemplate(t, h, "tpl", "alice", "T", `{}`)
	token := h.Token("alice", authn.User)
	const n = 50
	var wg sync.WaitGroup
	results := make([]function.Version, n)
	failures := make([]error, n)
	for i := range n {
		wg.Go(func() {
			results[i], failures[i] = post(h.URL+versionsPath("tpl"), token, fmt.Sprintf(`{"description":"writer %d"}`, i))
		})
	}
	wg.Wait()
	var got []int
	for i, err := range failures {
		if err != nil {
			t.Errorf("writer %d: %v", i, err)
			continue
		}
		got = append(got, results[i].Number)
	}
	slices.Sort(got)
	want := make([]int, n)
	for i := range want {
		want[i] = i + 1
	}
	if !slices.Equal(got, want) {
		t.Errorf("numbers returned %v, want 1..%d", got, n)
	}
	rows, err := h.Pool.Query(context.Background(), `select version_number from template_versions where template_id = 'tpl' order by 1`)
	if err != nil {
		t.Fatal(err)
	}
	var stored []int
	for rows.Next() {
		var v int
		rows.Scan(&v)
		stored = append(stored, v)
	}
	if !slices.Equal(stored, want) {
		t.Errorf("numbers stored %v, want 1..%d", stored, n)
	}
}

// post is a request made off the test goroutine, where h.Do (which may
// call t.Fatal) must not be used.
func post(url, token, body string) (function.Version, error) {
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return function.Version{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return function.Version{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return function.Version{}, err
	}
	if resp.StatusCode != http.StatusCreated {
		return function.Version{}, fmt.Errorf("status %d: %s", resp.StatusCode, raw)
	}
	var v function.Version
	return v, json.Unmarshal(raw, &v)
}

// seedVersions stores versions 1..n of template directly, every third one
// tagged, the last one restored from version 1.
func seedVersions(t *testing.T, h *fntest.Harness, template string, n int) {
	t.Helper()
	exec(t, h, `
		insert into template_versions (template_id, version_number, template_data, description, created_by, tags, restored_from)
		select $1, g, jsonb_build_object('name', 'v' || g), 'version ' || g, 'author-' || (g % 3),
			case when g % 3 = 0 then array['release-' || g] else '{}' end,
			case when g = $2 then 1 end
		from generate_series(1, $2::int) g`, template, n)
}

func TestListPagesNewestFirst(t *testing.T) {
	h := start(t, nil)
	alice := h.Token("alice", authn.User)
	seedTemplate(t, h, "tpl", "alice", "T", `{}`)
	seedVersions(t, h, "tpl", 45)

	var seen []int
	query := "?limit=10"
	pages := 0
	for {
		res := list(t, h, alice, "tpl", query)
		pages++
		for _, v := range res.Versions {
			seen = append(seen, v.Number)
			if v.Data != nil {
				t.Errorf("version %d carries templateData in a list", v.Number)
			}
		}
		if res.NextCursor == "" {
			break
		}
		if pages > 10 {
			t.Fatal("pagination does not end")
		}
		query = "?limit=10&cursor=" + res.NextCursor
	}
	if pages != 5 || len(seen) != 45 {
		t.Fatalf("%d pages, %d versions; want 5 and 45", pages, len(seen))
	}
	for i, n := range seen {
		if n != 45-i {
			t.Fatalf("order %v, want 45 down to 1", seen)
		}
	}

	first := list(t, h, alice, "tpl", "")
	if len(first.Versions) != function.DefaultLimit || first.NextCursor == "" {
		t.Errorf("default page: %d versions, cursor %q; want %d and a cursor", len(first.Versions), first.NextCursor, function.DefaultLimit)
	}
	top := first.Versions[0]
	if top.Number != 45 || top.CreatedBy != "author-0" || top.Description != "version 45" ||
		!slices.Equal(top.Tags, []string{"release-45"}) || top.RestoredFrom == nil || *top.RestoredFrom != 1 || top.CreatedAt.IsZero() {
		t.Errorf("newest version %+v", top)
	}
	if v := first.Versions[1]; v.RestoredFrom != nil || len(v.Tags) != 0 || v.Tags == nil {
		t.Errorf("version 44 %+v: want no restoredFrom and tags []", v)
	}
	if all := list(t, h, alice, "tpl", "?limit=100"); len(all.Versions) != 45 || all.NextCursor != "" {
		t.Errorf("limit 100: %d versions, cursor %q", len(all.Versions), all.NextCursor)
	}

	seedTemplate(t, h, "empty", "alice", "E", `{}`)
	raw := func() string {
		_, b := h.Do(http.MethodGet, versionsPath("empty"), alice, nil)
		return string(b)
	}()
	if !strings.Contains(raw, `"versions":[]`) || strings.Contains(raw, "nextCursor") {
		t.Errorf("template without versions: %s", raw)
	}
}

func TestListRejectsBadQueries(t *testing.T) {
	h := start(t, nil)
	alice := h.Token("alice", authn.User)
	seedTemplate(t, h, "tpl", "alice", "T", `{}`)
	seedTemplate(t, h, "other", "alice", "O", `{}`)
	seedVersions(t, h, "tpl", 5)
	seedVersions(t, h, "other", 5)
	cursor := list(t, h, alice, "tpl", "?limit=2").NextCursor
	raw, _ := base64.RawURLEncoding.DecodeString(cursor)
	edited := base64.RawURLEncoding.EncodeToString(bytes.Replace(raw, []byte("4."), []byte("5."), 1))
	queries := []string{
		"?limit=0", "?limit=101", "?limit=-1", "?limit=abc", "?limit=", "?limit=1.5",
		"?cursor=not-base64!",
		"?cursor=" + base64.RawURLEncoding.EncodeToString([]byte("3")),
		"?cursor=" + edited,
		"?cursor=" + cursor[:len(cursor)-2],
		"?cursor=" + strings.Repeat("A", 100),
	}
	for _, q := range queries {
		status, body := h.Do(http.MethodGet, versionsPath("tpl")+q, alice, nil)
		if status != http.StatusBadRequest {
			t.Errorf("%s: %d %s, want 400", q, status, body)
		}
	}
	// A cursor belongs to the template whose list issued it.
	if status, body := h.Do(http.MethodGet, versionsPath("other")+"?cursor="+cursor, alice, nil); status != http.StatusBadRequest {
		t.Errorf("another template's cursor: %d %s, want 400", status, body)
	}
	if got := list(t, h, alice, "tpl", "?limit=2&cursor="+cursor); len(got.Versions) != 2 || got.Versions[0].Number != 3 {
		t.Errorf("the real cursor: %+v", got)
	}
}

func TestRestoreSavesABackupAndOverwritesTheTemplate(t *testing.T) {
	h := start(t, nil)
	alice, bob := h.Token("alice", authn.User), h.Token("bob", authn.User)
	exec(t, h, `insert into users (id, username) values ('bob', 'bob')`)
	seedTemplate(t, h, "tpl", "alice", "Firefox", `{"image":"firefox:118"}`)
	exec(t, h, `insert into template_shares (template_id, shared_by, shared_with_user_id, permission_level) values ('tpl', 'alice', 'bob', 'write')`)
	if status, _ := create(t, h, alice, "tpl", map[string]any{"description": "good", "tags": []string{"stable"}}); status != http.StatusCreated {
		t.Fatal(status)
	}
	v1 := templateNow(t, h, "tpl")
	exec(t, h, `update user_session_templates set name = 'Broken', category = null, config = '{"image":"firefox:999"}', tags = '[]' where id = 'tpl'`)
	before := templateNow(t, h, "tpl")

	status, raw := h.Do(http.MethodPost, restorePath("tpl", 1), bob, nil)
	if status != http.StatusOK {
		t.Fatalf("restore: %d %s", status, raw)
	}
	var res function.RestoreResult
	if err := json.Unmarshal(raw, &res); err != nil {
		t.Fatal(err)
	}
	if now := templateNow(t, h, "tpl"); !sameJSON(t, now, v1) || !sameJSON(t, res.Template, v1) {
		t.Errorf("template after restore %s (response %s), want version 1: %s", now, res.Template, v1)
	}
	b := res.Backup
	if res.Restored != 1 || b.Number != 2 || b.CreatedBy != "bob" || b.Description != "before restoring version 1" ||
		!slices.Equal(b.Tags, []string{function.AutoBackupTag}) || b.RestoredFrom == nil || *b.RestoredFrom != 1 {
		t.Errorf("restore result %+v", res)
	}
	var backup []byte
	h.Pool.QueryRow(context.Background(), `select template_data from template_versions where template_id = 'tpl' and version_number = 2`).Scan(&backup)
	if !sameJSON(t, backup, before) {
		t.Errorf("backup %s, want the state before the restore %s", backup, before)
	}

	var actor, action, details string
	if err := h.Pool.QueryRow(context.Background(),
		`select actor, action, details::text from audit_log where resource_type = $1 and resource_id = 'tpl'`, access.ResourceType).Scan(&actor, &action, &details); err != nil {
		t.Fatalf("audit row: %v", err)
	}
	if actor != "bob" || action != "template.version.restored" || !sameJSON(t, []byte(details), []byte(`{"version":1,"backupVersion":2}`)) {
		t.Errorf("audit row %s %s %s", actor, action, details)
	}

	restored := h.Sink.WaitFor(context.Background(), events.TemplateVersionRestored, 5*time.Second)
	updated := h.Sink.WaitFor(context.Background(), events.TemplateUpdated, 5*time.Second)
	if len(restored) != 1 || len(updated) != 1 {
		t.Fatalf("%d restored and %d updated events, want 1 and 1", len(restored), len(updated))
	}
	rd, _ := events.Decode[events.TemplateVersionRestoredData](restored[0])
	if rd != (events.TemplateVersionRestoredData{TemplateID: "tpl", Version: 1, BackupVersion: 2, RestoredBy: "bob"}) {
		t.Errorf("restored event %+v", rd)
	}
	ud, _ := events.Decode[events.TemplateUpdatedData](updated[0])
	if ud != (events.TemplateUpdatedData{TemplateID: "tpl", UserID: "bob", Change: "restored"}) {
		t.Errorf("updated event %+v", ud)
	}
	waitOutboxEmpty(t, h)

	// Restoring the backup undoes the restore.
	if status, raw := h.Do(http.MethodPost, restorePath("tpl", 2), alice, nil); status != http.StatusOK {
		t.Fatalf("restore the backup: %d %s", status, raw)
	}
	if now := templateNow(t, h, "tpl"); !sameJSON(t, now, before) {
		t.Errorf("after restoring the backup %s, want %s", now, before)
	}
}

// TestRestoreIsAllOrNothing fails the restore after the backup version is
// written, at the template update, and checks nothing of it remains.
func TestRestoreIsAllOrNothing(t *testing.T) {
	h := start(t, nil)
	alice := h.Token("alice", authn.User)
	seedTemplate(t, h, "tpl", "alice", "Firefox", `{"image":"firefox:118"}`)
	if status, _ := create(t, h, alice, "tpl", map[string]any{}); status != http.StatusCreated {
		t.Fatal(status)
	}
	exec(t, h, `update user_session_templates set name = 'Current' where id = 'tpl'`)
	before := templateNow(t, h, "tpl")
	waitOutboxEmpty(t, h) // the create's event is sent
	exec(t, h, `
		create function refuse_update() returns trigger language plpgsql as $$
		begin raise exception 'template updates are refused by the test'; end $$`)
	exec(t, h, `create trigger refuse_update before update on user_session_templates for each row execute function refuse_update()`)

	status, raw := h.Do(http.MethodPost, restorePath("tpl", 1), alice, nil)
	if status != http.StatusInternalServerError {
		t.Fatalf("status %d %s, want 500", status, raw)
	}
	if _, msg := fntest.ErrorBody(t, raw); strings.Contains(msg, "refused by the test") {
		t.Errorf("internal error detail reached the client: %q", msg)
	}
	if n := h.Count(`select count(*) from template_versions where template_id = 'tpl'`); n != 1 {
		t.Errorf("%d versions, want 1: the backup must roll back", n)
	}
	if now := templateNow(t, h, "tpl"); !sameJSON(t, now, before) {
		t.Errorf("template %s, want unchanged %s", now, before)
	}
	if n := h.Count(`select count(*) from audit_log`); n != 0 {
		t.Errorf("%d audit rows, want 0", n)
	}
	// Events are queued in the route's transaction: none queued means none
	// can ever be sent.
	if n := h.Count(`select count(*) from event_outbox`); n != 0 {
		t.Errorf("%d events queued by the failed restore, want 0", n)
	}
	for _, e := range h.Sink.Events() {
		if e.Type() != events.TemplateVersionCreated {
			t.Errorf("%s event sent after the failed restore, want none", e.Type())
		}
	}
}

func TestRestoreOfDataThatNoLongerFitsIsAConflict(t *testing.T) {
	h := start(t, nil)
	alice := h.Token("alice", authn.User)
	seedTemplate(t, h, "tpl", "alice", "T", `{}`)
	exec(t, h, `insert into template_versions (template_id, version_number, template_data, created_by)
		values ('tpl', 1, '{"name": null}', 'alice'), ('tpl', 2, '{"config": [1]}', 'alice')`)
	before := templateNow(t, h, "tpl")
	for _, n := range []int{1, 2} {
		status, raw := h.Do(http.MethodPost, restorePath("tpl", n), alice, nil)
		if status != http.StatusConflict {
			t.Errorf("version %d: %d %s, want 409", n, status, raw)
		}
	}
	if now := templateNow(t, h, "tpl"); !sameJSON(t, now, before) {
		t.Errorf("template changed: %s", now)
	}
	// A version saved before a column existed restores what it has.
	exec(t, h, `insert into template_versions (template_id, version_number, template_data, created_by)
		values ('tpl', 3, '{"name": "Old", "unknown": 1}', 'alice')`)
	if status, raw := h.Do(http.MethodPost, restorePath("tpl", 3), alice, nil); status != http.StatusOK {
		t.Fatalf("partial version: %d %s", status, raw)
	}
	want := strings.Replace(string(before), `"name": "T"`, `"name": "Old"`, 1)
	if now := templateNow(t, h, "tpl"); !sameJSON(t, now, []byte(want)) {
		t.Errorf("template %s, want %s", now, want)
	}
}

// TestDeletingATemplateDeletesItsVersions: versions belong to their
// template, so a new template that reuses the id starts a history of its own.
func TestDeletingATemplateDeletesItsVersions(t *testing.T) {
	h := start(t, nil)
	seedTemplate(t, h, "tpl", "alice", "Old", `{}`)
	seedTemplate(t, h, "other", "alice", "O", `{}`)
	seedVersions(t, h, "tpl", 3)
	seedVersions(t, h, "other", 2)

	exec(t, h, `delete from user_session_templates where id = 'tpl'`)
	if n := h.Count(`select count(*) from template_versions where template_id = 'tpl'`); n != 0 {
		t.Errorf("%d versions of the deleted template, want 0", n)
	}
	if n := h.Count(`select count(*) from template_versions where template_id = 'other'`); n != 2 {
		t.Errorf("%d versions of another template, want its 2", n)
	}

	seedTemplate(t, h, "tpl", "bob", "New", `{}`)
	bob := h.Token("bob", authn.User)
	if got := list(t, h, bob, "tpl", ""); len(got.Versions) != 0 {
		t.Errorf("new template with a reused id lists %d versions, want 0", len(got.Versions))
	}
	if status, v := create(t, h, bob, "tpl", map[string]any{}); status != http.StatusCreated || v.Number != 1 {
		t.Errorf("first version of the new template: %d, number %d; want 201 and 1", status, v.Number)
	}

	_, err := h.Pool.Exec(context.Background(), `insert into template_versions (template_id, version_number, template_data, created_by)
		values ('gone', 1, '{}', 'alice')`)
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); !ok || pgErr.Code != "23503" {
		t.Errorf("version of a template that does not exist: got %v, want a foreign key violation (23503)", err)
	}
}

func TestRetentionKeepsNewestTaggedAndRecentBackups(t *testing.T) {
	h := start(t, map[string]string{"VERSION_RETENTION": "3"})
	alice := h.Token("alice", authn.User)
	seedTemplate(t, h, "tpl", "alice", "T", `{}`)
	seedTemplate(t, h, "other", "alice", "O", `{}`)
	exec(t, h, `
		insert into template_versions (template_id, version_number, template_data, created_by, created_at, tags)
		values
			('tpl', 1, '{}', 'alice', now() - interval '90 days', '{}'),
			('tpl', 2, '{}', 'alice', now() - interval '90 days', '{v1.0}'),
			('tpl', 3, '{}', 'alice', now() - interval '40 days', '{auto-backup}'),
			('tpl', 4, '{}', 'alice', now() - interval '5 days', '{auto-backup}'),
			('tpl', 5, '{}', 'alice', now() - interval '2 days', '{}'),
			('tpl', 6, '{}', 'alice', now() - interval '1 day', '{}'),
			('tpl', 7, '{}', 'alice', now() - interval '1 hour', '{}'),
			('other', 1, '{}', 'alice', now() - interval '90 days', '{}')`)
	numbers := func(template string) []int {
		rows, err := h.Pool.Query(context.Background(), `select version_number from template_versions where template_id = $1 order by 1`, template)
		if err != nil {
			t.Fatal(err)
		}
		var out []int
		for rows.Next() {
			var n int
			rows.Scan(&n)
			out = append(out, n)
		}
		return out
	}

	if status, _ := create(t, h, alice, "tpl", map[string]any{}); status != http.StatusCreated {
		t.Fatal(status)
	}
	// Newest 3 (6, 7, 8); tagged 2; auto-backup 4 is 5 days old. Untagged 1
	// and 5 and the 40-day-old backup 3 go.
	if got, want := numbers("tpl"), []int{2, 4, 6, 7, 8}; !slices.Equal(got, want) {
		t.Errorf("after create: %v, want %v", got, want)
	}
	if got := numbers("other"); !slices.Equal(got, []int{1}) {
		t.Errorf("another template's versions were pruned: %v", got)
	}

	// A restore adds a backup (9) and prunes in the same transaction.
	if status, raw := h.Do(http.MethodPost, restorePath("tpl", 7), alice, nil); status != http.StatusOK {
		t.Fatalf("restore: %d %s", status, raw)
	}
	if got, want := numbers("tpl"), []int{2, 4, 7, 8, 9}; !slices.Equal(got, want) {
		t.Errorf("after restore: %v, want %v", got, want)
	}
	// Numbers never repeat after pruning.
	if _, v := create(t, h, alice, "tpl", map[string]any{}); v.Number != 10 {
		t.Errorf("next number %d, want 10", v.Number)
	}
}

func TestDiff(t *testing.T) {
	h := start(t, nil)
	alice := h.Token("alice", authn.User)
	seedTemplate(t, h, "tpl", "alice", "Firefox", `{"image":"firefox:118","env":["A=1"]}`)
	create(t, h, alice, "tpl", map[string]any{})
	exec(t, h, `update user_session_templates set name = 'Firefox ESR', config = '{"image":"firefox:128","env":["A=1","B=2"],"a/b":1} ' where id = 'tpl'`)
	create(t, h, alice, "tpl", map[string]any{})
	exec(t, h, `update user_session_templates set category = null where id = 'tpl'`)

	diff := func(against string) function.DiffResult {
		t.Helper()
		status, raw := h.Do(http.MethodGet, diffPath("tpl", 1, against), alice, nil)
		if status != http.StatusOK {
			t.Fatalf("diff against %q: %d %s", against, status, raw)
		}
		var d function.DiffResult
		if err := json.Unmarshal(raw, &d); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(raw), `"op":"replace","path":"/config/image","value":"firefox:128"`) {
			t.Errorf("patch is not written op, path, value: %s", raw)
		}
		return d
	}
	var v1, v2 []byte
	h.Pool.QueryRow(context.Background(), `select template_data from template_versions where version_number = 1`).Scan(&v1)
	h.Pool.QueryRow(context.Background(), `select template_data from template_versions where version_number = 2`).Scan(&v2)

	d := diff("2")
	if d.Version != 1 || d.Against != "2" || d.TemplateID != "tpl" {
		t.Errorf("header %+v", d)
	}
	wantPatch := `[
		{"op":"add","path":"/config/a~1b","value":1},
		{"op":"add","path":"/config/env/-","value":"B=2"},
		{"op":"replace","path":"/config/image","value":"firefox:128"},
		{"op":"replace","path":"/name","value":"Firefox ESR"}]`
	got, _ := json.Marshal(d.Patch)
	if !sameJSON(t, got, []byte(wantPatch)) {
		t.Errorf("patch %s, want %s", got, wantPatch)
	}
	if d.Summary.Text != "changed config.env, config.image, name; added config.a/b" {
		t.Errorf("summary %+v", d.Summary)
	}
	if out := applyPatch(t, v1, got); !sameJSON(t, out, v2) {
		t.Errorf("patch applied to version 1 gives %s, want version 2 %s", out, v2)
	}

	for _, against := range []string{"", "current"} {
		d = diff(against)
		got, _ = json.Marshal(d.Patch)
		if d.Against != "current" || !slices.Contains(d.Summary.Changed, "category") {
			t.Errorf("against %q: %+v", against, d)
		}
		if out := applyPatch(t, v1, got); !sameJSON(t, out, templateNow(t, h, "tpl")) {
			t.Errorf("against %q: patch gives %s, want the current template", against, out)
		}
	}

	status, raw := h.Do(http.MethodGet, diffPath("tpl", 1, "1"), alice, nil)
	if status != http.StatusOK || !strings.Contains(string(raw), `"patch":[]`) || !strings.Contains(string(raw), "no changes") {
		t.Errorf("a version against itself: %d %s", status, raw)
	}
	for _, tc := range []struct {
		path string
		want int
	}{
		{diffPath("tpl", 9, ""), http.StatusNotFound},
		{diffPath("tpl", 1, "9"), http.StatusNotFound},
		{diffPath("tpl", 1, "latest"), http.StatusBadRequest},
		{diffPath("tpl", 1, "0"), http.StatusBadRequest},
		{diffPath("tpl", 1, "-2"), http.StatusBadRequest},
		{diffPath("tpl", 1, "CURRENT"), http.StatusBadRequest},
	} {
		if status, raw := h.Do(http.MethodGet, tc.path, alice, nil); status != tc.want {
			t.Errorf("%s: %d %s, want %d", tc.path, status, raw, tc.want)
		}
	}
}

// TestAccessOnEveryRoute: no access is 404 everywhere, so template ids
// cannot be probed; read access lists and diffs but may not write.
func TestAccessOnEveryRoute(t *testing.T) {
	h := start(t, nil)
	exec(t, h, `insert into users (id, username) values ('reader', 'reader'), ('member', 'member'), ('stranger', 'stranger')`)
	exec(t, h, `insert into teams (id, name) values ('devs', 'devs')`)
	exec(t, h, `insert into team_members (team_id, user_id) values ('devs', 'member')`)
	seedTemplate(t, h, "tpl", "owner", "T", `{}`)
	exec(t, h, `insert into template_shares (template_id, shared_by, shared_with_user_id, permission_level) values ('tpl', 'owner', 'reader', 'read')`)
	exec(t, h, `insert into template_shares (template_id, shared_by, shared_with_team_id, permission_level) values ('tpl', 'owner', 'devs', 'write')`)
	seedVersions(t, h, "tpl", 2)

	type route struct {
		name, method, path string
		body               any
		write              bool
	}
	routes := []route{
		{"list", http.MethodGet, versionsPath("tpl"), nil, false},
		{"diff", http.MethodGet, diffPath("tpl", 1, "2"), nil, false},
		{"create", http.MethodPost, versionsPath("tpl"), map[string]any{}, true},
		{"restore", http.MethodPost, restorePath("tpl", 1), nil, true},
	}
	for _, rt := range routes {
		t.Run(rt.name, func(t *testing.T) {
			status, raw := h.Do(rt.method, rt.path, h.Token("stranger", authn.User), rt.body)
			if status != http.StatusNotFound {
				t.Errorf("stranger: %d %s, want 404", status, raw)
			}
			unknown := strings.Replace(rt.path, "/tpl/", "/nope/", 1)
			status, raw = h.Do(rt.method, unknown, h.Token("owner", authn.User), rt.body)
			if status != http.StatusNotFound {
				t.Errorf("unknown template: %d %s, want 404", status, raw)
			}
			if code, msg := fntest.ErrorBody(t, raw); code != "not_found" || !strings.Contains(msg, "template") {
				t.Errorf("unknown template: %s %q", code, msg)
			}
			want := http.StatusOK
			if rt.write {
				want = http.StatusForbidden
			}
			if status, raw := h.Do(rt.method, rt.path, h.Token("reader", authn.User), rt.body); status != want {
				t.Errorf("reader: %d %s, want %d", status, raw, want)
			}
			for _, who := range []struct {
				name string
				role authn.Role
			}{{"member", authn.User}, {"root", authn.Admin}, {"owner", authn.User}} {
				status, raw := h.Do(rt.method, rt.path, h.Token(who.name, who.role), rt.body)
				if status >= 300 {
					t.Errorf("%s: %d %s, want success", who.name, status, raw)
				}
			}
		})
	}

	// Leaving the team takes its write access away at once.
	exec(t, h, `delete from team_members where user_id = 'member'`)
	if status, _ := create(t, h, h.Token("member", authn.User), "tpl", map[string]any{}); status != http.StatusNotFound {
		t.Errorf("former member creates: %d, want 404", status)
	}
	if n := h.Count(`select count(*) from template_versions where created_by in ('stranger', 'reader')`); n != 0 {
		t.Errorf("%d versions written by users without write access", n)
	}
}

func TestVersionNumbersInPathsAreValidated(t *testing.T) {
	h := start(t, nil)
	alice := h.Token("alice", authn.User)
	seedTemplate(t, h, "tpl", "alice", "T", `{}`)
	seedVersions(t, h, "tpl", 1)
	for _, v := range []string{"0", "-1", "abc", "1.5", "01", "+1", "2147483648", "99999999999"} {
		for _, p := range []struct{ method, path string }{
			{http.MethodPost, restorePath("tpl", v)},
			{http.MethodGet, diffPath("tpl", v, "")},
		} {
			if status, raw := h.Do(p.method, p.path, alice, nil); status != http.StatusBadRequest {
				t.Errorf("%s %s: %d %s, want 400", p.method, p.path, status, raw)
			}
		}
	}
	if status, raw := h.Do(http.MethodPost, restorePath("tpl", 2147483647), alice, nil); status != http.StatusNotFound {
		t.Errorf("restore of a missing version: %d %s, want 404", status, raw)
	} else if _, msg := fntest.ErrorBody(t, raw); !strings.Contains(msg, "version 2147483647") {
		t.Errorf("message %q does not name the version", msg)
	}
	if n := h.Count(`select count(*) from template_versions`); n != 1 {
		t.Errorf("%d versions after failed restores, want 1 (no backup left behind)", n)
	}
}

func TestRoutesRequireAToken(t *testing.T) {
	h := start(t, nil)
	seedTemplate(t, h, "tpl", "alice", "T", `{}`)
	for _, tc := range []struct{ method, path string }{
		{http.MethodGet, versionsPath("tpl")},
		{http.MethodPost, versionsPath("tpl")},
		{http.MethodPost, restorePath("tpl", 1)},
		{http.MethodGet, diffPath("tpl", 1, "")},
	} {
		for _, token := range []string{"", "not-a-jwt"} {
			status, body := h.Do(tc.method, tc.path, token, nil)
			if status != http.StatusUnauthorized || !strings.Contains(string(body), "unauthenticated") {
				t.Errorf("%s %s token %q: %d %s, want 401", tc.method, tc.path, token, status, body)
			}
		}
	}
}

func TestStartRefusesABadRetention(t *testing.T) {
	for _, env := range []map[string]string{
		{"VERSION_RETENTION": "0"},
		{"VERSION_RETENTION": "-5"},
		{"VERSION_BACKUP_RETENTION": "-1h"},
	} {
		base := map[string]string{
			"DATABASE_URL": "postgres://127.0.0.1:1/none", "AUTH_ISSUER": "x", "AUTH_AUDIENCE": "x", "AUTH_JWKS_URL": "http://127.0.0.1:1",
		}
		for k, v := range env {
			base[k] = v
		}
		err := function.New().Start(context.Background(), base)
		for k := range env {
			if err == nil || !strings.Contains(err.Error(), k) {
				t.Errorf("%v: got %v, want an error naming %s", env, err, k)
			}
		}
	}
}
