package function_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	function "github.com/streamspace-dev/functions/functions/snapshot"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/homesnap"
)

// TestAnotherUsersSnapshots: a user who does not own a session is told its
// snapshots do not exist, whichever route he takes, changes nothing, and
// never sees them in his own lists; an admin reads them.
func TestAnotherUsersSnapshots(t *testing.T) {
	w := newWorld(t, opts{})
	bob, root := w.h.Token("bob", authn.User), w.h.Token("root", authn.Admin)
	key := w.row(t, "snap-a", "s-1", "alice", "manual", "available", time.Hour, "10 days", true)
	w.row(t, "snap-b", "s-b", "bob", "manual", "available", 2*time.Hour, "10 days", true)
	aliceRow := func() string {
		var row string
		require.NoError(t, w.h.Pool.QueryRow(context.Background(),
			`select row_to_json(s)::text from session_snapshots s where id = 'snap-a'`).Scan(&row))
		return row
	}
	before := aliceRow()

	tests := []struct {
		name   string
		method string
		path   string
		token  string
		status int
		// contains and lacks are strings the answer must and must not hold.
		contains, lacks []string
	}{
		{name: "get one", method: http.MethodGet, path: "/sessions/s-1/snapshots/snap-a", token: bob, status: 404},
		{name: "get one through his own session", method: http.MethodGet, path: "/sessions/s-b/snapshots/snap-a", token: bob, status: 404},
		{name: "delete", method: http.MethodDelete, path: "/sessions/s-1/snapshots/snap-a", token: bob, status: 404},
		{name: "delete through his own session", method: http.MethodDelete, path: "/sessions/s-b/snapshots/snap-a", token: bob, status: 404},
		{name: "list the session's", method: http.MethodGet, path: "/sessions/s-1/snapshots", token: bob, status: 404},
		{name: "get the config", method: http.MethodGet, path: "/sessions/s-1/snapshots/config", token: bob, status: 404},
		{name: "his list across sessions", method: http.MethodGet, path: "/snapshots", token: bob, status: 200,
			contains: []string{`"id":"snap-b"`, `"totalCount":1`}, lacks: []string{"snap-a", "alice"}},
		{name: "his stats", method: http.MethodGet, path: "/snapshots/stats", token: bob, status: 200,
			contains: []string{`"totalSnapshots":1`, `"availableSnapshots":1`, `"totalSizeBytes":10`}},
		{name: "an admin reads it", method: http.MethodGet, path: "/sessions/s-1/snapshots/snap-a", token: root, status: 200,
			contains: []string{`"id":"snap-a"`, `"userId":"alice"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, body := w.h.Do(tc.method, "/api/v1"+tc.path, tc.token, nil)
			require.Equal(t, tc.status, status, "%s", body)
			if tc.status == http.StatusNotFound {
				code, message := fntest.ErrorBody(t, body)
				assert.Equal(t, "not_found", code)
				assert.NotContains(t, message, "alice", "nothing about the owner is told")
			}
			for _, s := range tc.contains {
				assert.Contains(t, string(body), s)
			}
			for _, s := range tc.lacks {
				assert.NotContains(t, string(body), s)
			}
			assert.Equal(t, before, aliceRow(), "alice's snapshot row is unchanged")
			assert.True(t, w.exists(t, key), "its archive is still stored")
			assert.True(t, w.exists(t, homesnap.ManifestKey(key)), "its manifest is still stored")
		})
	}
}

// TestListPages: both lists hold the snapshots not deleted, newest first,
// a page at a time, with the whole count beside the page's.
func TestListPages(t *testing.T) {
	w := newWorld(t, opts{})
	for _, r := range []struct {
		id, session, user, status string
		age                       time.Duration
	}{
		{"p1", "s-1", "alice", "available", 1 * time.Hour},
		{"q1", "s-2", "alice", "available", 90 * time.Minute},
		{"p2", "s-1", "alice", "failed", 2 * time.Hour},
		{"gone", "s-1", "alice", "deleted", 150 * time.Minute},
		{"p3", "s-1", "alice", "creating", 3 * time.Hour},
		{"p4", "s-1", "alice", "available", 4 * time.Hour},
		{"p5", "s-1", "alice", "available", 5 * time.Hour},
		{"b1", "s-b", "bob", "available", 30 * time.Minute},
	} {
		w.row(t, r.id, r.session, r.user, "manual", r.status, r.age, "10 days", false)
	}

	tests := []struct {
		name  string
		path  string
		ids   []string
		total int
		page  int
		limit int
		// session is the sessionId a session's list answers with.
		session string
		// field, when set, is the field a 400 names.
		field string
	}{
		{name: "a session's, newest first", path: "/sessions/s-1/snapshots", ids: []string{"p1", "p2", "p3", "p4", "p5"}, total: 5, page: 1, limit: 50, session: "s-1"},
		{name: "a session's first page", path: "/sessions/s-1/snapshots?limit=2", ids: []string{"p1", "p2"}, total: 5, page: 1, limit: 2, session: "s-1"},
		{name: "a session's second page", path: "/sessions/s-1/snapshots?limit=2&page=2", ids: []string{"p3", "p4"}, total: 5, page: 2, limit: 2, session: "s-1"},
		{name: "a session's last page", path: "/sessions/s-1/snapshots?limit=2&page=3", ids: []string{"p5"}, total: 5, page: 3, limit: 2, session: "s-1"},
		{name: "a page past the end", path: "/sessions/s-1/snapshots?limit=2&page=4", ids: []string{}, total: 5, page: 4, limit: 2, session: "s-1"},
		{name: "the user's, newest first", path: "/snapshots", ids: []string{"p1", "q1", "p2", "p3", "p4", "p5"}, total: 6, page: 1, limit: 50},
		{name: "the user's second page", path: "/snapshots?limit=4&page=2", ids: []string{"p4", "p5"}, total: 6, page: 2, limit: 4},
		{name: "limit zero", path: "/sessions/s-1/snapshots?limit=0", field: "limit"},
		{name: "limit too large", path: "/sessions/s-1/snapshots?limit=101", field: "limit"},
		{name: "limit not a number", path: "/snapshots?limit=ten", field: "limit"},
		{name: "limit empty", path: "/snapshots?limit=", field: "limit"},
		{name: "page zero", path: "/sessions/s-1/snapshots?page=0", field: "page"},
		{name: "page negative", path: "/snapshots?page=-1", field: "page"},
		{name: "page not a number", path: "/snapshots?limit=2&page=two", field: "page"},
		{name: "page too large", path: "/sessions/s-1/snapshots?page=10001", field: "page"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, body := w.h.Do(http.MethodGet, "/api/v1"+tc.path, w.alice(), nil)
			if tc.field != "" {
				require.Equal(t, http.StatusBadRequest, status, "%s", body)
				code, message := fntest.ErrorBody(t, body)
				assert.Equal(t, "invalid", code)
				assert.Contains(t, message, tc.field)
				return
			}
			require.Equal(t, http.StatusOK, status, "%s", body)
			var res function.ListResult
			require.NoError(t, json.Unmarshal(body, &res))
			ids := []string{}
			for _, s := range res.Snapshots {
				ids = append(ids, s.ID)
			}
			assert.Equal(t, tc.ids, ids)
			assert.Equal(t, len(tc.ids), res.Count, "count is the page's")
			assert.Equal(t, tc.total, res.TotalCount, "totalCount is the whole count")
			assert.Equal(t, tc.page, res.Page)
			assert.Equal(t, tc.limit, res.Limit)
			assert.Equal(t, tc.session, res.SessionID)
		})
	}
}
