package function_test

import (
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	function "github.com/streamspace-dev/functions/functions/sharing"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/fntest"
)

func TestListSharesNamesEachGrantee(t *testing.T) {
	h := start(t)
	seed(t, h)
	alice := h.Token("alice", authn.User)
	mustShare(t, h, alice, "t1", toUser("bob", "read"), http.StatusCreated)
	mustShare(t, h, alice, "t1", toUser("carol", "write"), http.StatusCreated)
	mustShare(t, h, alice, "t1", toTeam("devs", "manage"), http.StatusCreated)
	gone := mustShare(t, h, alice, "t1", toUser("dave", "read"), http.StatusCreated).Share
	if status, raw := revoke(t, h, alice, "t1", gone.ID); status != http.StatusOK {
		t.Fatalf("revoke: got %d %s", status, raw)
	}
	mustShare(t, h, h.Token("bob", authn.User), "t2", toUser("erin", "read"), http.StatusCreated)
	// A user who has since been deleted is still listed, by id.
	mustShare(t, h, alice, "t1", toUser("erin", "read"), http.StatusCreated)
	exec(t, h, `delete from users where id = 'erin'`)

	want := []function.Grantee{
		{Type: "user", ID: "bob", Name: "bob"}, // no display name: the username
		{Type: "user", ID: "carol", Name: "Carol C"},
		{Type: "team", ID: "devs", Name: "Developers"},
		{Type: "user", ID: "erin", Name: "erin"},
	}
	wantLevels := []string{"read", "write", "manage", "read"}
	for _, who := range []struct {
		name  string
		token string
	}{
		{"the owner", alice},
		{"an admin", h.Token("root", authn.Admin)},
		{"a manager through a team", h.Token("dave", authn.User)},
	} {
		t.Run(who.name, func(t *testing.T) {
			status, got := list(t, h, who.token, "t1")
			if status != http.StatusOK {
				t.Fatalf("status: got %d, want 200", status)
			}
			var grantees []function.Grantee
			var levels []string
			for _, s := range got.Shares {
				grantees = append(grantees, s.Grantee)
				levels = append(levels, s.PermissionLevel)
				if s.SharedBy != "alice" || s.CreatedAt.IsZero() || s.UpdatedAt.IsZero() || s.RevokedAt != nil || s.TemplateID != "t1" {
					t.Errorf("share %+v: want shared by alice on t1, with times, not revoked", s)
				}
			}
			if !slices.Equal(grantees, want) || !slices.Equal(levels, wantLevels) || got.Count != len(want) || got.TemplateID != "t1" {
				t.Errorf("shares: got %+v, want %+v at %q, oldest first, revoked ones left out", got, want, wantLevels)
			}
		})
	}
	if status, _ := list(t, h, h.Token("bob", authn.User), "t1"); status != http.StatusForbidden {
		t.Errorf("bob (read) listing: got %d, want 403", status)
	}
}

// TestEveryRouteHidesTemplatesFromStrangers checks that a caller with no
// access learns nothing: every route answers exactly as for a template that
// does not exist. Without a valid token every route is 401.
func TestEveryRouteHidesTemplatesFromStrangers(t *testing.T) {
	h := start(t)
	seed(t, h)
	alice := h.Token("alice", authn.User)
	sh := mustShare(t, h, alice, "t1", toUser("bob", "read"), http.StatusCreated).Share
	mallory := h.Token("mallory", authn.User)

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
			if status != http.StatusNotFound {
				t.Fatalf("stranger: got %d %s, want 404 (never 403)", status, raw)
			}
			code, msg := fntest.ErrorBody(t, raw)
			_, missingMsg := fntest.ErrorBody(t, second(h.Do(rt.method, rt.path("missing"), mallory, rt.body)))
			if code != "not_found" || strings.ReplaceAll(msg, "t1", "missing") != missingMsg {
				t.Errorf("stranger: got %s %q, want not_found worded as for a missing template (%q)", code, msg, missingMsg)
			}
			for _, token := range []string{"", "not-a-jwt", expired(t, h)} {
				status, raw := h.Do(rt.method, rt.path("t1"), token, rt.body)
				if status != http.StatusUnauthorized {
					t.Errorf("token %q: got %d %s, want 401", token, status, raw)
				}
			}
		})
	}
	if got := activeLevel(t, h, "t1", "shared_with_user_id", "bob"); got != "read" {
		t.Errorf("bob's share after strangers' requests: got %q, want read", got)
	}
	if n := h.Count(`select count(*) from template_shares`); n != 1 {
		t.Errorf("share rows: got %d, want 1", n)
	}
}

func second(_ int, b []byte) []byte { return b }

// expired is alice's token of an hour ago, signed by the trusted issuer.
func expired(t *testing.T, h *fntest.Harness) string {
	t.Helper()
	then := time.Now().Add(-2 * time.Hour)
	tok, err := h.Issuer.Sign(map[string]any{
		"iss": h.Issuer.URL(), "sub": "alice", "aud": fntest.Audience, "role": "user",
		"iat": then.Unix(), "nbf": then.Unix(), "exp": then.Add(time.Hour).Unix(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestRoutesAreListedForTheAllInOne(t *testing.T) {
	f := function.New()
	fntest.Start(t, f, nil)
	want := []string{
		"GET /api/v1/session-templates/{id}/shares",
		"POST /api/v1/session-templates/{id}/share",
		"DELETE /api/v1/session-templates/{id}/shares/{shareId}",
	}
	if got := f.Routes(); !slices.Equal(got, want) {
		t.Errorf("routes: got %q, want %q", got, want)
	}
}
