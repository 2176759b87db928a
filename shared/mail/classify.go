package mail

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"

	"github.com/emersion/go-smtp"
)

// failure is a classified error of one stage.
type failure struct {
	class  Class
	reply  *Reply
	detail string
}

// replyOf converts a go-smtp error to a Reply.
func replyOf(e *smtp.SMTPError) *Reply {
	r := &Reply{Code: e.Code, Text: e.Message}
	if e.EnhancedCode != smtp.NoEnhancedCode && e.EnhancedCode != (smtp.EnhancedCode{}) {
		r.Enhanced = fmt.Sprintf("%d.%d.%d", e.EnhancedCode[0], e.EnhancedCode[1], e.EnhancedCode[2])
	}
	return r
}

// classify turns the error of stage into a failure. Replies decide first
// (their code is the server's own verdict); then network and TLS errors.
func classify(stage Stage, err error) failure {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		r := replyOf(se)
		return failure{class: classifyReply(stage, r), reply: r, detail: replyDetail(r)}
	}
	return failure{class: classifyError(stage, err), detail: errorDetail(err)}
}

// classifyReply classifies a refusal by its code and the stage it ended.
func classifyReply(stage Stage, r *Reply) Class {
	if r.Code >= 400 && r.Code < 500 {
		// 421 (closing), 450–452 (mailbox busy, local error, storage): try
		// again later. A 454 on STARTTLS means TLS is unavailable now.
		if stage == StageTLS {
			return StartTLSUnsupported
		}
		return Transient
	}
	switch stage {
	case StageTLS:
		return StartTLSUnsupported
	case StageAuth:
		if r.Code == 504 || strings.HasPrefix(r.Enhanced, "5.5.4") || r.Code == 502 {
			return AuthMechanismUnsupported
		}
		return AuthFailed
	case StageMail:
		if r.Code == 530 || strings.HasPrefix(r.Enhanced, "5.7.0") && strings.Contains(strings.ToLower(r.Text), "auth") {
			return AuthFailed
		}
		return SenderRejected
	case StageRcpt:
		return RecipientRejected
	case StageData:
		return MessageRejected
	case StageConnect, StageEHLO:
		return ConnectionRefused
	}
	return MessageRejected
}

// classifyError classifies a network, TLS or protocol error.
func classifyError(stage Stage, err error) Class {
	var blocked *BlockedError
	if errors.As(err, &blocked) || errors.Is(err, ErrBlocked) {
		return AddressBlocked
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		if dnsErr.IsTimeout {
			return Timeout
		}
		return DNSNotFound
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return Timeout
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return Timeout
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return ConnectionRefused
	}
	if c, ok := certClass(err); ok {
		return c
	}
	if errors.Is(err, errNoStartTLS) {
		return StartTLSUnsupported
	}
	if errors.Is(err, errMechanism) {
		return AuthMechanismUnsupported
	}
	if errors.Is(err, errToken) {
		return AuthFailed
	}
	var rh tls.RecordHeaderError
	var alert tls.AlertError
	if stage == StageTLS || errors.As(err, &rh) || errors.As(err, &alert) {
		return TLSHandshake
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.EPIPE) {
		// The server hung up: nothing says the same message would fail
		// later.
		if stage == StageConnect {
			return ConnectionRefused
		}
		return Transient
	}
	if stage == StageConnect || stage == StageDNS {
		return ConnectionRefused
	}
	return Transient
}

// certClass classifies a certificate verification failure.
func certClass(err error) (Class, bool) {
	var inv x509.CertificateInvalidError
	if errors.As(err, &inv) {
		if inv.Reason == x509.Expired {
			return CertExpired, true
		}
		return TLSHandshake, true
	}
	var ua x509.UnknownAuthorityError
	if errors.As(err, &ua) {
		return CertUnknownAuthority, true
	}
	var hn x509.HostnameError
	if errors.As(err, &hn) {
		return CertHostname, true
	}
	return "", false
}

// replyDetail is a reply as one line: "550 5.1.1 no such user".
func replyDetail(r *Reply) string {
	s := fmt.Sprintf("%d", r.Code)
	if r.Enhanced != "" {
		s += " " + r.Enhanced
	}
	return oneLine(s + " " + r.Text)
}

// errorDetail is err as one bounded line.
func errorDetail(err error) string { return oneLine(err.Error()) }

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 500 {
		s = s[:500] + "…"
	}
	return s
}

// Known providers, recognised from a preset or the host name.
const (
	Gmail     = "Gmail"
	Office365 = "Office 365"
	SendGrid  = "SendGrid"
	AmazonSES = "Amazon SES"
)

// KnownProvider names the provider behind host, or "".
func KnownProvider(host string) string {
	h := strings.ToLower(strings.TrimSuffix(host, "."))
	switch {
	case h == "smtp.gmail.com" || h == "smtp.googlemail.com" || h == "smtp-relay.gmail.com":
		return Gmail
	case h == "smtp.office365.com" || h == "smtp-mail.outlook.com" || strings.HasSuffix(h, ".mail.protection.outlook.com"):
		return Office365
	case h == "smtp.sendgrid.net":
		return SendGrid
	case strings.HasPrefix(h, "email-smtp.") && strings.HasSuffix(h, ".amazonaws.com"):
		return AmazonSES
	}
	return ""
}

// hint is a one-line suggestion for f, naming the provider when known.
func hint(known string, stage Stage, f failure) string {
	text := ""
	enh := ""
	if f.reply != nil {
		text = strings.ToLower(f.reply.Text)
		enh = f.reply.Enhanced
	}
	switch {
	case known == Gmail && f.class == AuthFailed && (enh == "5.7.8" || strings.Contains(text, "application-specific") || strings.Contains(text, "username and password not accepted")):
		return "Gmail refused the credentials: with 2-step verification on, use an app password (myaccount.google.com/apppasswords) or XOAUTH2"
	case known == Office365 && (enh == "5.7.139" || enh == "5.7.30" || strings.Contains(text, "smtpclientauthentication is disabled") || strings.Contains(text, "basic authentication is disabled")):
		return "Office 365 has SMTP AUTH disabled for this mailbox or tenant: enable Authenticated SMTP in the Microsoft 365 admin center, or use XOAUTH2"
	case known == SendGrid && f.class == AuthFailed:
		return "SendGrid: the username must be the literal \"apikey\" and the password an API key with Mail Send permission"
	case strings.Contains(text, "email address is not verified") || strings.Contains(text, "address is not verified"):
		return "Amazon SES is in its sandbox: verify both the sender and the recipient identities, or request production access"
	case known == AmazonSES && f.class == AuthFailed:
		return "Amazon SES SMTP needs SMTP credentials derived for the region, not the IAM access key itself"
	}
	p := known
	if p == "" {
		p = "the server"
	}
	switch f.class {
	case DNSNotFound:
		return "the host name does not resolve: check the spelling of host"
	case ConnectionRefused:
		return "nothing accepts connections on that port: check host and port (587 for STARTTLS, 465 for implicit TLS)"
	case Timeout:
		return "no answer in time: a firewall may drop the port, or " + p + " is slow; check host, port and timeoutSeconds"
	case TLSHandshake:
		return "the TLS handshake failed: check security (465 uses tls, 587 uses starttls)"
	case CertExpired:
		return "the server's certificate has expired: " + p + " must renew it"
	case CertUnknownAuthority:
		return "the server's certificate is not signed by a trusted authority"
	case CertHostname:
		return "the server's certificate does not name this host: use the host name the certificate was issued for"
	case StartTLSUnsupported:
		return p + " does not offer STARTTLS on this port: use security tls on port 465, or ask for STARTTLS"
	case AuthFailed:
		return p + " refused the credentials: check username and password (or the OAuth2 grant)"
	case AuthMechanismUnsupported:
		return p + " does not offer this auth method: pick one it lists in its EHLO reply"
	case SenderRejected:
		return p + " refused the sender: from must be an address this account may send as"
	case RecipientRejected:
		return p + " refused the recipient: check the address, or whether relaying is allowed for this account"
	case MessageRejected:
		return p + " refused the message after reading it: its policy (size, content, sender domain) rejected it"
	case Transient:
		return p + " is temporarily unavailable or dropped the connection: try again later"
	case AddressBlocked:
		return "the host resolves to a private or reserved address: an operator can allow it with MAIL_ALLOWED_HOSTS"
	case SendingDisabled:
		return "Amazon SES has sending paused for this account or region"
	}
	return ""
}
