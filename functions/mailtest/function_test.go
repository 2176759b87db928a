package function_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/events"
	function "github.com/streamspace-dev/functions/functions/mailtest"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/smtptest"
)

func TestManageIntegrations(t *testing.T) {
	w := start(t, nil)
	created := w.create(t, smtpConfig("relay", "smtp.example.com", 587, smtpPassword))
	assert.Equal(t, "email", created.Type)
	assert.True(t, created.Config.PasswordSet)
	assert.Equal(t, "unknown", string(created.Health.Status))
	id := created.ID
	path := "/api/v1/integrations/email/" + id

	t.Run("get shows the settings and no secret", func(t *testing.T) {
		status, raw := w.h.Do("GET", path, w.admin, nil)
		require.Equal(t, 200, status, "%s", raw)
		requireNoSecrets(t, "the answer", string(raw))
		assert.Contains(t, string(raw), `"passwordSet":true`)
		assert.NotContains(t, string(raw), `"password"`)
		assert.NotContains(t, string(raw), `"secrets"`)
	})
	t.Run("a preset fills host, port, security and auth and carries hints", func(t *testing.T) {
		v := w.create(t, map[string]any{"name": "sg", "config": map[string]any{"provider": "smtp", "preset": "sendgrid", "password": smtpPassword, "from": "a@example.com"}})
		assert.Equal(t, "smtp.sendgrid.net", v.Config.Host)
		assert.Equal(t, 587, v.Config.Port)
		assert.Equal(t, "starttls", string(v.Config.Security))
		assert.Equal(t, "apikey", v.Config.Username)
		assert.Equal(t, "plain", string(v.Config.Auth))
		require.NotEmpty(t, v.Config.Hints)
		assert.Contains(t, v.Config.Hints[0], "SendGrid")
	})
	t.Run("port 465 defaults to implicit TLS", func(t *testing.T) {
		v := w.create(t, map[string]any{"name": "465", "config": map[string]any{"provider": "smtp", "host": "mail.example.com", "port": 465, "from": "a@example.com"}})
		assert.Equal(t, "tls", string(v.Config.Security))
		assert.Equal(t, "none", string(v.Config.Auth))
	})
	t.Run("an update without the password keeps it", func(t *testing.T) {
		body := smtpConfig("relay 2", "smtp2.example.com", 2525, "")
		status, raw := w.h.Do("PUT", path, w.admin, body)
		require.Equal(t, 200, status, "%s", raw)
		var v function.IntegrationView
		require.NoError(t, json.Unmarshal(raw, &v))
		assert.Equal(t, "relay 2", v.Name)
		assert.Equal(t, 2525, v.Config.Port)
		assert.True(t, v.Config.PasswordSet)
	})
	t.Run("an update that clears the password plain needs is refused, nothing changes", func(t *testing.T) {
		body := smtpConfig("relay 3", "smtp3.example.com", 25, "")
		body["config"].(map[string]any)["password"] = ""
		status, raw := w.h.Do("PUT", path, w.admin, body)
		require.Equal(t, 400, status, "%s", raw)
		_, message := fntest.ErrorBody(t, raw)
		assert.Contains(t, message, "config.password")
		assert.Equal(t, 1, w.h.Count(`select count(*) from integrations where id = $1 and name = 'relay 2'`, id))
	})
	t.Run("list has every email integration and only those", func(t *testing.T) {
		_, err := w.h.Pool.Exec(context.Background(), `insert into integrations (type, name, config) values ('slack', 'other', '{}')`)
		require.NoError(t, err)
		status, raw := w.h.Do("GET", "/api/v1/integrations/email", w.admin, nil)
		require.Equal(t, 200, status)
		var l function.ListResult
		require.NoError(t, json.Unmarshal(raw, &l))
		assert.Equal(t, 3, l.Count)
		requireNoSecrets(t, "the list", string(raw))
	})
	t.Run("another type's row is not found here", func(t *testing.T) {
		var slack int
		require.NoError(t, w.h.Pool.QueryRow(context.Background(), `select id from integrations where type = 'slack'`).Scan(&slack))
		status, _ := w.h.Do("GET", "/api/v1/integrations/email/"+strconv.Itoa(slack), w.admin, nil)
		assert.Equal(t, 404, status)
		status, _ = w.h.Do("DELETE", "/api/v1/integrations/email/"+strconv.Itoa(slack), w.admin, nil)
		assert.Equal(t, 404, status)
	})
	t.Run("delete", func(t *testing.T) {
		status, _ := w.h.Do("DELETE", path, w.admin, nil)
		require.Equal(t, 200, status)
		status, _ = w.h.Do("GET", path, w.admin, nil)
		assert.Equal(t, 404, status)
	})
	w.requireNoSecretsAnywhere(t)
}

func TestBadConfigIsRefusedNamingTheField(t *testing.T) {
	w := start(t, nil)
	base := func(edit func(c map[string]any)) map[string]any {
		b := smtpConfig("x", "smtp.example.com", 587, smtpPassword)
		edit(b["config"].(map[string]any))
		return b
	}
	tests := []struct {
		name  string
		body  any
		field string
	}{
		{"no name", map[string]any{"config": map[string]any{"provider": "smtp"}}, "name"},
		{"an unknown provider", base(func(c map[string]any) { c["provider"] = "pigeon" }), "config.provider"},
		{"no host", base(func(c map[string]any) { delete(c, "host") }), "config.host"},
		{"a port out of range", base(func(c map[string]any) { c["port"] = 70000 }), "config.port"},
		{"security none without allowInsecure", base(func(c map[string]any) { c["security"] = "none" }), "config.security"},
		{"an unknown security", base(func(c map[string]any) { c["security"] = "ssl3" }), "config.security"},
		{"an unknown auth", base(func(c map[string]any) { c["auth"] = "cram-md5" }), "config.auth"},
		{"plain without a password", base(func(c map[string]any) { delete(c, "password") }), "config.password"},
		{"xoauth2 without oauth2", base(func(c map[string]any) { c["auth"] = "xoauth2" }), "config.oauth2"},
		{"a Bcc smuggled into from", base(func(c map[string]any) { c["from"] = "x\r\nBcc: evil@example.com" }), "config.from"},
		{"a Bcc smuggled into fromName", base(func(c map[string]any) { c["fromName"] = "x\r\nBcc: evil@example.com" }), "config.fromName"},
		{"a Bcc smuggled into defaultRecipient", base(func(c map[string]any) { c["defaultRecipient"] = "x\r\nBcc: evil@example.com" }), "config.defaultRecipient"},
		{"a Bcc smuggled into the name", map[string]any{"name": "x\r\nBcc: evil@example.com", "config": map[string]any{"provider": "smtp"}}, "name"},
		{"a name and address as from", base(func(c map[string]any) { c["from"] = "Me <me@example.com>" }), "config.from"},
		{"a timeout too long", base(func(c map[string]any) { c["timeoutSeconds"] = 3600 }), "config.timeoutSeconds"},
		{"a host with a path", base(func(c map[string]any) { c["host"] = "smtp.example.com/x" }), "config.host"},
		{"an http token URL", base(func(c map[string]any) {
			c["auth"] = "xoauth2"
			c["oauth2"] = map[string]any{"preset": "custom", "tokenUrl": "http://idp.example.com/token", "clientId": "c", "refreshToken": refreshTok}
		}), "config.oauth2.tokenUrl"},
		{"ses without a region", map[string]any{"name": "s", "config": map[string]any{"provider": "ses", "from": "a@example.com", "ses": map[string]any{}}}, "config.ses.region"},
		{"ses with only one key", map[string]any{"name": "s", "config": map[string]any{"provider": "ses", "from": "a@example.com", "ses": map[string]any{"region": "eu-west-1", "accessKeyId": "AKID"}}}, "config.ses.secretAccessKey"},
		{"ses with an smtp host", map[string]any{"name": "s", "config": map[string]any{"provider": "ses", "host": "x.example.com", "from": "a@example.com", "ses": map[string]any{"region": "eu-west-1"}}}, "config.host"},
		{"an unknown field", `{"name":"x","config":{"provider":"smtp","hots":"x"}}`, "hots"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, raw := w.h.Do("POST", "/api/v1/integrations/email", w.admin, tc.body)
			require.Equal(t, 400, status, "%s", raw)
			_, message := fntest.ErrorBody(t, raw)
			assert.Contains(t, message, tc.field)
			requireNoSecrets(t, "the error", string(raw))
			assert.Zero(t, w.h.Count(`select count(*) from integrations`), "nothing stored")
		})
	}
	w.requireNoSecretsAnywhere(t)
}

func TestOnlyOperatorsAndAdminsManage(t *testing.T) {
	w := start(t, nil)
	v := w.create(t, smtpConfig("relay", "smtp.example.com", 587, smtpPassword))
	operator := w.h.Token("op", authn.Operator)
	user := w.h.Token("u", authn.User)
	path := "/api/v1/integrations/email/" + v.ID
	routes := []struct{ method, path string }{
		{"GET", "/api/v1/integrations/email"}, {"POST", "/api/v1/integrations/email"},
		{"GET", path}, {"PUT", path}, {"DELETE", path}, {"POST", path + "/test"},
	}
	for _, r := range routes {
		t.Run(r.method+" "+r.path, func(t *testing.T) {
			status, _ := w.h.Do(r.method, r.path, user, smtpConfig("changed", "smtp.example.com", 587, smtpPassword))
			assert.Equal(t, http.StatusForbidden, status, "a user")
			status, _ = w.h.Do(r.method, r.path, "", nil)
			assert.Equal(t, http.StatusUnauthorized, status, "no token")
		})
	}
	assert.Equal(t, 1, w.h.Count(`select count(*) from integrations where name = 'relay'`), "nothing changed")
	status, _ := w.h.Do("GET", path, operator, nil)
	assert.Equal(t, 200, status, "an operator")
}

func TestTestRoute(t *testing.T) {
	w := start(t, nil)
	host, port, srv := w.faultServer(t, smtptest.Fault{Rcpt: func(to string) error {
		if to == "nobody@example.com" {
			return smtptest.Reject(550, smtp.EnhancedCode{5, 1, 1}, "no such user")
		}
		return nil
	}})
	v := w.create(t, smtpConfig("relay", host, port, smtpPassword))
	wrong := w.create(t, smtpConfig("wrong password", host, port, wrongPass))
	blocked := w.create(t, smtpConfig("metadata", "169.254.169.254", 587, smtpPassword))

	tests := []struct {
		name        string
		id          string
		body        any
		wantStatus  int
		wantClass   string
		wantSuccess bool
	}{
		{"a message sent to the default recipient", v.ID, nil, 200, "", true},
		{"a message sent to a named recipient", v.ID, map[string]any{"recipient": "dev@example.com"}, 200, "", true},
		{"a recipient the server refuses", v.ID, map[string]any{"recipient": "nobody@example.com"}, 400, "recipient_rejected", false},
		{"a wrong password", wrong.ID, nil, 400, "auth_failed", false},
		{"a host on the metadata address", blocked.ID, nil, 400, "address_blocked", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := w.h.Count(`select count(*) from integrations where id = $1 and last_success_at is not null`, tc.id)
			status, res, raw := w.test(t, tc.id, tc.body)
			require.Equal(t, tc.wantStatus, status, "%s", raw)
			requireNoSecrets(t, "the answer", string(raw))
			assert.Equal(t, tc.wantSuccess, res.Success)
			assert.NotEmpty(t, res.Message)
			assert.NotEmpty(t, res.Result.Stages)
			assert.Equal(t, tc.wantClass, res.Error)
			assert.Equal(t, 1, w.h.Count(`select count(*) from integrations where id = $1 and last_test_at is not null`, tc.id), "last_test_at")
			if tc.wantSuccess {
				assert.Equal(t, 1, w.h.Count(`select count(*) from integrations where id = $1 and last_success_at is not null`, tc.id))
				assert.Contains(t, res.Message, res.Result.TestID)
			} else {
				assert.Equal(t, before, w.h.Count(`select count(*) from integrations where id = $1 and last_success_at is not null`, tc.id), "last_success_at unchanged")
				assert.Equal(t, tc.wantClass, string(res.Result.Class))
				assert.NotEmpty(t, res.Result.Hint)
			}
		})
	}
	got := w.h.Sink.WaitForN(context.Background(), events.IntegrationTested, len(tests), wait)
	require.Len(t, got, len(tests))
	var data events.IntegrationTestedData
	require.NoError(t, got[0].DataAs(&data))
	assert.Equal(t, "smtp", data.Provider)
	assert.Len(t, srv.Messages(), 2)
	w.requireNoSecretsAnywhere(t)

	t.Run("a Bcc smuggled into the recipient is refused", func(t *testing.T) {
		status, _, raw := w.test(t, v.ID, map[string]any{"recipient": "x\r\nBcc: evil@example.com"})
		require.Equal(t, 400, status)
		_, message := fntest.ErrorBody(t, raw)
		assert.Contains(t, message, "recipient")
	})
	t.Run("an unknown integration", func(t *testing.T) {
		status, _, _ := w.test(t, "999999", nil)
		assert.Equal(t, 404, status)
		status, _, _ = w.test(t, "abc", nil)
		assert.Equal(t, 404, status)
	})
}

func TestTestRateLimit(t *testing.T) {
	w := start(t, map[string]string{"MAIL_TEST_RATE_LIMIT": "2"})
	host, port, _ := w.faultServer(t, smtptest.Fault{})
	v := w.create(t, smtpConfig("relay", host, port, smtpPassword))
	for i := 0; i < 2; i++ {
		status, _, raw := w.test(t, v.ID, nil)
		require.Equal(t, 200, status, "%s", raw)
	}
	status, header, raw := w.h.DoHeader("POST", "/api/v1/integrations/email/"+v.ID+"/test", w.admin, nil)
	require.Equal(t, http.StatusTooManyRequests, status, "%s", raw)
	after, err := strconv.Atoi(header.Get("Retry-After"))
	require.NoError(t, err)
	assert.Positive(t, after)
	assert.LessOrEqual(t, after, 60)
}

func TestEnvIntegration(t *testing.T) {
	// The server starts before the function, whose SMTP_* name it; the
	// function trusts the server's CA.
	ca := smtptest.NewCA(t, "env CA")
	host, port, srv := (&world{ca: ca}).faultServer(t, smtptest.Fault{})
	w2 := startTrusting(t, ca, map[string]string{
		"SMTP_HOST": host, "SMTP_PORT": strconv.Itoa(port), "SMTP_USERNAME": "alice", "SMTP_PASSWORD": smtpPassword,
		"SMTP_FROM": "StreamSpace <noreply@streamspace.test>", "SMTP_TLS": "true",
	})
	status, raw := w2.h.Do("GET", "/api/v1/integrations/email/env", w2.admin, nil)
	require.Equal(t, 200, status, "%s", raw)
	var v function.IntegrationView
	require.NoError(t, json.Unmarshal(raw, &v))
	assert.True(t, v.ReadOnly)
	assert.True(t, v.Config.PasswordSet)
	assert.Equal(t, "StreamSpace", v.Config.FromName)
	requireNoSecrets(t, "the answer", string(raw))

	for _, m := range []string{"PUT", "DELETE"} {
		status, _ := w2.h.Do(m, "/api/v1/integrations/email/env", w2.admin, smtpConfig("x", "smtp.example.com", 587, smtpPassword))
		assert.Equal(t, http.StatusConflict, status, m)
	}
	status, res, raw := w2.test(t, "env", map[string]any{"recipient": "ops@example.com"})
	require.Equal(t, 200, status, "%s", raw)
	assert.True(t, res.Success)
	assert.Len(t, srv.Messages(), 1)
	status, raw = w2.h.Do("GET", "/api/v1/integrations/email/env", w2.admin, nil)
	require.Equal(t, 200, status)
	require.NoError(t, json.Unmarshal(raw, &v))
	assert.NotNil(t, v.LastTestAt)
	assert.NotNil(t, v.LastSuccessAt)
	w2.requireNoSecretsAnywhere(t)
}

// startTrusting is start with ca as the trusted authority.
func startTrusting(t *testing.T, ca *smtptest.CA, env map[string]string) *world {
	t.Helper()
	env["MAIL_CA_FILE"] = ca.PEMFile(t)
	w := start(t, env)
	w.ca = ca
	return w
}

func TestHealthTransitions(t *testing.T) {
	w := start(t, nil)
	var failing atomic.Bool
	failing.Store(true)
	host, port, _ := w.faultServer(t, smtptest.Fault{Auth: func(user, pass string) error {
		if failing.Load() {
			return smtp.ErrAuthFailed
		}
		return nil
	}})
	goodHost, goodPort, _ := w.faultServer(t, smtptest.Fault{})
	ok := w.create(t, smtpConfig("good", goodHost, goodPort, smtpPassword))
	bad := w.create(t, smtpConfig("bad", host, port, smtpPassword))
	disabled := smtpConfig("off", host, port, smtpPassword)
	disabled["enabled"] = false
	off := w.create(t, disabled)

	w.ping(t)
	assert.Equal(t, 1, w.h.Count(`select count(*) from integrations where id = $1 and health_status = 'healthy' and health_error is null`, ok.ID))
	assert.Equal(t, 1, w.h.Count(`select count(*) from integrations where id = $1 and health_status = 'unhealthy' and health_error_class = 'auth_failed'`, bad.ID))
	assert.Equal(t, 1, w.h.Count(`select count(*) from integrations where id = $1 and health_status is null`, off.ID), "a disabled one is not checked")
	changed := w.h.Sink.WaitForN(context.Background(), events.IntegrationHealthChanged, 2, wait)
	require.Len(t, changed, 2)
	admins := w.h.Count(`select count(*) from users where role = 'admin' and coalesce(active, true)`)
	require.Positive(t, admins)
	assert.Equal(t, admins, w.h.Count(`select count(*) from notifications where type = 'integration_unhealthy'`), "one notification per admin")

	t.Run("no change, no event, no notification", func(t *testing.T) {
		w.ping(t)
		w.ping(t)
		assert.Len(t, eventsOf(w, events.IntegrationHealthChanged), 2)
		assert.Equal(t, admins, w.h.Count(`select count(*) from notifications where type = 'integration_unhealthy'`))
	})
	t.Run("recovery is one event and no notification", func(t *testing.T) {
		failing.Store(false)
		w.ping(t)
		got := w.h.Sink.WaitForN(context.Background(), events.IntegrationHealthChanged, 3, wait)
		require.Len(t, got, 3)
		var data events.IntegrationHealthChangedData
		require.NoError(t, got[2].DataAs(&data))
		assert.Equal(t, bad.ID, data.IntegrationID)
		assert.True(t, data.Healthy)
		assert.Equal(t, "unhealthy", data.Previous)
		assert.Equal(t, admins, w.h.Count(`select count(*) from notifications where type = 'integration_unhealthy'`))
	})
	w.requireNoSecretsAnywhere(t)
}
