package function_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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
	_, err := h.Pool.Exec(context.Background(), sql, args...)
	require.NoError(t, err, sql)
}

// seed creates the people of every test on StreamSpace's tables: alice owns
// t1, bob owns t2; groups devs (alice, carol, dave) and ops (alice, erin)
// are teams; mallory has nothing. StreamSpace's seeded admin is the admin.
func seed(t *testing.T, h *fntest.Harness) {
	t.Helper()
	exec(t, h, `insert into users (id, username, email, full_name) values
		('alice', 'alice', 'alice@example.com', 'Alice Owner'), ('bob', 'bob', 'bob@example.com', null),
		('carol', 'carol', 'carol@example.com', 'Carol C'), ('dave', 'dave', 'dave@example.com', 'Dave D'),
		('erin', 'erin', 'erin@example.com', 'Erin E'), ('mallory', 'mallory', 'mallory@example.com', 'Mallory M')`)
	exec(t, h, `insert into groups (id, name, display_name) values ('devs', 'devs', 'Developers'), ('ops', 'ops', 'Operations')`)
	exec(t, h, `insert into group_memberships (id, group_id, user_id) values
		('m1', 'devs', 'alice'), ('m2', 'devs', 'carol'), ('m3', 'devs', 'dave'), ('m4', 'ops', 'alice'), ('m5', 'ops', 'erin')`)
	exec(t, h, `insert into user_session_templates (id, user_id, name, base_template) values
		('t1', 'alice', 'Firefox Dev', 'firefox'), ('t2', 'bob', 'Other', 'vscode')`)
}

// admin is StreamSpace's seeded admin user.
const admin = "admin"

// token is a bearer token for user: the admin role for admin, else user.
func token(h *fntest.Harness, user string) string {
	if user == admin {
		return h.Token(user, authn.Admin)
	}
	return h.Token(user, authn.User)
}

func sharesPath(tmpl string) string          { return "/api/v1/session-templates/" + tmpl + "/shares" }
func sharePath(tmpl string) string           { return "/api/v1/session-templates/" + tmpl + "/share" }
func revokePath(tmpl, shareID string) string { return sharesPath(tmpl) + "/" + shareID }

func toUser(id, level string) map[string]any {
	return map[string]any{"sharedWithUserId": id, "permissionLevel": level}
}
func toTeam(id, level string) map[string]any {
	return map[string]any{"sharedWithTeamId": id, "permissionLevel": level}
}

func decode[T any](t *testing.T, raw []byte) T {
	t.Helper()
	var v T
	require.NoError(t, json.Unmarshal(raw, &v), "decode %s", raw)
	return v
}

// mustShare shares as user and fails the test unless the answer is want.
func mustShare(t *testing.T, h *fntest.Harness, user, tmpl string, body any, want int) function.ShareResult {
	t.Helper()
	status, raw := h.Do(http.MethodPost, sharePath(tmpl), token(h, user), body)
	require.Equal(t, want, status, "share %v: %s", body, raw)
	return decode[function.ShareResult](t, raw)
}

// mustRevoke revokes as user and fails the test unless the answer is 200.
func mustRevoke(t *testing.T, h *fntest.Harness, user, tmpl, shareID string) function.RevokeResult {
	t.Helper()
	status, raw := h.Do(http.MethodDelete, revokePath(tmpl, shareID), token(h, user), nil)
	require.Equal(t, http.StatusOK, status, "revoke %s: %s", shareID, raw)
	return decode[function.RevokeResult](t, raw)
}

// list fetches one page of shares as user.
func list(t *testing.T, h *fntest.Harness, user, tmpl, query string) (int, function.ShareList) {
	t.Helper()
	status, raw := h.Do(http.MethodGet, sharesPath(tmpl)+query, token(h, user), nil)
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
	require.NoError(t, err)
	return level
}

type auditRow struct {
	User, Action, ResourceType, Resource string
	IP                                   *string
	Changes                              struct {
		ShareID     string
		GranteeType string
		GranteeID   string
		OldLevel    *string
		NewLevel    *string
		SharedBy    string
	}
}

func auditRows(t *testing.T, h *fntest.Harness) []auditRow {
	t.Helper()
	rows, err := h.Pool.Query(context.Background(),
		`select user_id, action, resource_type, resource_id, ip_address, changes from audit_log where resource_type = $1 order by id`, access.ResourceType)
	require.NoError(t, err)
	defer rows.Close()
	var out []auditRow
	for rows.Next() {
		var a auditRow
		var raw []byte
		require.NoError(t, rows.Scan(&a.User, &a.Action, &a.ResourceType, &a.Resource, &a.IP, &raw))
		require.NoError(t, json.Unmarshal(raw, &a.Changes))
		out = append(out, a)
	}
	require.NoError(t, rows.Err())
	return out
}

func level(p *string) string {
	if p == nil {
		return "null"
	}
	return *p
}

type notification struct {
	ID, UserID, Type, Title, Message, Priority string
	ActionURL, ActionText                      *string
	IsRead                                     bool
	Data                                       map[string]any
}

// notifications returns every notification, by user, oldest first.
func notifications(t *testing.T, h *fntest.Harness) map[string][]notification {
	t.Helper()
	rows, err := h.Pool.Query(context.Background(),
		`select id, user_id, type, title, message, priority, action_url, action_text, is_read, data
		 from notifications order by created_at, id`)
	require.NoError(t, err)
	defer rows.Close()
	out := map[string][]notification{}
	for rows.Next() {
		var n notification
		require.NoError(t, rows.Scan(&n.ID, &n.UserID, &n.Type, &n.Title, &n.Message, &n.Priority, &n.ActionURL, &n.ActionText, &n.IsRead, &n.Data))
		out[n.UserID] = append(out[n.UserID], n)
	}
	require.NoError(t, rows.Err())
	return out
}

func countNotifications(notes map[string][]notification) map[string]int {
	out := map[string]int{}
	for u, ns := range notes {
		out[u] = len(ns)
	}
	return out
}

// settle waits until the outbox is empty: every event queued so far has
// reached the sink, so counts taken afterwards are final.
func settle(t *testing.T, h *fntest.Harness) {
	t.Helper()
	require.Eventually(t, func() bool { return h.Count(`select count(*) from event_outbox`) == 0 },
		time.Minute, 20*time.Millisecond, "events still queued in the outbox")
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
		require.NoError(t, err, eventType)
		out = append(out, d)
	}
	return out
}

func checkAttributes(t *testing.T, e cloudevents.Event) {
	t.Helper()
	assert.Equal(t, "/streamspace/functions/sharing", e.Source())
	assert.Equal(t, events.SchemaURI(e.Type()), e.DataSchema())
	assert.NotEmpty(t, e.ID())
	assert.False(t, e.Time().IsZero(), "event time")
}

func user(id string) authn.Identity { return authn.Identity{Subject: id, Role: authn.User} }

// effective is who's level on tmpl as access.Effective, which every
// template route relies on, sees it.
func effective(t *testing.T, h *fntest.Harness, who, tmpl string) string {
	t.Helper()
	l, err := access.Effective(context.Background(), h.Pool, user(who), tmpl)
	require.NoError(t, err, "effective level of %s on %s", who, tmpl)
	return l.String()
}
