package function

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/mail"
	"strconv"
	"strings"
	"time"

	"github.com/streamspace-dev/functions/shared/errs"
	mailer "github.com/streamspace-dev/functions/shared/mail"
	"github.com/streamspace-dev/functions/shared/secretbox"
)

// prober turns stored settings into a conversation with the provider.
type prober struct {
	// keys seal what is stored; nil without MAIL_KEY_ID.
	keys *secretbox.Keyring
	// process seals the env integration's password for this process only.
	process  *secretbox.Keyring
	guard    *mailer.Guard
	heloName string
	roots    *x509.CertPool
}

// sealSecrets merges the request's secret changes into stored, sealing
// the new values; secrets the settings cannot use are dropped.
func (p prober) sealSecrets(changes map[string]*string, stored map[string]string, s *Settings) error {
	merged := map[string]string{}
	for _, name := range applicable(*s) {
		switch v := changes[name]; {
		case v == nil:
			if old := stored[name]; old != "" {
				merged[name] = old
			}
		case *v == "":
		default:
			if p.keys == nil {
				return errs.E(errs.Unavailable, "config.%s: this installation cannot store secrets: MAIL_KEY_ID and the mailtest-keys Secret are not configured", name)
			}
			sealed, err := p.keys.Seal(secretPurposePrefix+name, *v)
			if err != nil {
				return fmt.Errorf("seal %s: %w", name, err)
			}
			merged[name] = sealed
		}
	}
	s.Secrets = nil
	if len(merged) > 0 {
		s.Secrets = merged
	}
	return checkSecrets(*s)
}

// opened are an integration's secrets in the clear, for one conversation.
type opened map[string]string

// list is every secret's value, for Result.Redact.
func (o opened) list() []string {
	out := make([]string, 0, len(o))
	for _, v := range o {
		out = append(out, v)
	}
	return out
}

// open decrypts the settings' secrets. A failure names the key id, never
// a value.
func (p prober) open(id string, s Settings) (opened, error) {
	out := opened{}
	for name, sealed := range s.Secrets {
		ring := p.keys
		if secretbox.KeyID(sealed) == processKeyID {
			ring = p.process
		}
		if ring == nil {
			return nil, errs.E(errs.Unavailable, "integration %s: its stored %s cannot be opened: MAIL_KEY_ID is not configured", id, name)
		}
		plain, err := ring.Open(secretPurposePrefix+name, sealed)
		if err != nil {
			return nil, errs.Wrap(errs.Internal, err, "integration %s: its stored %s cannot be opened with the mounted keys (it was sealed with key %q); mount that key under MAIL_KEYS_DIR or store the secret again", id, name, secretbox.KeyID(sealed))
		}
		out[name] = plain
	}
	return out, nil
}

// run tests (env set) or checks (env nil) an integration. rotated, when
// set, is the refresh token the token endpoint rotated to, sealed for
// storage: Microsoft's endpoint, among others, hands out a new one with
// each access token, and the old one expires in time.
func (p prober) run(ctx context.Context, id string, s Settings, env *mailer.Envelope) (res mailer.Result, rotated string, err error) {
	sec, err := p.open(id, s)
	if err != nil {
		return mailer.Result{}, "", err
	}
	timeout := time.Duration(s.TimeoutSeconds) * time.Second
	switch s.Provider {
	case ProviderSES:
		ses := mailer.SES{
			Region: s.SES.Region, ConfigurationSet: s.SES.ConfigurationSet, Endpoint: s.SES.Endpoint,
			AccessKeyID: sec[SecretSESAccessKeyID], SecretAccessKey: sec[SecretSESSecretKey],
			Timeout: timeout, HTTPClient: p.guard.HTTPClient(timeout),
		}
		if env == nil {
			res = ses.Check(ctx)
		} else {
			res = ses.Send(ctx, *env)
		}
	default:
		known := mailer.KnownProvider(s.Host)
		if pr, ok := presetNames[s.Preset]; ok && known == "" {
			known = pr
		}
		smtp := mailer.SMTP{
			Host: s.Host, Port: s.Port, Security: s.Security, Auth: s.Auth, Username: s.Username,
			Password: sec[SecretPassword], Known: known, HeloName: p.heloName, Timeout: timeout,
			RootCAs: p.roots, Guard: p.guard,
		}
		if s.Auth == mailer.AuthXOAuth2 && s.OAuth2 != nil {
			grant := mailer.OAuth2{TokenURL: s.OAuth2.TokenURL, ClientID: s.OAuth2.ClientID, ClientSecret: sec[SecretClientSecret],
				RefreshToken: sec[SecretRefreshToken], Scopes: s.OAuth2.Scopes}
			smtp.Token = grant.TokenSource(ctx, p.guard.HTTPClient(timeout))
		}
		res = smtp.Run(ctx, env)
		if smtp.Token != nil && authenticated(res) {
			// The source caches what it fetched: this asks nothing more.
			if tok, err := smtp.Token.Token(); err == nil {
				sec["accessToken"] = tok.AccessToken
				if tok.RefreshToken != "" && tok.RefreshToken != sec[SecretRefreshToken] {
					sec["rotatedRefreshToken"] = tok.RefreshToken
					if p.keys != nil && id != envIntegrationID {
						rotated, _ = p.keys.Seal(secretPurposePrefix+SecretRefreshToken, tok.RefreshToken)
					}
				}
			}
		}
	}
	res.Redact(sec.list()...)
	return res, rotated, nil
}

// authenticated reports whether the auth stage passed.
func authenticated(res mailer.Result) bool {
	for _, st := range res.Stages {
		if st.Stage == mailer.StageAuth {
			return st.Status == mailer.StageOK
		}
	}
	return false
}

// processKeyID names the in-memory key of the env integration.
const processKeyID = "ephemeral-process"

// presetNames are the providers behind the presets, for hints.
var presetNames = map[string]string{
	"gmail": mailer.Gmail, "office365": mailer.Office365, "sendgrid": mailer.SendGrid, "ses-smtp": mailer.AmazonSES,
}

// EnvSMTP is the environment's SMTP server: the seed's SMTP_* variables.
type EnvSMTP struct {
	Host     string `env:"SMTP_HOST"`
	Port     int    `env:"SMTP_PORT"`
	Username string `env:"SMTP_USERNAME"`
	Password string `env:"SMTP_PASSWORD"`
	From     string `env:"SMTP_FROM"`
	TLS      string `env:"SMTP_TLS" envDefault:"true"`
}

// settings turns the variables into an integration's settings and its
// password, or ok false when SMTP_HOST is unset.
func (e EnvSMTP) settings() (s Settings, password string, ok bool, err error) {
	if e.Host == "" {
		return Settings{}, "", false, nil
	}
	s = Settings{Provider: ProviderSMTP, TimeoutSeconds: DefaultTimeout, Username: e.Username, AllowInsecure: true}
	if s.Host, err = hostname("SMTP_HOST", e.Host); err != nil {
		return s, "", false, fmt.Errorf("config: %s", errs.Message(err))
	}
	switch strings.ToLower(strings.TrimSpace(e.TLS)) {
	case "", "true", "1", "yes", "starttls":
		s.Security = mailer.StartTLS
	case "tls", "ssl", "implicit":
		s.Security = mailer.ImplicitTLS
	case "false", "0", "no", "none":
		s.Security = mailer.NoTLS
	default:
		return s, "", false, fmt.Errorf("config: SMTP_TLS %q: want true (STARTTLS), tls (implicit), or false", e.TLS)
	}
	s.Port = e.Port
	if s.Port == 0 {
		s.Port = defaultSubmission
		if s.Security == mailer.ImplicitTLS {
			s.Port = defaultImplicit
		}
	} else if s.Port == defaultImplicit && strings.TrimSpace(e.TLS) == "" {
		s.Security = mailer.ImplicitTLS
	}
	if s.Port < 1 || s.Port > 65535 {
		return s, "", false, fmt.Errorf("config: SMTP_PORT %d: want 1 to 65535", s.Port)
	}
	s.Auth = mailer.AuthNone
	if e.Username != "" {
		s.Auth = mailer.AuthPlain
	}
	if e.From == "" {
		return s, "", false, fmt.Errorf("config: SMTP_FROM is required with SMTP_HOST")
	}
	from, err := mail.ParseAddress(e.From)
	if err != nil || mailer.CheckHeader(e.From) != nil {
		return s, "", false, fmt.Errorf("config: SMTP_FROM: want an address such as StreamSpace <noreply@example.com>")
	}
	s.From, s.FromName = from.Address, from.Name
	return s, e.Password, true, nil
}

// envIntegration is the read-only integration built from SMTP_*.
func envIntegration(s Settings) Integration {
	return Integration{ID: envIntegrationID, Name: "Environment SMTP (" + s.Host + ":" + strconv.Itoa(s.Port) + ")", Enabled: true, Settings: s,
		Health: Health{Status: HealthUnknown}}
}
