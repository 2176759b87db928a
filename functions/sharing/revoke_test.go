package function_test

import (
	"cmp"
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/streamspace-dev/functions/events"
	function "github.com/streamspace-dev/functions/functions/sharing"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/fntest"
)

func revoke(t *testing.T, h *fntest.Harness, token, tmpl string, id int64) (int, []byte) {
	t.Helper()
	return h.Do(http.MethodDelete, revokePath(tmpl, id), token, nil)
}

func TestRevokeKeepsHistoryAndTwiceIsNotFound(t *testing.T) {
	h := start(t)
	seed(t, h)
	alice := h.Token("alice", authn.User)
	first := mustShare(t, h, alice, "t1", toUser("bob", "write"), http.StatusCreated).Share

	status, raw := revoke(t, h, alice, "t1", first.ID)
	if status != http.StatusOK {
		t.Fatalf("revoke: got %d %s, want 200", status, raw)
	}
	got := decode[function.RevokeResult](t, raw).Share
	if got.ID != first.ID || got.RevokedBy != "alice" || got.RevokedAt == nil || got.PermissionLevel != "write" || got.Grantee.ID != "bob" {
		t.Errorf("revoked share: got %+v, want share %d revoked by alice, level write kept", got, first.ID)
	}

	var revokedBy, stored string
	var revokedAt *time.Time
	if err := h.Pool.QueryRow(context.Background(),
		`select revoked_by, revoked_at, permission_level from template_shares where id = $1`, first.ID).Scan(&revokedBy, &revokedAt, &stored); err != nil {
		t.Fatalf("revoked row is gone, want it kept for history: %v", err)
	}
	if revokedBy != "alice" || revokedAt == nil || stored != "write" {
		t.Errorf("stored row: got revoked_by %q at %v level %q, want alice, a time, write", revokedBy, revokedAt, stored)
	}
	audits := auditRows(t, h)
	if a := audits[len(audits)-1]; len(audits) != 2 || a.Action != function.ActionRevoked || a.Actor != "alice" ||
		a.Details.ShareID != first.ID || level(a.Details.OldLevel) != "write" || a.Details.NewLevel != nil {
		t.Errorf("audit rows: got %d, last %+v (old %s new %s); want 2, the last revoked by alice with old write and new null",
			len(audits), a, level(a.Details.OldLevel), level(a.Details.NewLevel))
	}
	if notes := notifications(t, h)["bob"]; len(notes) != 2 || notes[1].Kind != function.KindShareRevoked || !strings.Contains(notes[1].Message, "revoked") {
		t.Errorf("bob's notifications: got %+v, want shared then revoked", notes)
	}
	settle(t, h)
	revoked := sunk[events.TemplateShareRevokedData](t, h, events.TemplateShareRevoked)
	want := events.TemplateShareRevokedData{TemplateID: "t1", ShareID: strconv.FormatInt(first.ID, 10), RevokedBy: "alice", UserID: "bob", PermissionLevel: "write"}
	if len(revoked) != 1 || revoked[0] != want {
		t.Errorf("template.share.revoked: got %+v, want [%+v]", revoked, want)
	}
	updates := sunk[events.TemplateUpdatedData](t, h, events.TemplateUpdated)
	if len(updates) != 2 || updates[1] != (events.TemplateUpdatedData{TemplateID: "t1", UserID: "alice", Change: "unshared"}) {
		t.Errorf("template.updated: got %+v, want shared then unshared", updates)
	}
	if n := len(sunk[events.NotificationCreatedData](t, h, events.NotificationCreated)); n != 2 {
		t.Errorf("notification.created events: got %d, want 2", n)
	}
	if status, l := list(t, h, alice, "t1"); status != http.StatusOK || l.Count != 0 {
		t.Errorf("list after revoke: got %d %+v, want no active share", status, l)
	}

	status, raw = revoke(t, h, alice, "t1", first.ID)
	if status != http.StatusNotFound {
		t.Fatalf("revoke twice: got %d %s, want 404", status, raw)
	}
	if _, msg := fntest.ErrorBody(t, raw); !strings.Contains(msg, "share") {
		t.Errorf("revoke twice message: got %q, want it to name the share", msg)
	}
	if n := len(auditRows(t, h)); n != 2 {
		t.Errorf("audit rows after revoking twice: got %d, want 2", n)
	}

	// Sharing again makes a new share; the revoked one stays.
	again := mustShare(t, h, alice, "t1", toUser("bob", "read"), http.StatusCreated).Share
	if again.ID == first.ID {
		t.Errorf("share after revoke: got id %d again, want a new share", again.ID)
	}
	if n := h.Count(`select count(*) from template_shares where shared_with_user_id = 'bob'`); n != 2 {
		t.Errorf("share rows for bob: got %d, want 2 (one revoked, one active)", n)
	}
}

func TestRevokeNeedsManageOrHavingMadeTheShare(t *testing.T) {
	h := start(t)
	seed(t, h)
	alice := h.Token("alice", authn.User)
	bob := h.Token("bob", authn.User)
	// bob manages t1 and shares it with carol; then alice lowers bob to read.
	mustShare(t, h, alice, "t1", toUser("bob", "manage"), http.StatusCreated)
	byBob := mustShare(t, h, bob, "t1", toUser("carol", "read"), http.StatusCreated).Share
	mustShare(t, h, alice, "t1", toUser("bob", "read"), http.StatusOK)
	byAlice := mustShare(t, h, alice, "t1", toUser("dave", "read"), http.StatusCreated).Share
	other := mustShare(t, h, bob, "t2", toUser("erin", "read"), http.StatusCreated).Share

	tests := []struct {
		name       string
		as         string
		role       authn.Role
		tmpl       string
		id         int64
		wantStatus int
		wantMsg    string
	}{
		{"a stranger, even for an existing share", "mallory", "", "t1", byBob.ID, 404, `template "t1" not found`},
		{"a reader who did not make the share", "dave", "", "t1", byBob.ID, 403, "manage"},
		{"a reader, for a share that does not exist", "dave", "", "t1", 999999, 404, "share 999999"},
		{"a share of another template", "alice", "", "t1", other.ID, 404, "share"},
		{"an unknown template", "alice", "", "t9", byAlice.ID, 404, `template "t9" not found`},
		{"the sharer, without manage", "bob", "", "t1", byBob.ID, 200, ""},
		{"the sharer, twice", "bob", "", "t1", byBob.ID, 404, "share"},
		{"an admin", "root", authn.Admin, "t1", byAlice.ID, 200, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, raw := revoke(t, h, h.Token(tc.as, cmp.Or(tc.role, authn.User)), tc.tmpl, tc.id)
			if status != tc.wantStatus {
				t.Fatalf("status: got %d %s, want %d", status, raw, tc.wantStatus)
			}
			if tc.wantMsg == "" {
				if got := decode[function.RevokeResult](t, raw).Share; got.RevokedBy != tc.as {
					t.Errorf("revokedBy: got %q, want %q", got.RevokedBy, tc.as)
				}
				return
			}
			if _, msg := fntest.ErrorBody(t, raw); !strings.Contains(msg, tc.wantMsg) {
				t.Errorf("message: got %q, want it to name %q", msg, tc.wantMsg)
			}
		})
	}
	if got := activeLevel(t, h, "t2", "shared_with_user_id", "erin"); got != "read" {
		t.Errorf("the other template's share: got level %q, want read, untouched", got)
	}
	var revokes []string
	for _, a := range auditRows(t, h) {
		if a.Action == function.ActionRevoked {
			revokes = append(revokes, a.Actor+":"+a.Details.Grantee.ID)
		}
	}
	if strings.Join(revokes, ",") != "bob:carol,root:dave" {
		t.Errorf("revoke audit rows: got %q, want bob:carol,root:dave", revokes)
	}
}

func TestRevokeRejectsBadIDs(t *testing.T) {
	h := start(t)
	seed(t, h)
	alice := h.Token("alice", authn.User)
	tests := []struct{ name, id string }{
		{"letters", "abc"},
		{"zero", "0"},
		{"negative", "-1"},
		{"fraction", "1.5"},
		{"plus sign", "+1"},
		{"exponent", "1e3"},
		{"leading space", "%201"},
		{"hex", "0x10"},
		{"past int64", "99999999999999999999"},
		{"300 digits", strings.Repeat("9", 300)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, raw := h.Do(http.MethodDelete, sharesPath("t1")+"/"+tc.id, alice, nil)
			if status != http.StatusBadRequest {
				t.Fatalf("status: got %d %s, want 400", status, raw)
			}
			if _, msg := fntest.ErrorBody(t, raw); !strings.Contains(msg, "share id") {
				t.Errorf("message: got %q, want it to name the share id", msg)
			}
		})
	}
	status, raw := h.Do(http.MethodDelete, sharesPath(strings.Repeat("t", 256))+"/1", alice, nil)
	if status != http.StatusBadRequest {
		t.Errorf("long template id: got %d %s, want 400", status, raw)
	}
}
