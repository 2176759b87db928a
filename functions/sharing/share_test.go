package function_test

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/events"
	function "github.com/streamspace-dev/functions/functions/sharing"
	"github.com/streamspace-dev/functions/shared/access"
	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/fntest"
)

// TestShareWithAUser walks one user share through creation, no-ops, a raise
// and a lowering. Each change is audited and emitted; only a new share and a
// raise notify.
func TestShareWithAUser(t *testing.T) {
	h := start(t)
	seed(t, h)

	tests := []struct {
		name        string
		level       string
		wantStatus  int
		wantOutcome function.Outcome
		wantPrev    string
		wantAudits  int // audit rows, template.shared and template.updated events so far
		wantNotes   int // bob's notifications and notification.created events so far
	}{
		{name: "new share", level: "read", wantStatus: http.StatusCreated, wantOutcome: function.Created, wantAudits: 1, wantNotes: 1},
		{name: "same level is a no-op", level: "read", wantStatus: http.StatusOK, wantOutcome: function.Unchanged, wantAudits: 1, wantNotes: 1},
		{name: "a raise notifies", level: "write", wantStatus: http.StatusOK, wantOutcome: function.Updated, wantPrev: "read", wantAudits: 2, wantNotes: 2},
		{name: "a lowering does not notify", level: "read", wantStatus: http.StatusOK, wantOutcome: function.Updated, wantPrev: "write", wantAudits: 3, wantNotes: 2},
		{name: "no-op again", level: "read", wantStatus: http.StatusOK, wantOutcome: function.Unchanged, wantAudits: 3, wantNotes: 2},
		{name: "raise to manage", level: "manage", wantStatus: http.StatusOK, wantOutcome: function.Updated, wantPrev: "read", wantAudits: 4, wantNotes: 3},
	}
	var shareID string
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := mustShare(t, h, "alice", "t1", toUser("bob", tc.level), tc.wantStatus)
			assert.Equal(t, tc.wantOutcome, res.Outcome)
			assert.Equal(t, tc.wantPrev, res.PreviousLevel)
			assert.NotEmpty(t, res.Message)
			sh := res.Share
			assert.Equal(t, "t1", sh.TemplateID)
			assert.Equal(t, "alice", sh.SharedBy)
			assert.Equal(t, "bob", *sh.SharedWithUserID)
			assert.Nil(t, sh.SharedWithTeamID)
			assert.Equal(t, "bob", sh.SharedWithUserName)
			assert.Equal(t, tc.level, sh.PermissionLevel)
			assert.False(t, sh.CreatedAt.IsZero())
			assert.Nil(t, sh.RevokedAt)
			assert.Equal(t, sh.ID, res.ShareID)
			if shareID == "" {
				shareID = sh.ID
			}
			assert.Equal(t, shareID, sh.ID, "the same share row throughout")

			assert.Equal(t, tc.level, activeLevel(t, h, "t1", "shared_with_user_id", "bob"))
			assert.Equal(t, 1, h.Count(`select count(*) from template_shares where shared_with_user_id = 'bob'`))
			audits := auditRows(t, h)
			require.Len(t, audits, tc.wantAudits)
			if tc.wantOutcome != function.Unchanged {
				a := audits[len(audits)-1]
				wantAction := function.ActionCreated
				wantOld := "null"
				if tc.wantOutcome == function.Updated {
					wantAction, wantOld = function.ActionUpdated, tc.wantPrev
				}
				assert.Equal(t, "alice", a.User)
				assert.Equal(t, string(wantAction), a.Action)
				assert.Equal(t, access.ResourceType, a.ResourceType)
				assert.Equal(t, "t1", a.Resource)
				assert.Equal(t, shareID, a.Changes.ShareID)
				assert.Equal(t, "user", a.Changes.GranteeType)
				assert.Equal(t, "bob", a.Changes.GranteeID)
				assert.Equal(t, wantOld, level(a.Changes.OldLevel))
				assert.Equal(t, tc.level, level(a.Changes.NewLevel))
				assert.Equal(t, "127.0.0.1", level(a.IP))
			}
			notes := notifications(t, h)
			assert.Equal(t, map[string]int{"bob": tc.wantNotes}, countNotifications(notes))

			settle(t, h)
			shared := sunk[events.TemplateSharedData](t, h, events.TemplateShared)
			notified := sunk[events.NotificationCreatedData](t, h, events.NotificationCreated)
			updated := sunk[events.TemplateUpdatedData](t, h, events.TemplateUpdated)
			require.Len(t, shared, tc.wantAudits)
			require.Len(t, updated, tc.wantAudits)
			require.Len(t, notified, tc.wantNotes)
			if tc.wantOutcome == function.Unchanged {
				return
			}
			assert.Equal(t, events.TemplateSharedData{TemplateID: "t1", ShareID: shareID, SharedBy: "alice", UserID: "bob",
				PermissionLevel: tc.level, PreviousLevel: tc.wantPrev}, shared[len(shared)-1])
			assert.Equal(t, events.TemplateUpdatedData{TemplateID: "t1", UserID: "alice", Change: "shared"}, updated[len(updated)-1])
			last := notes["bob"][len(notes["bob"])-1]
			n := notified[len(notified)-1]
			assert.Equal(t, events.NotificationCreatedData{NotificationID: last.ID, UserID: "bob", Kind: last.Type,
				Title: last.Title, Message: last.Message}, n)
		})
	}
}

func TestShareRejectsBadRequestsAndChangesNothing(t *testing.T) {
	h := start(t)
	seed(t, h)
	// The owner-share case needs a manager other than the owner.
	exec(t, h, `insert into template_shares (id, template_id, shared_by, shared_with_user_id, permission_level) values ('seeded', 't1', 'alice', 'carol', 'manage')`)
	tests := []struct {
		name       string
		as         string
		tmpl       string
		body       any
		wantStatus int
		wantMsg    string
	}{
		{"share with yourself", "alice", "t1", toUser("alice", "read"), 400, `sharedWithUserId "alice": you cannot share a template with yourself`},
		{"share with yourself, short field name", "alice", "t1", map[string]any{"userId": "alice", "permissionLevel": "read"}, 400, `userId "alice": you cannot`},
		{"share with the owner", "carol", "t1", toUser("alice", "read"), 400, "owns template"},
		{"unknown user", "alice", "t1", toUser("nobody", "read"), 404, `user "nobody" not found`},
		{"unknown team", "alice", "t1", toTeam("nobody", "read"), 404, `team "nobody" not found`},
		{"both user and team", "alice", "t1", map[string]any{"sharedWithUserId": "bob", "sharedWithTeamId": "devs", "permissionLevel": "read"}, 400, "exactly one"},
		{"a user under both names", "alice", "t1", map[string]any{"sharedWithUserId": "bob", "userId": "bob", "permissionLevel": "read"}, 400, "exactly one"},
		{"neither user nor team", "alice", "t1", map[string]any{"permissionLevel": "read"}, 400, "sharedWithUserId or sharedWithTeamId is required"},
		{"null ids count as absent", "alice", "t1", map[string]any{"sharedWithUserId": nil, "sharedWithTeamId": nil, "permissionLevel": "read"}, 400, "is required"},
		{"missing level", "alice", "t1", map[string]any{"sharedWithUserId": "bob"}, 400, "permissionLevel is required"},
		{"unknown level", "alice", "t1", toUser("bob", "owner"), 400, `permissionLevel "owner"`},
		{"level in capitals", "alice", "t1", toUser("bob", "READ"), 400, "permissionLevel"},
		{"empty user id", "alice", "t1", toUser("", "read"), 400, "sharedWithUserId"},
		{"long team id", "alice", "t1", toTeam(strings.Repeat("x", 256), "read"), 400, "sharedWithTeamId"},
		{"control character", "alice", "t1", toUser("bo\nb", "read"), 400, "sharedWithUserId"},
		{"unknown field", "alice", "t1", `{"sharedWithUserId":"bob","permissionLevel":"read","expires":"never"}`, 400, "expires"},
		{"wrong type", "alice", "t1", `{"sharedWithUserId":7,"permissionLevel":"read"}`, 400, "sharedWithUserId"},
		{"malformed json", "alice", "t1", `{"sharedWithUserId":`, 400, "malformed"},
		{"empty body", "alice", "t1", ``, 400, "empty"},
		{"two objects", "alice", "t1", `{"sharedWithUserId":"bob","permissionLevel":"read"} {}`, 400, "one JSON object"},
		{"template id too long", "alice", strings.Repeat("t", 256), toUser("bob", "read"), 400, "template id"},
		{"template id with a control character", "alice", "t%0A1", toUser("bob", "read"), 400, "template id"},
		{"unknown template", "alice", "t9", toUser("bob", "read"), 404, `template "t9" not found`},
		{"a caller without access", "dave", "t1", toUser("bob", "read"), 404, `template "t1" not found`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, raw := h.Do(http.MethodPost, sharePath(tc.tmpl), token(h, tc.as), tc.body)
			require.Equal(t, tc.wantStatus, status, "%s", raw)
			_, msg := fntest.ErrorBody(t, raw)
			assert.Contains(t, msg, tc.wantMsg)
		})
	}
	assert.Equal(t, 1, h.Count(`select count(*) from template_shares`), "share rows: the one seeded")
	assert.Zero(t, h.Count(`select (select count(*) from audit_log where resource_type = $1) + (select count(*) from notifications) + (select count(*) from event_outbox)`, access.ResourceType),
		"audit, notification and outbox rows after rejected requests")
	assert.Empty(t, h.Sink.Events())
}

func TestShareAcceptsBothFieldNames(t *testing.T) {
	h := start(t)
	seed(t, h)
	tests := []struct {
		name     string
		body     map[string]any
		wantUser string
		wantTeam string
	}{
		{"StreamSpace's user field", map[string]any{"sharedWithUserId": "bob", "permissionLevel": "read"}, "bob", ""},
		{"StreamSpace's team field", map[string]any{"sharedWithTeamId": "devs", "permissionLevel": "read"}, "", "devs"},
		{"short user field", map[string]any{"userId": "carol", "permissionLevel": "read"}, "carol", ""},
		{"short team field", map[string]any{"teamId": "ops", "permissionLevel": "read"}, "", "ops"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sh := mustShare(t, h, "alice", "t1", tc.body, http.StatusCreated).Share
			if tc.wantUser != "" {
				assert.Equal(t, tc.wantUser, *sh.SharedWithUserID)
				assert.Equal(t, tc.wantUser, sh.SharedWithUserName)
			} else {
				assert.Equal(t, tc.wantTeam, *sh.SharedWithTeamID)
				assert.Equal(t, tc.wantTeam, sh.SharedWithTeamName)
			}
		})
	}
}

func TestShareWithATeamNotifiesEachMember(t *testing.T) {
	h := start(t)
	seed(t, h)
	exec(t, h, `insert into group_memberships (id, group_id, user_id) values ('m6', 'devs', 'erin')`)
	res := mustShare(t, h, "alice", "t1", toTeam("devs", "write"), http.StatusCreated)
	assert.Equal(t, "devs", *res.Share.SharedWithTeamID)
	assert.Equal(t, "devs", res.Share.SharedWithTeamName)
	assert.Nil(t, res.Share.SharedWithUserID)

	tests := []struct {
		name        string
		do          func(t *testing.T)
		wantKind    function.Kind
		wantMembers []string // notified by this step: every member but the actor
		wantCounts  map[string]int
	}{
		{
			name:        "shared",
			do:          func(t *testing.T) {},
			wantKind:    function.KindShared,
			wantMembers: []string{"carol", "dave", "erin"},
			wantCounts:  map[string]int{"carol": 1, "dave": 1, "erin": 1},
		},
		{
			// One who joins later is not notified of earlier changes, but is
			// of the next one; one who left is not.
			name: "revoked after erin left and bob joined",
			do: func(t *testing.T) {
				exec(t, h, `delete from group_memberships where group_id = 'devs' and user_id = 'erin'`)
				exec(t, h, `insert into group_memberships (id, group_id, user_id) values ('m7', 'devs', 'bob')`)
				mustRevoke(t, h, "alice", "t1", res.Share.ID)
			},
			wantKind:    function.KindShareRevoked,
			wantMembers: []string{"bob", "carol", "dave"},
			wantCounts:  map[string]int{"bob": 1, "carol": 2, "dave": 2, "erin": 1},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.do(t)
			notes := notifications(t, h)
			assert.Equal(t, tc.wantCounts, countNotifications(notes))
			var got []string
			for user, ns := range notes {
				last := ns[len(ns)-1]
				if last.Type != string(tc.wantKind) {
					continue
				}
				got = append(got, user)
				assert.Equal(t, "devs", last.Data["teamId"], user)
				assert.Equal(t, "t1", last.Data["templateId"], user)
				assert.Contains(t, last.Message, "Developers", user)
			}
			slices.Sort(got)
			assert.Equal(t, tc.wantMembers, got)

			settle(t, h)
			var evUsers []string
			for _, n := range sunk[events.NotificationCreatedData](t, h, events.NotificationCreated) {
				if n.Kind == string(tc.wantKind) {
					evUsers = append(evUsers, n.UserID)
				}
			}
			slices.Sort(evUsers)
			assert.Equal(t, tc.wantMembers, evUsers)
		})
	}
	settle(t, h)
	assert.Equal(t, []events.TemplateSharedData{{TemplateID: "t1", ShareID: res.Share.ID, SharedBy: "alice", TeamID: "devs", PermissionLevel: "write"}},
		sunk[events.TemplateSharedData](t, h, events.TemplateShared))
	assert.Equal(t, []events.TemplateShareRevokedData{{TemplateID: "t1", ShareID: res.Share.ID, RevokedBy: "alice", TeamID: "devs", PermissionLevel: "write"}},
		sunk[events.TemplateShareRevokedData](t, h, events.TemplateShareRevoked))
}

// TestTeamShareNeedsMembership is the review finding: anyone who managed a
// template could share it with any group and so notify all its members,
// once per level flip. Only a member of the group, or an admin, may share
// with it; anyone else is told the team does not exist, as for a group that
// does not.
func TestTeamShareNeedsMembership(t *testing.T) {
	h := start(t)
	seed(t, h)
	// bob manages t1 without being in devs or ops.
	mustShare(t, h, "alice", "t1", toUser("bob", "manage"), http.StatusCreated)
	notesBefore := h.Count(`select count(*) from notifications`)

	tests := []struct {
		name       string
		as         string
		tmpl       string
		body       map[string]any
		wantStatus int
		wantMsg    string
	}{
		{name: "a manager outside the team", as: "bob", tmpl: "t1", body: toTeam("devs", "read"), wantStatus: 404, wantMsg: `team "devs" not found`},
		{name: "the owner outside the team", as: "bob", tmpl: "t2", body: toTeam("ops", "manage"), wantStatus: 404, wantMsg: `team "ops" not found`},
		{name: "a group that does not exist reads the same", as: "bob", tmpl: "t1", body: toTeam("nosuch", "read"), wantStatus: 404, wantMsg: `team "nosuch" not found`},
		{name: "StreamSpace's all-users group", as: "bob", tmpl: "t2", body: toTeam("all-users", "read"), wantStatus: 404, wantMsg: `team "all-users" not found`},
		{name: "a member", as: "alice", tmpl: "t1", body: toTeam("devs", "read"), wantStatus: 201},
		{name: "an admin outside the team", as: admin, tmpl: "t2", body: toTeam("ops", "read"), wantStatus: 201},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, raw := h.Do(http.MethodPost, sharePath(tc.tmpl), token(h, tc.as), tc.body)
			require.Equal(t, tc.wantStatus, status, "%s", raw)
			if tc.wantMsg != "" {
				code, msg := fntest.ErrorBody(t, raw)
				assert.Equal(t, string(errs.NotFound), code)
				assert.Equal(t, tc.wantMsg, msg)
			}
		})
	}
	// devs: carol and dave, not alice (the actor); ops: alice and erin.
	assert.Equal(t, notesBefore+2+2, h.Count(`select count(*) from notifications`))
	// A level change is a share too: it needs membership. A revoke needs
	// only manage, so a manager can always take a team's access away.
	status, raw := h.Do(http.MethodPost, sharePath("t1"), token(h, "bob"), toTeam("devs", "manage"))
	assert.Equal(t, http.StatusNotFound, status, "a level change by a non-member: %s", raw)
	var devsShare string
	require.NoError(t, h.Pool.QueryRow(context.Background(), `select id from template_shares where shared_with_team_id = 'devs'`).Scan(&devsShare))
	assert.Equal(t, "read", mustRevoke(t, h, "bob", "t1", devsShare).Share.PermissionLevel, "revoking needs manage, not membership")
}

// TestTeamLevelFlipsNotifyOnRaisesOnly is the second half of the review
// finding: flipping a team's level used to notify every member on every
// flip. A lowering now tells no one.
func TestTeamLevelFlipsNotifyOnRaisesOnly(t *testing.T) {
	h := start(t)
	seed(t, h)
	tests := []struct {
		name      string
		level     string
		wantNotes int // for each of carol and dave, so far
	}{
		{"shared at read", "read", 1},
		{"raised to manage", "manage", 2},
		{"lowered to read", "read", 2},
		{"lowered again is a no-op", "read", 2},
		{"raised to write", "write", 3},
		{"lowered to read again", "read", 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, raw := h.Do(http.MethodPost, sharePath("t1"), token(h, "alice"), toTeam("devs", tc.level))
			require.Contains(t, []int{200, 201}, status, "%s", raw)
			assert.Equal(t, map[string]int{"carol": tc.wantNotes, "dave": tc.wantNotes}, countNotifications(notifications(t, h)))
		})
	}
	settle(t, h)
	assert.Len(t, sunk[events.NotificationCreatedData](t, h, events.NotificationCreated), 2*3)
	assert.Len(t, sunk[events.TemplateSharedData](t, h, events.TemplateShared), 5, "every change is emitted, lowerings too")
	assert.Len(t, auditRows(t, h), 5, "every change is audited, lowerings too")
}

func TestTeamSharesAreInheritedUntilTheMemberLeaves(t *testing.T) {
	h := start(t)
	seed(t, h)
	mustShare(t, h, "alice", "t1", toTeam("devs", "write"), http.StatusCreated)

	tests := []struct {
		name       string
		before     string // SQL run first, if any
		as         string
		shareWith  string // share with this user; list when empty
		wantStatus int
		wantLevel  string
	}{
		// With write from the team, carol sees the template but may not
		// manage it: 403, never 404.
		{name: "team write, listing", as: "carol", wantStatus: 403, wantLevel: "write"},
		{name: "team write, sharing", as: "carol", shareWith: "erin", wantStatus: 403, wantLevel: "write"},
		{name: "team manage, listing", before: `update template_shares set permission_level = 'manage' where shared_with_team_id = 'devs'`,
			as: "carol", wantStatus: 200, wantLevel: "manage"},
		{name: "team manage, sharing", as: "carol", shareWith: "erin", wantStatus: 201, wantLevel: "manage"},
		// Leaving the team takes what it gave, at once.
		{name: "after leaving, listing", before: `delete from group_memberships where group_id = 'devs' and user_id = 'carol'`,
			as: "carol", wantStatus: 404, wantLevel: "none"},
		{name: "after leaving, sharing", as: "carol", shareWith: "bob", wantStatus: 404, wantLevel: "none"},
		{name: "a member who stayed", as: "dave", wantStatus: 200, wantLevel: "manage"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.before != "" {
				exec(t, h, tc.before)
			}
			method, path, body := http.MethodGet, sharesPath("t1"), any(nil)
			if tc.shareWith != "" {
				method, path, body = http.MethodPost, sharePath("t1"), toUser(tc.shareWith, "read")
			}
			status, raw := h.Do(method, path, token(h, tc.as), body)
			assert.Equal(t, tc.wantStatus, status, "%s", raw)
			assert.Equal(t, tc.wantLevel, effective(t, h, tc.as, "t1"))
		})
	}
	assert.Equal(t, "carol", sharedBy(t, h, "t1", "erin"), "erin's share was made by carol")
}

func sharedBy(t *testing.T, h *fntest.Harness, tmpl, grantee string) string {
	t.Helper()
	var by string
	require.NoError(t, h.Pool.QueryRow(context.Background(),
		`select shared_by from template_shares where template_id = $1 and shared_with_user_id = $2`, tmpl, grantee).Scan(&by))
	return by
}

// TestReshareReactivatesTheRevokedRow checks StreamSpace's one row per
// grantee: sharing again after a revoke makes that same row active again,
// as a new share by whoever shares now.
func TestReshareReactivatesTheRevokedRow(t *testing.T) {
	h := start(t)
	seed(t, h)
	first := mustShare(t, h, "alice", "t1", toUser("carol", "write"), http.StatusCreated).Share
	mustShare(t, h, "alice", "t1", toUser("bob", "manage"), http.StatusCreated)
	mustRevoke(t, h, "alice", "t1", first.ID)

	tests := []struct {
		name      string
		as        string
		level     string
		wantBy    string
		wantNotes int
	}{
		{name: "shared again by another manager", as: "bob", level: "read", wantBy: "bob", wantNotes: 3},
		{name: "revoked and shared again by the owner", as: "alice", level: "manage", wantBy: "alice", wantNotes: 5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.as == "alice" {
				mustRevoke(t, h, "alice", "t1", first.ID)
			}
			res := mustShare(t, h, tc.as, "t1", toUser("carol", tc.level), http.StatusCreated)
			assert.Equal(t, function.Created, res.Outcome)
			assert.Equal(t, first.ID, res.Share.ID, "the same row")
			assert.Equal(t, tc.wantBy, res.Share.SharedBy)
			assert.Equal(t, tc.level, res.Share.PermissionLevel)
			assert.Nil(t, res.Share.RevokedAt)
			assert.False(t, res.Share.CreatedAt.Before(first.CreatedAt), "created_at restarts")
			assert.Equal(t, 1, h.Count(`select count(*) from template_shares where shared_with_user_id = 'carol'`))
			assert.Equal(t, 1, h.Count(`select count(*) from template_shares where shared_with_user_id = 'carol' and revoked_at is null`))
			assert.Equal(t, tc.wantBy, sharedBy(t, h, "t1", "carol"))
			assert.Equal(t, tc.level, effective(t, h, "carol", "t1"))
			a := auditRows(t, h)
			last := a[len(a)-1]
			assert.Equal(t, string(function.ActionCreated), last.Action)
			assert.Equal(t, tc.wantBy, last.User)
			assert.Equal(t, "null", level(last.Changes.OldLevel))
			notes := notifications(t, h)["carol"]
			require.Len(t, notes, tc.wantNotes)
			assert.Equal(t, string(function.KindShared), notes[len(notes)-1].Type)
		})
	}
}

func TestNotificationsSayWhatChanged(t *testing.T) {
	h := start(t)
	seed(t, h)
	var bobShare, devsShare string
	link, text := "/session-templates/t1", "View template"
	tests := []struct {
		name      string
		do        func(t *testing.T)
		recipient string
		wantKind  function.Kind
		wantTitle string
		wantMsg   string
		wantLink  bool
	}{
		{"user shared", func(t *testing.T) {
			bobShare = mustShare(t, h, "alice", "t1", toUser("bob", "read"), http.StatusCreated).Share.ID
		}, "bob", function.KindShared, "A template was shared with you",
			"Alice Owner shared Firefox Dev with you (read)", true},
		{"user level raised", func(t *testing.T) {
			mustShare(t, h, "alice", "t1", toUser("bob", "write"), http.StatusOK)
		}, "bob", function.KindShareUpdated, "Your access to a template changed",
			"Alice Owner changed your access to Firefox Dev from read to write", true},
		{"user revoked", func(t *testing.T) {
			mustRevoke(t, h, "alice", "t1", bobShare)
		}, "bob", function.KindShareRevoked, "Your access to a template was removed",
			"Alice Owner revoked your write access to Firefox Dev", false},
		{"team shared", func(t *testing.T) {
			devsShare = mustShare(t, h, "alice", "t1", toTeam("devs", "read"), http.StatusCreated).Share.ID
		}, "carol", function.KindShared, "A template was shared with you",
			"Alice Owner shared Firefox Dev with your team Developers (read)", true},
		{"team level raised", func(t *testing.T) {
			mustShare(t, h, "alice", "t1", toTeam("devs", "manage"), http.StatusOK)
		}, "dave", function.KindShareUpdated, "Your access to a template changed",
			"Alice Owner changed the access of your team Developers to Firefox Dev from read to manage", true},
		{"team revoked", func(t *testing.T) {
			mustRevoke(t, h, "alice", "t1", devsShare)
		}, "carol", function.KindShareRevoked, "Your access to a template was removed",
			"Alice Owner revoked the manage access of your team Developers to Firefox Dev", false},
		{"a user without a full name is named by username", func(t *testing.T) {
			mustShare(t, h, "alice", "t1", toUser("bob", "manage"), http.StatusCreated)
			mustShare(t, h, "bob", "t1", toUser("erin", "read"), http.StatusCreated)
		}, "erin", function.KindShared, "A template was shared with you",
			"bob shared Firefox Dev with you (read)", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.do(t)
			notes := notifications(t, h)[tc.recipient]
			require.NotEmpty(t, notes)
			got := notes[len(notes)-1]
			assert.Equal(t, string(tc.wantKind), got.Type)
			assert.Equal(t, tc.wantTitle, got.Title)
			assert.Equal(t, tc.wantMsg, got.Message)
			assert.Equal(t, "normal", got.Priority)
			assert.False(t, got.IsRead)
			if tc.wantLink {
				assert.Equal(t, &link, got.ActionURL)
				assert.Equal(t, &text, got.ActionText)
			} else {
				assert.Nil(t, got.ActionURL)
				assert.Nil(t, got.ActionText)
			}
		})
	}
}

// TestAuditRecordsTheClientAddress checks audit_log.ip_address: the first
// hop of X-Forwarded-For when it is an address, else the peer.
func TestAuditRecordsTheClientAddress(t *testing.T) {
	h := start(t)
	seed(t, h)
	levels := []string{"read", "write"}
	tests := []struct {
		name string
		xff  string
		want string
	}{
		{name: "no header: the peer", want: "127.0.0.1"},
		{name: "first hop of a list", xff: "203.0.113.7, 10.0.0.1, 10.0.0.2", want: "203.0.113.7"},
		{name: "IPv6 with a port", xff: "[2001:db8::1]:443", want: "2001:db8::1"},
		{name: "IPv4-mapped IPv6", xff: "::ffff:198.51.100.9", want: "198.51.100.9"},
		{name: "not an address: the peer", xff: "unknown", want: "127.0.0.1"},
		{name: "too long for VARCHAR(45): the peer", xff: strings.Repeat("1", 60), want: "127.0.0.1"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body := `{"sharedWithUserId":"bob","permissionLevel":"` + levels[i%2] + `"}`
			req, err := http.NewRequest(http.MethodPost, h.URL+sharePath("t1"), strings.NewReader(body))
			require.NoError(t, err)
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer "+token(h, "alice"))
			if tc.xff != "" {
				req.Header.Set("X-Forwarded-For", tc.xff)
			}
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			require.Contains(t, []int{200, 201}, resp.StatusCode)
			a := auditRows(t, h)
			require.Len(t, a, i+1)
			assert.Equal(t, tc.want, level(a[i].IP))
		})
	}
}
