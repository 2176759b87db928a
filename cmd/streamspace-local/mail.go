package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/streamspace-dev/functions/shared/testbin"
)

// localMail is Mailpit, when scripts/tools built it, with the mailtest
// function's environment pointed at it: the env integration sends to
// Mailpit, and a throwaway key seals the secrets integrations store.
type localMail struct {
	proc *testbin.Process
	// dir holds the key (dir/keys) and Mailpit's database.
	dir string
	// Web is Mailpit's web UI and API; SMTP its SMTP listener.
	Web, SMTP string
	// Env is what the function gets; keys the operator's environment
	// already sets are left to it.
	Env map[string]string
}

// startMail starts Mailpit on loopback, or returns nil when it is not
// built (the function then runs without the env integration).
func startMail(ctx context.Context, environ map[string]string) (*localMail, error) {
	bin, err := testbin.Lookup("mailpit")
	if err != nil {
		return nil, nil
	}
	smtpPort, err := testbin.FreePort()
	if err != nil {
		return nil, err
	}
	webPort, err := testbin.FreePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "streamspace-local-mail")
	if err != nil {
		return nil, err
	}
	keys := filepath.Join(dir, "keys")
	m := &localMail{dir: dir, SMTP: "127.0.0.1:" + strconv.Itoa(smtpPort), Web: "http://127.0.0.1:" + strconv.Itoa(webPort)}
	key := make([]byte, 32)
	if err := os.Mkdir(keys, 0o700); err != nil {
		m.stop()
		return nil, err
	}
	if _, err := rand.Read(key); err != nil {
		m.stop()
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(keys, "local"), []byte(base64.StdEncoding.EncodeToString(key)), 0o600); err != nil {
		m.stop()
		return nil, err
	}
	m.proc, err = testbin.Start(bin, []string{"--smtp", m.SMTP, "--listen", "127.0.0.1:" + strconv.Itoa(webPort),
		"--database", filepath.Join(dir, "mailpit.db"), "--disable-version-check"})
	if err != nil {
		m.stop()
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	err = m.proc.WaitReady(wctx, func(ctx context.Context) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, m.Web+"/api/v1/info", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		c, err := net.Dial("tcp", m.SMTP)
		if err != nil {
			return err
		}
		return c.Close()
	})
	if err != nil {
		m.stop()
		return nil, fmt.Errorf("mailpit: %w", err)
	}
	m.Env = map[string]string{}
	set := func(k, v string) {
		if environ[k] == "" {
			m.Env[k] = v
		}
	}
	set("MAIL_KEYS_DIR", keys)
	set("MAIL_KEY_ID", "local")
	// Mailpit listens on loopback, which the address guard refuses unless
	// the host is allowed.
	set("MAIL_ALLOWED_HOSTS", "127.0.0.1")
	if environ["SMTP_HOST"] == "" {
		m.Env["SMTP_HOST"] = "127.0.0.1"
		m.Env["SMTP_PORT"] = strconv.Itoa(smtpPort)
		m.Env["SMTP_TLS"] = "false"
		m.Env["SMTP_FROM"] = "StreamSpace <noreply@streamspace.local>"
	}
	return m, nil
}

// stop ends Mailpit and removes the key and its database.
func (m *localMail) stop() {
	if m == nil {
		return
	}
	if m.proc != nil {
		m.proc.Stop()
	}
	os.RemoveAll(m.dir)
}
