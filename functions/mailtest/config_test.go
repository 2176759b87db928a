package function_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	function "github.com/streamspace-dev/functions/functions/mailtest"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
	"github.com/streamspace-dev/functions/shared/fntest"
)

// TestConfigFailsFast: a bad mail setting stops start-up with a message
// naming the variable.
func TestConfigFailsFast(t *testing.T) {
	pool := dbtest.New(t)
	secret := filepath.Join(t.TempDir(), "jwt")
	require.NoError(t, os.WriteFile(secret, []byte(strings.Repeat("s", 40)), 0o600))
	keys := t.TempDir()
	writeKey(t, keys, "k1")
	base := map[string]string{"DATABASE_URL": dbtest.URL(t, pool), "STREAMSPACE_JWT_SECRET_FILE": secret, "MAIL_KEYS_DIR": keys, "MAIL_KEY_ID": "k1"}
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"a key id with no key file", map[string]string{"MAIL_KEY_ID": "k9"}, "MAIL_KEY_ID"},
		{"a keys folder that is not there", map[string]string{"MAIL_KEYS_DIR": "/nonexistent/keys"}, "MAIL_KEYS_DIR"},
		{"a rate limit of zero", map[string]string{"MAIL_TEST_RATE_LIMIT": "0"}, "MAIL_TEST_RATE_LIMIT"},
		{"an unbounded health concurrency", map[string]string{"MAIL_HEALTH_CONCURRENCY": "100000"}, "MAIL_HEALTH_CONCURRENCY"},
		{"an unknown SMTP_TLS", map[string]string{"SMTP_HOST": "smtp.example.com", "SMTP_FROM": "a@example.com", "SMTP_TLS": "maybe"}, "SMTP_TLS"},
		{"SMTP_HOST without SMTP_FROM", map[string]string{"SMTP_HOST": "smtp.example.com"}, "SMTP_FROM"},
		{"a header in SMTP_FROM", map[string]string{"SMTP_HOST": "smtp.example.com", "SMTP_FROM": "a@example.com\r\nBcc: evil@example.com"}, "SMTP_FROM"},
		{"a CA file that is not there", map[string]string{"MAIL_CA_FILE": "/nonexistent/ca.pem"}, "MAIL_CA_FILE"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range base {
				env[k] = v
			}
			for k, v := range tc.env {
				env[k] = v
			}
			f := function.New()
			err := f.Start(context.Background(), env)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

// TestWithoutKeys: without MAIL_KEY_ID the function serves, stores
// integrations that need no secret, and refuses one with a secret, naming
// the setting; nothing is stored.
func TestWithoutKeys(t *testing.T) {
	h := fntest.Start(t, function.New(), map[string]string{"MAIL_KEY_ID": ""})
	admin := h.Token("root", "admin")
	status, raw := h.Do("POST", "/api/v1/integrations/email", admin, smtpConfig("relay", "smtp.example.com", 587, smtpPassword))
	require.Equal(t, 503, status, "%s", raw)
	_, message := fntest.ErrorBody(t, raw)
	assert.Contains(t, message, "MAIL_KEY_ID")
	assert.Zero(t, h.Count(`select count(*) from integrations`))
	requireNoSecrets(t, "the answer", string(raw))

	status, raw = h.Do("POST", "/api/v1/integrations/email", admin, map[string]any{"name": "open relay", "config": map[string]any{
		"provider": "smtp", "host": "relay.example.com", "port": 25, "auth": "none", "from": "a@example.com"}})
	require.Equal(t, 201, status, "%s", raw)
}
