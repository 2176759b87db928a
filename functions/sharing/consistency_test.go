package function_test

import (
	"net/http"
	"sync"
	"testing"

	"github.com/streamspace-dev/functions/events"
	function "github.com/streamspace-dev/functions/functions/sharing"
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
		notes  int // notifications per change: the grantee, or each member
	}{
		{"user", func(l string) map[string]any { return toUser("bob", l) }, "shared_with_user_id", "bob", 1},
		{"team", func(l string) map[string]any { return toTeam("devs", l) }, "shared_with_team_id", "devs", 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t)
			seed(t, h)
			alice := h.Token("alice", authn.User)

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
				switch s {
				case http.StatusCreated:
					created++
				case http.StatusOK:
				default:
					t.Errorf("request %d: got %d, want 200 or 201", i, s)
				}
			}
			if created != 1 {
				t.Errorf("201 answers: got %d, want exactly 1", created)
			}
			if rows := h.Count(`select count(*) from template_shares where `+tc.column+` = $1`, tc.id); rows != 1 {
				t.Fatalf("share rows: got %d, want 1", rows)
			}

			// The audit rows, in order, chain: each change starts from the
			// level the one before left, and the last is what is stored.
			audits := auditRows(t, h)
			if len(audits) == 0 || audits[0].Action != function.ActionCreated || audits[0].Details.OldLevel != nil {
				t.Fatalf("audit rows: got %+v, want a created row first", audits)
			}
			prev := level(audits[0].Details.NewLevel)
			for i, a := range audits[1:] {
				if a.Action != function.ActionUpdated || level(a.Details.OldLevel) != prev || level(a.Details.NewLevel) == prev {
					t.Errorf("audit row %d: got %s %s→%s, want updated from %s to another level",
						i+1, a.Action, level(a.Details.OldLevel), level(a.Details.NewLevel), prev)
				}
				prev = level(a.Details.NewLevel)
			}
			if got := activeLevel(t, h, "t1", tc.column, tc.id); got != prev {
				t.Errorf("stored level: got %q, want %q, the last audited", got, prev)
			}
			changes := len(audits)
			t.Logf("%d concurrent shares made %d changes", n, changes)
			if got := h.Count(`select count(*) from notifications`); got != changes*tc.notes {
				t.Errorf("notifications: got %d, want %d for %d changes", got, changes*tc.notes, changes)
			}
			settle(t, h)
			shared := sunk[events.TemplateSharedData](t, h, events.TemplateShared)
			if len(shared) != changes {
				t.Errorf("template.shared events: got %d, want %d, one per change", len(shared), changes)
			}
			if got := len(sunk[events.NotificationCreatedData](t, h, events.NotificationCreated)); got != changes*tc.notes {
				t.Errorf("notification.created events: got %d, want %d", got, changes*tc.notes)
			}
		})
	}
}

// TestAFailureHalfWayLeavesNothing makes the notification insert, which
// comes after the share and audit rows, fail, and checks that the share, the
// audit row and the queued events were all rolled back with it.
func TestAFailureHalfWayLeavesNothing(t *testing.T) {
	h := start(t)
	seed(t, h)
	alice := h.Token("alice", authn.User)
	sh := mustShare(t, h, alice, "t1", toUser("bob", "read"), http.StatusCreated).Share
	settle(t, h)
	audits, sent := len(auditRows(t, h)), len(h.Sink.Events())

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
		{"new share", http.MethodPost, sharePath("t1"), toUser("carol", "write")},
		{"level change", http.MethodPost, sharePath("t1"), toUser("bob", "manage")},
		{"revoke", http.MethodDelete, revokePath("t1", sh.ID), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, raw := h.Do(tc.method, tc.path, alice, tc.body)
			if status != http.StatusInternalServerError {
				t.Fatalf("status: got %d %s, want 500", status, raw)
			}
			if code, msg := fntest.ErrorBody(t, raw); code != "internal" || msg != "internal error" {
				t.Errorf("error: got %s %q, want internal with no detail", code, msg)
			}
			if got := activeLevel(t, h, "t1", "shared_with_user_id", "bob"); got != "read" {
				t.Errorf("bob's share: got %q, want read, unchanged", got)
			}
			if got := h.Count(`select count(*) from template_shares`); got != 1 {
				t.Errorf("share rows: got %d, want 1", got)
			}
			if got := len(auditRows(t, h)); got != audits {
				t.Errorf("audit rows: got %d, want %d", got, audits)
			}
			if got := h.Count(`select count(*) from event_outbox`); got != 0 {
				t.Errorf("queued events: got %d, want 0", got)
			}
			if got := len(h.Sink.Events()); got != sent {
				t.Errorf("sent events: got %d, want %d", got, sent)
			}
		})
	}

	exec(t, h, `drop trigger fail_notifications on notifications`)
	mustShare(t, h, alice, "t1", toUser("carol", "write"), http.StatusCreated)
}

func TestConcurrentRevokesRevokeOnce(t *testing.T) {
	const n = 8
	h := start(t)
	seed(t, h)
	alice := h.Token("alice", authn.User)
	sh := mustShare(t, h, alice, "t1", toTeam("devs", "write"), http.StatusCreated).Share

	statuses := make([]int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { statuses[i], _ = revoke(t, h, alice, "t1", sh.ID) })
	}
	wg.Wait()
	ok := 0
	for i, s := range statuses {
		switch s {
		case http.StatusOK:
			ok++
		case http.StatusNotFound:
		default:
			t.Errorf("request %d: got %d, want 200 or 404", i, s)
		}
	}
	if ok != 1 {
		t.Errorf("200 answers: got %d, want exactly 1", ok)
	}
	var revokes int
	for _, a := range auditRows(t, h) {
		if a.Action == function.ActionRevoked {
			revokes++
		}
	}
	if revokes != 1 {
		t.Errorf("revoke audit rows: got %d, want 1", revokes)
	}
	// carol and dave: one notification for the share, one for the revoke.
	if got := h.Count(`select count(*) from notifications where kind = $1`, function.KindShareRevoked); got != 2 {
		t.Errorf("revoke notifications: got %d, want 2", got)
	}
	settle(t, h)
	if got := len(sunk[events.TemplateShareRevokedData](t, h, events.TemplateShareRevoked)); got != 1 {
		t.Errorf("template.share.revoked events: got %d, want 1", got)
	}
}
