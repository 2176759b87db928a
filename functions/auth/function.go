// Package function is the auth function: OpenID Connect login for
// StreamSpace. It lists the configured providers, runs the authorization
// code flow with PKCE, state and nonce bound to the browser, verifies the
// provider's ID token, maps its claims to a StreamSpace user (created or
// updated in StreamSpace's users table, groups synced), and issues the same
// HS256 token StreamSpace's own logins issue, so its API, its UI and these
// functions accept it. docs/auth.md describes it in full.
package function

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/runtime"
	"github.com/streamspace-dev/functions/shared/service"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/jackc/pgx/v5"
)

// Name is the function's name: its Service, its event source suffix and its
// log label.
const Name = "auth"

// Config is the auth function's environment.
type Config struct {
	// Base is what every function reads (docs/runtime.md). Its
	// STREAMSPACE_JWT_SECRET_FILE signs the tokens this function issues, as
	// StreamSpace's API does; with STREAMSPACE_REDIS_URL each token's
	// session:{jti} is written too.
	service.Base
	// SigningKeyFile, used only without STREAMSPACE_JWT_SECRET_FILE, is a
	// P-256 private key (PEM) mounted from a Secret: tokens are then ES256
	// with its kid, verified by these functions through the JWKS this
	// function serves. StreamSpace's API does not accept them.
	SigningKeyFile string `env:"AUTH_SIGNING_KEY_FILE"`
	// TokenAudience is the aud of ES256 tokens: the other functions'
	// AUTH_AUDIENCE.
	TokenAudience string `env:"AUTH_TOKEN_AUDIENCE" envDefault:"streamspace-api"`
	// PublicURL is where users reach these routes (scheme and host, no
	// path): the redirect_uri, the login cookie's host and the origin of
	// same-origin returnUrls come from it, never from Host headers.
	PublicURL string `env:"AUTH_PUBLIC_URL"`
	// AllowedReturnOrigins are other origins a returnUrl may point to
	// ("https://host[:port]", comma-separated).
	AllowedReturnOrigins []string `env:"AUTH_ALLOWED_RETURN_ORIGINS" envSeparator:","`
	// ProvidersFile is the providers' YAML, mounted from a ConfigMap.
	ProvidersFile string `env:"OIDC_PROVIDERS_FILE"`
	// TokenTTL is the issued tokens' lifetime, 24 h as StreamSpace's.
	TokenTTL time.Duration `env:"AUTH_TOKEN_TTL" envDefault:"24h"`
	// StateKeyFile holds the key that seals the login cookie; unset, a key
	// is derived from StreamSpace's JWT secret.
	StateKeyFile string `env:"AUTH_STATE_KEY_FILE"`
	// ProviderTimeout bounds each call to a provider.
	ProviderTimeout time.Duration `env:"AUTH_PROVIDER_TIMEOUT" envDefault:"10s"`
	// ProviderURL, with ClientID, defines one more provider, "default"
	// (the seed's single-provider variables).
	ProviderURL string `env:"OIDC_PROVIDER_URL"`
	// ClientID is the default provider's client id.
	ClientID string `env:"OIDC_CLIENT_ID"`
	// ClientSecret is refused: the secret comes from a file.
	ClientSecret string `env:"OIDC_CLIENT_SECRET"`
	// ClientSecretFile is the default provider's client secret, a file
	// mounted from a Secret.
	ClientSecretFile string `env:"OIDC_CLIENT_SECRET_FILE"`
	// RedirectURI, when set, must be the callback under AUTH_PUBLIC_URL.
	RedirectURI string `env:"OIDC_REDIRECT_URI"`
	// Scopes are the default provider's scopes besides openid (comma or
	// space separated).
	Scopes string `env:"OIDC_SCOPES" envDefault:"profile,email"`
	// UsernameClaim, EmailClaim and GroupsClaim are the default
	// provider's claim paths.
	UsernameClaim string `env:"OIDC_USERNAME_CLAIM"`
	EmailClaim    string `env:"OIDC_EMAIL_CLAIM"`
	GroupsClaim   string `env:"OIDC_GROUPS_CLAIM"`
}

// Validate checks what the env tags cannot express.
func (c *Config) Validate() error {
	if c.ProviderURL == "" && c.ClientID == "" && c.ProvidersFile == "" {
		return fmt.Errorf("config: OIDC_PROVIDERS_FILE or OIDC_PROVIDER_URL is required: %w", runtime.ErrNotConfigured)
	}
	if c.ClientSecret != "" {
		return errors.New("config: OIDC_CLIENT_SECRET: put the client secret in a file mounted from a Secret and name it with OIDC_CLIENT_SECRET_FILE")
	}
	if (c.StreamSpaceJWTSecretFile == "") == (c.SigningKeyFile == "") {
		return errors.New("config: set STREAMSPACE_JWT_SECRET_FILE (StreamSpace's tokens) or AUTH_SIGNING_KEY_FILE (ES256 tokens for these functions only), not both")
	}
	if c.TokenTTL < time.Minute || c.TokenTTL > 7*24*time.Hour {
		return fmt.Errorf("config: AUTH_TOKEN_TTL %s: want 1m to 168h", c.TokenTTL)
	}
	if c.ProviderTimeout <= 0 {
		return fmt.Errorf("config: AUTH_PROVIDER_TIMEOUT %s: want more than zero", c.ProviderTimeout)
	}
	if (c.ProviderURL == "") != (c.ClientID == "") {
		return errors.New("config: OIDC_PROVIDER_URL and OIDC_CLIENT_ID are set together or not at all")
	}
	if c.PublicURL == "" {
		return errors.New("config: AUTH_PUBLIC_URL is required")
	}
	return nil
}

// origin checks AUTH_PUBLIC_URL and each allowed origin: https (http only
// on loopback), a host, nothing else.
func origin(name, raw string) (string, error) {
	u, err := url.Parse(strings.TrimSuffix(raw, "/"))
	if err != nil || u.Host == "" || u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" ||
		(u.Scheme != "https" && !(u.Scheme == "http" && isLoopback(u.Hostname()))) {
		return "", fmt.Errorf("config: %s %q: want https://host[:port]", name, raw)
	}
	return u.Scheme + "://" + strings.ToLower(u.Host), nil
}

// Function serves the auth routes.
type Function struct {
	svc          *service.Service
	public       string
	returns      ReturnPolicy
	providers    map[string]*provider
	order        []string
	sealer       sealer
	issuer       *issuer
	completePage []byte
	completeCSP  string
}

// New returns an unstarted auth function.
func New() *Function { return &Function{} }

// Start reads the config and the providers, connects, and registers the
// routes and the PingSource handlers. Providers are discovered on first
// use, so a provider that is down does not stop the others.
func (f *Function) Start(ctx context.Context, env map[string]string) error {
	var cfg Config
	if err := service.Load(env, &cfg); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	public, err := origin("AUTH_PUBLIC_URL", cfg.PublicURL)
	if err != nil {
		return err
	}
	origins := make([]string, 0, len(cfg.AllowedReturnOrigins))
	for _, o := range cfg.AllowedReturnOrigins {
		if o = strings.TrimSpace(o); o == "" {
			continue
		}
		o, err := origin("AUTH_ALLOWED_RETURN_ORIGINS", o)
		if err != nil {
			return err
		}
		origins = append(origins, o)
	}
	page, csp, err := completeAssets(origins)
	if err != nil {
		return err
	}
	confs, err := providerConfigs(cfg, public)
	if err != nil {
		return err
	}
	is := &issuer{ttl: cfg.TokenTTL}
	var material []byte
	if cfg.StreamSpaceJWTSecretFile != "" {
		if is.secret, err = authn.ReadSecretFile(cfg.StreamSpaceJWTSecretFile); err != nil {
			return fmt.Errorf("config: %w", err)
		}
		material = is.secret
	} else {
		if is.es, material, err = loadSigningKey(cfg.SigningKeyFile, public+issuerPath, cfg.TokenAudience); err != nil {
			return fmt.Errorf("config: %w", err)
		}
	}
	if cfg.StateKeyFile != "" {
		if material, err = readClientSecret(cfg.StateKeyFile); err != nil {
			return fmt.Errorf("config: AUTH_STATE_KEY_FILE: %w", err)
		}
		if len(material) < 32 {
			return errors.New("config: AUTH_STATE_KEY_FILE: want at least 32 bytes of key")
		}
	}
	seal, err := newSealer(material)
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: cfg.ProviderTimeout}
	providers := make(map[string]*provider, len(confs))
	order := make([]string, 0, len(confs))
	for _, pc := range confs {
		if _, dup := providers[pc.ID]; dup {
			return fmt.Errorf("config: provider %q is defined twice", pc.ID)
		}
		var sec []byte
		if pc.ClientSecretFile != "" {
			if sec, err = readClientSecret(pc.ClientSecretFile); err != nil {
				return fmt.Errorf("config: provider %q: clientSecretFile: %w", pc.ID, err)
			}
		}
		providers[pc.ID] = &provider{cfg: pc, secret: sec, client: client}
		order = append(order, pc.ID)
	}
	if cfg.StreamSpaceRedisURL != "" && is.es == nil {
		opts, err := redis.ParseURL(cfg.StreamSpaceRedisURL)
		if err != nil {
			return errors.New("config: STREAMSPACE_REDIS_URL is not a Redis URL")
		}
		is.redis = redis.NewClient(opts)
	}
	svc, err := service.Start(ctx, Name, env, &cfg, events.Validate)
	if err != nil {
		if is.redis != nil {
			is.redis.Close()
		}
		return err
	}
	f.svc = svc
	f.public = public
	f.returns = ReturnPolicy{Public: public, Origins: origins}
	f.providers, f.order = providers, order
	f.sealer = seal
	f.issuer = is
	f.completePage, f.completeCSP = page, csp
	svc.Mux.Public("GET "+basePath+"/providers", f.listProviders)
	svc.Mux.Public("GET "+basePath+"/{provider}/login", f.login)
	svc.Mux.Public("GET "+basePath+"/{provider}/callback", f.callback)
	svc.Mux.Public("GET "+completePath, f.complete)
	svc.Mux.Public("GET "+basePath+"/{provider}/logout", f.logout)
	if is.es != nil {
		svc.Mux.Public("GET "+jwksPath, f.jwks)
		svc.Mux.Public("GET "+discoveryPath, f.discovery)
	}
	svc.Mux.OnSource(events.Ping, events.OutboxDrainSource, svc.DrainOutbox)
	svc.Mux.OnSource(events.Ping, events.PruneSource, f.prune)
	return nil
}

// providerConfigs gathers the providers: the file's, then "default" from
// the single-provider variables.
func providerConfigs(cfg Config, public string) ([]ProviderConfig, error) {
	var confs []ProviderConfig
	if cfg.ProvidersFile != "" {
		var err error
		if confs, err = loadProvidersFile(cfg.ProvidersFile); err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
	}
	if cfg.ProviderURL != "" {
		if cfg.RedirectURI != "" && cfg.RedirectURI != public+callbackPath("default") {
			return nil, fmt.Errorf("config: OIDC_REDIRECT_URI must be %s", public+callbackPath("default"))
		}
		scopes := strings.FieldsFunc(cfg.Scopes, func(r rune) bool { return r == ',' || r == ' ' })
		confs = append(confs, ProviderConfig{
			ID: "default", DisplayName: "Single sign-on", Issuer: cfg.ProviderURL,
			ClientID: cfg.ClientID, ClientSecretFile: cfg.ClientSecretFile, Scopes: withoutOpenID(scopes),
			Claims: ClaimPaths{Username: cfg.UsernameClaim, Email: cfg.EmailClaim, Groups: cfg.GroupsClaim},
		})
	}
	if len(confs) == 0 {
		return nil, errors.New("config: OIDC_PROVIDERS_FILE defines no provider")
	}
	for i := range confs {
		if err := confs[i].applyPreset(); err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		confs[i].Scopes = withoutOpenID(confs[i].Scopes)
	}
	return confs, nil
}

func withoutOpenID(scopes []string) []string {
	out := scopes[:0:0]
	for _, s := range scopes {
		if s != "openid" && s != "" {
			out = append(out, s)
		}
	}
	return out
}

// readClientSecret reads a secret file (a client secret, the state key):
// its content, trailing newline removed. Errors never contain the content.
func readClientSecret(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s := strings.TrimRight(string(raw), "\r\n")
	if s == "" {
		return nil, errors.New("empty")
	}
	return []byte(s), nil
}

// Stop sends what the outbox still holds, within a bound, and closes the
// pool and the session store client.
func (f *Function) Stop(ctx context.Context) error {
	if f.issuer != nil && f.issuer.redis != nil {
		f.issuer.redis.Close()
	}
	return f.svc.Stop(ctx)
}

// Handle serves the routes and events; before Start it answers 503.
func (f *Function) Handle(w http.ResponseWriter, r *http.Request) { f.svc.Handle(w, r) }

// Routes lists the REST patterns served, for the all-in-one function.
func (f *Function) Routes() []string { return f.svc.Routes() }

// Ready is false before Start, and while event authentication is configured
// but its issuer's keys cannot be fetched.
func (f *Function) Ready(ctx context.Context) (bool, error) { return f.svc.Ready(ctx) }

// prune is the processed-events-prune PingSource's handler: the records of
// processed events past their retention go, and so do used login states
// past their lifetime.
func (f *Function) prune(ctx context.Context, e cloudevents.Event) error {
	if err := f.svc.PruneProcessed(ctx, e); err != nil {
		return err
	}
	return db.InTx(ctx, f.svc.Pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, pruneStatesSQL)
		return err
	})
}
