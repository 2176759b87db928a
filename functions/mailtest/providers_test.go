package function_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/events"
	function "github.com/streamspace-dev/functions/functions/mailtest"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/smtptest"
)

// tokenEndpoint issues an access token for the refresh-token grant and
// rotates the refresh token, as Google's and Microsoft's endpoints do.
type tokenEndpoint struct {
	mu      sync.Mutex
	refresh string
	issued  []string
}

func (e *tokenEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	defer e.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if r.ParseForm() != nil || r.Form.Get("client_secret") != clientSecret || r.Form.Get("refresh_token") != e.refresh {
		w.WriteHeader(http.StatusBadRequest)
		// An endpoint that echoes what it got: the function must not pass it on.
		_, _ = fmt.Fprintf(w, `{"error":"invalid_grant","error_description":"bad grant %s"}`, r.Form.Get("refresh_token"))
		return
	}
	tok := fmt.Sprintf("access-%d", len(e.issued)+1)
	e.issued = append(e.issued, tok)
	e.refresh = fmt.Sprintf("%s-%d", refreshTok, len(e.issued))
	_ = json.NewEncoder(w).Encode(map[string]any{"access_token": tok, "token_type": "Bearer", "expires_in": 3600, "refresh_token": e.refresh})
}

func (e *tokenEndpoint) current(tok string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.issued) > 0 && e.issued[len(e.issued)-1] == tok
}

func TestXOAuth2Integration(t *testing.T) {
	w := start(t, nil)
	endpoint := &tokenEndpoint{refresh: refreshTok}
	ts := httptest.NewServer(endpoint)
	defer ts.Close()
	host, port, srv := w.faultServer(t, smtptest.Fault{XOAuth2: func(user, token string) error {
		if user == "alice@example.com" && endpoint.current(token) {
			return nil
		}
		return smtptest.Reject(535, [3]int{5, 7, 8}, "token refused")
	}})
	body := func(refresh string) map[string]any {
		return map[string]any{"name": "oauth", "config": map[string]any{
			"provider": "smtp", "host": host, "port": port, "security": "starttls", "username": "alice@example.com",
			"from": "alice@example.com", "defaultRecipient": "ops@example.com", "allowInsecure": true,
			"oauth2": map[string]any{"preset": "custom", "tokenUrl": ts.URL + "/token", "clientId": "client", "clientSecret": clientSecret, "refreshToken": refresh},
		}}
	}
	v := w.create(t, body(refreshTok))
	assert.Equal(t, "xoauth2", string(v.Config.Auth))
	require.NotNil(t, v.Config.OAuth2)
	assert.True(t, v.Config.OAuth2.ClientSecretSet)
	assert.True(t, v.Config.OAuth2.RefreshTokenSet)

	// The endpoint rotates the refresh token with every access token and
	// refuses the old one: the second test and the health check work only
	// because the first stored the new one, sealed.
	for i := range 2 {
		status, res, raw := w.test(t, v.ID, nil)
		require.Equal(t, 200, status, "test %d: %s", i+1, raw)
		assert.True(t, res.Success)
	}
	assert.Len(t, srv.Messages(), 2)
	w.ping(t)
	assert.Equal(t, 1, w.h.Count(`select count(*) from integrations where id = $1 and health_status = 'healthy'`, v.ID))
	w.requireNoSecretsAnywhere(t)
	assert.NotContains(t, w.h.Logs.String(), "access-1", "an access token")

	bad := w.create(t, body("rt-revoked-0000"))
	status, res, raw := w.test(t, bad.ID, nil)
	require.Equal(t, 400, status, "%s", raw)
	assert.Equal(t, "auth_failed", res.Error)
	assert.NotContains(t, string(raw), "rt-revoked-0000", "the endpoint's echo")
	w.requireNoSecretsAnywhere(t)
	assert.NotContains(t, w.h.Logs.String(), "rt-revoked-0000")
}

// sesServer speaks the SES v2 JSON API: SendEmail and GetAccount.
type sesServer struct {
	mu   sync.Mutex
	sent []string
}

func (s *sesServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if !strings.Contains(r.Header.Get("Authorization"), "Credential=AKIDMAILTEST/") {
		w.Header().Set("X-Amzn-ErrorType", "UnrecognizedClientException")
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"message":"The security token included in the request is invalid."}`))
		return
	}
	switch r.URL.Path {
	case "/v2/email/outbound-emails":
		raw, _ := io.ReadAll(r.Body)
		if strings.Contains(string(raw), "stranger@example.com") {
			w.Header().Set("X-Amzn-ErrorType", "MessageRejected")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"message":"Email address is not verified. The following identities failed the check in region EU-WEST-1: stranger@example.com"}`))
			return
		}
		s.sent = append(s.sent, string(raw))
		_, _ = w.Write([]byte(`{"MessageId":"ses-message-1"}`))
	case "/v2/email/account":
		_, _ = w.Write([]byte(`{"SendingEnabled":true,"EnforcementStatus":"HEALTHY","ProductionAccessEnabled":false,"SendQuota":{"Max24HourSend":200,"MaxSendRate":1,"SentLast24Hours":0}}`))
	default:
		w.WriteHeader(http.StatusNotFound)
	}
}

func TestSESIntegration(t *testing.T) {
	w := start(t, nil)
	srv := &sesServer{}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	v := w.create(t, map[string]any{"name": "ses", "config": map[string]any{
		"provider": "ses", "from": "noreply@example.com", "defaultRecipient": "ops@example.com", "allowInsecure": true,
		"ses": map[string]any{"region": "eu-west-1", "configurationSet": "tests", "endpoint": ts.URL, "accessKeyId": "AKIDMAILTEST", "secretAccessKey": sesSecretKey},
	}})
	require.NotNil(t, v.Config.SES)
	assert.True(t, v.Config.SES.AccessKeyIDSet)
	assert.True(t, v.Config.SES.SecretAccessKeySet)

	tests := []struct {
		name      string
		recipient string
		status    int
		class     string
	}{
		{"sent", "ops@example.com", 200, ""},
		{"the sandbox refuses an unverified recipient", "stranger@example.com", 400, "recipient_rejected"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, res, raw := w.test(t, v.ID, map[string]any{"recipient": tc.recipient})
			require.Equal(t, tc.status, status, "%s", raw)
			assert.Equal(t, tc.class, res.Error)
			if tc.class != "" {
				assert.Contains(t, res.Result.Hint, "sandbox")
			} else {
				assert.Equal(t, "ses-message-1", res.Result.MessageID)
			}
		})
	}
	require.Len(t, srv.sent, 1)
	assert.Contains(t, srv.sent[0], `"ConfigurationSetName":"tests"`)

	w.ping(t)
	assert.Equal(t, 1, w.h.Count(`select count(*) from integrations where id = $1 and health_status = 'healthy'`, v.ID))
	got := w.h.Sink.WaitForN(context.Background(), events.IntegrationTested, 2, wait)
	require.Len(t, got, 2)
	var data events.IntegrationTestedData
	require.NoError(t, got[0].DataAs(&data))
	assert.Equal(t, "ses", data.Provider)
	w.requireNoSecretsAnywhere(t)
	assert.NotContains(t, w.h.Logs.String(), "AKIDMAILTEST")
}

// TestKeyRotation: secrets sealed with k1 still open after k2 becomes the
// current key, and an update seals them again with k2.
func TestKeyRotation(t *testing.T) {
	w := start(t, nil)
	host, port, srv := w.faultServer(t, smtptest.Fault{})
	v := w.create(t, smtpConfig("relay", host, port, smtpPassword))
	kid := func() string {
		var sealed string
		require.NoError(t, w.h.Pool.QueryRow(context.Background(), `select config->'secrets'->>'password' from integrations where id = $1`, v.ID).Scan(&sealed))
		return strings.Split(sealed, ".")[1]
	}
	require.Equal(t, "k1", kid())

	writeKey(t, w.keysDir, "k2")
	env := map[string]string{}
	for k, val := range w.h.Env {
		if strings.HasPrefix(k, "MAIL_") {
			env[k] = val
		}
	}
	env["MAIL_KEY_ID"] = "k2"
	h2 := fntest.StartOn(t, w.h.Pool, function.New(), env)
	w2 := &world{h: h2, ca: w.ca, admin: h2.Token("root", "admin"), keysDir: w.keysDir}

	status, res, raw := w2.test(t, v.ID, nil)
	require.Equal(t, 200, status, "%s", raw)
	assert.True(t, res.Success)
	assert.Len(t, srv.Messages(), 1)

	status, raw = h2.Do("PUT", "/api/v1/integrations/email/"+v.ID, w2.admin, smtpConfig("relay", host, port, ""))
	require.Equal(t, 200, status, "%s", raw)
	assert.Equal(t, "k2", kid())
	status, _, raw = w2.test(t, v.ID, nil)
	require.Equal(t, 200, status, "%s", raw)
}
