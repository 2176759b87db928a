package mail

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sesv2"
	"github.com/aws/aws-sdk-go-v2/service/sesv2/types"
	"github.com/aws/smithy-go"
)

// SES is an Amazon SES v2 account in one region.
type SES struct {
	Region           string
	ConfigurationSet string
	// Endpoint overrides the regional endpoint (a VPC endpoint, or a test
	// server); it is dialled through the Guard like any user-supplied host.
	Endpoint string
	// AccessKeyID and SecretAccessKey are stored keys; when empty the pod's
	// identity (IRSA, EKS Pod Identity, the environment) is used.
	AccessKeyID, SecretAccessKey string
	Timeout                      time.Duration
	// HTTPClient carries the API calls: a Guard's HTTPClient.
	HTTPClient *http.Client
}

// SESAccount is what GetAccount says about sending.
type SESAccount struct {
	SendingEnabled          bool    `json:"sendingEnabled"`
	EnforcementStatus       string  `json:"enforcementStatus"`
	ProductionAccessEnabled bool    `json:"productionAccessEnabled"`
	Max24HourSend           float64 `json:"max24HourSend"`
	MaxSendRate             float64 `json:"maxSendRate"`
	SentLast24Hours         float64 `json:"sentLast24Hours"`
}

// client builds the SES client. Credentials are loaded outside the Guard:
// the pod identity's endpoints are link-local by design.
func (s SES) client(ctx context.Context) (*sesv2.Client, error) {
	opts := []func(*config.LoadOptions) error{config.WithRegion(s.Region)}
	if s.AccessKeyID != "" {
		opts = append(opts, config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(s.AccessKeyID, s.SecretAccessKey, "")))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, err
	}
	if _, err := cfg.Credentials.Retrieve(ctx); err != nil {
		return nil, err
	}
	return sesv2.NewFromConfig(cfg, func(o *sesv2.Options) {
		o.HTTPClient = s.HTTPClient
		o.RetryMaxAttempts = 1
		if s.Endpoint != "" {
			o.BaseEndpoint = aws.String(s.Endpoint)
		}
	}), nil
}

func (s SES) timeout() time.Duration {
	if s.Timeout > 0 {
		return s.Timeout
	}
	return 30 * time.Second
}

// Send sends env's raw message with SendEmail.
func (s SES) Send(ctx context.Context, env Envelope) (res Result) {
	res = Result{Provider: "ses", Known: AmazonSES, Host: s.Endpoint}
	t := newTracer(&res)
	defer t.done()
	ctx, cancel := context.WithTimeout(ctx, s.timeout())
	defer cancel()
	c, err := s.client(ctx)
	if err != nil {
		t.fail(StageCredentials, failure{class: AuthFailed, detail: errorDetail(credentialError(err))})
		return res
	}
	t.ok(StageCredentials, nil)
	t.start()
	in := &sesv2.SendEmailInput{
		FromEmailAddress: aws.String(env.From),
		Destination:      &types.Destination{ToAddresses: []string{env.To}},
		Content:          &types.EmailContent{Raw: &types.RawMessage{Data: env.Message}},
	}
	if s.ConfigurationSet != "" {
		in.ConfigurationSetName = aws.String(s.ConfigurationSet)
	}
	out, err := c.SendEmail(ctx, in)
	if err != nil {
		t.fail(StageSend, sesFailure(err, env))
		return res
	}
	t.ok(StageSend, nil)
	res.MessageID = aws.ToString(out.MessageId)
	res.Success = true
	// The account's state comes with the result (sandbox, quota); a
	// failure to read it does not undo a message SES accepted.
	t.start()
	if acct, err := c.GetAccount(ctx, &sesv2.GetAccountInput{}); err == nil {
		res.Account = accountOf(acct)
		t.ok(StageAccount, nil)
	} else {
		res.Stages = append(res.Stages, StageResult{Stage: StageAccount, Status: StageFailed, DurationMs: ms(time.Since(t.at)), Detail: sesFailure(err, env).detail})
	}
	return res
}

// accountOf is GetAccount's answer as reported.
func accountOf(out *sesv2.GetAccountOutput) *SESAccount {
	acct := &SESAccount{
		SendingEnabled:          out.SendingEnabled,
		EnforcementStatus:       aws.ToString(out.EnforcementStatus),
		ProductionAccessEnabled: out.ProductionAccessEnabled,
	}
	if q := out.SendQuota; q != nil {
		acct.Max24HourSend, acct.MaxSendRate, acct.SentLast24Hours = q.Max24HourSend, q.MaxSendRate, q.SentLast24Hours
	}
	return acct
}

// Check reads the account's sending state with GetAccount.
func (s SES) Check(ctx context.Context) (res Result) {
	res = Result{Provider: "ses", Known: AmazonSES, Host: s.Endpoint}
	t := newTracer(&res)
	defer t.done()
	ctx, cancel := context.WithTimeout(ctx, s.timeout())
	defer cancel()
	c, err := s.client(ctx)
	if err != nil {
		t.fail(StageCredentials, failure{class: AuthFailed, detail: errorDetail(credentialError(err))})
		return res
	}
	t.ok(StageCredentials, nil)
	t.start()
	out, err := c.GetAccount(ctx, &sesv2.GetAccountInput{})
	if err != nil {
		t.fail(StageAccount, sesFailure(err, Envelope{}))
		return res
	}
	acct := accountOf(out)
	res.Account = acct
	if !acct.SendingEnabled || (acct.EnforcementStatus != "" && acct.EnforcementStatus != "HEALTHY") {
		t.fail(StageAccount, failure{class: SendingDisabled, detail: "sending enabled " + boolWord(acct.SendingEnabled) + ", enforcement status " + acct.EnforcementStatus})
		return res
	}
	t.ok(StageAccount, nil)
	res.Success = true
	return res
}

func boolWord(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// credentialError keeps what a failed credential lookup says about the
// source, which never includes the keys themselves.
func credentialError(err error) error {
	return errors.New("no usable AWS credentials: " + firstLine(err.Error()))
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return oneLine(s)
}

// sesFailure classifies an SES API error.
func sesFailure(err error, env Envelope) failure {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		code, msg := ae.ErrorCode(), ae.ErrorMessage()
		f := failure{detail: oneLine(code + ": " + msg), reply: &Reply{Text: code + ": " + msg}}
		var re interface{ HTTPStatusCode() int }
		if errors.As(err, &re) {
			f.reply.Code = re.HTTPStatusCode()
		}
		lower := strings.ToLower(msg)
		switch {
		case strings.Contains(lower, "not verified"):
			f.class = RecipientRejected
			if env.From != "" && strings.Contains(lower, strings.ToLower(env.From)) {
				f.class = SenderRejected
			}
		case code == "MessageRejected" || code == "BadRequestException" && strings.Contains(lower, "message"):
			f.class = MessageRejected
		case code == "MailFromDomainNotVerifiedException":
			f.class = SenderRejected
		case code == "AccountSuspendedException" || code == "SendingPausedException":
			f.class = SendingDisabled
		case code == "TooManyRequestsException" || code == "LimitExceededException" || code == "Throttling" || code == "ServiceUnavailable" || code == "InternalFailure":
			f.class = Transient
		case code == "UnrecognizedClientException" || code == "InvalidClientTokenId" || code == "SignatureDoesNotMatch" || code == "AccessDeniedException" || code == "AccessDenied" || code == "ExpiredTokenException":
			f.class = AuthFailed
		case code == "NotFoundException":
			f.class = MessageRejected
		default:
			if f.reply.Code >= 500 {
				f.class = Transient
			} else {
				f.class = MessageRejected
			}
		}
		return f
	}
	return failure{class: classifyError(StageConnect, err), detail: errorDetail(err)}
}
