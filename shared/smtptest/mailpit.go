package smtptest

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/streamspace-dev/functions/shared/testbin"
)

// Mailpit is a running Mailpit.
type Mailpit struct {
	// SMTPAddr is host:port of its SMTP listener; Host and Port split it.
	SMTPAddr string
	Host     string
	Port     int
	// API is the base URL of its web UI and REST API.
	API string
}

// MailpitOptions configure a Mailpit.
type MailpitOptions struct {
	// Leaf, when set, enables TLS: STARTTLS, or with ImplicitTLS, TLS from
	// the first byte.
	Leaf        *Leaf
	ImplicitTLS bool
	// Users, when set, requires AUTH (PLAIN, LOGIN) with these
	// user → password pairs.
	Users map[string]string
}

// StartMailpit runs Mailpit (testbin.Path: TOOLS_DIR/bin or .tools/bin,
// built by scripts/tools) on loopback until the test ends and returns once
// its API and SMTP port answer.
func StartMailpit(tb testing.TB, o MailpitOptions) *Mailpit {
	tb.Helper()
	bin := testbin.Path(tb, "mailpit")
	dir := tb.TempDir()
	smtpPort, err := testbin.FreePort()
	if err != nil {
		tb.Fatal(err)
	}
	httpPort, err := testbin.FreePort()
	if err != nil {
		tb.Fatal(err)
	}
	args := []string{
		"--smtp", fmt.Sprintf("127.0.0.1:%d", smtpPort),
		"--listen", fmt.Sprintf("127.0.0.1:%d", httpPort),
		"--database", filepath.Join(dir, "mailpit.db"),
		"--disable-version-check",
	}
	if o.Leaf != nil {
		args = append(args, "--smtp-tls-cert", o.Leaf.CertFile, "--smtp-tls-key", o.Leaf.KeyFile)
		if o.ImplicitTLS {
			args = append(args, "--smtp-require-tls")
		}
	}
	if len(o.Users) > 0 {
		file := filepath.Join(dir, "smtp-auth")
		var content string
		for u, p := range o.Users {
			content += u + ":" + p + "\n"
		}
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			tb.Fatal(err)
		}
		args = append(args, "--smtp-auth-file", file)
		if o.Leaf == nil {
			args = append(args, "--smtp-auth-allow-insecure")
		}
	}
	proc, err := testbin.Start(bin, args)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		proc.Stop()
		if tb.Failed() {
			tb.Logf("mailpit output:\n%s", proc.Output())
		}
	})
	m := &Mailpit{SMTPAddr: fmt.Sprintf("127.0.0.1:%d", smtpPort), Host: "127.0.0.1", Port: smtpPort, API: fmt.Sprintf("http://127.0.0.1:%d", httpPort)}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err = proc.WaitReady(ctx, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.API+"/api/v1/info", nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("api: %s", resp.Status)
		}
		c, err := net.Dial("tcp", m.SMTPAddr)
		if err != nil {
			return err
		}
		return c.Close()
	})
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// Address is a Mailpit address.
type Address struct {
	Name    string `json:"Name"`
	Address string `json:"Address"`
}

// Summary is one entry of Mailpit's message list.
type Summary struct {
	ID        string    `json:"ID"`
	MessageID string    `json:"MessageID"`
	From      Address   `json:"From"`
	To        []Address `json:"To"`
	Subject   string    `json:"Subject"`
}

// Message is one message as Mailpit's API shows it.
type Message struct {
	Summary
	Text string `json:"Text"`
	HTML string `json:"HTML"`
	// Headers are the message's headers.
	Headers map[string][]string `json:"-"`
}

func (m *Mailpit) getJSON(tb testing.TB, path string, v any) {
	tb.Helper()
	resp, err := http.Get(m.API + path)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		tb.Fatalf("mailpit %s: %s", path, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		tb.Fatalf("mailpit %s: %v", path, err)
	}
}

// Messages lists what arrived, newest first.
func (m *Mailpit) Messages(tb testing.TB) []Summary {
	tb.Helper()
	var list struct {
		Messages []Summary `json:"messages"`
	}
	m.getJSON(tb, "/api/v1/messages", &list)
	return list.Messages
}

// Message reads one message with its parts and headers.
func (m *Mailpit) Message(tb testing.TB, id string) Message {
	tb.Helper()
	var msg Message
	m.getJSON(tb, "/api/v1/message/"+id, &msg)
	m.getJSON(tb, "/api/v1/message/"+id+"/headers", &msg.Headers)
	return msg
}

// HostPort splits an address for a test that needs the port as a number.
func HostPort(tb testing.TB, addr string) (string, int) {
	tb.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		tb.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		tb.Fatal(err)
	}
	return h, n
}
