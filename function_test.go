package function

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/fntest"
)

func TestAllInOneRoutesEveryFunction(t *testing.T) {
	h := fntest.Start(t, New(), nil)
	tok := h.Token("alice", authn.User)
	if _, err := h.Pool.Exec(context.Background(),
		`insert into user_session_templates (id, user_id, name) values ('tpl', 'alice', 'T')`); err != nil {
		t.Fatal(err)
	}
	rest := []struct {
		method, path string
		body         any
		want         int
	}{
		{http.MethodGet, "/api/v1/search/filters/tags", nil, http.StatusOK},
		{http.MethodPost, "/api/v1/batch/sessions/update-tags", map[string]any{"operation": "add", "sessionIds": []string{"x"}, "tags": []string{"a"}}, http.StatusOK},
		{http.MethodGet, "/api/v1/session-templates/tpl/shares", nil, http.StatusOK},
		{http.MethodGet, "/api/v1/session-templates/tpl/versions", nil, http.StatusOK},
		{http.MethodPost, "/api/v1/session-templates/tpl/versions", map[string]any{"description": "first"}, http.StatusCreated},
		{http.MethodGet, "/api/v1/nothing", nil, http.StatusNotFound},
	}
	for _, tc := range rest {
		if status, body := h.Do(tc.method, tc.path, tok, tc.body); status != tc.want {
			t.Errorf("%s %s: %d %s, want %d", tc.method, tc.path, status, body, tc.want)
		}
	}

	e, err := events.New("versioning", events.TemplateUpdated, events.TemplateUpdatedData{TemplateID: "tpl", Change: "updated"})
	if err != nil {
		t.Fatal(err)
	}
	// The ingress forwards /api/v1/...: a CloudEvent posted there without a
	// token must never reach an event handler.
	for _, tc := range rest {
		for _, structured := range []bool{false, true} {
			status, _ := fntest.Deliver(t, h.URL+tc.path, e, structured)
			if status != http.StatusUnauthorized && status != http.StatusNotFound {
				t.Errorf("CloudEvent without a token to %s: %d, want 401 (or 404 where no POST route exists)", tc.path, status)
			}
		}
	}
	for _, tc := range []struct {
		path       string
		structured bool
		want       int
	}{
		{"/", false, http.StatusAccepted},              // routed by type through events.Routes
		{"/", true, http.StatusAccepted},               // structured: type read from the body
		{"/events/tags", false, http.StatusAccepted},   // the all-in-one Triggers' path
		{"/events/nope", false, http.StatusBadRequest}, // final: no retry fixes a wrong Trigger
		{"/events/sharing", false, http.StatusBadRequest},
	} {
		if status, _ := fntest.Deliver(t, h.URL+tc.path, e, tc.structured); status != tc.want {
			t.Errorf("event to %s (structured %v): %d, want %d", tc.path, tc.structured, status, tc.want)
		}
	}
	unrouted, _ := events.New("auth", events.UserLogin, events.UserLoginData{UserID: "u", Provider: "p", Role: "user"})
	if status, _ := fntest.Deliver(t, h.URL, unrouted, false); status != http.StatusBadRequest {
		t.Errorf("event no function here takes: %d, want 400", status)
	}
}

// claims is a member that serves fixed routes.
type claims struct{ routes []string }

func (c claims) Start(context.Context, map[string]string) error { return nil }
func (c claims) Stop(context.Context) error                     { return nil }
func (c claims) Handle(w http.ResponseWriter, _ *http.Request)  { w.WriteHeader(http.StatusNoContent) }
func (c claims) Routes() []string                               { return c.routes }

func TestARouteClaimedTwiceStopsStartUp(t *testing.T) {
	f := newWith(map[string]member{
		"a": claims{[]string{"GET /api/v1/x"}},
		"b": claims{[]string{"GET /api/v1/x"}},
	})
	err := f.Start(context.Background(), nil)
	if err == nil || !strings.Contains(err.Error(), "/api/v1/x") {
		t.Fatalf("got %v, want an error naming the route", err)
	}
}
