package function_test

import (
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/events"
	function "github.com/streamspace-dev/functions/functions/sharing"
	"github.com/streamspace-dev/functions/shared/access"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/fntest"
)

func TestConcurrentSharesToOneGranteeEndInOneShare(t *testing.T) {
	const n = 10
	levels := []string{"read", "write", "manage"}
	tests := []struct {
		name   string
		body   func(level string) map[string]any
		column string
		id     string
		notes  int // notifications per notifying change: the grantee, or each member but alice
	}{
		{"user", func(l string) map[string]any { return toUser("bob", l) }, "shared_with_user_id", "bob", 1},
		{"team", func(l string) map[string]any { return toTeam("devs", l) }, "shared_with_team_id", "devs", 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t)
			seed(t, h)
			alice := token(h, "alice")

			statuses := make([]int, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() {
					statuses[i], _ = h.Do(http.MethodPost, sharePath("t1"), alice, tc.body(levels[i%len(levels)]))
				})
			}
			wg.Wait()
			created := 0
			for i, s := range statuses {
				assert.Contains(t, []int{http.StatusOK, http.StatusCreated}, s, "request %d", i)
				if s == http.StatusCreated {
					created++
				}
			}
			assert.Equal(t, 1, created, "201 answers")
			require.Equal(t, 1, h.Count(`select count(*) from template_shares where `+tc.column+` = $1`, tc.id), "share rows")

			// The audit rows, in order, chain: each change starts from the
			// level the one before left, and the last is what is stored.
			audits := auditRows(t, h)
			require.NotEmpty(t, audits)
			require.Equal(t, string(function.ActionCreated), audits[0].Action)
			require.Nil(t, audits[0].Changes.OldLevel)
			prev := level(audits[0].Changes.NewLevel)
			notifying := 1
			for i, a := range audits[1:] {
				assert.Equal(t, string(function.ActionUpdated), a.Action, "audit row %d", i+1)
				assert.Equal(t, prev, level(a.Changes.OldLevel), "audit row %d", i+1)
				assert.NotEqual(t, prev, level(a.Changes.NewLevel), "audit row %d", i+1)
				from, _ := access.ParseLevel(prev)
				to, _ := access.ParseLevel(level(a.Changes.NewLevel))
				if to > from {
					notifying++
				}
				prev = level(a.Changes.NewLevel)
			}
			assert.Equal(t, prev, activeLevel(t, h, "t1", tc.column, tc.id), "stored level is the last audited")
			changes := len(audits)
			t.Logf("%d concurrent shares made %d changes, %d of them notifying", n, changes, notifying)
			assert.Equal(t, notifying*tc.notes, h.Count(`select count(*) from notifications`))
			settle(t, h)
			assert.Len(t, sunk[events.TemplateSharedData](t, h, events.TemplateShared), changes, "one template.shared per change")
			assert.Len(t, sunk[events.NotificationCreatedData](t, h, events.NotificationCreated), notifying*tc.notes)
		})
	}
}

// TestAFailureHalfWayLeavesNothing makes the notification insert, which
// comes after the share and audit rows, fail, and checks that the share, the
// audit row and the queued events were all rolled back with it.
func TestAFailureHalfWayLeavesNothing(t *testing.T) {
	h := start(t)
	seed(t, h)
	sh := mustShare(t, h, "alice", "t1", toUser("bob", "read"), http.StatusCreated).Share
	revoked := mustShare(t, h, "alice", "t1", toUser("carol", "read"), http.StatusCreated).Share
	mustRevoke(t, h, "alice", "t1", revoked.ID)
	settle(t, h)
	audits, sent := len(auditRows(t, h)), len(h.Sink.Events())

	// A trigger in the test database only: the functions install none.
	exec(t, h, `create function fail_notifications() returns trigger language plpgsql as $$
		begin raise exception 'notification store is down'; end $$`)
	exec(t, h, `create trigger fail_notifications before insert on notifications
		for each statement execute function fail_notifications()`)

	tests := []struct {
		name   string
		method string
		path   string
		body   any
	}{
		{"new share", http.MethodPost, sharePath("t1"), toUser("dave", "write")},
		{"reactivation", http.MethodPost, sharePath("t1"), toUser("carol", "manage")},
		{"raise", http.MethodPost, sharePath("t1"), toUser("bob", "manage")},
		{"revoke", http.MethodDelete, revokePath("t1", sh.ID), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, raw := h.Do(tc.method, tc.path, token(h, "alice"), tc.body)
			require.Equal(t, http.StatusInternalServerError, status, "%s", raw)
			code, msg := fntest.ErrorBody(t, raw)
			assert.Equal(t, "internal", code)
			assert.Equal(t, "internal error", msg, "no detail")
			assert.Equal(t, "read", activeLevel(t, h, "t1", "shared_with_user_id", "bob"), "bob's share unchanged")
			assert.Empty(t, activeLevel(t, h, "t1", "shared_with_user_id", "carol"), "carol's share still revoked")
			assert.Equal(t, 2, h.Count(`select count(*) from template_shares`))
			assert.Len(t, auditRows(t, h), audits)
			assert.Zero(t, h.Count(`select count(*) from event_outbox`), "queued events")
			assert.Len(t, h.Sink.Events(), sent)
		})
	}

	exec(t, h, `drop trigger fail_notifications on notifications`)
	mustShare(t, h, "alice", "t1", toUser("dave", "write"), http.StatusCreated)
}

func TestConcurrentRevokesRevokeOnce(t *testing.T) {
	const n = 8
	h := start(t)
	seed(t, h)
	alice := token(h, "alice")
	sh := mustShare(t, h, "alice", "t1", toTeam("devs", "write"), http.StatusCreated).Share

	statuses := make([]int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { statuses[i], _ = h.Do(http.MethodDelete, revokePath("t1", sh.ID), alice, nil) })
	}
	wg.Wait()
	ok := 0
	for i, s := range statuses {
		assert.Contains(t, []int{http.StatusOK, http.StatusNotFound}, s, "request %d", i)
		if s == http.StatusOK {
			ok++
		}
	}
	assert.Equal(t, 1, ok, "200 answers")
	revokes := 0
	for _, a := range auditRows(t, h) {
		if a.Action == string(function.ActionRevoked) {
			revokes++
		}
	}
	assert.Equal(t, 1, revokes, "revoke audit rows")
	// carol and dave: one notification each for the revoke.
	assert.Equal(t, 2, h.Count(`select count(*) from notifications where type = $1`, string(function.KindShareRevoked)))
	settle(t, h)
	assert.Len(t, sunk[events.TemplateShareRevokedData](t, h, events.TemplateShareRevoked), 1)
}

// TestConcurrentSharesAndRevokesKeepOneRow races re-shares against revokes
// of the same grantee: the row is never duplicated, and it ends either
// active or revoked with every change audited.
func TestConcurrentSharesAndRevokesKeepOneRow(t *testing.T) {
	const rounds = 6
	h := start(t)
	seed(t, h)
	alice := token(h, "alice")
	sh := mustShare(t, h, "alice", "t1", toUser("bob", "read"), http.StatusCreated).Share

	tests := []struct {
		name  string
		level string
	}{
		{"same level", "read"},
		{"other level", "manage"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var wg sync.WaitGroup
			for range rounds {
				wg.Go(func() { h.Do(http.MethodDelete, revokePath("t1", sh.ID), alice, nil) })
				wg.Go(func() { h.Do(http.MethodPost, sharePath("t1"), alice, toUser("bob", tc.level)) })
			}
			wg.Wait()
			assert.Equal(t, 1, h.Count(`select count(*) from template_shares where shared_with_user_id = 'bob'`))
			var created, revoked int
			for _, a := range auditRows(t, h) {
				switch a.Action {
				case string(function.ActionCreated):
					created++
				case string(function.ActionRevoked):
					revoked++
				}
			}
			active := h.Count(`select count(*) from template_shares where shared_with_user_id = 'bob' and revoked_at is null`)
			assert.Equal(t, created-revoked, active, "active iff one more creation than revokes")
		})
	}
}

// TestWorksOnRowsStreamSpaceWrote runs the routes over the sample rows of a
// running StreamSpace (testdata/streamspace/rows.sql), shares its API made
// with its ids, one of them revoked, with the tokens its API signs.
func TestWorksOnRowsStreamSpaceWrote(t *testing.T) {
	h := start(t)
	rows, err := os.ReadFile(filepath.Join("..", "..", "testdata", "streamspace", "rows.sql"))
	require.NoError(t, err)
	exec(t, h, string(rows))

	tests := []struct {
		name       string
		as         string
		method     string
		path       string
		body       any
		wantStatus int
		check      func(t *testing.T, raw []byte)
	}{
		{name: "list: the active share only", as: "u-alice", method: http.MethodGet, path: sharesPath("t-1"), wantStatus: 200,
			check: func(t *testing.T, raw []byte) {
				l := decode[function.ShareList](t, raw)
				require.Len(t, l.Shares, 1)
				assert.Equal(t, "sh-1", l.Shares[0].ID)
				assert.Equal(t, "bob", l.Shares[0].SharedWithUserName)
				assert.Equal(t, "u-alice", l.Shares[0].SharedBy)
			}},
		{name: "the grantee reads but may not list", as: "u-bob", method: http.MethodGet, path: sharesPath("t-1"), wantStatus: 403},
		{name: "re-sharing with the revoked team reactivates StreamSpace's row", as: "u-alice", method: http.MethodPost, path: sharePath("t-1"),
			body: toTeam("g-eng", "read"), wantStatus: 201,
			check: func(t *testing.T, raw []byte) {
				res := decode[function.ShareResult](t, raw)
				assert.Equal(t, "sh-2", res.ShareID)
				assert.Equal(t, "engineering", res.Share.SharedWithTeamName)
				// u-bob is in g-eng; u-alice made the change.
				assert.Equal(t, 1, h.Count(`select count(*) from notifications where user_id = 'u-bob' and type = $1`, string(function.KindShared)))
			}},
		{name: "revoking a share StreamSpace made", as: "u-alice", method: http.MethodDelete, path: revokePath("t-1", "sh-1"), wantStatus: 200,
			check: func(t *testing.T, raw []byte) {
				assert.Equal(t, "read", decode[function.RevokeResult](t, raw).Share.PermissionLevel)
			}},
		{name: "the team still gives read", as: "u-bob", method: http.MethodGet, path: sharesPath("t-1"), wantStatus: 403},
		{name: "a team template's owner", as: "u-bob", method: http.MethodGet, path: sharesPath("t-2"), wantStatus: 200},
		{name: "a deactivated user", as: "u-carol", method: http.MethodGet, path: sharesPath("t-1"), wantStatus: 401},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, raw := h.Do(tc.method, tc.path, h.StreamSpaceToken(tc.as, authn.User), tc.body)
			require.Equal(t, tc.wantStatus, status, "%s", raw)
			if tc.check != nil {
				tc.check(t, raw)
			}
		})
	}
	assert.Equal(t, 2, h.Count(`select count(*) from template_shares`), "StreamSpace's two rows, no new one")
}
