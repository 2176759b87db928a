package smtptest

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
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

// MailpitBinary finds the Mailpit that scripts/tools built: TOOLS_DIR/bin,
// else .tools/bin at the repository root above the working directory.
func MailpitBinary(tb testing.TB) string {
	tb.Helper()
	var candidates []string
	if d := os.Getenv("TOOLS_DIR"); d != "" {
		candidates = append(candidates, filepath.Join(d, "bin", "mailpit"))
	}
	if wd, err := os.Getwd(); err == nil {
		for dir := wd; ; dir = filepath.Dir(dir) {
			candidates = append(candidates, filepath.Join(dir, ".tools", "bin", "mailpit"))
			if filepath.Dir(dir) == dir {
				break
			}
		}
	}
	for _, c := range candidates {
		if fi, err := os.Stat(c); err == nil && !fi.IsDir() {
			return c
		}
	}
	tb.Fatalf("smtptest: mailpit is not built: run scripts/tools (or set TOOLS_DIR); looked in %v", candidates)
	return ""
}

func freePort(tb testing.TB) int {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// StartMailpit runs Mailpit on loopback until the test ends and returns
// once its API answers.
func StartMailpit(tb testing.TB, o MailpitOptions) *Mailpit {
	tb.Helper()
	bin := MailpitBinary(tb)
	dir := tb.TempDir()
	smtpPort, httpPort := freePort(tb), freePort(tb)
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
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, args...)
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		cancel()
		tb.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	tb.Cleanup(func() {
		cancel()
		<-exited
		if tb.Failed() {
			tb.Logf("mailpit output:\n%s", out.String())
		}
	})
	m := &Mailpit{SMTPAddr: fmt.Sprintf("127.0.0.1:%d", smtpPort), Host: "127.0.0.1", Port: smtpPort, API: fmt.Sprintf("http://127.0.0.1:%d", httpPort)}
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-exited:
			tb.Fatalf("mailpit exited: %s", out.String())
		default:
		}
		resp, err := http.Get(m.API + "/api/v1/info")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				if c, err := net.Dial("tcp", m.SMTPAddr); err == nil {
					c.Close()
					return m
				}
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("mailpit did not start in 60 s: %s", out.String())
		}
		// Polling a starting process's port: the wait is on a condition,
		// this is only the interval between looks.
		select {
		case <-exited:
		case <-time.After(50 * time.Millisecond):
		}
	}
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
