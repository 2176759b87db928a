package logging_test

import (
	"bytes"
	"errors"
	"log/slog"
	"net/url"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/streamspace-dev/functions/shared/logging"
)

const token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"

func TestSecretsNeverReachTheLog(t *testing.T) {
	const password = "s3cr3t-Pa55"
	tests := []struct {
		name   string
		log    func(log *slog.Logger)
		secret string
		keep   string // text around the secret that must survive
	}{
		{"URL in a string", func(l *slog.Logger) { l.Info("connect", "dsn", "postgres://app:"+password+"@db:5432/streamspace") },
			password, "db:5432/streamspace"},
		{"keyword/value DSN", func(l *slog.Logger) { l.Info("connect", "dsn", "host=db user=app password="+password+" dbname=x") },
			password, "dbname=x"},
		{"authorization attribute", func(l *slog.Logger) { l.Info("request", "authorization", "Bearer "+token) }, token, ""},
		{"bearer token in any attribute", func(l *slog.Logger) { l.Info("request", "header", "Bearer "+token) }, token, "Bearer"},
		{"bare JWT", func(l *slog.Logger) { l.Info("claims", "raw", "token was "+token) }, token, "token was"},
		{"secret-named attribute", func(l *slog.Logger) { l.Info("smtp", "smtp_password", password) }, password, ""},
		{"URL in an error", func(l *slog.Logger) {
			l.Error("failed", "err", errors.New("dial postgres://app:"+password+"@db: refused"))
		},
			password, "@db: refused"},
		{"secret in a group", func(l *slog.Logger) { l.Info("nested", slog.Group("cfg", slog.String("client_secret", password))) },
			password, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			tc.log(logging.New(&buf, slog.LevelDebug))
			out := buf.String()
			assert.NotContains(t, out, tc.secret)
			assert.Contains(t, out, logging.Redacted)
			assert.Contains(t, out, tc.keep, "redaction removed more than the secret")
		})
	}
}

func TestScrubHidesURLPasswords(t *testing.T) {
	passwords := []struct {
		name     string
		password string
	}{
		{"plain", "s3cret-Pa55"},
		{"with @", "s3cret@Pa55"},
		{"with two @", "s3@cret@Pa55"},
		{"with :", "s3cret:Pa55"},
		{"with /", "s3cret/Pa55"},
		{"with a literal %40", "s3cret%40Pa55"},
		{"with all of them", "a@b:c/d%40e"},
	}
	for _, pw := range passwords {
		for _, written := range []struct{ name, password string }{
			{"unescaped", pw.password},
			{"escaped", url.UserPassword("app", pw.password).String()[len("app:"):]},
		} {
			t.Run(pw.name+"/"+written.name, func(t *testing.T) {
				got := logging.Scrub("dial postgres://app:" + written.password + "@db:5432/streamspace failed")
				assert.NotContains(t, got, written.password)
				// Exactly the password goes: no tail of it is left, and the
				// host stays.
				assert.Equal(t, "dial postgres://app:"+logging.Redacted+"@db:5432/streamspace failed", got)
			})
		}
	}
}

func TestScrubLeavesOrdinaryText(t *testing.T) {
	tests := []struct {
		name, s string
	}{
		{"a sentence", "session sess-1 updated"},
		{"a URL without userinfo", "https://example.com/a/b"},
		{"a URL with a user only", "postgres://app@db/x"},
		{"a tag list", "tags=[dev gpu]"},
		{"an email address", "mail alice@example.com"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.s, logging.Scrub(tc.s))
		})
	}
}
