package mail

import (
	"strings"
	"time"
)

// Stage is one step of a test or a check.
type Stage string

// The stages of an SMTP conversation, in order, and those of an SES call.
const (
	StageDNS     Stage = "dns"
	StageConnect Stage = "connect"
	StageTLS     Stage = "tls"
	StageEHLO    Stage = "ehlo"
	StageAuth    Stage = "auth"
	StageMail    Stage = "mail"
	StageRcpt    Stage = "rcpt"
	StageData    Stage = "data"
	StageQuit    Stage = "quit"
	// StageCredentials resolves SES credentials (stored keys or the pod's
	// identity).
	StageCredentials Stage = "credentials"
	// StageSend is SES's SendEmail call.
	StageSend Stage = "send"
	// StageAccount is SES's GetAccount call.
	StageAccount Stage = "account"
)

// Class is the stable code of a failure.
type Class string

// The failure classes (docs/mail.md has what each means).
const (
	DNSNotFound              Class = "dns_not_found"
	ConnectionRefused        Class = "connection_refused"
	Timeout                  Class = "timeout"
	TLSHandshake             Class = "tls_handshake"
	CertExpired              Class = "cert_expired"
	CertUnknownAuthority     Class = "cert_unknown_authority"
	CertHostname             Class = "cert_hostname"
	StartTLSUnsupported      Class = "starttls_unsupported"
	AuthFailed               Class = "auth_failed"
	AuthMechanismUnsupported Class = "auth_mechanism_unsupported"
	SenderRejected           Class = "sender_rejected"
	RecipientRejected        Class = "recipient_rejected"
	MessageRejected          Class = "message_rejected"
	Transient                Class = "transient"
	// AddressBlocked: the host resolves to an address the Guard refuses.
	AddressBlocked Class = "address_blocked"
	// SendingDisabled: SES reports sending paused or the account not
	// healthy.
	SendingDisabled Class = "sending_disabled"
)

// Reply is a server's answer to a command.
type Reply struct {
	Code int `json:"code"`
	// Enhanced is the RFC 3463 status code ("5.7.8"), when the server sent one.
	Enhanced string `json:"enhancedCode,omitempty"`
	Text     string `json:"text"`
}

// TLSInfo describes a negotiated TLS session and the server's certificate.
type TLSInfo struct {
	Version  string    `json:"version"`
	Cipher   string    `json:"cipher"`
	Subject  string    `json:"subject,omitempty"`
	Issuer   string    `json:"issuer,omitempty"`
	NotAfter time.Time `json:"notAfter,omitzero"`
}

// StageResult is what one stage did.
type StageResult struct {
	Stage Stage `json:"stage"`
	// Status is ok, failed or skipped.
	Status     StageStatus `json:"status"`
	DurationMs float64     `json:"durationMs"`
	Reply      *Reply      `json:"reply,omitempty"`
	TLS        *TLSInfo    `json:"tls,omitempty"`
	// Addresses are the vetted addresses the dns stage found.
	Addresses []string `json:"addresses,omitempty"`
	// Detail is a short note: why a stage was skipped, or the failure.
	Detail string `json:"detail,omitempty"`
}

// StageStatus is how a stage ended.
type StageStatus string

// Stage statuses.
const (
	StageOK      StageStatus = "ok"
	StageFailed  StageStatus = "failed"
	StageSkipped StageStatus = "skipped"
)

// Result is the trace of one test or check.
type Result struct {
	Provider string `json:"provider"`
	// Known names the provider recognised from a preset or the host
	// (Gmail, Office 365, SendGrid, Amazon SES), for hints.
	Known   string `json:"knownProvider,omitempty"`
	Host    string `json:"host,omitempty"`
	Port    int    `json:"port,omitempty"`
	TestID  string `json:"testId,omitempty"`
	Success bool   `json:"success"`
	// Class and Hint are set on failure.
	Class Class  `json:"errorClass,omitempty"`
	Hint  string `json:"hint,omitempty"`
	// FailedStage is the stage that failed.
	FailedStage Stage         `json:"failedStage,omitempty"`
	Stages      []StageResult `json:"stages"`
	DurationMs  float64       `json:"durationMs"`
	// MessageID is the provider's id of the accepted message (SES's
	// MessageId, or the SMTP server's queue reply).
	MessageID string `json:"messageId,omitempty"`
	// Account is SES's account state, on an SES check or test.
	Account *SESAccount `json:"account,omitempty"`
}

// Error is a one-line summary of a failed result, safe to show and log.
func (r Result) Error() string {
	if r.Success {
		return ""
	}
	for _, s := range r.Stages {
		if s.Status == StageFailed {
			return string(s.Stage) + ": " + s.Detail
		}
	}
	return string(r.Class)
}

// Redact replaces every occurrence of each secret in the result's texts,
// so a server or endpoint that echoes one cannot leak it into a response,
// a log line or an event.
func (r *Result) Redact(secrets ...string) {
	var pairs []string
	for _, s := range secrets {
		if len(s) >= 4 {
			pairs = append(pairs, s, "[redacted]")
		}
	}
	if len(pairs) == 0 {
		return
	}
	rep := strings.NewReplacer(pairs...)
	r.Hint = rep.Replace(r.Hint)
	for i := range r.Stages {
		s := &r.Stages[i]
		s.Detail = rep.Replace(s.Detail)
		if s.Reply != nil {
			s.Reply.Text = rep.Replace(s.Reply.Text)
		}
	}
}

// tracer records stages as they run.
type tracer struct {
	res   *Result
	begin time.Time
	at    time.Time
}

func newTracer(res *Result) *tracer {
	now := time.Now()
	return &tracer{res: res, begin: now, at: now}
}

// start marks the beginning of the next stage.
func (t *tracer) start() { t.at = time.Now() }

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// ok records a finished stage.
func (t *tracer) ok(stage Stage, reply *Reply) *StageResult {
	t.res.Stages = append(t.res.Stages, StageResult{Stage: stage, Status: StageOK, DurationMs: ms(time.Since(t.at)), Reply: reply})
	return &t.res.Stages[len(t.res.Stages)-1]
}

// skip records a stage that did not apply.
func (t *tracer) skip(stage Stage, why string) {
	t.res.Stages = append(t.res.Stages, StageResult{Stage: stage, Status: StageSkipped, Detail: why})
}

// fail records the failed stage and classifies the result.
func (t *tracer) fail(stage Stage, f failure) {
	t.res.Stages = append(t.res.Stages, StageResult{
		Stage: stage, Status: StageFailed, DurationMs: ms(time.Since(t.at)), Reply: f.reply, Detail: f.detail,
	})
	t.res.Success = false
	t.res.Class = f.class
	t.res.FailedStage = stage
	t.res.Hint = hint(t.res.Known, stage, f)
}

// done stamps the total duration.
func (t *tracer) done() { t.res.DurationMs = ms(time.Since(t.begin)) }
