package logging_test

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/streamspace-dev/functions/shared/logging"
)

func TestSecretsNeverReachTheLog(t *testing.T) {
	const (
		password = "s3cr3t-Pa55"
		token    = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"
	)
	var buf bytes.Buffer
	log := logging.New(&buf, slog.LevelDebug)
	log.Info("connect", "dsn", "postgres://app:"+password+"@db:5432/streamspace")
	log.Info("connect", "dsn", "host=db user=app password="+password+" dbname=x")
	log.Info("request", "authorization", "Bearer "+token)
	log.Info("request", "header", "Bearer "+token)
	log.Info("claims", "raw", "token was "+token)
	log.Info("smtp", "smtp_password", password)
	log.Error("failed", "err", errors.New("dial postgres://app:"+password+"@db: refused"))
	log.Info("nested", slog.Group("cfg", slog.String("client_secret", password)))

	out := buf.String()
	for _, secret := range []string{password, token} {
		if strings.Contains(out, secret) {
			t.Errorf("log output contains secret %q:\n%s", secret, out)
		}
	}
	if got := strings.Count(out, logging.Redacted); got < 8 {
		t.Errorf("redacted %d values, want at least 8:\n%s", got, out)
	}
	if !strings.Contains(out, "db:5432/streamspace") {
		t.Errorf("redaction removed more than the secret:\n%s", out)
	}
}

func TestScrubLeavesOrdinaryText(t *testing.T) {
	for _, s := range []string{"session sess-1 updated", "https://example.com/a/b", "tags=[dev gpu]"} {
		if got := logging.Scrub(s); got != s {
			t.Errorf("Scrub(%q) = %q, want unchanged", s, got)
		}
	}
}
