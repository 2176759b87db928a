package function_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/events"
	function "github.com/streamspace-dev/functions/functions/sharing"
	"github.com/streamspace-dev/functions/shared/fntest"
)

func TestRevokeKeepsHistoryAndTwiceIsNotFound(t *testing.T) {
	h := start(t)
	seed(t, h)
	first := mustShare(t, h, "alice", "t1", toUser("bob", "write"), http.StatusCreated).Share

	tests := []struct {
		name       string
		wantStatus int
		wantAudits int
	}{
		{name: "first revoke", wantStatus: http.StatusOK, wantAudits: 2},
		{name: "second revoke", wantStatus: http.StatusNotFound, wantAudits: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, raw := h.Do(http.MethodDelete, revokePath("t1", first.ID), token(h, "alice"), nil)
			require.Equal(t, tc.wantStatus, status, "%s", raw)
			assert.Len(t, auditRows(t, h), tc.wantAudits)
			if tc.wantStatus != http.StatusOK {
				_, msg := fntest.ErrorBody(t, raw)
				assert.Equal(t, `share "`+first.ID+`" of template "t1" not found`, msg)
				return
			}
			res := decode[function.RevokeResult](t, raw)
			assert.Equal(t, "Share revoked successfully", res.Message)
			assert.Equal(t, "alice", res.RevokedBy)
			assert.Equal(t, first.ID, res.Share.ID)
			assert.Equal(t, "write", res.Share.PermissionLevel)
			assert.Equal(t, "bob", *res.Share.SharedWithUserID)
			assert.Equal(t, "bob", res.Share.SharedWithUserName)
			require.NotNil(t, res.Share.RevokedAt)

			var revokedAt *time.Time
			var stored string
			require.NoError(t, h.Pool.QueryRow(context.Background(),
				`select revoked_at, permission_level from template_shares where id = $1`, first.ID).Scan(&revokedAt, &stored),
				"the revoked row is kept for history")
			assert.NotNil(t, revokedAt)
			assert.Equal(t, "write", stored)

			a := auditRows(t, h)[1]
			assert.Equal(t, string(function.ActionRevoked), a.Action)
			assert.Equal(t, "alice", a.User)
			assert.Equal(t, first.ID, a.Changes.ShareID)
			assert.Equal(t, "write", level(a.Changes.OldLevel))
			assert.Nil(t, a.Changes.NewLevel)

			notes := notifications(t, h)["bob"]
			require.Len(t, notes, 2)
			assert.Equal(t, string(function.KindShareRevoked), notes[1].Type)

			settle(t, h)
			assert.Equal(t, []events.TemplateShareRevokedData{{TemplateID: "t1", ShareID: first.ID, RevokedBy: "alice", UserID: "bob", PermissionLevel: "write"}},
				sunk[events.TemplateShareRevokedData](t, h, events.TemplateShareRevoked))
			assert.Equal(t, []events.TemplateUpdatedData{
				{TemplateID: "t1", UserID: "alice", Change: "shared"},
				{TemplateID: "t1", UserID: "alice", Change: "unshared"},
			}, sunk[events.TemplateUpdatedData](t, h, events.TemplateUpdated))
			assert.Len(t, sunk[events.NotificationCreatedData](t, h, events.NotificationCreated), 2)
			status, l := list(t, h, "alice", "t1", "")
			assert.Equal(t, http.StatusOK, status)
			assert.Zero(t, l.Count)
		})
	}
}

// TestRevokePermissions covers who may revoke, including the review
// finding: a former manager who lost all access could still revoke the
// shares they had made, and so could one whose share's level the owner had
// changed since, because a level change did not make the owner the sharer.
func TestRevokePermissions(t *testing.T) {
	h := start(t)
	seed(t, h)
	exec(t, h, `insert into users (id, username, email) values ('frank', 'frank', 'frank@example.com')`)
	// bob manages t1 and shares it with carol and dave; alice then changes
	// dave's level, and lowers bob to read.
	mustShare(t, h, "alice", "t1", toUser("bob", "manage"), http.StatusCreated)
	byBob := mustShare(t, h, "bob", "t1", toUser("carol", "read"), http.StatusCreated).Share
	changed := mustShare(t, h, "bob", "t1", toUser("dave", "read"), http.StatusCreated).Share
	mustShare(t, h, "alice", "t1", toUser("dave", "write"), http.StatusOK)
	mustShare(t, h, "alice", "t1", toUser("bob", "read"), http.StatusOK)
	// erin manages t1, shares it with frank, and then loses all access.
	erinShare := mustShare(t, h, "alice", "t1", toUser("erin", "manage"), http.StatusCreated).Share
	byErin := mustShare(t, h, "erin", "t1", toUser("frank", "read"), http.StatusCreated).Share
	mustRevoke(t, h, "alice", "t1", erinShare.ID)
	other := mustShare(t, h, "bob", "t2", toUser("erin", "read"), http.StatusCreated).Share
	assert.Equal(t, "alice", sharedBy(t, h, "t1", "dave"), "a level change makes its maker the sharer")

	tests := []struct {
		name       string
		as         string
		tmpl       string
		id         string
		wantStatus int
		wantMsg    string
	}{
		{name: "a stranger, even for an existing share", as: "mallory", tmpl: "t1", id: byBob.ID, wantStatus: 404, wantMsg: `template "t1" not found`},
		{name: "a former manager with no access left, for a share they made", as: "erin", tmpl: "t1", id: byErin.ID, wantStatus: 404, wantMsg: `template "t1" not found`},
		{name: "a former sharer whose share's level was changed since", as: "bob", tmpl: "t1", id: changed.ID, wantStatus: 403, wantMsg: "manage access required"},
		{name: "a writer who did not make the share", as: "dave", tmpl: "t1", id: byBob.ID, wantStatus: 403, wantMsg: "manage access required"},
		{name: "a writer, for a share that does not exist", as: "dave", tmpl: "t1", id: "no-such-share", wantStatus: 404, wantMsg: `share "no-such-share" of template "t1" not found`},
		{name: "a share of another template", as: "alice", tmpl: "t1", id: other.ID, wantStatus: 404, wantMsg: `share "` + other.ID + `" of template "t1" not found`},
		{name: "an unknown template", as: "alice", tmpl: "t9", id: byBob.ID, wantStatus: 404, wantMsg: `template "t9" not found`},
		{name: "the sharer, lowered to read", as: "bob", tmpl: "t1", id: byBob.ID, wantStatus: 200},
		{name: "the sharer, twice", as: "bob", tmpl: "t1", id: byBob.ID, wantStatus: 404, wantMsg: "share"},
		{name: "an admin", as: admin, tmpl: "t1", id: byErin.ID, wantStatus: 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, raw := h.Do(http.MethodDelete, revokePath(tc.tmpl, tc.id), token(h, tc.as), nil)
			require.Equal(t, tc.wantStatus, status, "%s", raw)
			if tc.wantMsg == "" {
				assert.Equal(t, tc.as, decode[function.RevokeResult](t, raw).RevokedBy)
				return
			}
			_, msg := fntest.ErrorBody(t, raw)
			assert.Contains(t, msg, tc.wantMsg)
		})
	}
	assert.Equal(t, "read", activeLevel(t, h, "t2", "shared_with_user_id", "erin"), "the other template's share is untouched")
	assert.Equal(t, "write", activeLevel(t, h, "t1", "shared_with_user_id", "dave"))
	var revokes []string
	for _, a := range auditRows(t, h) {
		if a.Action == string(function.ActionRevoked) {
			revokes = append(revokes, a.User+":"+a.Changes.GranteeID)
		}
	}
	assert.Equal(t, []string{"alice:erin", "bob:carol", "admin:frank"}, revokes)
}

func TestRevokeRejectsBadIDs(t *testing.T) {
	h := start(t)
	seed(t, h)
	tests := []struct {
		name       string
		tmpl       string
		id         string
		wantStatus int
		wantMsg    string
	}{
		{name: "share id too long", tmpl: "t1", id: strings.Repeat("9", 256), wantStatus: 400, wantMsg: "share id"},
		{name: "control character", tmpl: "t1", id: "a%0Ab", wantStatus: 400, wantMsg: "share id"},
		{name: "zero-width space", tmpl: "t1", id: "a%E2%80%8Bb", wantStatus: 400, wantMsg: "share id"},
		{name: "template id too long", tmpl: strings.Repeat("t", 256), id: "1", wantStatus: 400, wantMsg: "template id"},
		{name: "a well-formed id of no share", tmpl: "t1", id: "00000000-0000-0000-0000-000000000000", wantStatus: 404, wantMsg: "share"},
		{name: "a number, as shares once had", tmpl: "t1", id: "1", wantStatus: 404, wantMsg: "share"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, raw := h.Do(http.MethodDelete, revokePath(tc.tmpl, tc.id), token(h, "alice"), nil)
			require.Equal(t, tc.wantStatus, status, "%s", raw)
			_, msg := fntest.ErrorBody(t, raw)
			assert.Contains(t, msg, tc.wantMsg)
		})
	}
}
