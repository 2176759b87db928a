package function

import (
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/mail"
)

// Provider is how an integration sends mail.
type Provider string

// Providers.
const (
	ProviderSMTP Provider = "smtp"
	ProviderSES  Provider = "ses"
)

// Limits of the settings.
const (
	MaxName           = 255
	MaxDescription    = 2000
	MaxFromName       = 100
	DefaultTimeout    = 30 // seconds
	MaxTimeout        = 120
	MaxScopes         = 10
	MaxSecretLength   = 4096
	defaultSubmission = 587
	defaultImplicit   = 465
)

// Secret names: the keys of Settings.Secrets and the purpose each is
// sealed for, so a sealed value moved to another field does not open.
const (
	SecretPassword        = "password"
	SecretClientSecret    = "clientSecret"
	SecretRefreshToken    = "refreshToken"
	SecretSESAccessKeyID  = "sesAccessKeyId"
	SecretSESSecretKey    = "sesSecretAccessKey"
	secretPurposePrefix   = "integrations.config.secrets."
	integrationTypeEmail  = "email"
	envIntegrationID      = "env"
	oauthPresetCustom     = "custom"
	oauthPresetGmail      = "gmail"
	oauthPresetOffice365  = "office365"
	gmailTokenURL         = "https://oauth2.googleapis.com/token"
	office365TokenURLTmpl = "https://login.microsoftonline.com/%s/oauth2/v2.0/token"
)

// IntegrationRequest is the body of POST and PUT …/integrations/email.
type IntegrationRequest struct {
	Name        string        `json:"name"`
	Description string        `json:"description"`
	Enabled     *bool         `json:"enabled"`
	Config      ConfigRequest `json:"config"`
}

// ConfigRequest is the settings as a client sends them. Secrets are
// write-only: absent keeps the stored value, "" removes it.
type ConfigRequest struct {
	Provider         string         `json:"provider"`
	Preset           string         `json:"preset"`
	Host             string         `json:"host"`
	Port             int            `json:"port"`
	Security         string         `json:"security"`
	AllowInsecure    bool           `json:"allowInsecure"`
	Auth             string         `json:"auth"`
	Username         string         `json:"username"`
	Password         *string        `json:"password"`
	From             string         `json:"from"`
	FromName         string         `json:"fromName"`
	DefaultRecipient string         `json:"defaultRecipient"`
	TimeoutSeconds   int            `json:"timeoutSeconds"`
	OAuth2           *OAuth2Request `json:"oauth2"`
	SES              *SESRequest    `json:"ses"`
}

// OAuth2Request is the XOAUTH2 grant.
type OAuth2Request struct {
	Preset       string   `json:"preset"`
	TokenURL     string   `json:"tokenUrl"`
	Tenant       string   `json:"tenant"`
	ClientID     string   `json:"clientId"`
	ClientSecret *string  `json:"clientSecret"`
	RefreshToken *string  `json:"refreshToken"`
	Scopes       []string `json:"scopes"`
}

// SESRequest is the Amazon SES v2 account.
type SESRequest struct {
	Region           string  `json:"region"`
	ConfigurationSet string  `json:"configurationSet"`
	Endpoint         string  `json:"endpoint"`
	AccessKeyID      *string `json:"accessKeyId"`
	SecretAccessKey  *string `json:"secretAccessKey"`
}

// Settings are an integration's config as stored in integrations.config:
// every secret sealed in Secrets, never in the clear.
type Settings struct {
	Provider         Provider          `json:"provider"`
	Preset           string            `json:"preset,omitempty"`
	Host             string            `json:"host,omitempty"`
	Port             int               `json:"port,omitempty"`
	Security         mail.Security     `json:"security,omitempty"`
	AllowInsecure    bool              `json:"allowInsecure,omitempty"`
	Auth             mail.AuthMethod   `json:"auth,omitempty"`
	Username         string            `json:"username,omitempty"`
	From             string            `json:"from"`
	FromName         string            `json:"fromName,omitempty"`
	DefaultRecipient string            `json:"defaultRecipient,omitempty"`
	TimeoutSeconds   int               `json:"timeoutSeconds"`
	OAuth2           *OAuth2Settings   `json:"oauth2,omitempty"`
	SES              *SESSettings      `json:"ses,omitempty"`
	Secrets          map[string]string `json:"secrets,omitempty"`
}

// OAuth2Settings is the stored grant, its secrets in Settings.Secrets.
type OAuth2Settings struct {
	Preset   string   `json:"preset"`
	TokenURL string   `json:"tokenUrl"`
	ClientID string   `json:"clientId"`
	Scopes   []string `json:"scopes,omitempty"`
}

// SESSettings is the stored SES account, its keys in Settings.Secrets.
type SESSettings struct {
	Region           string `json:"region"`
	ConfigurationSet string `json:"configurationSet,omitempty"`
	Endpoint         string `json:"endpoint,omitempty"`
}

// Input is a validated IntegrationRequest: the settings without secrets,
// and the secret changes (nil keeps, "" removes, else the new value).
type Input struct {
	Name        string
	Description string
	Enabled     bool
	Settings    Settings
	Secrets     map[string]*string
}

// Preset is a provider's usual settings and what to know about it.
type Preset struct {
	Host     string
	Port     int
	Security mail.Security
	Auth     mail.AuthMethod
	Username string
	Hints    []string
}

// Presets fill host, port, security and auth when the request leaves them
// out.
var Presets = map[string]Preset{
	"gmail": {Host: "smtp.gmail.com", Port: 587, Security: mail.StartTLS, Auth: mail.AuthPlain, Hints: []string{
		"Gmail: with 2-step verification on, the password is an app password (myaccount.google.com/apppasswords), or use auth xoauth2 with the scope https://mail.google.com/.",
		"Gmail: from must be the account's address or an alias verified in its settings; Gmail rewrites other senders.",
	}},
	"office365": {Host: "smtp.office365.com", Port: 587, Security: mail.StartTLS, Auth: mail.AuthLogin, Hints: []string{
		"Office 365: SMTP AUTH must be enabled for the mailbox (Authenticated SMTP in the Microsoft 365 admin center); answers 5.7.139 or 5.7.30 mean it is off.",
		"Office 365: Microsoft is retiring basic authentication for SMTP AUTH; auth xoauth2 with the scope https://outlook.office365.com/SMTP.Send lasts.",
	}},
	"sendgrid": {Host: "smtp.sendgrid.net", Port: 587, Security: mail.StartTLS, Auth: mail.AuthPlain, Username: "apikey", Hints: []string{
		"SendGrid: the username is the literal apikey and the password an API key with Mail Send permission.",
		"SendGrid: from must be a verified Sender Identity or on an authenticated domain.",
	}},
	"ses-smtp": {Host: "email-smtp.us-east-1.amazonaws.com", Port: 587, Security: mail.StartTLS, Auth: mail.AuthPlain, Hints: []string{
		"Amazon SES SMTP: the username and password are SMTP credentials created for the region in the SES console, not an IAM access key.",
		"Amazon SES SMTP: in the sandbox both the sender and the recipient must be verified identities.",
		"Amazon SES SMTP: the host is email-smtp.<region>.amazonaws.com for the region the identities are verified in.",
	}},
}

var (
	hostLabel   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
	awsRegion   = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$`)
	configSetRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	tenantRe    = regexp.MustCompile(`^[A-Za-z0-9.-]{1,64}$`)
)

func invalid(field, format string, args ...any) error {
	return errs.E(errs.Invalid, "%s: "+format, append([]any{field}, args...)...)
}

// text checks a one-line text field: no control characters (CR and LF
// above all, which would end a header), at most max characters.
func text(field, s string, max int, required bool) (string, error) {
	s = strings.TrimSpace(s)
	if required && s == "" {
		return "", invalid(field, "required")
	}
	if n := utf8.RuneCountInString(s); n > max {
		return "", invalid(field, "%d characters, at most %d", n, max)
	}
	if err := mail.CheckHeader(s); err != nil {
		return "", invalid(field, "%v", err)
	}
	if strings.IndexFunc(s, unicode.IsControl) >= 0 || !utf8.ValidString(s) {
		return "", invalid(field, "control characters are not allowed")
	}
	return s, nil
}

// address checks an email address field.
func address(field, s string, required bool) (string, error) {
	if s == "" && !required {
		return "", nil
	}
	if s == "" {
		return "", invalid(field, "required")
	}
	if err := mail.CheckHeader(s); err != nil {
		return "", invalid(field, "%v", err)
	}
	a, err := mail.ParseAddress(s)
	if err != nil {
		return "", invalid(field, "%v", err)
	}
	return a, nil
}

// hostname checks a host name or IP literal.
func hostname(field, s string) (string, error) {
	s = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(s), "."))
	if s == "" {
		return "", invalid(field, "required")
	}
	if err := mail.CheckHeader(s); err != nil {
		return "", invalid(field, "%v", err)
	}
	if _, err := netip.ParseAddr(s); err == nil {
		return s, nil
	}
	if len(s) > 253 {
		return "", invalid(field, "longer than 253 characters")
	}
	for _, l := range strings.Split(s, ".") {
		if !hostLabel.MatchString(l) {
			return "", invalid(field, "%q is not a host name", s)
		}
	}
	return s, nil
}

// endpointURL checks an https URL (http only with allowInsecure).
func endpointURL(field, s string, allowInsecure bool) (string, error) {
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil || u.Host == "" || u.User != nil || u.Fragment != "" {
		return "", invalid(field, "want an absolute https URL")
	}
	if u.Scheme != "https" && !(u.Scheme == "http" && allowInsecure) {
		return "", invalid(field, "want https (http only with config.allowInsecure)")
	}
	if _, err := hostname(field, u.Hostname()); err != nil {
		return "", err
	}
	return u.String(), nil
}

// secret checks a write-only secret's change.
func secret(field string, s *string) (*string, error) {
	if s == nil {
		return nil, nil
	}
	if len(*s) > MaxSecretLength {
		return nil, invalid(field, "longer than %d bytes", MaxSecretLength)
	}
	if strings.ContainsAny(*s, "\r\n\x00") {
		return nil, invalid(field, "CR, LF and NUL are not allowed")
	}
	return s, nil
}

// Validate checks the request and returns what to store. Every error
// names the field; none quotes a secret.
func (r IntegrationRequest) Validate() (Input, error) {
	in := Input{Enabled: true, Secrets: map[string]*string{}}
	var err error
	if in.Name, err = text("name", r.Name, MaxName, true); err != nil {
		return Input{}, err
	}
	if utf8.RuneCountInString(r.Description) > MaxDescription {
		return Input{}, invalid("description", "at most %d characters", MaxDescription)
	}
	if strings.IndexFunc(r.Description, func(c rune) bool { return unicode.IsControl(c) && c != '\n' && c != '\t' }) >= 0 {
		return Input{}, invalid("description", "control characters other than line breaks and tabs are not allowed")
	}
	in.Description = r.Description
	if r.Enabled != nil {
		in.Enabled = *r.Enabled
	}
	c := r.Config
	s := Settings{AllowInsecure: c.AllowInsecure}
	if s.From, err = address("config.from", c.From, true); err != nil {
		return Input{}, err
	}
	if s.FromName, err = text("config.fromName", c.FromName, MaxFromName, false); err != nil {
		return Input{}, err
	}
	if s.DefaultRecipient, err = address("config.defaultRecipient", c.DefaultRecipient, false); err != nil {
		return Input{}, err
	}
	switch {
	case c.TimeoutSeconds == 0:
		s.TimeoutSeconds = DefaultTimeout
	case c.TimeoutSeconds < 1 || c.TimeoutSeconds > MaxTimeout:
		return Input{}, invalid("config.timeoutSeconds", "%d: want 1 to %d", c.TimeoutSeconds, MaxTimeout)
	default:
		s.TimeoutSeconds = c.TimeoutSeconds
	}
	switch Provider(c.Provider) {
	case ProviderSMTP:
		s.Provider = ProviderSMTP
		if err := validateSMTP(c, &s, in.Secrets); err != nil {
			return Input{}, err
		}
	case ProviderSES:
		s.Provider = ProviderSES
		if err := validateSES(c, &s, in.Secrets); err != nil {
			return Input{}, err
		}
	case "":
		return Input{}, invalid("config.provider", "required: smtp or ses")
	default:
		return Input{}, invalid("config.provider", "%q: want smtp or ses", truncate(c.Provider))
	}
	in.Settings = s
	return in, nil
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return strings.ToValidUTF8(s, "?")
}

func validateSMTP(c ConfigRequest, s *Settings, secrets map[string]*string) error {
	if c.SES != nil {
		return invalid("config.ses", "only with provider ses")
	}
	var p Preset
	if c.Preset != "" {
		var ok bool
		if p, ok = Presets[c.Preset]; !ok {
			return invalid("config.preset", "%q: want gmail, office365, sendgrid or ses-smtp", truncate(c.Preset))
		}
		s.Preset = c.Preset
	}
	host := c.Host
	if host == "" {
		host = p.Host
	}
	var err error
	if s.Host, err = hostname("config.host", host); err != nil {
		return err
	}
	s.Security = mail.Security(c.Security)
	if s.Security == "" {
		s.Security = p.Security
	}
	s.Port = c.Port
	if s.Port == 0 {
		s.Port = p.Port
	}
	if s.Security == "" {
		s.Security = mail.StartTLS
		if s.Port == defaultImplicit {
			s.Security = mail.ImplicitTLS
		}
	}
	if s.Port == 0 {
		s.Port = defaultSubmission
		if s.Security == mail.ImplicitTLS {
			s.Port = defaultImplicit
		}
	}
	if s.Port < 1 || s.Port > 65535 {
		return invalid("config.port", "%d: want 1 to 65535", s.Port)
	}
	switch s.Security {
	case mail.StartTLS, mail.ImplicitTLS:
	case mail.NoTLS:
		if !c.AllowInsecure {
			return invalid("config.security", "none sends credentials and mail in the clear; set config.allowInsecure to true to allow it")
		}
	default:
		return invalid("config.security", "%q: want starttls, tls or none", truncate(string(s.Security)))
	}
	s.Username = c.Username
	if s.Username == "" {
		s.Username = p.Username
	}
	if s.Username, err = text("config.username", s.Username, 320, false); err != nil {
		return err
	}
	s.Auth = mail.AuthMethod(c.Auth)
	if s.Auth == "" {
		switch {
		case c.OAuth2 != nil:
			s.Auth = mail.AuthXOAuth2
		case p.Auth != "":
			s.Auth = p.Auth
		case s.Username != "":
			s.Auth = mail.AuthPlain
		default:
			s.Auth = mail.AuthNone
		}
	}
	if secrets[SecretPassword], err = secret("config.password", c.Password); err != nil {
		return err
	}
	switch s.Auth {
	case mail.AuthNone:
		if c.OAuth2 != nil {
			return invalid("config.oauth2", "only with auth xoauth2")
		}
	case mail.AuthPlain, mail.AuthLogin:
		if s.Username == "" {
			return invalid("config.username", "required with auth %s", s.Auth)
		}
		if c.OAuth2 != nil {
			return invalid("config.oauth2", "only with auth xoauth2")
		}
	case mail.AuthXOAuth2:
		if s.Username == "" {
			return invalid("config.username", "required with auth xoauth2 (the mailbox's address)")
		}
		if c.OAuth2 == nil {
			return invalid("config.oauth2", "required with auth xoauth2")
		}
		o, err := validateOAuth2(*c.OAuth2, c.AllowInsecure, secrets)
		if err != nil {
			return err
		}
		s.OAuth2 = &o
	default:
		return invalid("config.auth", "%q: want none, plain, login or xoauth2", truncate(string(s.Auth)))
	}
	return nil
}

func validateOAuth2(r OAuth2Request, allowInsecure bool, secrets map[string]*string) (OAuth2Settings, error) {
	o := OAuth2Settings{Preset: r.Preset}
	if o.Preset == "" {
		o.Preset = oauthPresetCustom
	}
	tokenURL := r.TokenURL
	switch o.Preset {
	case oauthPresetGmail:
		if tokenURL == "" {
			tokenURL = gmailTokenURL
		}
		if len(r.Scopes) == 0 {
			r.Scopes = []string{"https://mail.google.com/"}
		}
	case oauthPresetOffice365:
		tenant := r.Tenant
		if tenant == "" {
			tenant = "common"
		}
		if !tenantRe.MatchString(tenant) {
			return o, invalid("config.oauth2.tenant", "want a tenant id or domain")
		}
		if tokenURL == "" {
			tokenURL = strings.Replace(office365TokenURLTmpl, "%s", tenant, 1)
		}
		if len(r.Scopes) == 0 {
			r.Scopes = []string{"https://outlook.office365.com/SMTP.Send", "offline_access"}
		}
	case oauthPresetCustom:
		if tokenURL == "" {
			return o, invalid("config.oauth2.tokenUrl", "required with preset custom")
		}
	default:
		return o, invalid("config.oauth2.preset", "%q: want gmail, office365 or custom", truncate(o.Preset))
	}
	var err error
	if o.TokenURL, err = endpointURL("config.oauth2.tokenUrl", tokenURL, allowInsecure); err != nil {
		return o, err
	}
	if o.ClientID, err = text("config.oauth2.clientId", r.ClientID, 512, true); err != nil {
		return o, err
	}
	if len(r.Scopes) > MaxScopes {
		return o, invalid("config.oauth2.scopes", "at most %d", MaxScopes)
	}
	for i, sc := range r.Scopes {
		if sc == "" || strings.ContainsFunc(sc, func(c rune) bool { return unicode.IsSpace(c) || unicode.IsControl(c) }) || len(sc) > 256 {
			return o, invalid("config.oauth2.scopes["+strconv.Itoa(i)+"]", "want a scope without spaces")
		}
	}
	o.Scopes = r.Scopes
	if secrets[SecretClientSecret], err = secret("config.oauth2.clientSecret", r.ClientSecret); err != nil {
		return o, err
	}
	if secrets[SecretRefreshToken], err = secret("config.oauth2.refreshToken", r.RefreshToken); err != nil {
		return o, err
	}
	return o, nil
}

func validateSES(c ConfigRequest, s *Settings, secrets map[string]*string) error {
	for field, set := range map[string]bool{
		"config.host": c.Host != "", "config.port": c.Port != 0, "config.security": c.Security != "", "config.auth": c.Auth != "",
		"config.username": c.Username != "", "config.password": c.Password != nil, "config.oauth2": c.OAuth2 != nil, "config.preset": c.Preset != "",
	} {
		if set {
			return invalid(field, "only with provider smtp")
		}
	}
	if c.SES == nil {
		return invalid("config.ses", "required with provider ses")
	}
	r := *c.SES
	if !awsRegion.MatchString(r.Region) {
		return invalid("config.ses.region", "want an AWS region such as eu-west-1")
	}
	out := SESSettings{Region: r.Region}
	if r.ConfigurationSet != "" {
		if !configSetRe.MatchString(r.ConfigurationSet) {
			return invalid("config.ses.configurationSet", "want letters, digits, _ and -, at most 64")
		}
		out.ConfigurationSet = r.ConfigurationSet
	}
	if r.Endpoint != "" {
		ep, err := endpointURL("config.ses.endpoint", r.Endpoint, c.AllowInsecure)
		if err != nil {
			return err
		}
		out.Endpoint = ep
	}
	var err error
	if secrets[SecretSESAccessKeyID], err = secret("config.ses.accessKeyId", r.AccessKeyID); err != nil {
		return err
	}
	if secrets[SecretSESSecretKey], err = secret("config.ses.secretAccessKey", r.SecretAccessKey); err != nil {
		return err
	}
	s.SES = &out
	return nil
}

// applicable are the secrets settings s can use.
func applicable(s Settings) []string {
	switch {
	case s.Provider == ProviderSES:
		return []string{SecretSESAccessKeyID, SecretSESSecretKey}
	case s.Auth == mail.AuthPlain || s.Auth == mail.AuthLogin:
		return []string{SecretPassword}
	case s.Auth == mail.AuthXOAuth2:
		return []string{SecretClientSecret, SecretRefreshToken}
	}
	return nil
}

// checkSecrets says which secret the settings still need after merging:
// plain and login need a password, xoauth2 a refresh token, SES's keys
// come both or neither.
func checkSecrets(s Settings) error {
	has := func(k string) bool { return s.Secrets[k] != "" }
	switch {
	case s.Provider == ProviderSES:
		if has(SecretSESAccessKeyID) != has(SecretSESSecretKey) {
			return invalid("config.ses.secretAccessKey", "accessKeyId and secretAccessKey go together (or neither, for the pod's identity)")
		}
	case s.Auth == mail.AuthPlain || s.Auth == mail.AuthLogin:
		if !has(SecretPassword) {
			return invalid("config.password", "required with auth %s", s.Auth)
		}
	case s.Auth == mail.AuthXOAuth2:
		if !has(SecretRefreshToken) {
			return invalid("config.oauth2.refreshToken", "required with auth xoauth2")
		}
	}
	return nil
}

// TestRequest is the body of POST …/{id}/test.
type TestRequest struct {
	Recipient string `json:"recipient"`
}

// Validate returns the recipient, or "" to use the integration's default.
func (r TestRequest) Validate() (string, error) {
	return address("recipient", r.Recipient, false)
}

// integrationID checks the {id} path value: env, or a positive integer.
func integrationID(s string) (string, error) {
	if s == envIntegrationID {
		return s, nil
	}
	n, err := strconv.ParseInt(s, 10, 32)
	if err != nil || n < 1 || strconv.FormatInt(n, 10) != s {
		return "", errs.E(errs.NotFound, "email integration %q not found", truncate(s))
	}
	return s, nil
}
