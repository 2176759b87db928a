package function

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/s3test"
)

// snapshotEnv configures the snapshot member, which needs object storage
// and a cluster: a fresh bucket on the test MinIO, and a kubeconfig for an
// API server these tests never reach (no snapshot job runs in them).
func snapshotEnv(t *testing.T, more map[string]string) map[string]string {
	t.Helper()
	srv := s3test.Start(t)
	env := srv.Env(srv.Bucket(t))
	path := filepath.Join(t.TempDir(), "kubeconfig")
	require.NoError(t, os.WriteFile(path, []byte(`apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]
users: [{name: none, user: {token: none}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
`), 0o600))
	env["KUBECONFIG"] = path
	for k, v := range more {
		env[k] = v
	}
	return env
}

func TestAllInOneRoutesEveryFunction(t *testing.T) {
	h := fntest.Start(t, New(), snapshotEnv(t, nil))
	tok := h.Token("alice", authn.User)
	_, err := h.Pool.Exec(context.Background(), `
		insert into users (id, username, email) values ('alice', 'alice', 'alice@example.com');
		insert into user_session_templates (id, user_id, name, base_template) values ('tpl', 'alice', 'T', 'firefox')`)
	require.NoError(t, err)
	rest := []struct {
		name         string
		method, path string
		body         any
		want         int
	}{
		{"popular tags", http.MethodGet, "/api/v1/search/filters/tags", nil, http.StatusOK},
		{"batch tags", http.MethodPost, "/api/v1/batch/sessions/update-tags", map[string]any{"operation": "add", "sessionIds": []string{"x"}, "tags": []string{"a"}}, http.StatusOK},
		{"shares", http.MethodGet, "/api/v1/session-templates/tpl/shares", nil, http.StatusOK},
		{"versions", http.MethodGet, "/api/v1/session-templates/tpl/versions", nil, http.StatusOK},
		{"create a version", http.MethodPost, "/api/v1/session-templates/tpl/versions", map[string]any{"description": "first"}, http.StatusCreated},
		{"snapshot stats", http.MethodGet, "/api/v1/snapshots/stats", nil, http.StatusOK},
		{"no such route", http.MethodGet, "/api/v1/nothing", nil, http.StatusNotFound},
	}
	for _, tc := range rest {
		t.Run("REST "+tc.name, func(t *testing.T) {
			status, body := h.Do(tc.method, tc.path, tok, tc.body)
			assert.Equal(t, tc.want, status, "%s", body)
		})
	}

	e, err := events.New("versioning", events.TemplateUpdated, events.TemplateUpdatedData{TemplateID: "tpl", Change: "updated"})
	require.NoError(t, err)
	// The ingress forwards /api/v1/...: a CloudEvent posted there without a
	// token must never reach an event handler.
	for _, tc := range rest {
		for _, structured := range []bool{false, true} {
			t.Run("CloudEvent without a token to "+tc.path, func(t *testing.T) {
				status, _ := fntest.Deliver(t, h.URL+tc.path, e, structured)
				assert.Contains(t, []int{http.StatusUnauthorized, http.StatusNotFound}, status,
					"want 401 (or 404 where no POST route exists)")
			})
		}
	}
	deliveries := []struct {
		name       string
		path       string
		structured bool
		want       int
	}{
		{"routed by type through events.Routes", "/", false, http.StatusAccepted},
		{"structured: type read from the body", "/", true, http.StatusAccepted},
		{"the all-in-one Triggers' path", "/events/tags", false, http.StatusAccepted},
		{"final: no retry fixes a wrong Trigger", "/events/nope", false, http.StatusBadRequest},
		{"a function that does not take the type", "/events/sharing", false, http.StatusBadRequest},
	}
	for _, tc := range deliveries {
		t.Run("event "+tc.name, func(t *testing.T) {
			status, _ := fntest.Deliver(t, h.URL+tc.path, e, tc.structured)
			assert.Equal(t, tc.want, status)
		})
	}
	t.Run("an event no function here takes", func(t *testing.T) {
		unrouted, err := events.New("auth", events.UserLogin, events.UserLoginData{UserID: "u", Provider: "p", Role: "user"})
		require.NoError(t, err)
		status, _ := fntest.Deliver(t, h.URL, unrouted, false)
		assert.Equal(t, http.StatusBadRequest, status)
	})
}

// countingBody is a request body that counts the bytes read from it.
type countingBody struct {
	r    io.Reader
	read atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.read.Add(int64(n))
	return n, err
}

func (b *countingBody) Close() error { return nil }

// TestEventAuthenticationComesBeforeTheBody posts large deliveries straight
// to the all-in-one's Handle and counts what it read of their bodies: a
// delivery without the broker's token is refused before any of it.
func TestEventAuthenticationComesBeforeTheBody(t *testing.T) {
	iss, clusterURL := fntest.ServeIssuer(t)
	const (
		audience = "serving.knative.dev/service/streamspace/streamspace"
		broker   = "system:serviceaccount:knative-eventing:broker-oidc"
	)
	f := New()
	fntest.Start(t, f, snapshotEnv(t, map[string]string{
		"EVENT_AUTH_ISSUER":   clusterURL,
		"EVENT_AUTH_AUDIENCE": audience,
		"EVENT_AUTH_JWKS_URL": clusterURL,
		"EVENT_AUTH_SUBJECTS": broker,
	}))
	brokerToken, err := iss.Token(broker, authn.User, audience, time.Hour)
	require.NoError(t, err)
	otherToken, err := iss.Token("system:serviceaccount:streamspace:desktop", authn.User, audience, time.Hour)
	require.NoError(t, err)

	// A template.updated event, its data padded to nearly 4 MiB when big.
	event := func(id string, big bool) cloudevents.Event {
		data := map[string]string{"templateId": "tpl", "change": "updated"}
		if big {
			data["padding"] = strings.Repeat("x", 4<<20-4096)
		}
		e := cloudevents.NewEvent()
		e.SetID(id)
		e.SetSource("/streamspace/functions/versioning")
		e.SetType(events.TemplateUpdated)
		require.NoError(t, e.SetData(cloudevents.ApplicationJSON, data))
		return e
	}
	tests := []struct {
		name       string
		path       string
		structured bool
		big        bool
		token      string
		want       int
		wantRead   bool // the body was read
	}{
		{"structured to /, no token", "/", true, true, "", http.StatusUnauthorized, false},
		{"binary to /, no token", "/", false, true, "", http.StatusUnauthorized, false},
		{"structured to /, a token of another sender", "/", true, true, otherToken, http.StatusUnauthorized, false},
		{"binary to /events/tags, no token", "/events/tags", false, true, "", http.StatusUnauthorized, false},
		{"structured to /events/tags, no token", "/events/tags", true, true, "", http.StatusUnauthorized, false},
		{"structured to /, the broker's token", "/", true, false, brokerToken, http.StatusAccepted, true},
		{"binary to /, the broker's token", "/", false, false, brokerToken, http.StatusAccepted, true},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodPost, tc.path, nil)
			ctx := binding.WithForceBinary(context.Background())
			if tc.structured {
				ctx = binding.WithForceStructured(context.Background())
			}
			e := event(fmt.Sprintf("big-%d", i), tc.big)
			require.NoError(t, cehttp.WriteRequest(ctx, binding.ToMessage(&e), req))
			body := &countingBody{r: req.Body}
			req.Body = body
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			rec := httptest.NewRecorder()
			f.Handle(rec, req)
			assert.Equal(t, tc.want, rec.Code, "%s", rec.Body)
			if tc.wantRead {
				assert.Positive(t, body.read.Load(), "an accepted delivery's body was not read")
			} else {
				assert.Zero(t, body.read.Load(), "bytes of an unauthenticated body were read")
			}
		})
	}
}

// claims is a member that serves fixed routes.
type claims struct{ routes []string }

func (c claims) Start(context.Context, map[string]string) error { return nil }
func (c claims) Stop(context.Context) error                     { return nil }
func (c claims) Handle(w http.ResponseWriter, _ *http.Request)  { w.WriteHeader(http.StatusNoContent) }
func (c claims) Routes() []string                               { return c.routes }

func TestARouteClaimedTwiceStopsStartUp(t *testing.T) {
	tests := []struct {
		name    string
		members map[string]member
		want    string
	}{
		{"the same pattern in two functions", map[string]member{
			"a": claims{[]string{"GET /api/v1/x"}},
			"b": claims{[]string{"GET /api/v1/x"}},
		}, "/api/v1/x"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"DATABASE_URL": dbtest.URL(t, dbtest.New(t))}
			err := newWith(tc.members).Start(context.Background(), env)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

// TestAMemberWithoutItsConfigIsLeftOut: without S3_BUCKET (make run with no
// object storage) the snapshot function is not configured, and the
// all-in-one runs without it and says so; its routes are 404, its events are
// not taken, and the others serve as usual.
func TestAMemberWithoutItsConfigIsLeftOut(t *testing.T) {
	h := fntest.Start(t, New(), nil)
	tok := h.Token("alice", authn.User)
	status, _ := h.Do(http.MethodGet, "/api/v1/snapshots/stats", tok, nil)
	assert.Equal(t, http.StatusNotFound, status)
	status, _ = h.Do(http.MethodGet, "/api/v1/search/filters/tags", tok, nil)
	assert.Equal(t, http.StatusOK, status)
	e, err := events.New("snapshot", events.SnapshotRequested, events.SnapshotRequestedData{
		SnapshotID: "0b7e2a57-8a43-4d53-9b0e-5d6c8f1e2a10", SessionID: "s", UserID: "u"})
	require.NoError(t, err)
	for _, path := range []string{"/", "/events/snapshot"} {
		status, _ := fntest.Deliver(t, h.URL+path, e, false)
		assert.Equal(t, http.StatusBadRequest, status, "%s: final, nothing here takes it", path)
	}
	assert.Contains(t, h.Logs.String(), "S3_BUCKET is required")
}
