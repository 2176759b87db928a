package mail

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// sesServer speaks the SES v2 JSON API on loopback: SendEmail and
// GetAccount, with a signed request required.
type sesServer struct {
	mu      sync.Mutex
	sent    []map[string]any
	verify  []string // verified identities; others fail as in the sandbox
	account map[string]any
}

func (s *sesServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 Credential=AKIDTEST/") {
		writeSESError(w, http.StatusForbidden, "UnrecognizedClientException", "The security token included in the request is invalid.")
		return
	}
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/v2/email/outbound-emails":
		var in map[string]any
		raw, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(raw, &in); err != nil {
			writeSESError(w, http.StatusBadRequest, "BadRequestException", "bad json")
			return
		}
		from, _ := in["FromEmailAddress"].(string)
		to := in["Destination"].(map[string]any)["ToAddresses"].([]any)[0].(string)
		for _, id := range []string{from, to} {
			if !contains(s.verify, id) {
				writeSESError(w, http.StatusBadRequest, "MessageRejected", "Email address is not verified. The following identities failed the check in region US-EAST-1: "+id)
				return
			}
		}
		s.sent = append(s.sent, in)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"MessageId":"0100018c-test-message-id"}`))
	case r.Method == http.MethodGet && r.URL.Path == "/v2/email/account":
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.account)
	default:
		writeSESError(w, http.StatusNotFound, "NotFoundException", "no route")
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func writeSESError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Amzn-ErrorType", code)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"message": msg})
}

func TestSES(t *testing.T) {
	srv := &sesServer{verify: []string{"from@example.com", "to@example.com"}, account: map[string]any{
		"SendingEnabled": true, "EnforcementStatus": "HEALTHY", "ProductionAccessEnabled": false,
		"SendQuota": map[string]any{"Max24HourSend": 200.0, "MaxSendRate": 1.0, "SentLast24Hours": 3.0},
	}}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	base := SES{Region: "us-east-1", Endpoint: ts.URL, AccessKeyID: "AKIDTEST", SecretAccessKey: "ses-secret-key", ConfigurationSet: "tests",
		HTTPClient: loopback().HTTPClient(10 * time.Second), Timeout: 10 * time.Second}

	tests := []struct {
		name      string
		ses       SES
		to        string
		wantClass Class
		wantHint  string
	}{
		{"sent", base, "to@example.com", "", ""},
		{"an unverified recipient in the sandbox", base, "stranger@example.com", RecipientRejected, "sandbox"},
		{"wrong keys", func() SES { s := base; s.AccessKeyID = "AKIDWRONG"; return s }(), "to@example.com", AuthFailed, ""},
		{"an endpoint the guard refuses", func() SES { s := base; s.HTTPClient = NewGuard("").HTTPClient(5 * time.Second); return s }(), "to@example.com", AddressBlocked, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := TestMessage{From: "from@example.com", To: tc.to, TestID: NewTestID(), Date: time.Now()}
			res := tc.ses.Send(context.Background(), Envelope{From: m.From, To: m.To, Message: m.Bytes()})
			assert.NotContains(t, res.Error(), "ses-secret-key")
			if tc.wantClass == "" {
				require.True(t, res.Success, "%+v", res)
				assert.Equal(t, "0100018c-test-message-id", res.MessageID)
				require.NotNil(t, res.Account, "the account's state comes with the result")
				assert.Equal(t, "HEALTHY", res.Account.EnforcementStatus)
				return
			}
			require.False(t, res.Success)
			assert.Equal(t, tc.wantClass, res.Class, "%+v", res.Stages)
			if tc.wantHint != "" {
				assert.Contains(t, res.Hint, tc.wantHint)
			}
		})
	}
	require.Len(t, srv.sent, 1)
	assert.Equal(t, "tests", srv.sent[0]["ConfigurationSetName"])
	raw := srv.sent[0]["Content"].(map[string]any)["Raw"].(map[string]any)["Data"].(string)
	assert.NotEmpty(t, raw)

	res := base.Check(context.Background())
	require.True(t, res.Success, "%+v", res)
	require.NotNil(t, res.Account)
	assert.Equal(t, SESAccount{SendingEnabled: true, EnforcementStatus: "HEALTHY", Max24HourSend: 200, MaxSendRate: 1, SentLast24Hours: 3}, *res.Account)

	srv.account["SendingEnabled"] = false
	res = base.Check(context.Background())
	assert.False(t, res.Success)
	assert.Equal(t, SendingDisabled, res.Class)
}
