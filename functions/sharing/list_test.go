package function_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	function "github.com/streamspace-dev/functions/functions/sharing"
	"github.com/streamspace-dev/functions/shared/fntest"
)

func TestListSharesNamesEachGrantee(t *testing.T) {
	h := start(t)
	seed(t, h)
	mustShare(t, h, "alice", "t1", toUser("bob", "read"), http.StatusCreated)
	mustShare(t, h, "alice", "t1", toUser("carol", "write"), http.StatusCreated)
	mustShare(t, h, "alice", "t1", toTeam("devs", "manage"), http.StatusCreated)
	gone := mustShare(t, h, "alice", "t1", toUser("dave", "read"), http.StatusCreated).Share
	mustRevoke(t, h, "alice", "t1", gone.ID)
	mustShare(t, h, "bob", "t2", toUser("erin", "read"), http.StatusCreated)
	// StreamSpace deletes a deleted user's shares with the user.
	mustShare(t, h, "alice", "t1", toUser("erin", "read"), http.StatusCreated)
	exec(t, h, `delete from users where id = 'erin'`)

	type grantee struct{ user, team, name, level string }
	// Newest first, as StreamSpace lists them; revoked shares left out.
	want := []grantee{
		{team: "devs", name: "devs", level: "manage"},
		{user: "carol", name: "carol", level: "write"},
		{user: "bob", name: "bob", level: "read"},
	}
	tests := []struct {
		name       string
		as         string
		wantStatus int
	}{
		{name: "the owner", as: "alice", wantStatus: 200},
		{name: "an admin", as: admin, wantStatus: 200},
		{name: "a manager through a team", as: "dave", wantStatus: 200},
		{name: "a reader", as: "bob", wantStatus: 403},
		{name: "a stranger", as: "mallory", wantStatus: 404},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, got := list(t, h, tc.as, "t1", "")
			require.Equal(t, tc.wantStatus, status)
			if status != http.StatusOK {
				return
			}
			var grantees []grantee
			for _, s := range got.Shares {
				g := grantee{name: s.SharedWithUserName + s.SharedWithTeamName, level: s.PermissionLevel}
				if s.SharedWithUserID != nil {
					g.user = *s.SharedWithUserID
				}
				if s.SharedWithTeamID != nil {
					g.team = *s.SharedWithTeamID
				}
				grantees = append(grantees, g)
				assert.Equal(t, "alice", s.SharedBy)
				assert.Equal(t, "t1", s.TemplateID)
				assert.False(t, s.CreatedAt.IsZero())
				assert.Nil(t, s.RevokedAt)
			}
			assert.Equal(t, want, grantees)
			assert.Equal(t, len(want), got.Count)
			assert.Empty(t, got.NextCursor)
		})
	}
}

// TestListSharesPages is the review finding that the share list had no
// LIMIT: it comes a page at a time, newest first, in an order that holds
// for shares made in the same microsecond.
func TestListSharesPages(t *testing.T) {
	h := start(t)
	seed(t, h)
	// 250 shares of t1, in 125 pairs made at the same instant, and one of t2.
	exec(t, h, `insert into users (id, username, email) select 'p' || g, 'p' || g, 'p' || g || '@example.com' from generate_series(1, 250) g`)
	exec(t, h, `insert into template_shares (id, template_id, shared_by, shared_with_user_id, permission_level, created_at)
		select 'share-' || lpad(g::text, 3, '0'), 't1', 'alice', 'p' || g, 'read', timestamp '2026-01-01' + (g / 2) * interval '1 second'
		from generate_series(1, 250) g`)
	exec(t, h, `insert into template_shares (id, template_id, shared_by, shared_with_user_id, permission_level, revoked_at)
		values ('revoked', 't1', 'alice', 'bob', 'read', now()), ('other', 't2', 'bob', 'carol', 'read', null)`)
	// The order: newest first, then by id, descending.
	var wantAll []string
	for s := 125; s >= 0; s-- {
		for _, g := range []int{2*s + 1, 2 * s} {
			if g >= 1 && g <= 250 {
				wantAll = append(wantAll, fmt.Sprintf("share-%03d", g))
			}
		}
	}
	require.Len(t, wantAll, 250)

	tests := []struct {
		name      string
		limit     string
		wantPages []int
	}{
		{name: "default 50", limit: "", wantPages: []int{50, 50, 50, 50, 50}},
		{name: "limit 7", limit: "7", wantPages: append(repeat(7, 35), 5)},
		{name: "limit 1 to the end", limit: "1", wantPages: repeat(1, 250)},
		{name: "the largest page", limit: "200", wantPages: []int{200, 50}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			var sizes []int
			cursor := ""
			for {
				q := url.Values{}
				if tc.limit != "" {
					q.Set("limit", tc.limit)
				}
				if cursor != "" {
					q.Set("cursor", cursor)
				}
				status, page := list(t, h, "alice", "t1", "?"+q.Encode())
				require.Equal(t, http.StatusOK, status)
				require.LessOrEqual(t, len(sizes), 300, "pages never end")
				sizes = append(sizes, page.Count)
				assert.Len(t, page.Shares, page.Count)
				for _, s := range page.Shares {
					got = append(got, s.ID)
				}
				if page.NextCursor == "" {
					break
				}
				cursor = page.NextCursor
			}
			assert.Equal(t, tc.wantPages, sizes)
			assert.Equal(t, wantAll, got, "every active share once, in order")
		})
	}
}

func repeat(n, times int) []int {
	out := make([]int, times)
	for i := range out {
		out[i] = n
	}
	return out
}

func TestListSharesRejectsBadQueries(t *testing.T) {
	h := start(t)
	seed(t, h)
	for _, who := range []string{"bob", "carol", "dave"} {
		mustShare(t, h, "alice", "t1", toUser(who, "read"), http.StatusCreated)
	}
	for _, who := range []string{"carol", "dave"} {
		mustShare(t, h, "bob", "t2", toUser(who, "read"), http.StatusCreated)
	}
	_, first := list(t, h, "alice", "t1", "?limit=1")
	require.NotEmpty(t, first.NextCursor)
	_, other := list(t, h, admin, "t2", "?limit=1")
	require.NotEmpty(t, other.NextCursor)
	tampered := []byte(first.NextCursor)
	tampered[len(tampered)-1] ^= 1

	tests := []struct {
		name    string
		query   string
		wantMsg string
	}{
		{name: "limit zero", query: "?limit=0", wantMsg: "limit"},
		{name: "limit over the max", query: "?limit=201", wantMsg: "limit"},
		{name: "limit not a number", query: "?limit=ten", wantMsg: "limit"},
		{name: "negative limit", query: "?limit=-1", wantMsg: "limit"},
		{name: "cursor not base64", query: "?cursor=%25%25", wantMsg: "cursor"},
		{name: "cursor of another template", query: "?cursor=" + other.NextCursor, wantMsg: "cursor"},
		{name: "tampered cursor", query: "?cursor=" + string(tampered), wantMsg: "cursor"},
		{name: "overlong cursor", query: "?cursor=" + strings.Repeat("A", 600), wantMsg: "cursor"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, raw := h.Do(http.MethodGet, sharesPath("t1")+tc.query, token(h, "alice"), nil)
			require.Equal(t, http.StatusBadRequest, status, "%s", raw)
			_, msg := fntest.ErrorBody(t, raw)
			assert.Contains(t, msg, tc.wantMsg)
		})
	}
}

// TestEveryRouteHidesTemplatesFromStrangers checks that a caller with no
// access learns nothing: every route answers exactly as for a template that
// does not exist. Without a valid token every route is 401.
func TestEveryRouteHidesTemplatesFromStrangers(t *testing.T) {
	h := start(t)
	seed(t, h)
	sh := mustShare(t, h, "alice", "t1", toUser("bob", "read"), http.StatusCreated).Share
	mallory := token(h, "mallory")

	routes := []struct {
		name   string
		method string
		path   func(tmpl string) string
		body   any
	}{
		{"list shares", http.MethodGet, sharesPath, nil},
		{"share", http.MethodPost, sharePath, toUser("carol", "read")},
		{"revoke", http.MethodDelete, func(tmpl string) string { return revokePath(tmpl, sh.ID) }, nil},
	}
	for _, rt := range routes {
		t.Run(rt.name, func(t *testing.T) {
			status, raw := h.Do(rt.method, rt.path("t1"), mallory, rt.body)
			require.Equal(t, http.StatusNotFound, status, "stranger: %s (never 403)", raw)
			code, msg := fntest.ErrorBody(t, raw)
			_, missingRaw := h.Do(rt.method, rt.path("missing"), mallory, rt.body)
			_, missingMsg := fntest.ErrorBody(t, missingRaw)
			assert.Equal(t, "not_found", code)
			assert.Equal(t, missingMsg, strings.ReplaceAll(msg, "t1", "missing"), "worded as for a missing template")
			for _, tok := range []string{"", "not-a-jwt", expired(t, h)} {
				status, raw := h.Do(rt.method, rt.path("t1"), tok, rt.body)
				assert.Equal(t, http.StatusUnauthorized, status, "token %q: %s", tok, raw)
			}
		})
	}
	assert.Equal(t, "read", activeLevel(t, h, "t1", "shared_with_user_id", "bob"))
	assert.Equal(t, 1, h.Count(`select count(*) from template_shares`))
}

// expired is alice's token of an hour ago, signed by the trusted issuer.
func expired(t *testing.T, h *fntest.Harness) string {
	t.Helper()
	then := time.Now().Add(-2 * time.Hour)
	tok, err := h.Issuer.Sign(map[string]any{
		"iss": h.Issuer.URL(), "sub": "alice", "aud": fntest.Audience, "role": "user",
		"iat": then.Unix(), "nbf": then.Unix(), "exp": then.Add(time.Hour).Unix(),
	})
	require.NoError(t, err)
	return tok
}

func TestShapeBeforeAndAfterStart(t *testing.T) {
	tests := []struct {
		name      string
		started   bool
		wantReady bool
		want      []string
	}{
		{name: "before Start", started: false, wantReady: false, want: nil},
		{name: "after Start", started: true, wantReady: true, want: []string{
			"GET /api/v1/session-templates/{id}/shares",
			"POST /api/v1/session-templates/{id}/share",
			"DELETE /api/v1/session-templates/{id}/shares/{shareId}",
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := function.New()
			if tc.started {
				fntest.Start(t, f, nil)
			}
			assert.Equal(t, tc.want, f.Routes(), "routes, for the all-in-one")
			ready, _ := f.Ready(context.Background())
			assert.Equal(t, tc.wantReady, ready)
		})
	}
}
