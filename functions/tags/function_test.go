package function_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/streamspace-dev/functions/events"
	function "github.com/streamspace-dev/functions/functions/tags"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/fntest"
)

const (
	batchPath   = "/api/v1/batch/sessions/update-tags"
	popularPath = "/api/v1/search/filters/tags"
)

func start(t *testing.T) *fntest.Harness {
	t.Helper()
	return fntest.Start(t, function.New(), nil)
}

// seedSessions creates sessions id → owner with tags.
func seedSessions(t *testing.T, h *fntest.Harness, owner string, tags []string, ids ...string) {
	t.Helper()
	raw, _ := json.Marshal(tags)
	for _, id := range ids {
		if _, err := h.Pool.Exec(context.Background(),
			`insert into sessions (id, user_id, template_id, state, tags) values ($1, $2, 'firefox', 'running', $3)`,
			id, owner, raw); err != nil {
			t.Fatal(err)
		}
	}
}

func tagsOf(t *testing.T, h *fntest.Harness, id string) []string {
	t.Helper()
	var tags []string
	if err := h.Pool.QueryRow(context.Background(), `select tags from sessions where id = $1`, id).Scan(&tags); err != nil {
		t.Fatalf("tags of %s: %v", id, err)
	}
	return tags
}

func batch(t *testing.T, h *fntest.Harness, token string, body any) (int, function.BatchResult) {
	t.Helper()
	status, raw := h.Do(http.MethodPost, batchPath, token, body)
	var res function.BatchResult
	if status == http.StatusOK {
		if err := json.Unmarshal(raw, &res); err != nil {
			t.Fatalf("decode %s: %v", raw, err)
		}
	}
	return status, res
}

func TestBatchOperations(t *testing.T) {
	h := start(t)
	alice := h.Token("alice", authn.User)
	seedSessions(t, h, "alice", []string{"dev"}, "s1", "s2")

	tests := []struct {
		name string
		op   string
		tags []string
		want []string
	}{
		{"add appends without duplicates", "add", []string{"gpu", "dev", " gpu ", "team-a"}, []string{"dev", "gpu", "team-a"}},
		{"add again changes nothing", "add", []string{"gpu"}, []string{"dev", "gpu", "team-a"}},
		{"remove removes", "remove", []string{"gpu", "absent"}, []string{"dev", "team-a"}},
		{"replace sets exactly", "replace", []string{"x", "y"}, []string{"x", "y"}},
		{"replace with nothing clears", "replace", []string{}, []string{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, res := batch(t, h, alice, map[string]any{"operation": tc.op, "sessionIds": []string{"s1", "s2", "s1"}, "tags": tc.tags})
			if status != http.StatusOK {
				t.Fatalf("status %d, want 200", status)
			}
			if res.Total != 2 || res.Updated != 2 {
				t.Errorf("total %d updated %d, want 2 and 2 (repeated ids folded)", res.Total, res.Updated)
			}
			for _, id := range []string{"s1", "s2"} {
				if got := tagsOf(t, h, id); !slices.Equal(got, tc.want) {
					t.Errorf("%s tags %q, want %q", id, got, tc.want)
				}
			}
		})
	}
}

func TestBatchScopedToOwnerUnlessAdmin(t *testing.T) {
	h := start(t)
	seedSessions(t, h, "alice", []string{}, "a1")
	seedSessions(t, h, "bob", []string{"keep"}, "b1")

	status, res := batch(t, h, h.Token("alice", authn.User), map[string]any{
		"operation": "add", "sessionIds": []string{"b1", "a1", "ghost"}, "tags": []string{"mine"},
	})
	if status != http.StatusOK {
		t.Fatalf("status %d", status)
	}
	want := []function.SessionResult{{"b1", "forbidden"}, {"a1", "updated"}, {"ghost", "not_found"}}
	if !slices.Equal(res.Results, want) {
		t.Errorf("results %+v, want %+v", res.Results, want)
	}
	if res.Updated != 1 || res.Forbidden != 1 || res.NotFound != 1 {
		t.Errorf("counts %+v", res)
	}
	if got := tagsOf(t, h, "b1"); !slices.Equal(got, []string{"keep"}) {
		t.Errorf("alice changed bob's session: %q", got)
	}

	var status2, results string
	var success, failure int
	err := h.Pool.QueryRow(context.Background(),
		`select status, success_count, failure_count, results::text from batch_operations where id = $1 and user_id = 'alice'`,
		res.BatchID).Scan(&status2, &success, &failure, &results)
	if err != nil {
		t.Fatalf("batch_operations row: %v", err)
	}
	if status2 != "partial" || success != 1 || failure != 2 || !strings.Contains(results, `"forbidden"`) {
		t.Errorf("batch_operations = %s %d %d %s", status2, success, failure, results)
	}

	status, res = batch(t, h, h.Token("root", authn.Admin), map[string]any{
		"operation": "add", "sessionIds": []string{"b1"}, "tags": []string{"by-admin"},
	})
	if status != http.StatusOK || res.Updated != 1 {
		t.Fatalf("admin: status %d, %+v", status, res)
	}
	if got := tagsOf(t, h, "b1"); !slices.Equal(got, []string{"keep", "by-admin"}) {
		t.Errorf("admin add: %q", got)
	}
}

func TestBatchRejectsBadInputAndChangesNothing(t *testing.T) {
	h := start(t)
	tok := h.Token("alice", authn.User)
	seedSessions(t, h, "alice", []string{"orig"}, "s1")
	many := make([]string, function.MaxSessionIDs+1)
	for i := range many {
		many[i] = fmt.Sprintf("s-%d", i)
	}
	tooManyTags := make([]string, function.MaxTags+1)
	for i := range tooManyTags {
		tooManyTags[i] = fmt.Sprintf("t%d", i)
	}
	tests := []struct {
		name       string
		body       any
		wantStatus int
		wantMsg    string
	}{
		{"unknown operation", map[string]any{"operation": "merge", "sessionIds": []string{"s1"}, "tags": []string{"a"}}, 400, `"merge"`},
		{"missing operation", map[string]any{"sessionIds": []string{"s1"}, "tags": []string{"a"}}, 400, "operation"},
		{"no session ids", map[string]any{"operation": "add", "sessionIds": []string{}, "tags": []string{"a"}}, 400, "sessionIds"},
		{"empty session id", map[string]any{"operation": "add", "sessionIds": []string{"s1", ""}, "tags": []string{"a"}}, 400, "sessionIds[1]"},
		{"too many ids", map[string]any{"operation": "add", "sessionIds": many, "tags": []string{"a"}}, 400, "at most 10000"},
		{"no tags to add", map[string]any{"operation": "add", "sessionIds": []string{"s1"}, "tags": []string{}}, 400, "at least one tag"},
		{"blank tag", map[string]any{"operation": "add", "sessionIds": []string{"s1"}, "tags": []string{"ok", "   "}}, 400, "tags[1]"},
		{"long tag", map[string]any{"operation": "add", "sessionIds": []string{"s1"}, "tags": []string{strings.Repeat("x", 51)}}, 400, "tags[0]"},
		{"control character", map[string]any{"operation": "add", "sessionIds": []string{"s1"}, "tags": []string{"a\x00b"}}, 400, "control"},
		{"too many tags", map[string]any{"operation": "add", "sessionIds": []string{"s1"}, "tags": tooManyTags}, 400, "at most 50"},
		{"unknown field", `{"operation":"add","sessionIds":["s1"],"tags":["a"],"force":true}`, 400, "force"},
		{"wrong type", `{"operation":"add","sessionIds":"s1","tags":["a"]}`, 400, "sessionIds"},
		{"malformed json", `{"operation":`, 400, "malformed"},
		{"trailing data", `{"operation":"add","sessionIds":["s1"],"tags":["a"]} {}`, 400, "one JSON object"},
		{"body too large", `{"operation":"add","sessionIds":["` + strings.Repeat("x", 5<<20) + `"],"tags":["a"]}`, 413, "exceeds"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, body := h.Do(http.MethodPost, batchPath, tok, tc.body)
			if status != tc.wantStatus {
				t.Fatalf("status %d, want %d (%s)", status, tc.wantStatus, body)
			}
			_, msg := fntest.ErrorBody(t, body)
			if !strings.Contains(msg, tc.wantMsg) {
				t.Errorf("message %q does not name %q", msg, tc.wantMsg)
			}
		})
	}
	if got := tagsOf(t, h, "s1"); !slices.Equal(got, []string{"orig"}) {
		t.Errorf("tags changed by rejected requests: %q", got)
	}
	var n int
	h.Pool.QueryRow(context.Background(), `select count(*) from batch_operations`).Scan(&n)
	if n != 0 {
		t.Errorf("%d batch_operations rows after rejected requests, want 0", n)
	}
}

func TestTagsThatLookLikeSQLAreData(t *testing.T) {
	h := start(t)
	seedSessions(t, h, "alice", []string{}, "s1")
	hostile := []string{"'); drop table sessions;--", "$tag$", "-1", `"quoted"`, "a ? b", "{x}"}
	status, _ := batch(t, h, h.Token("alice", authn.User), map[string]any{"operation": "replace", "sessionIds": []string{"s1"}, "tags": hostile})
	if status != http.StatusOK {
		t.Fatalf("status %d", status)
	}
	if got := tagsOf(t, h, "s1"); !slices.Equal(got, hostile) {
		t.Errorf("stored %q, want %q", got, hostile)
	}
	status, _ = batch(t, h, h.Token("alice", authn.User), map[string]any{"operation": "remove", "sessionIds": []string{"s1"}, "tags": hostile[:3]})
	if status != http.StatusOK {
		t.Fatalf("status %d", status)
	}
	if got := tagsOf(t, h, "s1"); !slices.Equal(got, hostile[3:]) {
		t.Errorf("after remove %q, want %q", got, hostile[3:])
	}
}

func TestBatchEmitsTagsUpdated(t *testing.T) {
	h := start(t)
	seedSessions(t, h, "alice", []string{}, "s1", "s2")
	status, res := batch(t, h, h.Token("alice", authn.User), map[string]any{"operation": "add", "sessionIds": []string{"s1", "nope", "s2"}, "tags": []string{"dev"}})
	if status != http.StatusOK {
		t.Fatalf("status %d", status)
	}
	got := h.Sink.WaitFor(context.Background(), events.SessionTagsUpdated, 5*time.Second)
	if len(got) != 1 {
		t.Fatalf("%d tags.updated events, want 1", len(got))
	}
	e := got[0]
	if e.Source() != "/streamspace/functions/tags" || e.DataSchema() != events.SchemaURI(events.SessionTagsUpdated) {
		t.Errorf("attributes: %s", e)
	}
	d, err := events.Decode[events.SessionTagsUpdatedData](e)
	if err != nil {
		t.Fatal(err)
	}
	if d.BatchID != res.BatchID || !slices.Equal(d.SessionIDs, []string{"s1", "s2"}) || d.UserID != "alice" {
		t.Errorf("data %+v", d)
	}

	// A batch that changes nothing emits nothing.
	batch(t, h, h.Token("alice", authn.User), map[string]any{"operation": "add", "sessionIds": []string{"nope"}, "tags": []string{"dev"}})
	var queued int
	h.Pool.QueryRow(context.Background(), `select count(*) from event_outbox`).Scan(&queued)
	if queued != 0 || len(h.Sink.Events()) != 1 {
		t.Errorf("queued %d, sent %d; want 0 and 1", queued, len(h.Sink.Events()))
	}
}

func TestEmitSurvivesASinkOutage(t *testing.T) {
	h := start(t)
	seedSessions(t, h, "alice", []string{}, "s1")
	h.Sink.FailNext(1 << 20)
	status, _ := batch(t, h, h.Token("alice", authn.User), map[string]any{"operation": "add", "sessionIds": []string{"s1"}, "tags": []string{"dev"}})
	if status != http.StatusOK {
		t.Fatalf("status %d", status)
	}
	if !h.Sink.WaitRefused(10 * time.Second) {
		t.Fatal("sink was never tried")
	}
	// The relay logs the failure, then records it on the queued row.
	var id string
	deadline := time.Now().Add(10 * time.Second)
	for id == "" && time.Now().Before(deadline) {
		h.Pool.QueryRow(context.Background(), `select id::text from event_outbox where last_error is not null`).Scan(&id)
		time.Sleep(10 * time.Millisecond)
	}
	if id == "" {
		t.Fatal("event not kept in the outbox with its error while the sink is down")
	}
	if !strings.Contains(h.Logs.String(), id) {
		t.Errorf("failed send of %s not logged", id)
	}
	h.Pool.Exec(context.Background(), `update event_outbox set next_attempt_at = now()`)
	h.Sink.FailNext(0)
	got := h.Sink.WaitFor(context.Background(), events.SessionTagsUpdated, 10*time.Second)
	if len(got) != 1 || got[0].ID() != id {
		t.Fatalf("after the outage got %d events, want the queued %s", len(got), id)
	}
}

func TestResponsesNeverWaitOnTheSink(t *testing.T) {
	h := start(t)
	seedSessions(t, h, "alice", []string{}, "s1")
	release := h.Sink.Hold() // accepts connections, never answers
	defer release()
	done := make(chan int, 1)
	go func() {
		status, _ := batch(t, h, h.Token("alice", authn.User), map[string]any{"operation": "add", "sessionIds": []string{"s1"}, "tags": []string{"dev"}})
		done <- status
	}()
	select {
	case status := <-done:
		if status != http.StatusOK {
			t.Fatalf("status %d", status)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the response waited on a sink that never answers")
	}
	release()
	if got := h.Sink.WaitFor(context.Background(), events.SessionTagsUpdated, 10*time.Second); len(got) != 1 {
		t.Errorf("%d events after the sink answered, want 1", len(got))
	}
}

func TestRoutesRequireAToken(t *testing.T) {
	h := start(t)
	for _, tc := range []struct{ method, path string }{
		{http.MethodPost, batchPath},
		{http.MethodGet, popularPath},
	} {
		for _, token := range []string{"", "not-a-jwt"} {
			status, body := h.Do(tc.method, tc.path, token, nil)
			if status != http.StatusUnauthorized || !strings.Contains(string(body), "unauthenticated") {
				t.Errorf("%s %s token %q: %d %s, want 401", tc.method, tc.path, token, status, body)
			}
		}
	}
}

func seedCatalog(t *testing.T, h *fntest.Harness, rows map[string][2]string) {
	t.Helper()
	for id, r := range rows {
		var tags any
		if r[1] != "" {
			tags = r[1]
		}
		if _, err := h.Pool.Exec(context.Background(),
			`insert into catalog_templates (id, name, category, tags) values ($1, $1, $2, $3::jsonb)`, id, r[0], tags); err != nil {
			t.Fatal(err)
		}
	}
}

func popular(t *testing.T, h *fntest.Harness, query string) []function.TagCount {
	t.Helper()
	status, body := h.Do(http.MethodGet, popularPath+query, h.Token("alice", authn.User), nil)
	if status != http.StatusOK {
		t.Fatalf("GET %s: %d %s", query, status, body)
	}
	var out []function.TagCount
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestPopularTagsSkipsOddShapes(t *testing.T) {
	h := start(t)
	seedCatalog(t, h, map[string][2]string{
		"t1": {"browsers", `["web","dev"]`},
		"t2": {"browsers", `["web","web","gpu"]`},
		"t3": {"ides", `["dev", 5, {"a":1}, null, ["x"], "", "  "]`},
		"t4": {"ides", `null`},
		"t5": {"ides", ``},
		"t6": {"ides", `[]`},
		"t7": {"ides", `{"web": true}`},
		"t8": {"ides", `"web"`},
		"t9": {"ides", `42`},
	})
	got := popular(t, h, "")
	want := []function.TagCount{{"dev", 2}, {"web", 2}, {"gpu", 1}}
	if !slices.Equal(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if got := popular(t, h, "?category=browsers&limit=1"); !slices.Equal(got, []function.TagCount{{"web", 2}}) {
		t.Errorf("category browsers limit 1: %+v", got)
	}
	if got := popular(t, h, "?category=nothing"); len(got) != 0 {
		t.Errorf("unknown category: %+v, want []", got)
	}
}

func TestPopularTagsRejectsBadQuery(t *testing.T) {
	h := start(t)
	for _, q := range []string{"?limit=0", "?limit=201", "?limit=-1", "?limit=abc", "?limit=", "?limit=1.5", "?category=", "?category=" + strings.Repeat("c", 101), "?category=%ff%fe", "?category=a%E2%80%AEb"} {
		status, body := h.Do(http.MethodGet, popularPath+q, h.Token("alice", authn.User), nil)
		if status != http.StatusBadRequest {
			t.Errorf("%s: %d %s, want 400", q, status, body)
		}
	}
}

func TestPopularTagsCacheClearedByTemplateUpdated(t *testing.T) {
	h := start(t)
	seedCatalog(t, h, map[string][2]string{"t1": {"c", `["a"]`}})
	first := popular(t, h, "")
	seedCatalog(t, h, map[string][2]string{"t2": {"c", `["a","b"]`}})
	if got := popular(t, h, ""); !slices.Equal(got, first) {
		t.Fatalf("second read %+v, want the cached %+v", got, first)
	}
	for _, structured := range []bool{false, true} {
		e, err := events.New("versioning", events.TemplateUpdated, events.TemplateUpdatedData{TemplateID: "t2", Change: "updated"})
		if err != nil {
			t.Fatal(err)
		}
		if status, reply := h.Deliver(e, structured); status != http.StatusAccepted || reply != nil {
			t.Fatalf("deliver (structured=%v): %d %v", structured, status, reply)
		}
	}
	want := []function.TagCount{{"a", 2}, {"b", 1}}
	if got := popular(t, h, ""); !slices.Equal(got, want) {
		t.Errorf("after template.updated %+v, want %+v", got, want)
	}
}

func TestEventPathRefusesWhatItCannotUse(t *testing.T) {
	h := start(t)
	bad := cloudevents.NewEvent()
	bad.SetID("1")
	bad.SetSource("/test")
	bad.SetType(events.TemplateUpdated)
	bad.SetData(cloudevents.ApplicationJSON, map[string]any{"change": "updated"})
	if status, _ := h.Deliver(bad, false); status != http.StatusBadRequest {
		t.Errorf("invalid data: %d, want 400 (final)", status)
	}
	other, _ := events.New("snapshot", events.SnapshotFailed, events.SnapshotFailedData{SnapshotID: "6f1c1c3e-6a55-4d8e-9d7e-0c1f4f3a2b10", SessionID: "s", Reason: "r"})
	if status, _ := h.Deliver(other, true); status != http.StatusBadRequest {
		t.Errorf("type tags does not handle: %d, want 400", status)
	}
	var line map[string]any
	for _, l := range h.Logs.Lines() {
		if l["eventId"] == "1" {
			line = l
		}
	}
	if line == nil || line["outcome"] != "rejected" || line["eventType"] != events.TemplateUpdated || line["status"] != float64(400) {
		t.Errorf("log line for event 1: %v", line)
	}
}
