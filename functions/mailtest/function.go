// Package function is the mailtest function: it owns StreamSpace's email
// integrations (rows of integrations with type 'email'), which StreamSpace's
// own API cannot create. Operators and admins manage them, a test sends a
// real message and traces the SMTP or Amazon SES conversation stage by
// stage with a classified failure, and a PingSource keeps each one's health
// current, reporting each change once. Secrets are sealed with AES-256-GCM
// and never leave the function. docs/mail.md has the whole contract.
package function

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/streamspace-dev/functions/events"
	mailer "github.com/streamspace-dev/functions/shared/mail"
	"github.com/streamspace-dev/functions/shared/secretbox"
	"github.com/streamspace-dev/functions/shared/service"
)

// Name is the function's name: its Service, its event source suffix and its
// log label.
const Name = "mailtest"

// Config is the mailtest function's environment.
type Config struct {
	// Base is what every function reads (docs/runtime.md).
	service.Base
	// KeysDir is the mounted Secret holding the keys that seal stored
	// secrets: one file per key id, 32 bytes in base64.
	KeysDir string `env:"MAIL_KEYS_DIR" envDefault:"/var/run/secrets/mailtest/keys"`
	// KeyID is the key that seals new secrets; the others only open what
	// they sealed, so a key can rotate. Unset, no secret can be stored:
	// integrations without credentials and the env integration still work.
	KeyID string `env:"MAIL_KEY_ID"`
	// AllowedHosts are hosts (names or IP literals, comma-separated) that
	// may resolve to private, loopback or link-local addresses, such as an
	// in-cluster relay; every other host is refused there.
	AllowedHosts string `env:"MAIL_ALLOWED_HOSTS"`
	// CAFile, when set, is a PEM bundle trusted beside the system's
	// authorities (a relay with a private CA).
	CAFile string `env:"MAIL_CA_FILE"`
	// TestRateLimit is how many tests of one integration a minute an
	// instance accepts; more get 429 with Retry-After.
	TestRateLimit int `env:"MAIL_TEST_RATE_LIMIT" envDefault:"5"`
	// HealthConcurrency bounds the checks a health tick runs at once.
	HealthConcurrency int `env:"MAIL_HEALTH_CONCURRENCY" envDefault:"32"`
	// HealthTimeout caps each health check (an integration's own
	// timeoutSeconds applies when shorter), so one dead server cannot hold
	// a tick.
	HealthTimeout time.Duration `env:"MAIL_HEALTH_TIMEOUT" envDefault:"15s"`
	// HeloName is the name sent in EHLO.
	HeloName string `env:"MAIL_HELO_NAME" envDefault:"streamspace-functions"`
	// SMTP is the environment's SMTP server (SMTP_*), the read-only
	// integration env.
	SMTP EnvSMTP
}

// Validate checks what the env tags cannot express.
func (c *Config) Validate() error {
	if c.TestRateLimit < 1 {
		return fmt.Errorf("config: MAIL_TEST_RATE_LIMIT %d: want at least 1", c.TestRateLimit)
	}
	if c.HealthConcurrency < 1 || c.HealthConcurrency > 256 {
		return fmt.Errorf("config: MAIL_HEALTH_CONCURRENCY %d: want 1 to 256", c.HealthConcurrency)
	}
	if c.HealthTimeout < time.Second || c.HealthTimeout > 2*time.Minute {
		return fmt.Errorf("config: MAIL_HEALTH_TIMEOUT %s: want 1s to 2m", c.HealthTimeout)
	}
	return nil
}

// Function serves the email integration routes and the health ticks.
type Function struct {
	svc         *service.Service
	prober      prober
	limiter     *limiter
	concurrency int
	healthLimit time.Duration
	// env is the integration SMTP_* make, without its test times and
	// health, which are stored (mailtest_env_integration); nil without
	// SMTP_HOST. Set in Start, read-only afterwards.
	env *Integration
}

// New returns an unstarted mailtest function.
func New() *Function { return &Function{} }

// Start reads the config, loads the keys, connects, and registers the
// routes and the PingSource handlers.
func (f *Function) Start(ctx context.Context, env map[string]string) error {
	var cfg Config
	svc, err := service.Start(ctx, Name, env, &cfg, events.Validate)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		_ = svc.Stop(ctx)
		return fmt.Errorf("%s: %w", Name, err)
	}
	var keys *secretbox.Keyring
	if cfg.KeyID != "" {
		if keys, err = secretbox.Load(cfg.KeysDir, cfg.KeyID); err != nil {
			return fail(fmt.Errorf("config: MAIL_KEYS_DIR %s with MAIL_KEY_ID %q: %w", cfg.KeysDir, cfg.KeyID, err))
		}
	}
	// The env integration's password is sealed in memory under a key that
	// lives as long as the process: it is never stored, so it needs no
	// mounted key.
	processKey := make([]byte, 32)
	if _, err := rand.Read(processKey); err != nil {
		return fail(err)
	}
	process, err := secretbox.New(processKeyID, map[string][]byte{processKeyID: processKey})
	if err != nil {
		return fail(err)
	}
	var roots *x509.CertPool
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return fail(fmt.Errorf("config: MAIL_CA_FILE: %w", err))
		}
		if roots, err = x509.SystemCertPool(); err != nil {
			roots = x509.NewCertPool()
		}
		if !roots.AppendCertsFromPEM(pem) {
			return fail(fmt.Errorf("config: MAIL_CA_FILE %s: no PEM certificate", cfg.CAFile))
		}
	}
	f.svc = svc
	f.prober = prober{keys: keys, process: process, guard: mailer.NewGuard(cfg.AllowedHosts), heloName: cfg.HeloName, roots: roots}
	f.limiter = newLimiter(cfg.TestRateLimit)
	f.concurrency = cfg.HealthConcurrency
	f.healthLimit = cfg.HealthTimeout
	s, password, ok, err := cfg.SMTP.settings()
	if err != nil {
		return fail(err)
	}
	if ok {
		if password != "" {
			// Sealed in memory like a stored secret, so every path reads
			// secrets the same way and none keeps it in the clear.
			sealed, err := process.Seal(secretPurposePrefix+SecretPassword, password)
			if err != nil {
				return fail(err)
			}
			s.Secrets = map[string]string{SecretPassword: sealed}
		}
		it := envIntegration(s)
		f.env = &it
	}
	svc.Mux.Route("GET /api/v1/integrations/email", f.list)
	svc.Mux.Route("POST /api/v1/integrations/email", f.create)
	svc.Mux.Route("GET /api/v1/integrations/email/{id}", f.get)
	svc.Mux.Route("PUT /api/v1/integrations/email/{id}", f.update)
	svc.Mux.Route("DELETE /api/v1/integrations/email/{id}", f.remove)
	svc.Mux.Route("POST /api/v1/integrations/email/{id}/test", f.test)
	svc.Mux.OnSource(events.Ping, events.MailHealthSource, f.healthTick)
	svc.Mux.OnSource(events.Ping, events.OutboxDrainSource, svc.DrainOutbox)
	svc.Mux.OnSource(events.Ping, events.PruneSource, svc.PruneProcessed)
	return nil
}

// envIntegration returns the env integration as SMTP_* make it, when
// SMTP_HOST is set; envRecord adds what is stored about it.
func (f *Function) envIntegration() (Integration, bool) {
	if f.env == nil {
		return Integration{}, false
	}
	return *f.env, true
}

// Stop drains the outbox and closes the pool.
func (f *Function) Stop(ctx context.Context) error {
	if f.svc == nil {
		return nil
	}
	return f.svc.Stop(ctx)
}

// Handle serves one request: a CloudEvent on the event path or a REST call.
func (f *Function) Handle(w http.ResponseWriter, r *http.Request) { f.svc.Handle(w, r) }

// Routes lists the REST route patterns, for the all-in-one.
func (f *Function) Routes() []string { return f.svc.Routes() }

// Ready is false before Start, and while event authentication is
// configured but its issuer's keys cannot be fetched.
func (f *Function) Ready(ctx context.Context) (bool, error) { return f.svc.Ready(ctx) }
