package mail

import (
	"context"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/smtptest"
)

// TestMailpit sends real test messages to Mailpit, STARTTLS with AUTH and
// implicit TLS with AUTH, and reads each back through its API.
func TestMailpit(t *testing.T) {
	ca := smtptest.NewCA(t, "test CA")
	leaf := ca.Issue(t, smtptest.LeafOptions{Hosts: []string{"127.0.0.1", "localhost"}})
	users := map[string]string{"alice": "mailpit-pass-1"}

	tests := []struct {
		name     string
		implicit bool
		security Security
		auth     AuthMethod
	}{
		{"STARTTLS with AUTH PLAIN", false, StartTLS, AuthPlain},
		{"STARTTLS with AUTH LOGIN", false, StartTLS, AuthLogin},
		{"implicit TLS with AUTH PLAIN", true, ImplicitTLS, AuthPlain},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mp := smtptest.StartMailpit(t, smtptest.MailpitOptions{Leaf: &leaf, ImplicitTLS: tc.implicit, Users: users})
			m := TestMessage{From: "noreply@streamspace.test", FromName: "StreamSpace", To: "ops@example.com", Integration: "relay", TestID: NewTestID(), Date: time.Now()}
			s := SMTP{Host: mp.Host, Port: mp.Port, Security: tc.security, Auth: tc.auth, Username: "alice", Password: users["alice"], RootCAs: ca.Pool, Guard: loopback(), Timeout: 20 * time.Second}
			res := s.Run(context.Background(), &Envelope{From: m.From, To: m.To, Message: m.Bytes()})
			require.True(t, res.Success, "%+v", res)
			assert.NotNil(t, stage(res, StageTLS).TLS)

			list := mp.Messages(t)
			require.Len(t, list, 1)
			got := mp.Message(t, list[0].ID)
			assert.Equal(t, m.Subject(), got.Subject)
			assert.Equal(t, "noreply@streamspace.test", got.From.Address)
			assert.Equal(t, "StreamSpace", got.From.Name)
			assert.Equal(t, []string{"auto-generated"}, got.Headers["Auto-Submitted"])
			assert.Equal(t, []string{m.TestID}, got.Headers[textproto.CanonicalMIMEHeaderKey(TestHeader)], "headers: %v", got.Headers)
			assert.Contains(t, got.Text, m.TestID)
			assert.Contains(t, got.HTML, m.TestID)
			assert.True(t, strings.Contains(got.HTML, "<b>relay</b>"))

			bad := s
			bad.Password = "wrong"
			res = bad.Run(context.Background(), &Envelope{From: m.From, To: m.To, Message: m.Bytes()})
			assert.Equal(t, AuthFailed, res.Class, "%+v", res.Stages)
		})
	}
}
