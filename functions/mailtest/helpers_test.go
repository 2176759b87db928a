package function_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/events"
	function "github.com/streamspace-dev/functions/functions/mailtest"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/smtptest"
)

// wait bounds every wait on a condition; generous for a busy machine.
const wait = 60 * time.Second

// The secrets the tests store; none may appear in a response, a log line,
// an event or the database in the clear.
const (
	smtpPassword = "pw-Secret-4711-smtp"
	wrongPass    = "pw-Wrong-0815-smtp"
	refreshTok   = "rt-Secret-9911-oauth"
	clientSecret = "cs-Secret-7722-oauth"
	sesSecretKey = "sk-Secret-5533-ses"
)

var secrets = []string{smtpPassword, wrongPass, refreshTok, clientSecret, sesSecretKey}

// world is a started function with the servers around it.
type world struct {
	h       *fntest.Harness
	ca      *smtptest.CA
	admin   string
	keysDir string
}

// writeKey adds a key file to dir.
func writeKey(t testing.TB, dir, id string) {
	t.Helper()
	key := make([]byte, 32)
	_, err := rand.Read(key)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, id), []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600))
}

// start serves the function with a key k1, the test CA trusted and
// loopback allowed (as MAIL_ALLOWED_HOSTS does for an in-cluster relay).
func start(t testing.TB, env map[string]string) *world {
	t.Helper()
	ca := smtptest.NewCA(t, "test CA")
	keys := t.TempDir()
	writeKey(t, keys, "k1")
	base := map[string]string{
		"MAIL_KEYS_DIR":      keys,
		"MAIL_KEY_ID":        "k1",
		"MAIL_ALLOWED_HOSTS": "127.0.0.1",
		"MAIL_CA_FILE":       ca.PEMFile(t),
	}
	for k, v := range env {
		base[k] = v
	}
	h := fntest.Start(t, function.New(), base)
	return &world{h: h, ca: ca, admin: h.Token("root", authn.Admin), keysDir: keys}
}

// faultServer starts a go-smtp server with STARTTLS (the world's CA) and
// AUTH PLAIN for alice / smtpPassword, plus the given hooks.
func (w *world) faultServer(t testing.TB, f smtptest.Fault) (string, int, *smtptest.Server) {
	t.Helper()
	leaf := w.ca.Issue(t, smtptest.LeafOptions{Hosts: []string{"127.0.0.1"}})
	f.TLS = &tls.Config{Certificates: []tls.Certificate{leaf.TLS}}
	if f.Auth == nil {
		f.Auth = func(user, pass string) error {
			if user == "alice" && pass == smtpPassword {
				return nil
			}
			return smtp.ErrAuthFailed
		}
	}
	srv := smtptest.Serve(t, f)
	host, port := smtptest.HostPort(t, srv.Addr)
	return host, port, srv
}

// smtpConfig is a create body for an SMTP integration.
func smtpConfig(name, host string, port int, password string) map[string]any {
	cfg := map[string]any{
		"provider": "smtp", "host": host, "port": port, "security": "starttls", "auth": "plain",
		"username": "alice", "from": "noreply@streamspace.test", "fromName": "StreamSpace",
		"defaultRecipient": "ops@example.com", "timeoutSeconds": 20,
	}
	if password != "" {
		cfg["password"] = password
	}
	return map[string]any{"name": name, "description": "relay", "config": cfg}
}

// create adds an integration and returns its view.
func (w *world) create(t testing.TB, body any) function.IntegrationView {
	t.Helper()
	status, raw := w.h.Do("POST", "/api/v1/integrations/email", w.admin, body)
	require.Equal(t, 201, status, "%s", raw)
	var v function.IntegrationView
	require.NoError(t, json.Unmarshal(raw, &v))
	return v
}

// test runs the test route and decodes its answer.
func (w *world) test(t testing.TB, id string, body any) (int, function.TestResult, []byte) {
	t.Helper()
	status, raw := w.h.Do("POST", "/api/v1/integrations/email/"+id+"/test", w.admin, body)
	var res function.TestResult
	if status == 200 || status == 400 {
		_ = json.Unmarshal(raw, &res)
	}
	return status, res, raw
}

// ping delivers a mail-health tick.
func (w *world) ping(t testing.TB) {
	t.Helper()
	e, err := events.New("test", events.Ping, events.PingData{Job: "mail.health"})
	require.NoError(t, err)
	e.SetSource(events.MailHealthSource)
	status, _ := w.h.Deliver(e, false)
	require.Equal(t, 202, status)
}

// requireNoSecrets fails if any stored secret shows in the text.
func requireNoSecrets(t testing.TB, where, text string) {
	t.Helper()
	for _, s := range secrets {
		require.NotContains(t, text, s, "a secret in %s", where)
	}
}

// requireNoSecretsAnywhere checks the log, every emitted event and the
// integrations table.
func (w *world) requireNoSecretsAnywhere(t testing.TB) {
	t.Helper()
	requireNoSecrets(t, "the log", w.h.Logs.String())
	for _, e := range w.h.Sink.Events() {
		requireNoSecrets(t, "event "+e.Type(), string(e.Data()))
	}
	rows, err := w.h.Pool.Query(context.Background(), `select config::text from integrations`)
	require.NoError(t, err)
	defer rows.Close()
	for rows.Next() {
		var c string
		require.NoError(t, rows.Scan(&c))
		requireNoSecrets(t, "integrations.config", c)
	}
	require.NoError(t, rows.Err())
}

// eventsOf returns the sink's events of a type.
func eventsOf(w *world, typ string) []cloudevents.Event {
	var out []cloudevents.Event
	for _, e := range w.h.Sink.Events() {
		if e.Type() == typ {
			out = append(out, e)
		}
	}
	return out
}

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
