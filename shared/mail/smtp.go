package mail

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/oauth2"
)

// Security is how an SMTP connection is protected.
type Security string

// Securities.
const (
	// StartTLS upgrades a plain connection with STARTTLS, which the server
	// must offer.
	StartTLS Security = "starttls"
	// ImplicitTLS speaks TLS from the first byte (port 465).
	ImplicitTLS Security = "tls"
	// NoTLS sends everything, credentials included, in the clear.
	NoTLS Security = "none"
)

// AuthMethod is the SASL mechanism used to log in.
type AuthMethod string

// Auth methods.
const (
	AuthNone    AuthMethod = "none"
	AuthPlain   AuthMethod = "plain"
	AuthLogin   AuthMethod = "login"
	AuthXOAuth2 AuthMethod = "xoauth2"
)

var (
	errNoStartTLS = errors.New("the server does not offer STARTTLS")
	errMechanism  = errors.New("the server does not offer this auth method")
	errToken      = errors.New("no OAuth2 access token")
)

// SMTP is one SMTP server and how to log in to it.
type SMTP struct {
	Host     string
	Port     int
	Security Security
	Auth     AuthMethod
	Username string
	// Password is the password for plain and login.
	Password string
	// Token gives XOAUTH2's access token.
	Token oauth2.TokenSource
	// Known is the provider's name when known (KnownProvider), for hints.
	Known string
	// HeloName is the name sent with EHLO.
	HeloName string
	// Timeout bounds the whole conversation.
	Timeout time.Duration
	// RootCAs, when set, replaces the system's trusted authorities (tests).
	RootCAs *x509.CertPool
	// Guard vets and dials the server's addresses.
	Guard *Guard
}

// Envelope is a message to send: the SMTP sender and recipient and the
// message itself, CRLF line endings.
type Envelope struct {
	From, To string
	Message  []byte
}

// Run speaks to the server. With env it sends the message (a test); with
// nil it stops after authenticating and says QUIT (a health check). The
// result traces each stage; the first failure ends the conversation and
// classifies the result.
func (s SMTP) Run(ctx context.Context, env *Envelope) (res Result) {
	res = Result{Provider: "smtp", Known: s.Known, Host: s.Host, Port: s.Port}
	// done runs after the return value is set, so the total is in it.
	t := newTracer(&res)
	defer t.done()
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	addrs, err := s.Guard.Resolve(ctx, s.Host)
	if err != nil {
		t.fail(StageDNS, classify(StageDNS, err))
		return res
	}
	st := t.ok(StageDNS, nil)
	for _, a := range addrs {
		st.Addresses = append(st.Addresses, a.String())
	}

	t.start()
	raw, err := s.Guard.DialAddrs(ctx, s.Host, addrs, s.Port)
	if err != nil {
		t.fail(StageConnect, classify(StageConnect, err))
		return res
	}
	defer raw.Close()
	// One deadline for every read and write, and cancellation of ctx
	// interrupts a blocked read at once.
	deadline, _ := ctx.Deadline()
	_ = raw.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	tlsConfig := &tls.Config{ServerName: s.Host, RootCAs: s.RootCAs, MinVersion: tls.VersionTLS12}
	var conn net.Conn = raw
	var greeting *Reply
	switch s.Security {
	case ImplicitTLS:
		st := t.ok(StageConnect, nil)
		st.Addresses = []string{raw.RemoteAddr().String()}
		t.start()
		tc := tls.Client(raw, tlsConfig)
		if err := tc.HandshakeContext(ctx); err != nil {
			t.fail(StageTLS, classify(StageTLS, err))
			return res
		}
		conn = tc
		if greeting, err = readGreeting(conn); err != nil {
			t.fail(StageTLS, classify(StageConnect, err))
			return res
		}
		t.ok(StageTLS, greeting).TLS = tlsInfo(tc)
	default:
		if greeting, err = readGreeting(conn); err != nil {
			t.fail(StageConnect, classify(StageConnect, err))
			return res
		}
		t.ok(StageConnect, greeting).Addresses = []string{raw.RemoteAddr().String()}
		if s.Security == StartTLS {
			t.start()
			reply, tc, err := startTLS(ctx, raw, s.heloName(), tlsConfig)
			if err != nil {
				t.fail(StageTLS, classify(StageTLS, err))
				return res
			}
			conn = tc
			t.ok(StageTLS, reply).TLS = tlsInfo(tc)
		} else {
			t.skip(StageTLS, "security is none")
		}
	}

	tap := &replyTap{Conn: conn}
	c := smtp.NewClient(&replayConn{replyTap: tap, pending: greetingBytes(greeting)})
	c.CommandTimeout = timeout
	c.SubmissionTimeout = timeout
	defer c.Close()

	t.start()
	if err := c.Hello(s.heloName()); err != nil {
		t.fail(StageEHLO, classify(StageEHLO, err))
		return res
	}
	t.ok(StageEHLO, tap.take())

	t.start()
	if s.Auth == "" || s.Auth == AuthNone {
		t.skip(StageAuth, "auth is none")
	} else {
		client, err := s.saslClient(ctx, c)
		if err == nil {
			tap.take()
			err = c.Auth(client)
		}
		if err != nil {
			t.fail(StageAuth, classify(StageAuth, err))
			return res
		}
		t.ok(StageAuth, tap.take())
	}

	if env != nil {
		t.start()
		if err := c.Mail(env.From, nil); err != nil {
			t.fail(StageMail, classify(StageMail, err))
			return res
		}
		t.ok(StageMail, tap.take())
		t.start()
		if err := c.Rcpt(env.To, nil); err != nil {
			t.fail(StageRcpt, classify(StageRcpt, err))
			return res
		}
		t.ok(StageRcpt, tap.take())
		t.start()
		if err := sendData(c, env.Message); err != nil {
			t.fail(StageData, classify(StageData, err))
			return res
		}
		reply := tap.take()
		t.ok(StageData, reply)
		if reply != nil {
			res.MessageID = reply.Text
		}
	}

	// The message is accepted once DATA's reply is 250; a QUIT that fails
	// after that is recorded but does not fail the test.
	t.start()
	if err := c.Quit(); err != nil {
		f := classify(StageQuit, err)
		res.Stages = append(res.Stages, StageResult{Stage: StageQuit, Status: StageFailed, DurationMs: ms(time.Since(t.at)), Reply: f.reply, Detail: f.detail})
	} else {
		t.ok(StageQuit, tap.take())
	}
	res.Success = true
	return res
}

func (s SMTP) heloName() string {
	if s.HeloName != "" {
		return s.HeloName
	}
	return "localhost"
}

// saslClient returns the client of s.Auth once the server offers it.
func (s SMTP) saslClient(ctx context.Context, c *smtp.Client) (sasl.Client, error) {
	mech := strings.ToUpper(string(s.Auth))
	if ok, _ := c.Extension("AUTH"); !ok || !c.SupportsAuth(mech) {
		_, offered := c.Extension("AUTH")
		if offered == "" {
			offered = "none"
		}
		return nil, fmt.Errorf("%w: %s (offered: %s)", errMechanism, mech, offered)
	}
	switch s.Auth {
	case AuthPlain:
		return sasl.NewPlainClient("", s.Username, s.Password), nil
	case AuthLogin:
		return sasl.NewLoginClient(s.Username, s.Password), nil
	case AuthXOAuth2:
		if s.Token == nil {
			return nil, errToken
		}
		tok, err := s.Token.Token()
		if err != nil {
			return nil, tokenError(err)
		}
		return &xoauth2{user: s.Username, token: tok.AccessToken}, nil
	}
	return nil, fmt.Errorf("%w: %s", errMechanism, mech)
}

// tokenError describes a failed token request without the endpoint's
// body, which might echo what was sent.
func tokenError(err error) error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		code := re.ErrorCode
		if code == "" {
			code = "no error code"
		}
		status := 0
		if re.Response != nil {
			status = re.Response.StatusCode
		}
		return fmt.Errorf("%w: the token endpoint answered %d (%s)", errToken, status, code)
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, ErrBlocked) {
		return fmt.Errorf("%w: token endpoint: %w", errToken, err)
	}
	return fmt.Errorf("%w: token endpoint unreachable or its answer unreadable", errToken)
}

// readGreeting reads the server's 220 greeting. The server sends nothing
// more until it hears from us, so the buffer holds nothing that belongs to
// what follows.
func readGreeting(conn net.Conn) (*Reply, error) {
	tp := textproto.NewReader(bufio.NewReader(conn))
	code, msg, err := tp.ReadResponse(220)
	if err != nil {
		var pe *textproto.Error
		if errors.As(err, &pe) {
			return nil, &smtp.SMTPError{Code: pe.Code, Message: pe.Msg}
		}
		return nil, err
	}
	return parseReply(code, msg), nil
}

// startTLS says EHLO, checks that STARTTLS is offered, asks for it and
// completes the handshake. It is done here, not in go-smtp, so the
// handshake is a stage of its own, timed and inspected.
func startTLS(ctx context.Context, conn net.Conn, helo string, cfg *tls.Config) (*Reply, *tls.Conn, error) {
	tp := textproto.NewConn(nopCloser{conn})
	if err := tp.PrintfLine("EHLO %s", helo); err != nil {
		return nil, nil, err
	}
	_, msg, err := tp.ReadResponse(250)
	if err != nil {
		return nil, nil, smtpErr(err)
	}
	offered := false
	for _, line := range strings.Split(msg, "\n")[1:] {
		if strings.EqualFold(strings.Fields(line + " ")[0], "STARTTLS") {
			offered = true
		}
	}
	if !offered {
		return nil, nil, errNoStartTLS
	}
	if err := tp.PrintfLine("STARTTLS"); err != nil {
		return nil, nil, err
	}
	code, msg, err := tp.ReadResponse(220)
	if err != nil {
		return nil, nil, smtpErr(err)
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, nil, err
	}
	return parseReply(code, msg), tc, nil
}

func smtpErr(err error) error {
	var pe *textproto.Error
	if errors.As(err, &pe) {
		r := parseReply(pe.Code, pe.Msg)
		se := &smtp.SMTPError{Code: r.Code, Message: r.Text}
		if parts := strings.Split(r.Enhanced, "."); len(parts) == 3 {
			for i, p := range parts {
				se.EnhancedCode[i], _ = strconv.Atoi(p)
			}
		}
		return se
	}
	return err
}

// sendData writes the message in DATA and waits for the server's verdict.
func sendData(c *smtp.Client, msg []byte) error {
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(msg); err != nil {
		_ = w.Close()
		return err
	}
	_, err = w.CloseWithResponse()
	return err
}

// tlsInfo describes the negotiated session.
func tlsInfo(tc *tls.Conn) *TLSInfo {
	cs := tc.ConnectionState()
	info := &TLSInfo{Version: tls.VersionName(cs.Version), Cipher: tls.CipherSuiteName(cs.CipherSuite)}
	if len(cs.PeerCertificates) > 0 {
		leaf := cs.PeerCertificates[0]
		info.Subject = leaf.Subject.String()
		info.Issuer = leaf.Issuer.String()
		info.NotAfter = leaf.NotAfter.UTC()
	}
	return info
}

// parseReply splits a reply's enhanced status code from its text.
func parseReply(code int, msg string) *Reply {
	r := &Reply{Code: code, Text: msg}
	first, rest, ok := strings.Cut(msg, " ")
	if ok && isEnhanced(first) {
		r.Enhanced = first
		r.Text = strings.ReplaceAll(rest, "\n"+first+" ", "\n")
	}
	return r
}

func isEnhanced(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || (parts[0] != "2" && parts[0] != "4" && parts[0] != "5") {
		return false
	}
	for _, p := range parts[1:] {
		if _, err := strconv.Atoi(p); err != nil || len(p) > 3 {
			return false
		}
	}
	return true
}

// greetingBytes is the greeting as the wire carried it, for go-smtp to
// read again.
func greetingBytes(r *Reply) []byte {
	if r == nil {
		return nil
	}
	var b bytes.Buffer
	lines := strings.Split(r.Text, "\n")
	for i, l := range lines {
		sep := "-"
		if i == len(lines)-1 {
			sep = " "
		}
		fmt.Fprintf(&b, "%d%s%s\r\n", r.Code, sep, l)
	}
	return b.Bytes()
}

// replyTap watches what the server sends and keeps its last complete
// reply, so a stage that succeeded records the server's words too.
type replyTap struct {
	net.Conn
	line  []byte
	text  []string
	last  *Reply
	lines int
}

func (t *replyTap) Read(p []byte) (int, error) {
	n, err := t.Conn.Read(p)
	t.feed(p[:n])
	return n, err
}

func (t *replyTap) feed(b []byte) {
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			t.line = append(t.line, b...)
			return
		}
		t.line = append(t.line, b[:i]...)
		b = b[i+1:]
		l := strings.TrimRight(string(t.line), "\r")
		t.line = t.line[:0]
		if len(l) < 3 {
			continue
		}
		code, err := strconv.Atoi(l[:3])
		if err != nil {
			continue
		}
		text := ""
		if len(l) > 4 {
			text = l[4:]
		}
		t.text = append(t.text, text)
		if len(l) == 3 || l[3] == ' ' {
			t.last = parseReply(code, strings.Join(t.text, "\n"))
			t.text = nil
		}
	}
}

// take returns the last reply and forgets it.
func (t *replyTap) take() *Reply {
	r := t.last
	t.last = nil
	return r
}

// replayConn gives go-smtp the greeting that was already read, then the
// connection.
type replayConn struct {
	*replyTap
	pending []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	return c.replyTap.Read(p)
}

type nopCloser struct{ net.Conn }

func (nopCloser) Close() error { return nil }
