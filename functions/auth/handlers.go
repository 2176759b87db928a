package function

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/jackc/pgx/v5"
	"golang.org/x/oauth2"

	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/runtime"
)

// Paths of the routes, under the public URL.
const (
	basePath     = "/api/v1/auth/oidc"
	completePath = basePath + "/complete"
	// issuerPath is the issuer of ES256 tokens, under which their keys and
	// discovery document are served.
	issuerPath    = "/api/v1/auth"
	jwksPath      = issuerPath + "/.well-known/jwks.json"
	discoveryPath = issuerPath + "/.well-known/openid-configuration"
)

func loginPath(id string) string    { return basePath + "/" + id + "/login" }
func callbackPath(id string) string { return basePath + "/" + id + "/callback" }

// ProviderInfo is one entry of GET …/providers: nothing secret.
type ProviderInfo struct {
	ID          string `json:"id"`
	DisplayName string `json:"displayName"`
	LoginURL    string `json:"loginUrl"`
}

// LoginResult is the callback's JSON answer: the shape StreamSpace's SAML
// login returns (token, expiresAt, user, returnUrl).
type LoginResult struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expiresAt"`
	User      User      `json:"user"`
	ReturnURL string    `json:"returnUrl"`
}

// Outcome is how a callback ended, for the request's log line.
type Outcome string

// The outcomes.
const (
	OutcomeLoggedIn Outcome = "logged_in"
	OutcomeCreated  Outcome = "created"
	OutcomeRefused  Outcome = "refused"
)

func (f *Function) listProviders(w http.ResponseWriter, _ *http.Request) error {
	out := make([]ProviderInfo, 0, len(f.order))
	for _, id := range f.order {
		p := f.providers[id]
		out = append(out, ProviderInfo{ID: id, DisplayName: p.cfg.DisplayName, LoginURL: f.public + loginPath(id)})
	}
	w.Header().Set("Cache-Control", "no-store")
	runtime.WriteJSON(w, http.StatusOK, out)
	return nil
}

// oauthConfig is the code flow's client for p.
func (f *Function) oauthConfig(p *provider, d *discovery) *oauth2.Config {
	scopes := append([]string{"openid"}, p.cfg.Scopes...)
	return &oauth2.Config{
		ClientID:     p.cfg.ClientID,
		ClientSecret: string(p.secret),
		Endpoint:     oauth2.Endpoint{AuthURL: d.AuthEndpoint, TokenURL: d.TokenEndpoint},
		RedirectURL:  f.public + callbackPath(p.cfg.ID),
		Scopes:       scopes,
	}
}

func (f *Function) login(w http.ResponseWriter, r *http.Request) error {
	p, err := f.providerFrom(r)
	if err != nil {
		return err
	}
	ret, err := f.returns.Check(r.URL.Query().Get("returnUrl"))
	if err != nil {
		return err
	}
	d, err := p.discover(r.Context())
	if err != nil {
		return err
	}
	state, err := randomToken(32)
	if err != nil {
		return err
	}
	nonce, err := randomToken(32)
	if err != nil {
		return err
	}
	verifier := oauth2.GenerateVerifier()
	cookie, err := f.sealer.seal(pending{
		Provider: p.cfg.ID, State: state, Nonce: nonce, Verifier: verifier,
		ReturnURL: ret, Expires: time.Now().Add(loginTTL).Unix(),
	})
	if err != nil {
		return err
	}
	http.SetCookie(w, loginCookie(callbackPath(p.cfg.ID), cookie, int(loginTTL/time.Second)))
	target := f.oauthConfig(p, d).AuthCodeURL(state,
		oauth2.S256ChallengeOption(verifier),
		oauth2.SetAuthURLParam("nonce", nonce))
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Referrer-Policy", "no-referrer")
	http.Redirect(w, r, target, http.StatusFound)
	return nil
}

// callback finishes a login (docs/auth.md, "The callback").
func (f *Function) callback(w http.ResponseWriter, r *http.Request) error {
	p, err := f.providerFrom(r)
	if err != nil {
		return err
	}
	// The cookie is single-use whatever happens next.
	http.SetCookie(w, loginCookie(callbackPath(p.cfg.ID), "", -1))
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Referrer-Policy", "no-referrer")
	cb, err := callbackQuery(r).Validate()
	if err != nil {
		return err
	}
	c, err := r.Cookie(cookieName)
	if err != nil {
		return errs.E(errs.Unauthenticated, "login cookie missing; start the login again")
	}
	pend, err := f.sealer.open(c.Value, p.cfg.ID, time.Now())
	if err != nil {
		return err
	}
	if !matchState(cb.State, pend.State) {
		return errs.E(errs.Unauthenticated, "state does not match this browser's login")
	}
	if err := f.svc.Commit(r.Context(), func(tx pgx.Tx) ([]cloudevents.Event, error) {
		return nil, consumeState(r.Context(), tx, pend.State, time.Unix(pend.Expires, 0))
	}); err != nil {
		return err
	}
	m, err := f.verifyLogin(r.Context(), p, cb.Code, pend)
	if err != nil {
		if errs.KindOf(err) == errs.Forbidden {
			runtime.AddLogAttrs(r.Context(), slog.String("outcome", string(OutcomeRefused)), slog.String("provider", p.cfg.ID))
		}
		return err
	}
	return f.finish(w, r, p, m, pend.ReturnURL)
}

// verifyLogin exchanges the code with the PKCE verifier, verifies the ID
// token, merges userinfo and maps the claims.
func (f *Function) verifyLogin(ctx context.Context, p *provider, code string, pend pending) (Mapped, error) {
	d, err := p.discover(ctx)
	if err != nil {
		return Mapped{}, err
	}
	xctx := context.WithValue(ctx, oauth2.HTTPClient, p.client)
	tok, err := f.oauthConfig(p, d).Exchange(xctx, code, oauth2.VerifierOption(pend.Verifier))
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) {
			// Never logged in full: the answer may echo the code.
			return Mapped{}, errs.E(errs.Unauthenticated, "the provider refused the code (%s)", re.ErrorCode)
		}
		return Mapped{}, errs.Wrap(errs.Unavailable, errors.New("token endpoint unreachable"), "provider %s: token exchange", p.cfg.ID)
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return Mapped{}, errs.E(errs.Unauthenticated, "the provider sent no ID token")
	}
	claims, err := p.verifyIDToken(ctx, raw, idTokenCheck{
		Issuer: p.expectedIssuer(d), ClientID: p.cfg.ClientID, Nonce: pend.Nonce,
		Algs: p.allowedAlgs(d), Now: time.Now(),
	})
	if err != nil {
		return Mapped{}, err
	}
	if d.UserinfoEndpoint != "" && tok.AccessToken != "" {
		info, err := p.fetchUserinfo(ctx, d, tok.AccessToken)
		if err != nil {
			return Mapped{}, err
		}
		if err := claims.mergeUserinfo(info); err != nil {
			return Mapped{}, err
		}
	}
	return mapClaims(&p.cfg, claims)
}

// finish commits the login (user, groups, audit row, user.login event),
// issues the token and answers.
func (f *Function) finish(w http.ResponseWriter, r *http.Request, p *provider, m Mapped, returnURL string) error {
	var login Login
	err := f.svc.Commit(r.Context(), func(tx pgx.Tx) ([]cloudevents.Event, error) {
		var err error
		login, err = loginUser(r.Context(), tx, f.svc.Log, p.cfg.ID, p.cfg.SyncGroups, m, clientIP(r))
		if err != nil {
			return nil, err
		}
		e, err := userLogin(login.User, p.cfg.ID)
		return []cloudevents.Event{e}, err
	})
	if err != nil {
		if errs.KindOf(err) == errs.Forbidden {
			runtime.AddLogAttrs(r.Context(), slog.String("outcome", string(OutcomeRefused)), slog.String("provider", p.cfg.ID))
		}
		return err
	}
	issued, err := f.issuer.issue(r.Context(), login.User, clientIP(r), r.UserAgent())
	if err != nil {
		return err
	}
	outcome := OutcomeLoggedIn
	if login.Created {
		outcome = OutcomeCreated
	}
	runtime.AddLogAttrs(r.Context(), slog.String("outcome", string(outcome)), slog.String("provider", p.cfg.ID),
		slog.String("user", login.User.ID), slog.Int("groupsSkipped", login.Skipped))
	if wantsJSON(r) {
		runtime.WriteJSON(w, http.StatusOK, LoginResult{Token: issued.Token, ExpiresAt: issued.ExpiresAt, User: login.User, ReturnURL: returnURL})
		return nil
	}
	user, err := json.Marshal(login.User)
	if err != nil {
		return err
	}
	frag := url.Values{
		"token":     {issued.Token},
		"expiresAt": {issued.ExpiresAt.UTC().Format(time.RFC3339Nano)},
		"user":      {base64.RawURLEncoding.EncodeToString(user)},
		"returnUrl": {returnURL},
	}
	// The token travels in the fragment, which browsers never send to a
	// server, so it reaches no log and no Referer.
	http.Redirect(w, r, f.public+completePath+"#"+frag.Encode(), http.StatusFound)
	return nil
}

func (f *Function) complete(w http.ResponseWriter, _ *http.Request) error {
	serveComplete(w, f.completePage, f.completeCSP)
	return nil
}

// jwks serves the ES256 tokens' public key.
func (f *Function) jwks(w http.ResponseWriter, _ *http.Request) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	w.Write(f.issuer.es.jwks)
	return nil
}

// TokenDiscovery is the discovery document of the ES256 tokens' issuer:
// where verifiers find its keys.
type TokenDiscovery struct {
	Issuer     string   `json:"issuer"`
	JWKSURI    string   `json:"jwks_uri"`
	SigningAlg []string `json:"id_token_signing_alg_values_supported"`
	Subjects   []string `json:"subject_types_supported"`
	Responses  []string `json:"response_types_supported"`
}

func (f *Function) discovery(w http.ResponseWriter, _ *http.Request) error {
	w.Header().Set("Cache-Control", "public, max-age=300")
	runtime.WriteJSON(w, http.StatusOK, TokenDiscovery{
		Issuer: f.issuer.es.issuer, JWKSURI: f.public + jwksPath, SigningAlg: []string{"ES256"},
		Subjects: []string{"public"}, Responses: []string{"code"},
	})
	return nil
}

// logout ends the provider's session where it offers RP-initiated logout
// (end_session_endpoint), then the user lands on returnUrl.
func (f *Function) logout(w http.ResponseWriter, r *http.Request) error {
	p, err := f.providerFrom(r)
	if err != nil {
		return err
	}
	ret, err := f.returns.Check(r.URL.Query().Get("returnUrl"))
	if err != nil {
		return err
	}
	if strings.HasPrefix(ret, "/") {
		ret = f.public + ret
	}
	w.Header().Set("Cache-Control", "no-store")
	d, err := p.discover(r.Context())
	if err != nil {
		return err
	}
	if d.EndSession == "" {
		http.Redirect(w, r, ret, http.StatusFound)
		return nil
	}
	u, err := url.Parse(d.EndSession)
	if err != nil {
		return errs.Wrap(errs.Unavailable, err, "provider %s: end_session_endpoint", p.cfg.ID)
	}
	q := u.Query()
	q.Set("client_id", p.cfg.ClientID)
	q.Set("post_logout_redirect_uri", ret)
	u.RawQuery = q.Encode()
	http.Redirect(w, r, u.String(), http.StatusFound)
	return nil
}

// clientIP is the caller's address for the audit row: the first
// X-Forwarded-For entry (the ingress sets it) or the peer.
func clientIP(r *http.Request) string {
	if xff := r.Header.Get("X-Forwarded-For"); xff != "" {
		first, _, _ := strings.Cut(xff, ",")
		if a, err := netip.ParseAddr(strings.TrimSpace(first)); err == nil {
			return a.WithZone("").String()
		}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return a.WithZone("").String()
	}
	return ""
}
