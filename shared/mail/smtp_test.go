package mail

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net"
	netmail "net/mail"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/smtptest"
)

// loopback allows the test servers' address, as MAIL_ALLOWED_HOSTS would.
func loopback() *Guard { return NewGuard("127.0.0.1") }

func envelope() *Envelope {
	m := TestMessage{From: "from@example.com", To: "to@example.com", Integration: "t", TestID: NewTestID(), Date: time.Now()}
	return &Envelope{From: m.From, To: m.To, Message: m.Bytes()}
}

func stage(res Result, s Stage) StageResult {
	for _, st := range res.Stages {
		if st.Stage == s {
			return st
		}
	}
	return StageResult{}
}

func TestSMTPFaults(t *testing.T) {
	ca := smtptest.NewCA(t, "test CA")
	good := ca.Issue(t, smtptest.LeafOptions{Hosts: []string{"127.0.0.1"}})
	expired := ca.Issue(t, smtptest.LeafOptions{Hosts: []string{"127.0.0.1"}, Expired: true})
	otherName := ca.Issue(t, smtptest.LeafOptions{Hosts: []string{"other.test"}})
	stranger := smtptest.NewCA(t, "unknown CA").Issue(t, smtptest.LeafOptions{Hosts: []string{"127.0.0.1"}})
	tlsWith := func(l smtptest.Leaf) *tls.Config { return &tls.Config{Certificates: []tls.Certificate{l.TLS}} }
	password := "correct horse battery"
	auth := func(user, pass string) error {
		if user == "alice" && pass == password {
			return nil
		}
		return smtp.ErrAuthFailed
	}

	tests := []struct {
		name      string
		fault     smtptest.Fault
		security  Security
		authWith  AuthMethod
		pass      string
		known     string
		timeout   time.Duration
		wantClass Class
		wantStage Stage
		wantCode  int
		wantEnh   string
		wantHint  string
	}{
		{name: "STARTTLS and PLAIN, accepted", fault: smtptest.Fault{TLS: tlsWith(good), Auth: auth}, security: StartTLS, authWith: AuthPlain, pass: password},
		{name: "implicit TLS, accepted", fault: smtptest.Fault{TLS: tlsWith(good), Implicit: true, Auth: auth}, security: ImplicitTLS, authWith: AuthPlain, pass: password},
		{name: "535 on AUTH", fault: smtptest.Fault{TLS: tlsWith(good), Auth: auth}, security: StartTLS, authWith: AuthPlain, pass: "wrong",
			wantClass: AuthFailed, wantStage: StageAuth, wantCode: 535, wantEnh: "5.7.8", wantHint: "refused the credentials"},
		{name: "Gmail's 535 5.7.8 asks for an app password", fault: smtptest.Fault{TLS: tlsWith(good), Auth: auth}, security: StartTLS, authWith: AuthPlain, pass: "wrong", known: Gmail,
			wantClass: AuthFailed, wantStage: StageAuth, wantCode: 535, wantHint: "app password"},
		{name: "Office 365 with SMTP AUTH disabled (5.7.139)", fault: smtptest.Fault{TLS: tlsWith(good), Auth: func(string, string) error {
			return smtptest.Reject(535, smtp.EnhancedCode{5, 7, 139}, "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant")
		}}, security: StartTLS, authWith: AuthPlain, pass: password, known: Office365,
			wantClass: AuthFailed, wantStage: StageAuth, wantCode: 535, wantEnh: "5.7.139", wantHint: "Office 365 has SMTP AUTH disabled"},
		{name: "LOGIN not offered", fault: smtptest.Fault{TLS: tlsWith(good), Auth: auth}, security: StartTLS, authWith: AuthLogin, pass: password,
			wantClass: AuthMechanismUnsupported, wantStage: StageAuth},
		{name: "550 on MAIL", fault: smtptest.Fault{Mail: func(string) error { return smtptest.Reject(550, smtp.EnhancedCode{5, 7, 1}, "sender not allowed") }}, security: NoTLS,
			wantClass: SenderRejected, wantStage: StageMail, wantCode: 550, wantEnh: "5.7.1"},
		{name: "550 on RCPT", fault: smtptest.Fault{Rcpt: func(string) error { return smtptest.Reject(550, smtp.EnhancedCode{5, 1, 1}, "no such user") }}, security: NoTLS,
			wantClass: RecipientRejected, wantStage: StageRcpt, wantCode: 550, wantEnh: "5.1.1"},
		{name: "452 on RCPT is transient", fault: smtptest.Fault{Rcpt: func(string) error { return smtptest.Reject(452, smtp.EnhancedCode{4, 2, 2}, "mailbox full") }}, security: NoTLS,
			wantClass: Transient, wantStage: StageRcpt, wantCode: 452},
		{name: "421 on MAIL is transient", fault: smtptest.Fault{Mail: func(string) error { return smtptest.Reject(421, smtp.EnhancedCode{4, 3, 2}, "closing") }}, security: NoTLS,
			wantClass: Transient, wantStage: StageMail, wantCode: 421},
		{name: "554 after DATA", fault: smtptest.Fault{Data: func([]byte) error { return smtptest.Reject(554, smtp.EnhancedCode{5, 6, 0}, "content refused") }}, security: NoTLS,
			wantClass: MessageRejected, wantStage: StageData, wantCode: 554},
		{name: "a drop in the middle of DATA", fault: smtptest.Fault{DropInData: true}, security: NoTLS, wantClass: Transient, wantStage: StageData},
		{name: "a reply that never comes", fault: smtptest.Fault{Hang: true}, security: NoTLS, timeout: 500 * time.Millisecond, wantClass: Timeout, wantStage: StageMail},
		{name: "no STARTTLS offered", fault: smtptest.Fault{}, security: StartTLS, wantClass: StartTLSUnsupported, wantStage: StageTLS},
		{name: "an expired certificate", fault: smtptest.Fault{TLS: tlsWith(expired)}, security: StartTLS, wantClass: CertExpired, wantStage: StageTLS},
		{name: "an unknown CA", fault: smtptest.Fault{TLS: tlsWith(stranger)}, security: StartTLS, wantClass: CertUnknownAuthority, wantStage: StageTLS},
		{name: "a hostname mismatch", fault: smtptest.Fault{TLS: tlsWith(otherName), Implicit: true}, security: ImplicitTLS, wantClass: CertHostname, wantStage: StageTLS},
		{name: "plain SMTP to an implicit TLS port", fault: smtptest.Fault{TLS: tlsWith(good), Implicit: true}, security: NoTLS, timeout: 2 * time.Second, wantStage: StageConnect},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := smtptest.Serve(t, tc.fault)
			host, port := smtptest.HostPort(t, srv.Addr)
			s := SMTP{Host: host, Port: port, Security: tc.security, Auth: tc.authWith, Username: "alice", Password: tc.pass,
				Known: tc.known, Timeout: tc.timeout, RootCAs: ca.Pool, Guard: loopback()}
			if s.Timeout == 0 {
				s.Timeout = 20 * time.Second
			}
			res := s.Run(context.Background(), envelope())
			if tc.wantStage == "" {
				require.True(t, res.Success, "%+v", res)
				assert.Empty(t, res.Class)
				var names []Stage
				for _, st := range res.Stages {
					names = append(names, st.Stage)
					assert.NotEqual(t, StageFailed, st.Status, "%s: %s", st.Stage, st.Detail)
				}
				assert.Equal(t, []Stage{StageDNS, StageConnect, StageTLS, StageEHLO, StageAuth, StageMail, StageRcpt, StageData, StageQuit}, names)
				tlsStage := stage(res, StageTLS)
				require.NotNil(t, tlsStage.TLS)
				assert.NotEmpty(t, tlsStage.TLS.Version)
				assert.NotEmpty(t, tlsStage.TLS.Cipher)
				assert.Contains(t, tlsStage.TLS.Subject, "mail.test")
				assert.Contains(t, tlsStage.TLS.Issuer, "test CA")
				assert.False(t, tlsStage.TLS.NotAfter.IsZero())
				require.NotNil(t, stage(res, StageData).Reply)
				assert.Equal(t, 250, stage(res, StageData).Reply.Code)
				require.NotNil(t, stage(res, StageAuth).Reply)
				assert.Equal(t, 235, stage(res, StageAuth).Reply.Code)
				assert.Len(t, srv.Messages(), 1)
				assert.Positive(t, res.DurationMs)
				return
			}
			require.False(t, res.Success, "%+v", res)
			if tc.wantClass != "" {
				assert.Equal(t, tc.wantClass, res.Class, "%+v", res.Stages)
			}
			assert.Equal(t, tc.wantStage, res.FailedStage)
			failed := stage(res, tc.wantStage)
			assert.Equal(t, StageFailed, failed.Status)
			assert.NotEmpty(t, failed.Detail)
			if tc.wantCode != 0 {
				require.NotNil(t, failed.Reply)
				assert.Equal(t, tc.wantCode, failed.Reply.Code)
			}
			if tc.wantEnh != "" {
				assert.Equal(t, tc.wantEnh, failed.Reply.Enhanced)
			}
			assert.NotEmpty(t, res.Hint)
			if tc.wantHint != "" {
				assert.Contains(t, res.Hint, tc.wantHint)
			}
			assert.NotContains(t, res.Error(), password)
			assert.Empty(t, srv.Messages())
		})
	}
}

func TestSMTPConnectionRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	host, port := smtptest.HostPort(t, ln.Addr().String())
	require.NoError(t, ln.Close())
	res := SMTP{Host: host, Port: port, Security: NoTLS, Guard: loopback(), Timeout: 5 * time.Second}.Run(context.Background(), envelope())
	assert.Equal(t, ConnectionRefused, res.Class)
	assert.Equal(t, StageConnect, res.FailedStage)
}

// notFound is a resolver for a name that does not exist (NXDOMAIN), which
// no server on this machine can be made to answer without the internet.
type notFound struct{}

func (notFound) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func TestSMTPDNSNotFound(t *testing.T) {
	g := NewGuard("")
	g.Resolver = notFound{}
	res := SMTP{Host: "smtp.nowhere.invalid", Port: 587, Security: StartTLS, Guard: g}.Run(context.Background(), envelope())
	assert.Equal(t, DNSNotFound, res.Class)
	assert.Equal(t, StageDNS, res.FailedStage)
	assert.Contains(t, res.Hint, "does not resolve")
}

func TestSMTPHealthCheckSendsNothing(t *testing.T) {
	ca := smtptest.NewCA(t, "test CA")
	leaf := ca.Issue(t, smtptest.LeafOptions{Hosts: []string{"127.0.0.1"}})
	srv := smtptest.Serve(t, smtptest.Fault{TLS: &tls.Config{Certificates: []tls.Certificate{leaf.TLS}}, Auth: func(u, p string) error { return nil }})
	host, port := smtptest.HostPort(t, srv.Addr)
	res := SMTP{Host: host, Port: port, Security: StartTLS, Auth: AuthPlain, Username: "u", Password: "p", RootCAs: ca.Pool, Guard: loopback()}.Run(context.Background(), nil)
	require.True(t, res.Success, "%+v", res)
	var names []Stage
	for _, st := range res.Stages {
		names = append(names, st.Stage)
	}
	assert.Equal(t, []Stage{StageDNS, StageConnect, StageTLS, StageEHLO, StageAuth, StageQuit}, names)
	assert.Empty(t, srv.Messages())
}

func TestRedactRemovesEchoedSecrets(t *testing.T) {
	srv := smtptest.Serve(t, smtptest.Fault{Auth: func(u, p string) error {
		return smtptest.Reject(535, smtp.EnhancedCode{5, 7, 8}, "bad password "+p)
	}})
	host, port := smtptest.HostPort(t, srv.Addr)
	secret := "s3cret-value-123"
	res := SMTP{Host: host, Port: port, Security: NoTLS, Auth: AuthPlain, Username: "u", Password: secret, Guard: loopback()}.Run(context.Background(), envelope())
	require.Equal(t, AuthFailed, res.Class)
	require.Contains(t, res.Error(), secret, "the server echoed it")
	res.Redact(secret)
	assert.NotContains(t, res.Error(), secret)
	assert.NotContains(t, stage(res, StageAuth).Reply.Text, secret)
}

func TestCheckHeader(t *testing.T) {
	tests := []struct {
		name  string
		value string
		ok    bool
	}{
		{"a plain name", "StreamSpace", true},
		{"a Bcc smuggled after CRLF", "x\r\nBcc: evil@example.com", false},
		{"a bare LF", "x\nBcc: evil@example.com", false},
		{"a bare CR", "x\rBcc: evil@example.com", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckHeader(tc.value)
			if tc.ok {
				assert.NoError(t, err)
				return
			}
			assert.True(t, errors.Is(err, ErrHeaderInjection))
		})
	}
	_, err := ParseAddress("x\r\nBcc: evil@example.com")
	assert.Error(t, err)
	_, err = ParseAddress("Name <a@example.com>")
	assert.Error(t, err)
	got, err := ParseAddress("a@example.com")
	require.NoError(t, err)
	assert.Equal(t, "a@example.com", got)
}

func TestTestMessage(t *testing.T) {
	m := TestMessage{From: "from@example.com", FromName: "StreamSpace", To: "to@example.com", Integration: "ops <relay>", TestID: "abc123", Date: time.Now()}
	raw := m.Bytes()
	assert.NotContains(t, strings.ReplaceAll(string(raw), "\r\n", ""), "\n", "every line ends in CRLF")
	msg, err := netmail.ReadMessage(bytes.NewReader(raw))
	require.NoError(t, err)
	assert.Equal(t, "auto-generated", msg.Header.Get("Auto-Submitted"))
	assert.Equal(t, "abc123", msg.Header.Get(TestHeader))
	assert.Equal(t, "to@example.com", msg.Header.Get("To")[1:len(msg.Header.Get("To"))-1])
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	require.NoError(t, err)
	require.Equal(t, "multipart/alternative", mt)
	mr := multipart.NewReader(msg.Body, params["boundary"])
	var types []string
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		body, err := io.ReadAll(p)
		require.NoError(t, err)
		types = append(types, strings.Split(p.Header.Get("Content-Type"), ";")[0])
		assert.Contains(t, string(body), "abc123")
	}
	assert.Equal(t, []string{"text/plain", "text/html"}, types)
}
