package smtptest

import (
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Fault chooses a go-smtp server's answers. A nil hook accepts.
type Fault struct {
	// TLS, when set, offers STARTTLS with it (or, with Implicit, speaks
	// TLS from the first byte).
	TLS      *tls.Config
	Implicit bool
	// Auth checks PLAIN credentials; nil offers no AUTH at all.
	Auth func(user, pass string) error
	// XOAuth2 checks an XOAUTH2 user and bearer token, and offers the
	// mechanism when set.
	XOAuth2 func(user, token string) error
	Mail    func(from string) error
	Rcpt    func(to string) error
	// Data sees the message; it must read it all before answering.
	Data func(msg []byte) error
	// DropInData closes the connection after reading the first bytes of
	// the message, before any reply.
	DropInData bool
	// Delay holds every reply of the conversation back this long (a
	// server at some distance).
	Delay time.Duration
	// Hang, when set, makes MAIL wait until the test ends without
	// answering (a reply that never comes).
	Hang bool
}

// Server is a running fault server.
type Server struct {
	Addr string
	// Messages are the messages accepted.
	mu       sync.Mutex
	messages [][]byte
	hang     chan struct{}
}

// Messages returns the messages the server accepted.
func (s *Server) Messages() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.messages...)
}

// Serve starts a go-smtp server on loopback with f's answers.
func Serve(tb testing.TB, f Fault) *Server {
	tb.Helper()
	s := &Server{hang: make(chan struct{})}
	be := smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) { return &session{f: f, s: s, conn: c}, nil })
	srv := smtp.NewServer(be)
	srv.Domain = "fault.test"
	srv.AllowInsecureAuth = true
	// The faults the tests cause would fill the output.
	srv.ErrorLog = log.New(io.Discard, "", 0)
	var ln net.Listener
	var err error
	ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	if f.TLS != nil {
		if f.Implicit {
			ln = tls.NewListener(ln, f.TLS)
		} else {
			srv.TLSConfig = f.TLS
		}
	}
	if f.Delay > 0 {
		ln = delayListener{Listener: ln, delay: f.Delay}
	}
	s.Addr = ln.Addr().String()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	tb.Cleanup(func() {
		close(s.hang)
		_ = srv.Close()
		<-done
	})
	return s
}

type session struct {
	f    Fault
	s    *Server
	conn *smtp.Conn
	from string
}

func (x *session) AuthMechanisms() []string {
	var m []string
	if x.f.Auth != nil {
		m = append(m, sasl.Plain)
	}
	if x.f.XOAuth2 != nil {
		m = append(m, "XOAUTH2")
	}
	return m
}

func (x *session) Auth(mech string) (sasl.Server, error) {
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, user, pass string) error { return x.f.Auth(user, pass) }), nil
	case "XOAUTH2":
		return &xoauth2Server{check: x.f.XOAuth2}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

func (x *session) Mail(from string, _ *smtp.MailOptions) error {
	if x.f.Hang {
		<-x.s.hang
		return errors.New("closing")
	}
	x.from = from
	if x.f.Mail != nil {
		return x.f.Mail(from)
	}
	return nil
}

func (x *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if x.f.Rcpt != nil {
		return x.f.Rcpt(to)
	}
	return nil
}

func (x *session) Data(r io.Reader) error {
	if x.f.DropInData {
		_, _ = io.ReadFull(r, make([]byte, 16))
		return x.conn.Conn().Close()
	}
	msg, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if x.f.Data != nil {
		if err := x.f.Data(msg); err != nil {
			return err
		}
	}
	x.s.mu.Lock()
	x.s.messages = append(x.s.messages, msg)
	x.s.mu.Unlock()
	return nil
}

func (x *session) Reset()        {}
func (x *session) Logout() error { return nil }

// xoauth2Server is the server side of XOAUTH2: one initial response
// "user=U\x01auth=Bearer T\x01\x01". A refused token gets the JSON
// challenge Gmail sends, then 535 after the client's empty line.
type xoauth2Server struct {
	check  func(user, token string) error
	failed error
}

func (a *xoauth2Server) Next(response []byte) ([]byte, bool, error) {
	if a.failed != nil {
		return nil, true, a.failed
	}
	var user, token string
	for _, part := range splitNonEmpty(string(response), '\x01') {
		switch {
		case len(part) > 5 && part[:5] == "user=":
			user = part[5:]
		case len(part) > 12 && part[:12] == "auth=Bearer ":
			token = part[12:]
		}
	}
	if user == "" || token == "" {
		return nil, true, smtp.ErrAuthFailed
	}
	if err := a.check(user, token); err != nil {
		a.failed = err
		return []byte(`{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}`), false, nil
	}
	return nil, true, nil
}

func splitNonEmpty(s string, sep byte) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == sep {
			if i > start {
				out = append(out, s[start:i])
			}
			start = i + 1
		}
	}
	return out
}

// Reject returns an SMTP error with code, enhanced code and text, for a
// Fault hook.
func Reject(code int, enhanced smtp.EnhancedCode, text string) error {
	return &smtp.SMTPError{Code: code, EnhancedCode: enhanced, Message: text}
}

// delayListener's connections hold each answer back by delay: the first
// write after the client has sent something (a command, a TLS flight)
// leaves delay later, as if the server were that far away; the lines of a
// multi-line reply follow at once.
type delayListener struct {
	net.Listener
	delay time.Duration
}

func (l delayListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &delayConn{Conn: c, delay: l.delay, answering: true}, nil
}

type delayConn struct {
	net.Conn
	delay time.Duration
	// answering is true from a read (or the connection's start) to the
	// first write after it. The server reads and writes one connection
	// from one goroutine at a time, so no lock is needed.
	answering bool
}

func (c *delayConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.answering = true
	}
	return n, err
}

// Write stands for the network's latency: an answer leaves delay after
// the question arrived.
func (c *delayConn) Write(p []byte) (int, error) {
	if c.answering {
		c.answering = false
		time.Sleep(c.delay)
	}
	return c.Conn.Write(p)
}
