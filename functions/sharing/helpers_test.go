package function_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/streamspace-dev/functions/events"
	function "github.com/streamspace-dev/functions/functions/sharing"
	"github.com/streamspace-dev/functions/shared/access"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/fntest"
)

func start(t *testing.T) *fntest.Harness {
	t.Helper()
	return fntest.Start(t, function.New(), nil)
}

func exec(t *testing.T, h *fntest.Harness, sql string, args ...any) {
	t.Helper()
	if _, err := h.Pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// seed creates the people of every test: alice owns t1, bob owns t2; carol
// and dave are in team devs, erin in ops; mallory has nothing.
func seed(t *testing.T, h *fntest.Harness) {
	t.Helper()
	exec(t, h, `insert into users (id, username, display_name) values
		('alice', 'alice', 'Alice Owner'), ('bob', 'bob', ''), ('carol', 'carol', 'Carol C'),
		('dave', 'dave', 'Dave D'), ('erin', 'erin', 'Erin E'), ('mallory', 'mallory', 'Mallory M')`)
	exec(t, h, `insert into teams (id, name) values ('devs', 'Developers'), ('ops', 'Operations')`)
	exec(t, h, `insert into team_members (team_id, user_id) values ('devs', 'carol'), ('devs', 'dave'), ('ops', 'erin')`)
	exec(t, h, `insert into user_session_templates (id, user_id, name) values ('t1', 'alice', 'Firefox Dev'), ('t2', 'bob', 'Other')`)
}

func sharesPath(tmpl string) string { return "/api/v1/session-templates/" + tmpl + "/shares" }
func sharePath(tmpl string) string  { return "/api/v1/session-templates/" + tmpl + "/share" }
func revokePath(tmpl string, id int64) string {
	return sharesPath(tmpl) + "/" + strconv.FormatInt(id, 10)
}

func toUser(id, level string) map[string]any {
	return map[string]any{"userId": id, "permissionLevel": level}
}
func toTeam(id, level string) map[string]any {
	return map[string]any{"teamId": id, "permissionLevel": level}
}

func decode[T any](t *testing.T, raw []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("decode %s: %v", raw, err)
	}
	return v
}

// share posts a share and decodes a 200 or 201 answer.
func share(t *testing.T, h *fntest.Harness, token, tmpl string, body any) (int, function.ShareResult) {
	t.Helper()
	status, raw := h.Do(http.MethodPost, sharePath(tmpl), token, body)
	var res function.ShareResult
	if status == http.StatusOK || status == http.StatusCreated {
		res = decode[function.ShareResult](t, raw)
	}
	return status, res
}

// mustShare shares and fails the test unless the answer is want.
func mustShare(t *testing.T, h *fntest.Harness, token, tmpl string, body any, want int) function.ShareResult {
	t.Helper()
	status, raw := h.Do(http.MethodPost, sharePath(tmpl), token, body)
	if status != want {
		t.Fatalf("share %v: got %d %s, want %d", body, status, raw, want)
	}
	return decode[function.ShareResult](t, raw)
}

func list(t *testing.T, h *fntest.Harness, token, tmpl string) (int, function.ShareList) {
	t.Helper()
	status, raw := h.Do(http.MethodGet, sharesPath(tmpl), token, nil)
	var res function.ShareList
	if status == http.StatusOK {
		res = decode[function.ShareList](t, raw)
	}
	return status, res
}

// activeLevel is the grantee's active share level on tmpl, "" for none.
func activeLevel(t *testing.T, h *fntest.Harness, tmpl, column, grantee string) string {
	t.Helper()
	var level string
	err := h.Pool.QueryRow(context.Background(),
		`select coalesce(max(permission_level), '') from template_shares
		 where template_id = $1 and revoked_at is null and `+column+` = $2`, tmpl, grantee).Scan(&level)
	if err != nil {
		t.Fatal(err)
	}
	return level
}

type auditRow struct {
	Actor, Action, Resource string
	Details                 struct {
		ShareID  int64
		Grantee  function.Grantee
		OldLevel *string
		NewLevel *string
		SharedBy string
	}
}

func auditRows(t *testing.T, h *fntest.Harness) []auditRow {
	t.Helper()
	rows, err := h.Pool.Query(context.Background(),
		`select actor, action, resource_id, details from audit_log where resource_type = $1 order by id`, access.ResourceType)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []auditRow
	for rows.Next() {
		var a auditRow
		var raw []byte
		if err := rows.Scan(&a.Actor, &a.Action, &a.Resource, &raw); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(raw, &a.Details); err != nil {
			t.Fatal(err)
		}
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func level(p *string) string {
	if p == nil {
		return "null"
	}
	return *p
}

type notification struct {
	UserID, Kind, Title, Message string
	Data                         map[string]any
}

// notifications returns every notification, by user, oldest first.
func notifications(t *testing.T, h *fntest.Harness) map[string][]notification {
	t.Helper()
	rows, err := h.Pool.Query(context.Background(), `select user_id, kind, title, message, data from notifications order by id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string][]notification{}
	for rows.Next() {
		var n notification
		if err := rows.Scan(&n.UserID, &n.Kind, &n.Title, &n.Message, &n.Data); err != nil {
			t.Fatal(err)
		}
		out[n.UserID] = append(out[n.UserID], n)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// settle waits until the outbox is empty: every event queued so far has
// reached the sink, so counts taken afterwards are final.
func settle(t *testing.T, h *fntest.Harness) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for h.Count(`select count(*) from event_outbox`) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("events still queued in the outbox after 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sunk returns the events of eventType the sink received, decoded.
func sunk[T any](t *testing.T, h *fntest.Harness, eventType string) []T {
	t.Helper()
	var out []T
	for _, e := range h.Sink.Events() {
		if e.Type() != eventType {
			continue
		}
		checkAttributes(t, e)
		d, err := events.Decode[T](e)
		if err != nil {
			t.Fatalf("%s: %v", eventType, err)
		}
		out = append(out, d)
	}
	return out
}

func checkAttributes(t *testing.T, e cloudevents.Event) {
	t.Helper()
	if e.Source() != "/streamspace/functions/sharing" || e.DataSchema() != events.SchemaURI(e.Type()) || e.ID() == "" || e.Time().IsZero() {
		t.Errorf("event attributes: got %s, want source /streamspace/functions/sharing and the schema of its type", e)
	}
}

func user(id string) authn.Identity { return authn.Identity{Subject: id, Role: authn.User} }

// effective is who's level on tmpl as access.Effective, which every
// template route relies on, sees it.
func effective(t *testing.T, h *fntest.Harness, who, tmpl string) string {
	t.Helper()
	l, err := access.Effective(context.Background(), h.Pool, user(who), tmpl)
	if err != nil {
		t.Fatalf("effective level of %s on %s: %v", who, tmpl, err)
	}
	return l.String()
}
