package function_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/events"
	function "github.com/streamspace-dev/functions/functions/tags"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/fntest"
)

const (
	batchPath   = "/api/v1/batch/sessions/update-tags"
	popularPath = "/api/v1/search/filters/tags"
)

// eventually is how long a test waits for something asynchronous (an event
// leaving the outbox): generous, because CI machines are busy, and only a
// failing test ever waits that long.
const eventually = 30 * time.Second

func start(t *testing.T, env map[string]string) *fntest.Harness {
	t.Helper()
	return fntest.Start(t, function.New(), env)
}

// seedUsers adds StreamSpace users; sessions and batch_operations reference
// them, and email is NOT NULL UNIQUE.
func seedUsers(t *testing.T, h *fntest.Harness, ids ...string) {
	t.Helper()
	for _, id := range ids {
		_, err := h.Pool.Exec(context.Background(),
			`insert into users (id, username, email) values ($1::text, $1::text, $1::text || '@example.com')
			 on conflict do nothing`, id)
		require.NoError(t, err)
	}
}

// seedSessions adds StreamSpace sessions of owner (a user it creates) with
// tags.
func seedSessions(t *testing.T, h *fntest.Harness, owner string, tags []string, ids ...string) {
	t.Helper()
	seedUsers(t, h, owner)
	raw, err := json.Marshal(tags)
	require.NoError(t, err)
	for _, id := range ids {
		_, err := h.Pool.Exec(context.Background(),
			`insert into sessions (id, user_id, template_name, state, tags) values ($1, $2, 'firefox', 'running', $3)`,
			id, owner, raw)
		require.NoError(t, err)
	}
}

func tagsOf(t *testing.T, h *fntest.Harness, id string) []string {
	t.Helper()
	var tags []string
	require.NoError(t, h.Pool.QueryRow(context.Background(), `select tags from sessions where id = $1`, id).Scan(&tags))
	return tags
}

func batch(t *testing.T, h *fntest.Harness, token string, body any) function.BatchResult {
	t.Helper()
	status, raw := h.Do(http.MethodPost, batchPath, token, body)
	require.Equal(t, http.StatusOK, status, "%s", raw)
	var res function.BatchResult
	require.NoError(t, json.Unmarshal(raw, &res), "%s", raw)
	return res
}

func TestBatchOperations(t *testing.T) {
	h := start(t, nil)
	alice := h.Token("alice", authn.User)
	seedSessions(t, h, "alice", []string{"dev"}, "s1", "s2")

	// The cases run in order, each on the tags the one before left.
	tests := []struct {
		name string
		op   function.Operation
		tags []string
		want []string
	}{
		{"add appends without duplicates", function.OpAdd, []string{"gpu", "dev", " gpu ", "team-a"}, []string{"dev", "gpu", "team-a"}},
		{"add again changes nothing", function.OpAdd, []string{"gpu"}, []string{"dev", "gpu", "team-a"}},
		{"remove removes", function.OpRemove, []string{"gpu", "absent"}, []string{"dev", "team-a"}},
		{"replace sets exactly", function.OpReplace, []string{"x", "y"}, []string{"x", "y"}},
		{"replace with nothing clears", function.OpReplace, []string{}, []string{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := batch(t, h, alice, map[string]any{"operation": tc.op, "sessionIds": []string{"s1", "s2", "s1"}, "tags": tc.tags})
			assert.Equal(t, 2, res.Total, "repeated ids are folded")
			assert.Equal(t, 2, res.Updated)
			assert.Equal(t, tc.op, res.Operation)
			for _, id := range []string{"s1", "s2"} {
				assert.Equal(t, tc.want, tagsOf(t, h, id), "tags of %s", id)
			}
		})
	}
}

// batchRow is a batch_operations row as StreamSpace's job API reads it.
type batchRow struct {
	UserID, OperationType, ResourceType, Status string
	Total, Processed, Success, Failure          int
	Errors                                      []string
	Completed                                   bool
}

func batchRowOf(t *testing.T, h *fntest.Harness, id string) batchRow {
	t.Helper()
	var r batchRow
	var user *string
	err := h.Pool.QueryRow(context.Background(), `
		select user_id, operation_type, resource_type, status, total_items, processed_items,
		       success_count, failure_count, errors, completed_at is not null
		from batch_operations where id = $1`, id).Scan(
		&user, &r.OperationType, &r.ResourceType, &r.Status, &r.Total, &r.Processed,
		&r.Success, &r.Failure, &r.Errors, &r.Completed)
	require.NoError(t, err)
	if user != nil {
		r.UserID = *user
	}
	return r
}

func TestBatchOutcomesPerSession(t *testing.T) {
	h := start(t, nil)
	seedSessions(t, h, "alice", []string{}, "a1")
	seedSessions(t, h, "bob", []string{"keep"}, "b1")
	seedUsers(t, h, "root")

	tests := []struct {
		name     string
		caller   string
		role     authn.Role
		ids      []string
		want     []function.SessionResult
		wantTags map[string][]string
		wantRow  batchRow
	}{
		{
			name:   "a user changes only their own sessions",
			caller: "alice", role: authn.User,
			ids: []string{"b1", "a1", "ghost"},
			want: []function.SessionResult{
				{SessionID: "b1", Outcome: function.NotFound},
				{SessionID: "a1", Outcome: function.Updated},
				{SessionID: "ghost", Outcome: function.NotFound},
			},
			wantTags: map[string][]string{"a1": {"mine"}, "b1": {"keep"}},
			wantRow: batchRow{
				UserID: "alice", OperationType: "update_tags", ResourceType: "sessions", Status: "completed",
				Total: 3, Processed: 3, Success: 1, Failure: 2, Completed: true,
				Errors: []string{
					"session b1: not found or not owned by user",
					"session ghost: not found or not owned by user",
				},
			},
		},
		{
			name:   "an admin changes every session",
			caller: "root", role: authn.Admin,
			ids: []string{"b1", "ghost"},
			want: []function.SessionResult{
				{SessionID: "b1", Outcome: function.Updated},
				{SessionID: "ghost", Outcome: function.NotFound},
			},
			wantTags: map[string][]string{"b1": {"keep", "mine"}},
			wantRow: batchRow{
				UserID: "root", OperationType: "update_tags", ResourceType: "sessions", Status: "completed",
				Total: 2, Processed: 2, Success: 1, Failure: 1, Completed: true,
				Errors: []string{"session ghost: not found or not owned by user"},
			},
		},
		{
			name:   "a caller StreamSpace has no user for is recorded without one",
			caller: "external-admin", role: authn.Admin,
			ids:  []string{"ghost"},
			want: []function.SessionResult{{SessionID: "ghost", Outcome: function.NotFound}},
			wantRow: batchRow{
				OperationType: "update_tags", ResourceType: "sessions", Status: "completed",
				Total: 1, Processed: 1, Failure: 1, Completed: true,
				Errors: []string{"session ghost: not found or not owned by user"},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := batch(t, h, h.Token(tc.caller, tc.role), map[string]any{
				"operation": "add", "sessionIds": tc.ids, "tags": []string{"mine"},
			})
			assert.Equal(t, tc.want, res.Results)
			assert.Equal(t, tc.wantRow.Success, res.Updated)
			assert.Equal(t, tc.wantRow.Failure, res.NotFound)
			assert.Equal(t, res.BatchID, res.JobID, "jobId is StreamSpace's name for the batch id")
			assert.Equal(t, "completed", res.Status)
			assert.NotEmpty(t, res.Message)
			for id, want := range tc.wantTags {
				assert.Equal(t, want, tagsOf(t, h, id), "tags of %s", id)
			}
			assert.Equal(t, tc.wantRow, batchRowOf(t, h, res.BatchID))
		})
	}
}

// TestBatchDoesNotRevealOtherUsersSessions is the review finding: a user who
// batches over another user's session id learns nothing a nonexistent id
// would not tell them.
func TestBatchDoesNotRevealOtherUsersSessions(t *testing.T) {
	h := start(t, nil)
	seedSessions(t, h, "bob", []string{"keep"}, "bobs-session")
	seedUsers(t, h, "alice")
	alice := h.Token("alice", authn.User)

	tests := []struct {
		name string
		op   function.Operation
		tags []string
	}{
		{"add", function.OpAdd, []string{"x"}},
		{"remove", function.OpRemove, []string{"keep"}},
		{"replace", function.OpReplace, []string{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			outcome := func(id string) (function.SessionResult, []string) {
				res := batch(t, h, alice, map[string]any{"operation": tc.op, "sessionIds": []string{id}, "tags": tc.tags})
				require.Len(t, res.Results, 1)
				row := batchRowOf(t, h, res.BatchID)
				errs := make([]string, len(row.Errors))
				for i, e := range row.Errors {
					errs[i] = strings.Replace(e, id, "<id>", 1)
				}
				return res.Results[0], errs
			}
			existing, existingErrs := outcome("bobs-session")
			missing, missingErrs := outcome("no-such-session")
			assert.Equal(t, function.NotFound, existing.Outcome)
			assert.Equal(t, missing.Outcome, existing.Outcome)
			assert.Equal(t, missingErrs, existingErrs)
			assert.Equal(t, []string{"keep"}, tagsOf(t, h, "bobs-session"), "alice changed bob's session")
		})
	}
}

func TestBatchRejectsBadInputAndChangesNothing(t *testing.T) {
	h := start(t, nil)
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
		wantCode   string
		wantMsg    string
	}{
		{"unknown operation", map[string]any{"operation": "merge", "sessionIds": []string{"s1"}, "tags": []string{"a"}}, 400, "invalid", `operation "merge"`},
		{"missing operation", map[string]any{"sessionIds": []string{"s1"}, "tags": []string{"a"}}, 400, "invalid", "operation"},
		{"no session ids", map[string]any{"operation": "add", "sessionIds": []string{}, "tags": []string{"a"}}, 400, "invalid", "sessionIds"},
		{"empty session id", map[string]any{"operation": "add", "sessionIds": []string{"s1", ""}, "tags": []string{"a"}}, 400, "invalid", "sessionIds[1]"},
		{"too many ids", map[string]any{"operation": "add", "sessionIds": many, "tags": []string{"a"}}, 400, "invalid", "at most 10000"},
		{"no tags to add", map[string]any{"operation": "add", "sessionIds": []string{"s1"}, "tags": []string{}}, 400, "invalid", "tags: at least one tag"},
		{"blank tag", map[string]any{"operation": "add", "sessionIds": []string{"s1"}, "tags": []string{"ok", "   "}}, 400, "invalid", "tags[1]"},
		{"long tag", map[string]any{"operation": "add", "sessionIds": []string{"s1"}, "tags": []string{strings.Repeat("x", 51)}}, 400, "invalid", "tags[0]"},
		{"control character", map[string]any{"operation": "add", "sessionIds": []string{"s1"}, "tags": []string{"a\x00b"}}, 400, "invalid", "control"},
		{"too many tags", map[string]any{"operation": "add", "sessionIds": []string{"s1"}, "tags": tooManyTags}, 400, "invalid", "at most 50"},
		{"unknown field", `{"operation":"add","sessionIds":["s1"],"tags":["a"],"force":true}`, 400, "invalid", "force"},
		{"wrong type", `{"operation":"add","sessionIds":"s1","tags":["a"]}`, 400, "invalid", "sessionIds"},
		{"malformed json", `{"operation":`, 400, "invalid", "malformed"},
		{"trailing data", `{"operation":"add","sessionIds":["s1"],"tags":["a"]} {}`, 400, "invalid", "one JSON object"},
		{"body too large", `{"operation":"add","sessionIds":["` + strings.Repeat("x", 5<<20) + `"],"tags":["a"]}`, 413, "too_large", "exceeds"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, body := h.Do(http.MethodPost, batchPath, tok, tc.body)
			require.Equal(t, tc.wantStatus, status, "%s", body)
			code, msg := fntest.ErrorBody(t, body)
			assert.Equal(t, tc.wantCode, code)
			assert.Contains(t, msg, tc.wantMsg)
			assert.Equal(t, []string{"orig"}, tagsOf(t, h, "s1"), "tags changed by a rejected request")
			assert.Zero(t, h.Count(`select count(*) from batch_operations`), "batch recorded for a rejected request")
			assert.Zero(t, h.Count(`select count(*) from event_outbox`), "event queued for a rejected request")
		})
	}
}

func TestTagsThatLookLikeSQLAreData(t *testing.T) {
	h := start(t, nil)
	seedSessions(t, h, "alice", []string{}, "s1")
	alice := h.Token("alice", authn.User)
	hostile := []string{"'); drop table sessions;--", "$tag$", "-1", `"quoted"`, "a ? b", "{x}"}

	// The cases run in order, each on the tags the one before left.
	tests := []struct {
		name string
		op   function.Operation
		tags []string
		want []string
	}{
		{"replace stores them verbatim", function.OpReplace, hostile, hostile},
		{"add finds them present", function.OpAdd, hostile[:2], hostile},
		{"remove matches them exactly", function.OpRemove, hostile[:3], hostile[3:]},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			batch(t, h, alice, map[string]any{"operation": tc.op, "sessionIds": []string{"s1"}, "tags": tc.tags})
			assert.Equal(t, tc.want, tagsOf(t, h, "s1"))
		})
	}
}

// TestConcurrentBatchesDoNotDeadlock runs batches over the same sessions in
// opposite orders at once. Without rows locked in one order, two of them
// would each hold a row the other waits for.
func TestConcurrentBatchesDoNotDeadlock(t *testing.T) {
	h := start(t, nil)
	ids := make([]string, 200)
	for i := range ids {
		ids[i] = fmt.Sprintf("s%03d", i)
	}
	seedSessions(t, h, "alice", []string{}, ids...)
	reversed := make([]string, len(ids))
	for i, id := range ids {
		reversed[len(ids)-1-i] = id
	}
	alice := h.Token("alice", authn.User)

	tests := []struct {
		name string
		ops  []function.Operation
	}{
		{"adds", []function.Operation{function.OpAdd, function.OpAdd}},
		{"adds and removes", []function.Operation{function.OpAdd, function.OpRemove}},
		{"replaces and adds", []function.Operation{function.OpReplace, function.OpAdd}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			const rounds = 4
			var wg sync.WaitGroup
			statuses := make(chan string, rounds*len(tc.ops))
			for r := range rounds {
				for i, op := range tc.ops {
					order := ids
					if i%2 == 1 {
						order = reversed
					}
					wg.Go(func() {
						status, body := h.Do(http.MethodPost, batchPath, alice, map[string]any{
							"operation": op, "sessionIds": order, "tags": []string{fmt.Sprintf("t%d-%d", r, i)},
						})
						statuses <- fmt.Sprintf("%d %s", status, body[:min(len(body), 80)])
					})
				}
			}
			wg.Wait()
			close(statuses)
			for s := range statuses {
				assert.True(t, strings.HasPrefix(s, "200 "), "a concurrent batch failed: %s", s)
			}
		})
	}
}

func TestBatchEmitsTagsUpdatedThroughTheOutbox(t *testing.T) {
	h := start(t, nil)
	seedSessions(t, h, "alice", []string{}, "s1", "s2")
	alice := h.Token("alice", authn.User)

	tests := []struct {
		name      string
		ids       []string
		wantSent  []string // session ids of the event; nil for no event
		wantTotal int      // events the sink holds afterwards
	}{
		{"a batch that changes sessions emits one event", []string{"s1", "nope", "s2"}, []string{"s1", "s2"}, 1},
		{"a batch that changes nothing emits none", []string{"nope"}, nil, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := batch(t, h, alice, map[string]any{"operation": "add", "sessionIds": tc.ids, "tags": []string{"dev"}})
			if tc.wantSent == nil {
				assert.Zero(t, h.Count(`select count(*) from event_outbox where event->'data'->>'batchId' = $1`, res.BatchID),
					"an event was queued")
				assert.Len(t, h.Sink.Events(), tc.wantTotal)
				return
			}
			got := h.Sink.WaitFor(context.Background(), events.SessionTagsUpdated, eventually)
			require.Len(t, got, tc.wantTotal)
			e := got[0]
			assert.Equal(t, "/streamspace/functions/tags", e.Source())
			assert.Equal(t, events.SchemaURI(events.SessionTagsUpdated), e.DataSchema())
			d, err := events.Decode[events.SessionTagsUpdatedData](e)
			require.NoError(t, err)
			assert.Equal(t, events.SessionTagsUpdatedData{
				BatchID: res.BatchID, UserID: "alice", Operation: "add", Tags: []string{"dev"}, SessionIDs: tc.wantSent,
			}, d)
		})
	}
}

// TestResponsesSurviveSinkTrouble: the event is queued in the batch's
// transaction, so a sink that refuses or never answers neither delays the
// response nor loses the event.
func TestResponsesSurviveSinkTrouble(t *testing.T) {
	tests := []struct {
		name string
		// breakSink breaks the sink and returns what heals it.
		breakSink func(t *testing.T, h *fntest.Harness) (heal func())
		// refuses: the sink answers 503, so the outbox keeps the event
		// with its error and logs the id.
		refuses bool
	}{
		{
			name: "sink refuses",
			breakSink: func(t *testing.T, h *fntest.Harness) func() {
				h.Sink.FailNext(1 << 20)
				return func() {
					h.Sink.FailNext(0)
					_, err := h.Pool.Exec(context.Background(), `update event_outbox set next_attempt_at = now()`)
					require.NoError(t, err)
				}
			},
			refuses: true,
		},
		{
			name:      "sink never answers",
			breakSink: func(t *testing.T, h *fntest.Harness) func() { return h.Sink.Hold() },
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, nil)
			seedSessions(t, h, "alice", []string{}, "s1")
			heal := tc.breakSink(t, h)
			t.Cleanup(heal)

			done := make(chan function.BatchResult, 1)
			go func() {
				status, raw := h.Do(http.MethodPost, batchPath, h.Token("alice", authn.User),
					map[string]any{"operation": "add", "sessionIds": []string{"s1"}, "tags": []string{"dev"}})
				var res function.BatchResult
				if status == http.StatusOK && json.Unmarshal(raw, &res) == nil {
					done <- res
				}
				close(done)
			}()
			var res function.BatchResult
			select {
			case r, ok := <-done:
				require.True(t, ok, "the batch failed")
				res = r
			case <-time.After(eventually):
				require.FailNow(t, "the response waited on the sink")
			}
			assert.Equal(t, 1, res.Updated)

			var queued string
			if tc.refuses {
				require.True(t, h.Sink.WaitRefused(eventually), "the sink was never tried")
				require.Eventually(t, func() bool {
					return h.Pool.QueryRow(context.Background(),
						`select id::text from event_outbox where last_error is not null`).Scan(&queued) == nil
				}, eventually, 10*time.Millisecond, "the event was not kept in the outbox with its error")
				// The refusal is logged just after it is recorded.
				assert.Eventually(t, func() bool { return strings.Contains(h.Logs.String(), queued) },
					eventually, 10*time.Millisecond, "the failed send is not logged")
			}
			heal()
			got := h.Sink.WaitFor(context.Background(), events.SessionTagsUpdated, eventually)
			require.Len(t, got, 1, "the queued event did not arrive after the sink recovered")
			if queued != "" {
				assert.Equal(t, queued, got[0].ID())
			}
		})
	}
}

func TestRoutesRequireAToken(t *testing.T) {
	h := start(t, nil)
	tests := []struct {
		name, method, path, token string
	}{
		{"batch without a token", http.MethodPost, batchPath, ""},
		{"batch with garbage", http.MethodPost, batchPath, "not-a-jwt"},
		{"popular without a token", http.MethodGet, popularPath, ""},
		{"popular with garbage", http.MethodGet, popularPath, "not-a-jwt"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, body := h.Do(tc.method, tc.path, tc.token, nil)
			assert.Equal(t, http.StatusUnauthorized, status)
			code, _ := fntest.ErrorBody(t, body)
			assert.Equal(t, "unauthenticated", code)
		})
	}
}

// TestStreamSpaceTokens: the tokens StreamSpace's own API signs work on
// both routes, and a batch is scoped by the role in the users row, not the
// token's claim.
func TestStreamSpaceTokens(t *testing.T) {
	h := start(t, nil)
	seedSessions(t, h, "bob", []string{"keep"}, "b1")
	h.AddUser("carol", authn.User)
	seedSessions(t, h, "carol", []string{}, "c1")
	h.AddUser("dave", authn.User)
	_, err := h.Pool.Exec(context.Background(), `update users set active = false where id = 'dave'`)
	require.NoError(t, err)
	h.AddUser("root", authn.Admin)

	tests := []struct {
		name        string
		token       string
		wantStatus  int
		wantResults []function.SessionResult
	}{
		{
			name: "an active user", token: h.StreamSpaceToken("carol", authn.User), wantStatus: http.StatusOK,
			wantResults: []function.SessionResult{{SessionID: "c1", Outcome: function.Updated}, {SessionID: "b1", Outcome: function.NotFound}},
		},
		{
			name: "a user whose token claims admin", token: h.StreamSpaceToken("carol", authn.Admin), wantStatus: http.StatusOK,
			wantResults: []function.SessionResult{{SessionID: "c1", Outcome: function.Updated}, {SessionID: "b1", Outcome: function.NotFound}},
		},
		{
			name: "an admin", token: h.StreamSpaceToken("root", authn.Admin), wantStatus: http.StatusOK,
			wantResults: []function.SessionResult{{SessionID: "c1", Outcome: function.Updated}, {SessionID: "b1", Outcome: function.Updated}},
		},
		{name: "an inactive user", token: h.StreamSpaceToken("dave", authn.User), wantStatus: http.StatusUnauthorized},
		{name: "a user StreamSpace does not have", token: h.StreamSpaceToken("erin", authn.User), wantStatus: http.StatusUnauthorized},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, body := h.Do(http.MethodPost, batchPath, tc.token,
				map[string]any{"operation": "add", "sessionIds": []string{"c1", "b1"}, "tags": []string{"ss"}})
			require.Equal(t, tc.wantStatus, status, "%s", body)
			pstatus, pbody := h.Do(http.MethodGet, popularPath, tc.token, nil)
			assert.Equal(t, tc.wantStatus, pstatus, "%s", pbody)
			if tc.wantStatus != http.StatusOK {
				code, _ := fntest.ErrorBody(t, body)
				assert.Equal(t, "unauthenticated", code)
				return
			}
			var res function.BatchResult
			require.NoError(t, json.Unmarshal(body, &res))
			assert.Equal(t, tc.wantResults, res.Results)
		})
	}
}

// catalogRow is a catalog template as StreamSpace stores it; a nil tags is
// SQL null, and the text[] literal may hold nulls.
type catalogRow struct {
	name     string
	category *string
	tags     *string
}

func ptr(s string) *string { return &s }

func seedCatalog(t *testing.T, h *fntest.Harness, rows ...catalogRow) {
	t.Helper()
	for _, r := range rows {
		_, err := h.Pool.Exec(context.Background(),
			`insert into catalog_templates (name, category, tags) values ($1, $2, $3::text[])`, r.name, r.category, r.tags)
		require.NoError(t, err)
	}
}

func popular(t *testing.T, h *fntest.Harness, query string) []function.TagCount {
	t.Helper()
	status, body := h.Do(http.MethodGet, popularPath+query, h.Token("alice", authn.User), nil)
	require.Equal(t, http.StatusOK, status, "GET %s: %s", query, body)
	var out []function.TagCount
	require.NoError(t, json.Unmarshal(body, &out))
	return out
}

// refreshPing is a tick of the tags-refresh PingSource.
func refreshPing(t *testing.T, id string) cloudevents.Event {
	t.Helper()
	e := cloudevents.NewEvent()
	e.SetID(id)
	e.SetSource(events.TagsRefreshSource)
	e.SetType(events.Ping)
	require.NoError(t, e.SetData(cloudevents.ApplicationJSON, events.PingData{Job: "tags.refresh"}))
	return e
}

func templateUpdated(t *testing.T) cloudevents.Event {
	t.Helper()
	e, err := events.New("versioning", events.TemplateUpdated, events.TemplateUpdatedData{TemplateID: "7", Change: "updated"})
	require.NoError(t, err)
	return e
}

func deliver(t *testing.T, h *fntest.Harness, e cloudevents.Event) {
	t.Helper()
	status, _ := h.Deliver(e, false)
	require.Equal(t, http.StatusAccepted, status)
}

func TestPopularTagCounts(t *testing.T) {
	h := start(t, nil)
	seedCatalog(t, h,
		catalogRow{"firefox", ptr("browsers"), ptr(`{web,dev}`)},
		catalogRow{"chrome", ptr("browsers"), ptr(`{web,web,gpu}`)},                        // a repeat counts once
		catalogRow{"vscode", ptr("ides"), ptr(`{dev," dev ",""," ",NULL}`)},                // padding, blanks, nulls
		catalogRow{"idea", ptr("ides"), nil},                                               // null array
		catalogRow{"vim", ptr("ides"), ptr(`{}`)},                                          // empty array
		catalogRow{"gimp", nil, ptr(`{graphics,gpu}`)},                                     // no category
		catalogRow{"blender", ptr(""), ptr(`{graphics}`)},                                  // empty category
		catalogRow{"Web IDE", ptr("ides"), ptr(`{Web}`)},                                   // case is kept apart
		catalogRow{"kate", ptr("ides"), ptr("{\"dev \",\"dev\",\"  dev\",\"\tdev\r\n\"}")}, // all one tag
	)
	deliver(t, h, refreshPing(t, "seed"))

	tests := []struct {
		name  string
		query string
		want  []function.TagCount
	}{
		{"every category", "", []function.TagCount{
			{Tag: "dev", Count: 3}, {Tag: "gpu", Count: 2}, {Tag: "graphics", Count: 2}, {Tag: "web", Count: 2},
			{Tag: "Web", Count: 1},
		}},
		{"limit", "?limit=2", []function.TagCount{{Tag: "dev", Count: 3}, {Tag: "gpu", Count: 2}}},
		{"one category", "?category=browsers", []function.TagCount{{Tag: "web", Count: 2}, {Tag: "dev", Count: 1}, {Tag: "gpu", Count: 1}}},
		{"one category with a limit", "?category=browsers&limit=1", []function.TagCount{{Tag: "web", Count: 2}}},
		{"another category", "?category=ides", []function.TagCount{{Tag: "dev", Count: 2}, {Tag: "Web", Count: 1}}},
		{"an unknown category", "?category=nothing", []function.TagCount{}},
		{"category names match exactly", "?category=Browsers", []function.TagCount{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, popular(t, h, tc.query))
		})
	}
}

func TestPopularTagsRejectsBadQuery(t *testing.T) {
	h := start(t, nil)
	tests := []struct {
		name, query, wantMsg string
	}{
		{"zero limit", "?limit=0", "limit"},
		{"limit over the maximum", "?limit=201", "limit"},
		{"negative limit", "?limit=-1", "limit"},
		{"limit not a number", "?limit=abc", "limit"},
		{"empty limit", "?limit=", "limit"},
		{"fractional limit", "?limit=1.5", "limit"},
		{"empty category", "?category=", "category"},
		{"long category", "?category=" + strings.Repeat("c", 101), "category"},
		{"category not UTF-8", "?category=%ff%fe", "category"},
		{"category with a bidi override", "?category=a%E2%80%AEb", "category"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, body := h.Do(http.MethodGet, popularPath+tc.query, h.Token("alice", authn.User), nil)
			require.Equal(t, http.StatusBadRequest, status, "%s", body)
			code, msg := fntest.ErrorBody(t, body)
			assert.Equal(t, "invalid", code)
			assert.Contains(t, msg, tc.wantMsg)
		})
	}
}

// ageView makes the popular-tag view look older than TAGS_MAX_STALENESS, as
// if no refresh had run for an hour.
func ageView(t *testing.T, h *fntest.Harness) {
	t.Helper()
	_, err := h.Pool.Exec(context.Background(),
		`update job_leases set heartbeat_at = heartbeat_at - interval '1 hour' where name = $1`, function.RefreshJob)
	require.NoError(t, err)
}

// TestPopularTagsRefresh: a template change shows in the counts once the
// view is refreshed, and each trigger refreshes it. The per-instance cache
// is off (1ns), so each read shows the view as it is.
func TestPopularTagsRefresh(t *testing.T) {
	tests := []struct {
		name    string
		trigger func(t *testing.T, h *fntest.Harness)
	}{
		{"template.updated event", func(t *testing.T, h *fntest.Harness) { deliver(t, h, templateUpdated(t)) }},
		{"tags-refresh ping", func(t *testing.T, h *fntest.Harness) { deliver(t, h, refreshPing(t, "tick-2")) }},
		{"a read of a view older than TAGS_MAX_STALENESS", func(t *testing.T, h *fntest.Harness) { ageView(t, h) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, map[string]string{"TAGS_CACHE_TTL": "1ns"})
			seedCatalog(t, h, catalogRow{"firefox", ptr("browsers"), ptr(`{web}`)})
			deliver(t, h, refreshPing(t, "tick-1"))
			before := []function.TagCount{{Tag: "web", Count: 1}}
			require.Equal(t, before, popular(t, h, ""))

			_, err := h.Pool.Exec(context.Background(),
				`update catalog_templates set tags = array['web', 'browser'] where name = 'firefox'`)
			require.NoError(t, err)
			seedCatalog(t, h, catalogRow{"chrome", nil, ptr(`{web}`)})
			assert.Equal(t, before, popular(t, h, ""), "a fresh view was refreshed by a read")

			tc.trigger(t, h)
			want := []function.TagCount{{Tag: "web", Count: 2}, {Tag: "browser", Count: 1}}
			assert.Equal(t, want, popular(t, h, ""))
			assert.Equal(t, []function.TagCount{{Tag: "browser", Count: 1}, {Tag: "web", Count: 1}}, popular(t, h, "?category=browsers"))
		})
	}
}

func TestTemplateUpdatedClearsTheCache(t *testing.T) {
	tests := []struct {
		name       string
		structured bool
	}{
		{"binary mode", false},
		{"structured mode", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, map[string]string{"TAGS_CACHE_TTL": "1h"})
			seedCatalog(t, h, catalogRow{"a", ptr("c"), ptr(`{a}`)})
			first := popular(t, h, "")
			seedCatalog(t, h, catalogRow{"b", ptr("c"), ptr(`{a,b}`)})
			ageView(t, h) // a read that reached the view now would refresh it
			require.Equal(t, first, popular(t, h, ""), "the second read is not the cached one")

			status, reply := h.Deliver(templateUpdated(t), tc.structured)
			require.Equal(t, http.StatusAccepted, status)
			assert.Nil(t, reply, "event handlers never reply")
			assert.Equal(t, []function.TagCount{{Tag: "a", Count: 2}, {Tag: "b", Count: 1}}, popular(t, h, ""))
		})
	}
}

func TestTemplateUpdatedIsHandledOnce(t *testing.T) {
	h := start(t, nil)
	deliver(t, h, refreshPing(t, "tick-1"))
	e := templateUpdated(t)
	tests := []struct {
		name          string
		structured    bool
		wantDuplicate bool
	}{
		{"first delivery refreshes", false, false},
		{"a redelivery changes nothing", true, true},
		{"and another", false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var refreshedBefore time.Time
			require.NoError(t, h.Pool.QueryRow(context.Background(),
				`select heartbeat_at from job_leases where name = $1`, function.RefreshJob).Scan(&refreshedBefore))
			status, _ := h.Deliver(e, tc.structured)
			require.Equal(t, http.StatusAccepted, status)
			assert.Equal(t, 1, h.Count(`select count(*) from processed_events where function = 'tags' and id = $1`, e.ID()))
			var refreshedAfter time.Time
			require.NoError(t, h.Pool.QueryRow(context.Background(),
				`select heartbeat_at from job_leases where name = $1`, function.RefreshJob).Scan(&refreshedAfter))
			if tc.wantDuplicate {
				assert.Equal(t, refreshedBefore, refreshedAfter, "a duplicate refreshed the view again")
			} else {
				assert.True(t, refreshedAfter.After(refreshedBefore), "the view was not refreshed")
			}
			var line map[string]any
			for _, l := range h.Logs.Lines() {
				if l["eventId"] == e.ID() {
					line = l
				}
			}
			require.NotNil(t, line, "no log line for the event")
			assert.Equal(t, tc.wantDuplicate, line["duplicate"] == true, "log line %v", line)
		})
	}
}

// holdRefresh takes the refresh row's lock in a transaction of the test's,
// as another instance's refresh does, until the returned release is called.
func holdRefresh(t *testing.T, h *fntest.Harness) (release func()) {
	t.Helper()
	ctx := context.Background()
	tx, err := h.Pool.Begin(ctx)
	require.NoError(t, err)
	var name string
	require.NoError(t, tx.QueryRow(ctx, `select name from job_leases where name = $1 for update`, function.RefreshJob).Scan(&name))
	var once sync.Once
	release = func() { once.Do(func() { require.NoError(t, tx.Rollback(ctx)) }) }
	t.Cleanup(release)
	return release
}

// TestARefreshElsewhereIsNotWaitedOn: while another instance refreshes, each
// trigger answers at once and reads serve the counts already there. An
// event that could not refresh leaves a request the next read honours.
func TestARefreshElsewhereIsNotWaitedOn(t *testing.T) {
	old := []function.TagCount{{Tag: "web", Count: 1}}
	changed := []function.TagCount{{Tag: "web", Count: 2}}
	tests := []struct {
		name string
		// age makes the view stale before the lock is taken.
		age       bool
		trigger   func(t *testing.T, h *fntest.Harness)
		wantAfter []function.TagCount // once the other refresh is over
	}{
		{
			name:      "template.updated",
			trigger:   func(t *testing.T, h *fntest.Harness) { deliver(t, h, templateUpdated(t)) },
			wantAfter: changed,
		},
		{
			name:      "tags-refresh ping",
			trigger:   func(t *testing.T, h *fntest.Harness) { deliver(t, h, refreshPing(t, "tick-2")) },
			wantAfter: old, // the next tick refreshes
		},
		{
			name:      "a read of a stale view",
			age:       true,
			trigger:   func(t *testing.T, h *fntest.Harness) { assert.Equal(t, old, popular(t, h, "")) },
			wantAfter: changed,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, map[string]string{"TAGS_CACHE_TTL": "1ns"})
			seedCatalog(t, h, catalogRow{"firefox", ptr("browsers"), ptr(`{web}`)})
			deliver(t, h, refreshPing(t, "tick-1"))
			seedCatalog(t, h, catalogRow{"chrome", ptr("browsers"), ptr(`{web}`)})
			if tc.age {
				ageView(t, h)
			}
			release := holdRefresh(t, h)

			tc.trigger(t, h)
			assert.Equal(t, old, popular(t, h, ""), "the view changed while another refresh held it")

			release()
			assert.Equal(t, tc.wantAfter, popular(t, h, ""))
		})
	}
}

// TestConcurrentRefreshesDoNotFail sends many refresh triggers at once:
// each succeeds, refreshing or finding a refresh under way.
func TestConcurrentRefreshesDoNotFail(t *testing.T) {
	tests := []struct {
		name    string
		trigger func(t *testing.T, h *fntest.Harness, i int) int // returns the status
	}{
		{"pings", func(t *testing.T, h *fntest.Harness, i int) int {
			status, _ := h.Deliver(refreshPing(t, fmt.Sprintf("tick-%d", i)), false)
			return status
		}},
		{"template.updated events", func(t *testing.T, h *fntest.Harness, i int) int {
			status, _ := h.Deliver(templateUpdated(t), false)
			return status
		}},
		{"reads of a stale view", func(t *testing.T, h *fntest.Harness, i int) int {
			status, _ := h.Do(http.MethodGet, fmt.Sprintf("%s?limit=%d", popularPath, i+1), h.Token("alice", authn.User), nil)
			return status
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, map[string]string{"TAGS_CACHE_TTL": "1ns"})
			seedCatalog(t, h, catalogRow{"firefox", ptr("browsers"), ptr(`{web}`)})
			// No refresh has run yet, so every trigger finds the view stale.
			const n = 12
			statuses := make([]int, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() { statuses[i] = tc.trigger(t, h, i) })
			}
			wg.Wait()
			for i, s := range statuses {
				assert.Less(t, s, 300, "trigger %d answered %d", i, s)
			}
			// Whichever trigger refreshed, a later read finds the view
			// refreshed or refreshes it: nothing was left half done.
			assert.Equal(t, []function.TagCount{{Tag: "web", Count: 1}}, popular(t, h, ""))
		})
	}
}

func TestEventPathRefusesWhatItCannotUse(t *testing.T) {
	h := start(t, nil)
	bad := cloudevents.NewEvent()
	bad.SetID("bad-data")
	bad.SetSource("/test")
	bad.SetType(events.TemplateUpdated)
	require.NoError(t, bad.SetData(cloudevents.ApplicationJSON, map[string]any{"change": "updated"}))
	other, err := events.New("snapshot", events.SnapshotFailed, events.SnapshotFailedData{
		SnapshotID: "6f1c1c3e-6a55-4d8e-9d7e-0c1f4f3a2b10", SessionID: "s", Reason: "r",
	})
	require.NoError(t, err)
	otherPing := refreshPing(t, "other-ping")
	otherPing.SetSource("/apis/v1/namespaces/streamspace-functions/pingsources/autoscale-tick")

	tests := []struct {
		name       string
		event      cloudevents.Event
		structured bool
	}{
		{"data against its schema", bad, false},
		{"a type tags does not handle", other, true},
		{"a PingSource tags does not handle", otherPing, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, _ := h.Deliver(tc.event, tc.structured)
			assert.Equal(t, http.StatusBadRequest, status, "want a final 400")
			var line map[string]any
			for _, l := range h.Logs.Lines() {
				if l["eventId"] == tc.event.ID() {
					line = l
				}
			}
			require.NotNil(t, line, "no log line for the event")
			assert.Equal(t, "rejected", line["outcome"])
			assert.Equal(t, tc.event.Type(), line["eventType"])
			assert.Equal(t, float64(400), line["status"])
		})
	}
}

func TestConfigIsChecked(t *testing.T) {
	base := map[string]string{
		"DATABASE_URL":  "postgres://nobody@127.0.0.1:1/none",
		"AUTH_ISSUER":   "https://issuer.invalid",
		"AUTH_AUDIENCE": "streamspace-api",
		"AUTH_JWKS_URL": "https://issuer.invalid/jwks",
	}
	tests := []struct {
		name, key, value string
	}{
		{"zero staleness", "TAGS_MAX_STALENESS", "0s"},
		{"negative staleness", "TAGS_MAX_STALENESS", "-1m"},
		{"unparsable staleness", "TAGS_MAX_STALENESS", "soon"},
		{"zero cache ttl", "TAGS_CACHE_TTL", "0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{tc.key: tc.value}
			for k, v := range base {
				env[k] = v
			}
			err := function.New().Start(context.Background(), env)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.key)
		})
	}
}
