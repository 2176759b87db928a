package mail

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/smtptest"
)

// tokenEndpoint is a loopback OAuth2 token endpoint for the refresh-token
// grant: it issues short-lived access tokens and rotates the refresh token.
type tokenEndpoint struct {
	mu       sync.Mutex
	refresh  string
	issued   []string
	requests int
}

func (e *tokenEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.requests++
	if err := r.ParseForm(); err != nil || r.Form.Get("grant_type") != "refresh_token" || r.Form.Get("client_id") != "client" || r.Form.Get("client_secret") != "client-secret" {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"error":"invalid_client"}`))
		return
	}
	if r.Form.Get("refresh_token") != e.refresh {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"error":"invalid_grant","error_description":"refresh token ` + r.Form.Get("refresh_token") + ` revoked"}`))
		return
	}
	token := fmt.Sprintf("access-%d", len(e.issued)+1)
	e.issued = append(e.issued, token)
	e.refresh = fmt.Sprintf("refresh-%d", len(e.issued)+1)
	w.Header().Set("Content-Type", "application/json")
	// expires_in below oauth2's early-refresh margin: every use refreshes.
	_ = json.NewEncoder(w).Encode(map[string]any{"access_token": token, "token_type": "Bearer", "expires_in": 5, "refresh_token": e.refresh})
}

func (e *tokenEndpoint) valid(token string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.issued) > 0 && e.issued[len(e.issued)-1] == token
}

func TestXOAuth2(t *testing.T) {
	endpoint := &tokenEndpoint{refresh: "refresh-1"}
	ts := httptest.NewServer(endpoint)
	defer ts.Close()

	ca := smtptest.NewCA(t, "test CA")
	leaf := ca.Issue(t, smtptest.LeafOptions{Hosts: []string{"127.0.0.1"}})
	var seen []string
	srv := smtptest.Serve(t, smtptest.Fault{TLS: &tls.Config{Certificates: []tls.Certificate{leaf.TLS}}, XOAuth2: func(user, token string) error {
		seen = append(seen, user+" "+token)
		if user == "alice@example.com" && endpoint.valid(token) {
			return nil
		}
		return smtp.ErrAuthFailed
	}})
	host, port := smtptest.HostPort(t, srv.Addr)
	g := loopback()
	grant := OAuth2{TokenURL: ts.URL + "/token", ClientID: "client", ClientSecret: "client-secret", RefreshToken: "refresh-1", Scopes: []string{"https://mail.google.com/"}}
	source := grant.TokenSource(context.Background(), g.HTTPClient(10*time.Second))
	s := SMTP{Host: host, Port: port, Security: StartTLS, Auth: AuthXOAuth2, Username: "alice@example.com", Token: source, RootCAs: ca.Pool, Guard: g, Timeout: 20 * time.Second}

	tests := []struct {
		name      string
		smtp      SMTP
		wantClass Class
	}{
		{"a token from the endpoint is accepted", s, ""},
		{"the next test refreshes it with the rotated refresh token", s, ""},
		{"a token the server refuses", func() SMTP { c := s; c.Username = "mallory@example.com"; return c }(), AuthFailed},
		{"a revoked refresh token", func() SMTP {
			c := s
			bad := grant
			bad.RefreshToken = "stolen-refresh"
			c.Token = bad.TokenSource(context.Background(), g.HTTPClient(10*time.Second))
			return c
		}(), AuthFailed},
		{"a token endpoint the guard refuses", func() SMTP {
			c := s
			c.Token = grant.TokenSource(context.Background(), NewGuard("").HTTPClient(10*time.Second))
			return c
		}(), AddressBlocked},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := tc.smtp.Run(context.Background(), envelope())
			if tc.wantClass == "" {
				require.True(t, res.Success, "%+v", res)
				return
			}
			require.False(t, res.Success)
			assert.Equal(t, tc.wantClass, res.Class)
			assert.Equal(t, StageAuth, res.FailedStage)
			assert.NotContains(t, res.Error(), "stolen-refresh", "the endpoint's echo of the token stays out")
			assert.NotContains(t, res.Error(), "client-secret")
		})
	}
	assert.GreaterOrEqual(t, len(endpoint.issued), 3, "each test refreshed")
	assert.Contains(t, seen, "alice@example.com access-1")
	assert.Contains(t, seen, "alice@example.com access-2")
}
