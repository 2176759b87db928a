package function_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/smtptest"
)

// TestTestRouteAgainstMailpit sends the test message through the route to
// Mailpit, STARTTLS with AUTH and implicit TLS with AUTH, and reads it back
// through Mailpit's API.
func TestTestRouteAgainstMailpit(t *testing.T) {
	w := start(t, nil)
	leaf := w.ca.Issue(t, smtptest.LeafOptions{Hosts: []string{"127.0.0.1"}})
	tests := []struct {
		name     string
		implicit bool
		security string
		auth     string
	}{
		{"STARTTLS with AUTH PLAIN", false, "starttls", "plain"},
		{"STARTTLS with AUTH LOGIN", false, "starttls", "login"},
		{"implicit TLS with AUTH PLAIN", true, "tls", "plain"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mp := smtptest.StartMailpit(t, smtptest.MailpitOptions{Leaf: &leaf, ImplicitTLS: tc.implicit, Users: map[string]string{"alice": smtpPassword}})
			body := smtpConfig(tc.name, mp.Host, mp.Port, smtpPassword)
			cfg := body["config"].(map[string]any)
			cfg["security"], cfg["auth"] = tc.security, tc.auth
			v := w.create(t, body)

			status, res, raw := w.test(t, v.ID, map[string]any{"recipient": "dev@example.com"})
			require.Equal(t, 200, status, "%s", raw)
			require.True(t, res.Success)
			var names []string
			for _, s := range res.Result.Stages {
				names = append(names, string(s.Stage))
			}
			assert.Equal(t, []string{"dns", "connect", "tls", "ehlo", "auth", "mail", "rcpt", "data", "quit"}, names)

			list := mp.Messages(t)
			require.Len(t, list, 1)
			got := mp.Message(t, list[0].ID)
			assert.Equal(t, "dev@example.com", got.To[0].Address)
			assert.Equal(t, "StreamSpace", got.From.Name)
			assert.Equal(t, []string{"auto-generated"}, got.Headers["Auto-Submitted"])
			assert.Equal(t, []string{res.Result.TestID}, got.Headers["X-Streamspace-Test-Id"])
			assert.Contains(t, got.Subject, res.Result.TestID)
			assert.Contains(t, got.Text, res.Result.TestID)
			assert.Contains(t, got.HTML, res.Result.TestID)
			assert.Contains(t, got.Text, tc.name)
		})
	}
	w.requireNoSecretsAnywhere(t)
}
