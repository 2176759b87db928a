package service_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/authn/localissuer"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/runtime"
	"github.com/streamspace-dev/functions/shared/service"
)

// whoami asks the counter who token names.
func whoami(t *testing.T, h *fntest.Harness, token string) (int, authn.Identity, string) {
	t.Helper()
	status, body := h.Do(http.MethodGet, "/api/v1/whoami", token, nil)
	if status != http.StatusOK {
		_, msg := fntest.ErrorBody(t, body)
		return status, authn.Identity{}, msg
	}
	var id authn.Identity
	require.NoError(t, json.Unmarshal(body, &id))
	return status, id, ""
}

func TestRESTTokens(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		token   func(t *testing.T, h *fntest.Harness) string
		want    authn.Identity
		status  int
		message string
	}{
		{
			name:   "StreamSpace token",
			token:  func(t *testing.T, h *fntest.Harness) string { return h.StreamSpaceToken("alice", authn.User) },
			want:   authn.Identity{Subject: "alice", Role: authn.User},
			status: http.StatusOK,
		},
		{
			name: "StreamSpace token: the users row's role",
			token: func(t *testing.T, h *fntest.Harness) string {
				sqlExec(t, h, `update users set role = 'admin' where id = 'alice'`)
				return h.StreamSpaceToken("alice", authn.User)
			},
			want:   authn.Identity{Subject: "alice", Role: authn.Admin},
			status: http.StatusOK,
		},
		{
			name:   "JWKS token beside it",
			token:  func(t *testing.T, h *fntest.Harness) string { return h.Token("carol", authn.Operator) },
			want:   authn.Identity{Subject: "carol", Role: authn.Operator},
			status: http.StatusOK,
		},
		{
			name:    "StreamSpace token of a user not in users",
			token:   func(t *testing.T, h *fntest.Harness) string { return h.StreamSpaceToken("nobody", authn.Admin) },
			status:  http.StatusUnauthorized,
			message: "user not found",
		},
		{
			name: "StreamSpace token of an inactive user",
			token: func(t *testing.T, h *fntest.Harness) string {
				sqlExec(t, h, `update users set active = false where id = 'alice'`)
				return h.StreamSpaceToken("alice", authn.User)
			},
			status:  http.StatusUnauthorized,
			message: "user account is disabled",
		},
		{
			name:   "StreamSpace tokens only",
			env:    map[string]string{"AUTH_ISSUER": "", "AUTH_AUDIENCE": "", "AUTH_JWKS_URL": ""},
			token:  func(t *testing.T, h *fntest.Harness) string { return h.StreamSpaceToken("alice", authn.User) },
			want:   authn.Identity{Subject: "alice", Role: authn.User},
			status: http.StatusOK,
		},
		{
			name:    "StreamSpace tokens only: a JWKS token",
			env:     map[string]string{"AUTH_ISSUER": "", "AUTH_AUDIENCE": "", "AUTH_JWKS_URL": ""},
			token:   func(t *testing.T, h *fntest.Harness) string { return h.Token("carol", authn.Operator) },
			status:  http.StatusUnauthorized,
			message: "algorithm not allowed",
		},
		{
			name:    "JWKS tokens only: a StreamSpace token",
			env:     map[string]string{"STREAMSPACE_JWT_SECRET_FILE": ""},
			token:   func(t *testing.T, h *fntest.Harness) string { return h.StreamSpaceToken("alice", authn.User) },
			status:  http.StatusUnauthorized,
			message: "algorithm not allowed",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := fntest.Start(t, &counter{}, tc.env)
			h.AddUser("alice", authn.User)
			status, id, msg := whoami(t, h, tc.token(t, h))
			require.Equal(t, tc.status, status, "status (%s)", msg)
			assert.Equal(t, tc.message, msg)
			if status == http.StatusOK {
				assert.Equal(t, tc.want, id)
			}
		})
	}
}

func sqlExec(t *testing.T, h *fntest.Harness, sql string) {
	t.Helper()
	_, err := h.Pool.Exec(context.Background(), sql)
	require.NoError(t, err)
}

func TestAuthConfig(t *testing.T) {
	dir := t.TempDir()
	const secretText = "this-is-StreamSpace's-JWT_SECRET-value"
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
		return path
	}
	good := write("good", secretText+"\n")
	short := write("short", "Shhh-short\n")
	empty := write("empty", "")
	const redisPassword = "r3dis-Pa55word"
	noJWKS := map[string]string{"AUTH_ISSUER": "", "AUTH_AUDIENCE": "", "AUTH_JWKS_URL": ""}
	with := func(base map[string]string, extra map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range base {
			out[k] = v
		}
		for k, v := range extra {
			out[k] = v
		}
		return out
	}

	tests := []struct {
		name   string
		env    map[string]string
		want   string // what the error names
		secret string // what it must not contain
	}{
		{name: "neither mode", env: noJWKS, want: "set AUTH_ISSUER, AUTH_AUDIENCE and AUTH_JWKS_URL, or STREAMSPACE_JWT_SECRET_FILE"},
		{name: "JWKS without an audience", env: map[string]string{"AUTH_AUDIENCE": ""}, want: "AUTH_AUDIENCE is required"},
		{name: "JWKS without an issuer, beside a secret", env: map[string]string{"AUTH_ISSUER": "", "STREAMSPACE_JWT_SECRET_FILE": good}, want: "AUTH_ISSUER is required"},
		{name: "secret file missing", env: with(noJWKS, map[string]string{"STREAMSPACE_JWT_SECRET_FILE": filepath.Join(dir, "none")}), want: "STREAMSPACE_JWT_SECRET_FILE"},
		{name: "secret file empty", env: with(noJWKS, map[string]string{"STREAMSPACE_JWT_SECRET_FILE": empty}), want: "STREAMSPACE_JWT_SECRET_FILE " + empty + " is empty"},
		{name: "secret too short", env: with(noJWKS, map[string]string{"STREAMSPACE_JWT_SECRET_FILE": short}), want: "STREAMSPACE_JWT_SECRET_FILE", secret: "Shhh-short"},
		{name: "Redis without a secret", env: map[string]string{"STREAMSPACE_REDIS_URL": "redis://127.0.0.1:6379"}, want: "STREAMSPACE_REDIS_URL applies to StreamSpace tokens"},
		{name: "Redis URL unparsable", env: map[string]string{"STREAMSPACE_JWT_SECRET_FILE": good, "STREAMSPACE_REDIS_URL": "redis://:" + redisPassword + "@[::1"}, want: "STREAMSPACE_REDIS_URL", secret: redisPassword},
		{name: "Redis URL of another scheme", env: map[string]string{"STREAMSPACE_JWT_SECRET_FILE": good, "STREAMSPACE_REDIS_URL": "http://:" + redisPassword + "@redis"}, want: "STREAMSPACE_REDIS_URL", secret: redisPassword},
		{name: "negative user cache TTL", env: map[string]string{"STREAMSPACE_JWT_SECRET_FILE": good, "STREAMSPACE_USER_CACHE_TTL": "-1s"}, want: "STREAMSPACE_USER_CACHE_TTL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := validEnv(nil)
			for k, v := range tc.env {
				if v == "" {
					delete(env, k)
				} else {
					env[k] = v
				}
			}
			_, err := service.Start(context.Background(), "counter", env, &service.Base{}, func(cloudevents.Event) error { return nil })
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.NotContains(t, err.Error(), secretText)
			if tc.secret != "" {
				assert.NotContains(t, err.Error(), tc.secret)
			}
		})
	}
}

// TestStreamSpaceSecretStaysOutOfTheLog sends every kind of failing
// StreamSpace token and checks that the secret file's content appears
// nowhere in the function's log.
func TestStreamSpaceSecretStaysOutOfTheLog(t *testing.T) {
	h := fntest.Start(t, &counter{}, nil)
	h.AddUser("alice", authn.User)
	secret, err := os.ReadFile(h.Env["STREAMSPACE_JWT_SECRET_FILE"])
	require.NoError(t, err)
	s := strings.TrimSpace(string(secret))
	require.GreaterOrEqual(t, len(s), authn.MinSecretBytes)
	good := h.StreamSpaceToken("alice", authn.User)
	parts := strings.Split(good, ".")

	tests := []struct {
		name   string
		token  string
		status int
	}{
		{name: "valid", token: good, status: http.StatusOK},
		{name: "bad signature", token: parts[0] + "." + parts[1] + ".AAAA", status: http.StatusUnauthorized},
		{name: "user not found", token: h.StreamSpaceToken("mallory", authn.Admin), status: http.StatusUnauthorized},
		{name: "payload swapped", token: parts[0] + "." + strings.Split(h.StreamSpaceToken("bob", authn.Admin), ".")[1] + "." + parts[2], status: http.StatusUnauthorized},
		{name: "not a token", token: s, status: http.StatusUnauthorized},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, _ := h.Do(http.MethodGet, "/api/v1/whoami", tc.token, nil)
			assert.Equal(t, tc.status, status)
		})
	}
	logs := h.Logs.String()
	require.NotEmpty(t, logs)
	assert.NotContains(t, logs, s, "the secret is in the log")
	assert.NotContains(t, logs, s[:16], "part of the secret is in the log")
}

// clusterIssuer stands in for the API server's service-account token
// issuer. down makes its JWKS fail.
type clusterIssuer struct {
	*localissuer.Issuer
	URL  string
	down bool
}

func newClusterIssuer(t *testing.T, down bool) *clusterIssuer {
	t.Helper()
	srv := httptest.NewServer(nil)
	t.Cleanup(srv.Close)
	iss, err := localissuer.New(srv.URL)
	require.NoError(t, err)
	srv.Config.Handler = iss.JWKSHandler()
	if down {
		srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "unavailable", http.StatusServiceUnavailable)
		})
	}
	return &clusterIssuer{Issuer: iss, URL: srv.URL, down: down}
}

const (
	readyAudience = "serving.knative.dev/service/streamspace/counter"
	readyBroker   = "system:serviceaccount:knative-eventing:broker-oidc"
)

func (c *clusterIssuer) env() map[string]string {
	return map[string]string{
		"EVENT_AUTH_ISSUER":   c.URL,
		"EVENT_AUTH_AUDIENCE": readyAudience,
		"EVENT_AUTH_JWKS_URL": c.URL,
		"EVENT_AUTH_SUBJECTS": readyBroker,
	}
}

// TestEventAuthReadiness is the review finding: with event authentication
// configured and the issuer's keys out of reach, every delivery would be
// refused with 401 into the dead-letter sink. The function is not ready
// instead, and says why.
func TestEventAuthReadiness(t *testing.T) {
	tests := []struct {
		name       string
		down       bool
		wantStatus int
		wantLog    string
	}{
		{name: "issuer reachable", wantStatus: http.StatusOK},
		{name: "issuer down", down: true, wantStatus: http.StatusServiceUnavailable, wantLog: "EVENT_AUTH_JWKS_URL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cluster := newClusterIssuer(t, tc.down)
			h := fntest.Start(t, &counter{}, cluster.env())
			for range 2 {
				resp, err := http.Get(h.URL + runtime.ReadinessPath)
				require.NoError(t, err)
				resp.Body.Close()
				assert.Equal(t, tc.wantStatus, resp.StatusCode, "readiness")
			}
			if tc.wantLog == "" {
				return
			}
			var errors int
			for _, line := range h.Logs.Lines() {
				if line["level"] == "ERROR" {
					errors++
					assert.Contains(t, line["err"], tc.wantLog, "the log says why")
					assert.Contains(t, line["err"], cluster.URL, "the log names the JWKS")
				}
			}
			assert.Equal(t, 1, errors, "error lines: one when the function becomes not ready")
		})
	}

	t.Run("before Start", func(t *testing.T) {
		var s *service.Service
		ok, err := s.Ready(context.Background())
		assert.False(t, ok)
		assert.NoError(t, err)
	})
}
