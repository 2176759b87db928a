package function

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/streamspace-dev/functions/shared/errs"
)

// Preset names a kind of identity provider whose claims and issuer follow
// known rules (docs/auth.md, "Providers").
type Preset string

// The presets.
const (
	PresetGeneric  Preset = "generic"
	PresetKeycloak Preset = "keycloak"
	PresetOkta     Preset = "okta"
	PresetAuth0    Preset = "auth0"
	PresetGoogle   Preset = "google"
	PresetAzure    Preset = "azure"
	PresetDex      Preset = "dex"
)

// Role is a StreamSpace role a role rule grants.
type Role string

// StreamSpace's roles.
const (
	RoleAdmin    Role = "admin"
	RoleOperator Role = "operator"
	RoleUser     Role = "user"
)

func (r Role) valid() bool { return r == RoleAdmin || r == RoleOperator || r == RoleUser }

// RoleRule grants Role to a user in Group. Rules are tried in order and the
// first match wins.
type RoleRule struct {
	Group string `yaml:"group"`
	Role  Role   `yaml:"role"`
}

// ClaimPaths name the claims a provider's tokens carry the user's details
// in, as dotted paths ("realm_access.roles"). A claim whose whole name
// contains dots (Auth0's namespaced "https://example.com/groups") is found
// by its full name first.
type ClaimPaths struct {
	Username string `yaml:"username"`
	Email    string `yaml:"email"`
	Name     string `yaml:"name"`
	Groups   string `yaml:"groups"`
	Roles    string `yaml:"roles"`
}

// ProviderConfig is one provider in OIDC_PROVIDERS_FILE.
type ProviderConfig struct {
	// ID names the provider in its routes: 1-32 of a-z, 0-9 and '-'.
	ID string `yaml:"id"`
	// DisplayName is what the login page shows.
	DisplayName string `yaml:"displayName"`
	// Preset applies a provider kind's defaults; empty is generic.
	Preset Preset `yaml:"preset"`
	// Issuer is the provider's issuer URL, where its discovery document is
	// (for Keycloak, the realm URL). Azure's is derived from TenantID when
	// empty.
	Issuer string `yaml:"issuer"`
	// ClientID is this application's client id at the provider.
	ClientID string `yaml:"clientId"`
	// ClientSecretFile is a file mounted from a Secret holding the client
	// secret; empty for a public client, which PKCE alone protects.
	ClientSecretFile string `yaml:"clientSecretFile"`
	// Scopes are asked for besides openid.
	Scopes []string `yaml:"scopes"`
	// Claims are the claim paths; the preset fills what is empty.
	Claims ClaimPaths `yaml:"claims"`
	// ClaimNamespace prefixes the groups and roles claims (Auth0 rules add
	// custom claims under a URL namespace).
	ClaimNamespace string `yaml:"claimNamespace"`
	// RequireEmailVerified refuses a token whose email_verified is not
	// true; on unless set to false.
	RequireEmailVerified *bool `yaml:"requireEmailVerified"`
	// AllowedEmailDomains, when set, are the only email domains admitted.
	AllowedEmailDomains []string `yaml:"allowedEmailDomains"`
	// AllowedGroups, when set, admit only users in one of them.
	AllowedGroups []string `yaml:"allowedGroups"`
	// RoleRules map groups to roles; without any, roles are left as
	// StreamSpace has them.
	RoleRules []RoleRule `yaml:"roleRules"`
	// SyncGroups makes the token's groups StreamSpace groups and
	// memberships.
	SyncGroups bool `yaml:"syncGroups"`
	// AllowHMAC accepts ID tokens signed with the client secret (HS256,
	// HS384, HS512) when discovery lists them.
	AllowHMAC bool `yaml:"allowHMAC"`
	// HostedDomain is the Google Workspace domain (the hd claim) admitted.
	HostedDomain string `yaml:"hostedDomain"`
	// TenantID is the Azure AD tenant whose tokens are admitted (the tid
	// claim).
	TenantID string `yaml:"tenantId"`
	// GroupOverage is what happens when Azure AD leaves the groups out of
	// the token because there are too many: only "refuse" is supported, as
	// reading them from Microsoft Graph needs a Graph permission.
	GroupOverage string `yaml:"groupOverage"`
}

// providersFile is OIDC_PROVIDERS_FILE's shape.
type providersFile struct {
	Providers []ProviderConfig `yaml:"providers"`
}

var providerID = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

// maxProvidersFile bounds what is read of OIDC_PROVIDERS_FILE.
const maxProvidersFile = 1 << 20

// loadProvidersFile reads and checks OIDC_PROVIDERS_FILE.
func loadProvidersFile(path string) ([]ProviderConfig, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("OIDC_PROVIDERS_FILE: %w", err)
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, maxProvidersFile+1))
	if err != nil {
		return nil, fmt.Errorf("OIDC_PROVIDERS_FILE: %w", err)
	}
	if len(raw) > maxProvidersFile {
		return nil, errors.New("OIDC_PROVIDERS_FILE: larger than 1 MiB")
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	var pf providersFile
	if err := dec.Decode(&pf); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("OIDC_PROVIDERS_FILE: %w", err)
	}
	return pf.Providers, nil
}

// applyPreset fills what the preset decides and the configuration left
// empty, then checks the provider.
func (p *ProviderConfig) applyPreset() error {
	if p.Preset == "" {
		p.Preset = PresetGeneric
	}
	def := ClaimPaths{Username: "preferred_username", Email: "email", Name: "name", Groups: "groups"}
	switch p.Preset {
	case PresetGeneric, PresetKeycloak, PresetOkta, PresetDex:
	case PresetAuth0:
		def.Username = "nickname"
		if p.ClaimNamespace != "" {
			ns := strings.TrimSuffix(p.ClaimNamespace, "/") + "/"
			def.Groups = ns + "groups"
			def.Roles = ns + "roles"
		}
	case PresetGoogle:
		// Google's ID tokens carry no groups and no username.
		def = ClaimPaths{Username: "email", Email: "email", Name: "name"}
		if p.Issuer == "" {
			p.Issuer = "https://accounts.google.com"
		}
	case PresetAzure:
		def.Groups = "groups"
		def.Roles = "roles"
		if p.Issuer == "" {
			if p.TenantID == "" {
				return fmt.Errorf("provider %q: azure needs issuer or tenantId", p.ID)
			}
			p.Issuer = "https://login.microsoftonline.com/" + url.PathEscape(p.TenantID) + "/v2.0"
		}
		if p.GroupOverage == "" {
			p.GroupOverage = "refuse"
		}
		if p.GroupOverage != "refuse" {
			return fmt.Errorf("provider %q: groupOverage %q: only \"refuse\" is supported", p.ID, p.GroupOverage)
		}
	default:
		return fmt.Errorf("provider %q: unknown preset %q", p.ID, p.Preset)
	}
	fill := func(dst *string, v string) {
		if *dst == "" {
			*dst = v
		}
	}
	fill(&p.Claims.Username, def.Username)
	fill(&p.Claims.Email, def.Email)
	fill(&p.Claims.Name, def.Name)
	fill(&p.Claims.Groups, def.Groups)
	fill(&p.Claims.Roles, def.Roles)
	if p.DisplayName == "" {
		p.DisplayName = p.ID
	}
	return p.validate()
}

func (p *ProviderConfig) validate() error {
	if !providerID.MatchString(p.ID) {
		return fmt.Errorf("provider id %q: want 1-32 of a-z, 0-9 and '-'", p.ID)
	}
	u, err := url.Parse(p.Issuer)
	if err != nil || u.Host == "" || (u.Scheme != "https" && !(u.Scheme == "http" && isLoopback(u.Hostname()))) {
		return fmt.Errorf("provider %q: issuer %q: want an https URL", p.ID, p.Issuer)
	}
	if p.ClientID == "" {
		return fmt.Errorf("provider %q: clientId is required", p.ID)
	}
	if p.AllowHMAC && p.ClientSecretFile == "" {
		return fmt.Errorf("provider %q: allowHMAC needs clientSecretFile", p.ID)
	}
	for i, r := range p.RoleRules {
		if r.Group == "" || !r.Role.valid() {
			return fmt.Errorf("provider %q: roleRules[%d]: want a group and a role of admin, operator or user", p.ID, i)
		}
	}
	return nil
}

func isLoopback(host string) bool {
	return host == "localhost" || host == "127.0.0.1" || host == "::1"
}

// requireEmailVerified is on unless turned off.
func (p *ProviderConfig) requireEmailVerified() bool {
	return p.RequireEmailVerified == nil || *p.RequireEmailVerified
}

// discovery is the part of a provider's discovery document used here.
type discovery struct {
	Issuer           string   `json:"issuer"`
	AuthEndpoint     string   `json:"authorization_endpoint"`
	TokenEndpoint    string   `json:"token_endpoint"`
	UserinfoEndpoint string   `json:"userinfo_endpoint"`
	JWKSURI          string   `json:"jwks_uri"`
	EndSession       string   `json:"end_session_endpoint"`
	SigningAlgs      []string `json:"id_token_signing_alg_values_supported"`
	CodeChallenge    []string `json:"code_challenge_methods_supported"`
}

// maxDocument bounds a discovery document, a JWKS or a userinfo answer.
const maxDocument = 1 << 20

// discoveryRetry is how soon a failed discovery is tried again.
const discoveryRetry = 10 * time.Second

// provider is a configured provider at run time: its configuration, its
// client secret, its discovery document once fetched and its keys.
type provider struct {
	cfg    ProviderConfig
	secret []byte
	client *http.Client

	mu       sync.Mutex
	disc     *discovery
	failedAt time.Time
	keys     *keyCache
}

// fetchJSON GETs u into v, bounded in size.
func fetchJSON(ctx context.Context, c *http.Client, u string, header http.Header, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxDocument+1))
	if err != nil {
		return err
	}
	if len(raw) > maxDocument {
		return errors.New("answer larger than 1 MiB")
	}
	return json.Unmarshal(raw, v)
}

// discover returns the provider's discovery document, fetched once and
// cached. A failure is answered 503 and tried again after discoveryRetry.
func (p *provider) discover(ctx context.Context) (*discovery, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.disc != nil {
		return p.disc, nil
	}
	if !p.failedAt.IsZero() && time.Since(p.failedAt) < discoveryRetry {
		return nil, errs.E(errs.Unavailable, "provider %s: discovery failed recently", p.cfg.ID)
	}
	d, err := p.fetchDiscovery(ctx)
	if err != nil {
		p.failedAt = time.Now()
		return nil, errs.Wrap(errs.Unavailable, err, "provider %s: discovery", p.cfg.ID)
	}
	p.disc = d
	p.keys = newKeyCache(p.client, d.JWKSURI)
	return d, nil
}

func (p *provider) fetchDiscovery(ctx context.Context) (*discovery, error) {
	u := strings.TrimSuffix(p.cfg.Issuer, "/") + "/.well-known/openid-configuration"
	var d discovery
	if err := fetchJSON(ctx, p.client, u, nil, &d); err != nil {
		return nil, err
	}
	return &d, p.checkDiscovery(&d)
}

// checkDiscovery refuses a document whose issuer is not exactly the
// configured one (Azure's multi-tenant template excepted, whose issuer is
// then checked per token against the tid claim), or which lacks what the
// code flow needs.
func (p *provider) checkDiscovery(d *discovery) error {
	if d.Issuer != p.cfg.Issuer && !p.issuerTemplate(d.Issuer) {
		return fmt.Errorf("issuer %q in the discovery document is not the configured %q", d.Issuer, p.cfg.Issuer)
	}
	for name, v := range map[string]string{"authorization_endpoint": d.AuthEndpoint, "token_endpoint": d.TokenEndpoint, "jwks_uri": d.JWKSURI} {
		if v == "" {
			return fmt.Errorf("discovery document has no %s", name)
		}
	}
	if len(d.CodeChallenge) > 0 && !slices.Contains(d.CodeChallenge, "S256") {
		return errors.New("provider does not support PKCE S256")
	}
	return nil
}

// issuerTemplate reports whether iss is Azure AD's multi-tenant issuer
// template, which an Azure provider configured with a tenant accepts.
func (p *provider) issuerTemplate(iss string) bool {
	return p.cfg.Preset == PresetAzure && p.cfg.TenantID != "" && strings.Contains(iss, "{tenantid}")
}

// expectedIssuer is the iss an ID token must carry.
func (p *provider) expectedIssuer(d *discovery) string {
	if p.issuerTemplate(d.Issuer) {
		return strings.ReplaceAll(d.Issuer, "{tenantid}", p.cfg.TenantID)
	}
	return d.Issuer
}
