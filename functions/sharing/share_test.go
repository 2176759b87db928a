package function_test

import (
	"cmp"
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/streamspace-dev/functions/events"
	function "github.com/streamspace-dev/functions/functions/sharing"
	"github.com/streamspace-dev/functions/shared/access"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/fntest"
)

func TestShareWithAUserCreatesChangesAndNoOps(t *testing.T) {
	h := start(t)
	seed(t, h)
	alice := h.Token("alice", authn.User)

	tests := []struct {
		name       string
		level      string
		wantStatus int
		wantAction string // "" for a no-op
		wantPrev   string
		wantLevel  string
		wantAudits int // audit rows, notifications for bob and template.shared events so far
	}{
		{"new share", "read", http.StatusCreated, function.ActionCreated, "", "read", 1},
		{"same level is a no-op", "read", http.StatusOK, "", "", "read", 1},
		{"second share changes the level", "write", http.StatusOK, function.ActionUpdated, "read", "write", 2},
		{"and can lower it", "read", http.StatusOK, function.ActionUpdated, "write", "read", 3},
		{"no-op again", "read", http.StatusOK, "", "", "read", 3},
	}
	var shareID int64
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := mustShare(t, h, alice, "t1", toUser("bob", tc.level), tc.wantStatus)
			if got, want := res.Created, tc.wantAction == function.ActionCreated; got != want {
				t.Errorf("created: got %v, want %v", got, want)
			}
			if got, want := res.Updated, tc.wantAction == function.ActionUpdated; got != want {
				t.Errorf("updated: got %v, want %v", got, want)
			}
			if got, want := res.Changed, tc.wantAction != ""; got != want {
				t.Errorf("changed: got %v, want %v", got, want)
			}
			if res.PreviousLevel != tc.wantPrev {
				t.Errorf("previousLevel: got %q, want %q", res.PreviousLevel, tc.wantPrev)
			}
			want := function.Grantee{Type: "user", ID: "bob", Name: "bob"}
			if res.Share.Grantee != want || res.Share.PermissionLevel != tc.wantLevel || res.Share.SharedBy != "alice" || res.Share.TemplateID != "t1" {
				t.Errorf("share: got %+v, want grantee %+v at %s shared by alice on t1", res.Share, want, tc.wantLevel)
			}
			if shareID == 0 {
				shareID = res.Share.ID
			} else if res.Share.ID != shareID {
				t.Errorf("share id: got %d, want the same active share %d", res.Share.ID, shareID)
			}

			if got := activeLevel(t, h, "t1", "shared_with_user_id", "bob"); got != tc.wantLevel {
				t.Errorf("stored level: got %q, want %q", got, tc.wantLevel)
			}
			if n := h.Count(`select count(*) from template_shares where shared_with_user_id = 'bob'`); n != 1 {
				t.Errorf("share rows for bob: got %d, want 1", n)
			}
			audits := auditRows(t, h)
			if len(audits) != tc.wantAudits {
				t.Fatalf("audit rows: got %d, want %d", len(audits), tc.wantAudits)
			}
			if tc.wantAction != "" {
				a := audits[len(audits)-1]
				wantOld := tc.wantPrev
				if wantOld == "" {
					wantOld = "null"
				}
				if a.Actor != "alice" || a.Action != tc.wantAction || a.Resource != "t1" ||
					a.Details.Grantee.ID != "bob" || a.Details.Grantee.Type != "user" || a.Details.ShareID != shareID ||
					level(a.Details.OldLevel) != wantOld || level(a.Details.NewLevel) != tc.wantLevel {
					t.Errorf("audit row: got %+v (old %s new %s), want alice %s on t1 for bob, old %s new %s",
						a, level(a.Details.OldLevel), level(a.Details.NewLevel), tc.wantAction, wantOld, tc.wantLevel)
				}
			}
			notes := notifications(t, h)
			if len(notes["bob"]) != tc.wantAudits || len(notes) != 1 {
				t.Fatalf("notifications: got %v, want %d for bob only", notes, tc.wantAudits)
			}

			settle(t, h)
			shared := sunk[events.TemplateSharedData](t, h, events.TemplateShared)
			notified := sunk[events.NotificationCreatedData](t, h, events.NotificationCreated)
			updated := sunk[events.TemplateUpdatedData](t, h, events.TemplateUpdated)
			if len(shared) != tc.wantAudits || len(notified) != tc.wantAudits || len(updated) != tc.wantAudits {
				t.Fatalf("events: got %d shared, %d notification.created, %d template.updated; want %d of each",
					len(shared), len(notified), len(updated), tc.wantAudits)
			}
			if tc.wantAction == "" {
				return
			}
			e := shared[len(shared)-1]
			wantEvent := events.TemplateSharedData{TemplateID: "t1", ShareID: e.ShareID, SharedBy: "alice", UserID: "bob",
				PermissionLevel: tc.wantLevel, PreviousLevel: tc.wantPrev}
			if e != wantEvent || e.ShareID == "" {
				t.Errorf("template.shared: got %+v, want %+v", e, wantEvent)
			}
			if u := updated[len(updated)-1]; u != (events.TemplateUpdatedData{TemplateID: "t1", UserID: "alice", Change: "shared"}) {
				t.Errorf("template.updated: got %+v, want t1 shared by alice", u)
			}
			last := notes["bob"][len(notes["bob"])-1]
			n := notified[len(notified)-1]
			if n.UserID != "bob" || n.Kind != last.Kind || n.Message != last.Message || n.NotificationID == "" {
				t.Errorf("notification.created: got %+v, want the stored %+v", n, last)
			}
			if !strings.Contains(last.Message, "Alice Owner") || !strings.Contains(last.Message, "Firefox Dev") || !strings.Contains(last.Message, tc.wantLevel) {
				t.Errorf("notification message %q: want actor, template and level named", last.Message)
			}
		})
	}
}

func TestShareRejectsBadRequestsAndChangesNothing(t *testing.T) {
	h := start(t)
	seed(t, h)
	tests := []struct {
		name       string
		tmpl       string
		body       any
		wantStatus int
		wantMsg    string
		as         string // the caller; alice when empty
	}{
		{"share with yourself", "t1", toUser("alice", "read"), 400, "yourself", ""},
		{"share with the owner", "t1", toUser("alice", "read"), 400, "owns template", "carol"},
		{"unknown user", "t1", toUser("nobody", "read"), 404, `user "nobody" not found`, ""},
		{"unknown team", "t1", toTeam("nobody", "read"), 404, `team "nobody" not found`, ""},
		{"both user and team", "t1", map[string]any{"userId": "bob", "teamId": "devs", "permissionLevel": "read"}, 400, "exactly one", ""},
		{"neither user nor team", "t1", map[string]any{"permissionLevel": "read"}, 400, "userId or teamId is required", ""},
		{"null ids count as absent", "t1", map[string]any{"userId": nil, "teamId": nil, "permissionLevel": "read"}, 400, "userId or teamId is required", ""},
		{"missing level", "t1", map[string]any{"userId": "bob"}, 400, "permissionLevel is required", ""},
		{"unknown level", "t1", toUser("bob", "owner"), 400, `permissionLevel "owner"`, ""},
		{"level in capitals", "t1", toUser("bob", "READ"), 400, "permissionLevel", ""},
		{"empty user id", "t1", toUser("", "read"), 400, "userId", ""},
		{"long team id", "t1", toTeam(strings.Repeat("x", 256), "read"), 400, "teamId", ""},
		{"control character", "t1", toUser("bo\nb", "read"), 400, "userId", ""},
		{"unknown field", "t1", `{"userId":"bob","permissionLevel":"read","expires":"never"}`, 400, "expires", ""},
		{"wrong type", "t1", `{"userId":7,"permissionLevel":"read"}`, 400, "userId", ""},
		{"malformed json", "t1", `{"userId":`, 400, "malformed", ""},
		{"empty body", "t1", ``, 400, "empty", ""},
		{"two objects", "t1", `{"userId":"bob","permissionLevel":"read"} {}`, 400, "one JSON object", ""},
		{"template id too long", strings.Repeat("t", 256), toUser("bob", "read"), 400, "template id", ""},
		{"template id with a control character", "t%0A1", toUser("bob", "read"), 400, "template id", ""},
		{"unknown template", "t9", toUser("bob", "read"), 404, `template "t9" not found`, ""},
	}
	// The owner-share case needs a manager other than the owner.
	exec(t, h, `insert into template_shares (template_id, shared_by, shared_with_user_id, permission_level) values ('t1', 'alice', 'carol', 'manage')`)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			caller := cmp.Or(tc.as, "alice")
			status, raw := h.Do(http.MethodPost, sharePath(tc.tmpl), h.Token(caller, authn.User), tc.body)
			if status != tc.wantStatus {
				t.Fatalf("status: got %d %s, want %d", status, raw, tc.wantStatus)
			}
			if _, msg := fntest.ErrorBody(t, raw); !strings.Contains(msg, tc.wantMsg) {
				t.Errorf("message: got %q, want it to name %q", msg, tc.wantMsg)
			}
		})
	}
	if n := h.Count(`select count(*) from template_shares`); n != 1 {
		t.Errorf("share rows after rejected requests: got %d, want the 1 seeded", n)
	}
	if n := h.Count(`select (select count(*) from audit_log) + (select count(*) from notifications) + (select count(*) from event_outbox)`); n != 0 {
		t.Errorf("audit, notification and outbox rows after rejected requests: got %d, want 0", n)
	}
	if n := len(h.Sink.Events()); n != 0 {
		t.Errorf("events after rejected requests: got %d, want 0", n)
	}
}

func TestShareWithATeamNotifiesEachMember(t *testing.T) {
	h := start(t)
	seed(t, h)
	// alice, the actor, is a member too: she is not notified of her own change.
	exec(t, h, `insert into team_members (team_id, user_id) values ('devs', 'alice'), ('devs', 'erin')`)
	alice := h.Token("alice", authn.User)

	res := mustShare(t, h, alice, "t1", toTeam("devs", "write"), http.StatusCreated)
	if want := (function.Grantee{Type: "team", ID: "devs", Name: "Developers"}); res.Share.Grantee != want {
		t.Errorf("grantee: got %+v, want %+v", res.Share.Grantee, want)
	}
	wantMembers := []string{"carol", "dave", "erin"}
	checkNotified := func(t *testing.T, kind string, perMember int) {
		t.Helper()
		notes := notifications(t, h)
		var got []string
		for user, ns := range notes {
			got = append(got, user)
			if len(ns) != perMember || ns[len(ns)-1].Kind != kind {
				t.Errorf("%s: got %+v, want %d notifications, the last of kind %s", user, ns, perMember, kind)
			}
			last := ns[len(ns)-1]
			if last.Data["teamId"] != "devs" || last.Data["templateId"] != "t1" || !strings.Contains(last.Message, "Developers") {
				t.Errorf("%s: notification %+v does not name team devs and template t1", user, last)
			}
		}
		slices.Sort(got)
		if !slices.Equal(got, wantMembers) {
			t.Errorf("notified: got %q, want each member but the actor %q", got, wantMembers)
		}
		settle(t, h)
		var evUsers []string
		for _, n := range sunk[events.NotificationCreatedData](t, h, events.NotificationCreated) {
			if n.Kind == kind {
				evUsers = append(evUsers, n.UserID)
			}
		}
		slices.Sort(evUsers)
		if !slices.Equal(evUsers, wantMembers) {
			t.Errorf("notification.created of kind %s for: got %q, want %q", kind, evUsers, wantMembers)
		}
	}
	checkNotified(t, function.KindShared, 1)
	shared := sunk[events.TemplateSharedData](t, h, events.TemplateShared)
	if len(shared) != 1 || shared[0].TeamID != "devs" || shared[0].UserID != "" || shared[0].PermissionLevel != "write" {
		t.Errorf("template.shared: got %+v, want one for team devs at write", shared)
	}

	// A member who joins later is not notified of earlier changes, but is of
	// the next one; one who left is not.
	exec(t, h, `delete from team_members where team_id = 'devs' and user_id = 'erin'`)
	exec(t, h, `insert into team_members (team_id, user_id) values ('devs', 'bob')`)
	wantMembers = []string{"bob", "carol", "dave", "erin"}
	status, raw := h.Do(http.MethodDelete, revokePath("t1", res.Share.ID), alice, nil)
	if status != http.StatusOK {
		t.Fatalf("revoke: got %d %s, want 200", status, raw)
	}
	notes := notifications(t, h)
	if len(notes["erin"]) != 1 || len(notes["bob"]) != 1 || len(notes["carol"]) != 2 || len(notes["dave"]) != 2 {
		t.Errorf("after revoke: got %v; want carol and dave 2, erin (left) 1, bob (joined) 1", notes)
	}
	if k := notes["bob"][0].Kind; k != function.KindShareRevoked {
		t.Errorf("bob's notification kind: got %q, want %q", k, function.KindShareRevoked)
	}
	settle(t, h)
	revoked := sunk[events.TemplateShareRevokedData](t, h, events.TemplateShareRevoked)
	if len(revoked) != 1 || revoked[0].TeamID != "devs" || revoked[0].RevokedBy != "alice" || revoked[0].PermissionLevel != "write" {
		t.Errorf("template.share.revoked: got %+v, want one for team devs at write by alice", revoked)
	}
	if n := len(sunk[events.NotificationCreatedData](t, h, events.NotificationCreated)); n != 6 {
		t.Errorf("notification.created events: got %d, want 6 (3 shared, 3 revoked)", n)
	}
}

func TestTeamSharesAreInheritedUntilTheMemberLeaves(t *testing.T) {
	h := start(t)
	seed(t, h)
	alice, carol := h.Token("alice", authn.User), h.Token("carol", authn.User)
	mustShare(t, h, alice, "t1", toTeam("devs", "write"), http.StatusCreated)

	// With write from the team, carol is visible-but-insufficient for
	// managing: 403, never 404.
	if status, _ := list(t, h, carol, "t1"); status != http.StatusForbidden {
		t.Errorf("carol (team write) listing shares: got %d, want 403", status)
	}
	if status, _ := share(t, h, carol, "t1", toUser("erin", "read")); status != http.StatusForbidden {
		t.Errorf("carol (team write) sharing: got %d, want 403", status)
	}
	if l := effective(t, h, "carol", "t1"); l != "write" {
		t.Errorf("carol's level through devs: got %s, want write", l)
	}
	if _, err := access.Require(context.Background(), h.Pool, user("carol"), "t1", access.Write); err != nil {
		t.Errorf("carol (team write) doing a write-level action: got %v, want allowed", err)
	}

	mustShare(t, h, alice, "t1", toTeam("devs", "manage"), http.StatusOK)
	if status, got := list(t, h, carol, "t1"); status != http.StatusOK || got.Count != 1 {
		t.Errorf("carol (team manage) listing shares: got %d %+v, want 200 with the team's share", status, got)
	}
	res := mustShare(t, h, carol, "t1", toUser("erin", "read"), http.StatusCreated)
	if res.Share.SharedBy != "carol" {
		t.Errorf("sharedBy: got %q, want carol", res.Share.SharedBy)
	}

	// Leaving the team takes what it gave, at once.
	exec(t, h, `delete from team_members where team_id = 'devs' and user_id = 'carol'`)
	if status, _ := list(t, h, carol, "t1"); status != http.StatusNotFound {
		t.Errorf("carol after leaving, listing: got %d, want 404", status)
	}
	if status, _ := share(t, h, carol, "t1", toUser("bob", "read")); status != http.StatusNotFound {
		t.Errorf("carol after leaving, sharing: got %d, want 404", status)
	}
	if l := effective(t, h, "carol", "t1"); l != "none" {
		t.Errorf("carol's level after leaving devs: got %s, want none", l)
	}
	if _, err := access.Require(context.Background(), h.Pool, user("carol"), "t1", access.Write); errs.KindOf(err) != errs.NotFound {
		t.Errorf("carol after leaving, a write-level action: got %v, want not_found", err)
	}
	// dave, still a member, keeps manage.
	if status, _ := list(t, h, h.Token("dave", authn.User), "t1"); status != http.StatusOK {
		t.Errorf("dave (still in devs) listing: got %d, want 200", status)
	}
}

func TestNotificationsSayWhatChanged(t *testing.T) {
	h := start(t)
	seed(t, h)
	alice := h.Token("alice", authn.User)
	var bobShare, devsShare int64
	tests := []struct {
		name      string
		do        func(t *testing.T)
		recipient string
		wantKind  string
		wantTitle string
		wantMsg   string
	}{
		{"user shared", func(t *testing.T) {
			bobShare = mustShare(t, h, alice, "t1", toUser("bob", "read"), http.StatusCreated).Share.ID
		}, "bob", function.KindShared, "A template was shared with you",
			"Alice Owner shared Firefox Dev with you (read)"},
		{"user level changed", func(t *testing.T) {
			mustShare(t, h, alice, "t1", toUser("bob", "write"), http.StatusOK)
		}, "bob", function.KindShareUpdated, "Your access to a template changed",
			"Alice Owner changed your access to Firefox Dev from read to write"},
		{"user revoked", func(t *testing.T) {
			if status, raw := revoke(t, h, alice, "t1", bobShare); status != http.StatusOK {
				t.Fatalf("revoke: got %d %s, want 200", status, raw)
			}
		}, "bob", function.KindShareRevoked, "Your access to a template was removed",
			"Alice Owner revoked your write access to Firefox Dev"},
		{"team shared", func(t *testing.T) {
			devsShare = mustShare(t, h, alice, "t1", toTeam("devs", "manage"), http.StatusCreated).Share.ID
		}, "carol", function.KindShared, "A template was shared with you",
			"Alice Owner shared Firefox Dev with your team Developers (manage)"},
		{"team level changed", func(t *testing.T) {
			mustShare(t, h, alice, "t1", toTeam("devs", "read"), http.StatusOK)
		}, "dave", function.KindShareUpdated, "Your access to a template changed",
			"Alice Owner changed the access of your team Developers to Firefox Dev from manage to read"},
		{"team revoked", func(t *testing.T) {
			if status, raw := revoke(t, h, alice, "t1", devsShare); status != http.StatusOK {
				t.Fatalf("revoke: got %d %s, want 200", status, raw)
			}
		}, "carol", function.KindShareRevoked, "Your access to a template was removed",
			"Alice Owner revoked the read access of your team Developers to Firefox Dev"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.do(t)
			notes := notifications(t, h)[tc.recipient]
			if len(notes) == 0 {
				t.Fatalf("%s has no notification", tc.recipient)
			}
			got := notes[len(notes)-1]
			if got.Kind != tc.wantKind || got.Title != tc.wantTitle || got.Message != tc.wantMsg {
				t.Errorf("got %s %q %q, want %s %q %q", got.Kind, got.Title, got.Message, tc.wantKind, tc.wantTitle, tc.wantMsg)
			}
		})
	}
}
