package function_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	function "github.com/streamspace-dev/functions/functions/auth"
	tags "github.com/streamspace-dev/functions/functions/tags"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/oidctest"
)

// hydraEnv is the auth function behind a front server (the ingress: its
// URL is AUTH_PUBLIC_URL, known before the function starts) with Ory
// Hydra as provider "hydra".
type hydraEnv struct {
	h      *fntest.Harness
	hydra  *oidctest.Hydra
	client oidctest.Client
	front  string
}

func startHydra(t *testing.T, extra string) *hydraEnv {
	t.Helper()
	hy := oidctest.Shared(t)
	var target atomic.Pointer[url.URL]
	front := httptest.NewServer(&httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(target.Load())
		r.SetXForwarded()
	}})
	t.Cleanup(front.Close)
	client := hy.NewClient(t, []string{front.URL + "/api/v1/auth/oidc/hydra/callback"}, []string{front.URL + "/"})
	secret := writeFile(t, "hydra-secret", client.Secret+"\n")
	file := writeFile(t, "providers.yaml", `providers:
  - id: hydra
    displayName: Ory Hydra
    issuer: `+hy.Issuer+`
    clientId: `+client.ID+`
    clientSecretFile: `+secret+`
    scopes: [profile, email, groups]
`+extra)
	h := fntest.Start(t, function.New(), map[string]string{
		"AUTH_PUBLIC_URL":     front.URL,
		"OIDC_PROVIDERS_FILE": file,
	})
	u, err := url.Parse(h.URL)
	require.NoError(t, err)
	target.Store(u)
	return &hydraEnv{h: h, hydra: hy, client: client, front: front.URL}
}

// insecureJar is a cookie jar that also sends Secure cookies over the
// loopback http of the test, as a browser does for localhost.
type insecureJar struct{ *cookiejar.Jar }

func (j insecureJar) SetCookies(u *url.URL, cookies []*http.Cookie) {
	for _, c := range cookies {
		c.Secure = false
	}
	j.Jar.SetCookies(u, cookies)
}

func newBrowserClient(t *testing.T, stopAt func(*url.URL) bool) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	require.NoError(t, err)
	return &http.Client{Jar: insecureJar{jar}, Timeout: patience, CheckRedirect: func(r *http.Request, _ []*http.Request) error {
		if stopAt != nil && stopAt(r.URL) {
			return http.ErrUseLastResponse
		}
		return nil
	}}
}

// loginAs runs the whole flow through Hydra as user with a client that
// follows redirects and keeps cookies, and returns the callback's answer
// (JSON).
func (e *hydraEnv) loginAs(t *testing.T, c *http.Client, user oidctest.User) (int, []byte) {
	t.Helper()
	e.hydra.SetUser(e.client.ID, user)
	req, err := http.NewRequest(http.MethodGet, e.front+"/api/v1/auth/oidc/hydra/login?returnUrl=%2Fhome", nil)
	require.NoError(t, err)
	req.Header.Set("Accept", "application/json")
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, body
}

func hydraUser(sub string, groups ...string) oidctest.User {
	g := make([]any, len(groups))
	for i, s := range groups {
		g[i] = s
	}
	return oidctest.User{Subject: sub, Claims: map[string]any{
		"email": sub + "@example.com", "email_verified": true, "preferred_username": sub,
		"name": "Hydra " + sub, "groups": g,
	}}
}

// TestHydraLogin: full flows against a real OpenID provider: a first login
// makes the user and groups and a token the tags function accepts; a
// second login with changed groups changes memberships and the role; the
// mapping's refusals and an inactive user end with no token.
func TestHydraLogin(t *testing.T) {
	e := startHydra(t, `    syncGroups: true
    allowedEmailDomains: [example.com]
    roleRules:
      - {group: admins, role: admin}
`)
	status, body := e.loginAs(t, newBrowserClient(t, nil), hydraUser("hy-alice", "admins", "engineering"))
	require.Equal(t, http.StatusOK, status, "%s\n%s", body, e.hydra.Logs())
	res := loginResult(t, body)
	assert.Equal(t, "hy-alice", res.User.Username)
	assert.Equal(t, "admin", res.User.Role)
	assert.Equal(t, "/home", res.ReturnURL)
	assert.Equal(t, []string{"hydra/admins", "hydra/engineering"}, groupNames(t, &env{h: e.h}, res.User.ID))
	tagsFn := fntest.StartOn(t, e.h.Pool, tags.New(), map[string]string{
		"STREAMSPACE_JWT_SECRET_FILE": e.h.Env["STREAMSPACE_JWT_SECRET_FILE"],
	})
	st, out := tagsFn.Do(http.MethodGet, "/api/v1/search/filters/tags", res.Token, nil)
	assert.Equal(t, http.StatusOK, st, "%s", out)
	for _, secret := range []string{res.Token, e.client.Secret} {
		assert.NotContains(t, e.h.Logs.String(), secret, "a secret in the function's log")
	}

	t.Run("second login with changed groups", func(t *testing.T) {
		status, body := e.loginAs(t, newBrowserClient(t, nil), hydraUser("hy-alice", "engineering", "design"))
		require.Equal(t, http.StatusOK, status, "%s", body)
		again := loginResult(t, body)
		assert.Equal(t, res.User.ID, again.User.ID)
		assert.Equal(t, "user", again.User.Role)
		assert.Equal(t, []string{"hydra/design", "hydra/engineering"}, groupNames(t, &env{h: e.h}, res.User.ID))
	})

	refusals := []struct {
		name string
		user oidctest.User
	}{
		{name: "unverified email", user: func() oidctest.User {
			u := hydraUser("hy-bob")
			u.Claims["email_verified"] = false
			return u
		}()},
		{name: "disallowed domain", user: func() oidctest.User {
			u := hydraUser("hy-carol")
			u.Claims["email"] = "carol@evil.example"
			return u
		}()},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			status, body := e.loginAs(t, newBrowserClient(t, nil), tc.user)
			assert.Equal(t, http.StatusForbidden, status, "%s", body)
			assert.NotContains(t, string(body), `"token":`)
			assert.Equal(t, 0, e.h.Count(`select count(*) from auth_identities where subject = $1`, tc.user.Subject))
		})
	}
	t.Run("inactive user", func(t *testing.T) {
		_, err := e.h.Pool.Exec(context.Background(), `update users set active = false where id = $1`, res.User.ID)
		require.NoError(t, err)
		status, body := e.loginAs(t, newBrowserClient(t, nil), hydraUser("hy-alice", "engineering"))
		assert.Equal(t, http.StatusForbidden, status, "%s", body)
		assert.NotContains(t, string(body), `"token":`)
	})
}

// TestHydraRefusesWrongVerifierAndReplay: Hydra refuses a code sent with
// another login's PKCE verifier, and a code used before.
func TestHydraRefusesWrongVerifierAndReplay(t *testing.T) {
	e := startHydra(t, "")
	e.hydra.SetUser(e.client.ID, hydraUser("hy-dave"))
	isCallback := func(u *url.URL) bool { return strings.HasSuffix(u.Path, "/callback") }
	// stopped runs a login up to the provider's redirect to the callback and
	// returns that redirect's query, with the client holding the cookie.
	stopped := func(c *http.Client) url.Values {
		resp, err := c.Get(e.front + "/api/v1/auth/oidc/hydra/login")
		require.NoError(t, err)
		resp.Body.Close()
		require.Contains(t, []int{http.StatusFound, http.StatusSeeOther}, resp.StatusCode)
		loc, err := url.Parse(resp.Header.Get("Location"))
		require.NoError(t, err)
		require.True(t, isCallback(loc), loc.String())
		return loc.Query()
	}
	callback := func(c *http.Client, q url.Values) (int, []byte) {
		req, err := http.NewRequest(http.MethodGet, e.front+"/api/v1/auth/oidc/hydra/callback?"+q.Encode(), nil)
		require.NoError(t, err)
		req.Header.Set("Accept", "application/json")
		resp, err := c.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, body
	}

	c := newBrowserClient(t, isCallback)
	first := stopped(c)
	second := stopped(c) // a second login: the cookie now holds its verifier and state
	status, body := callback(c, url.Values{"state": {second.Get("state")}, "code": {first.Get("code")}})
	assert.Equal(t, http.StatusUnauthorized, status, "%s", body)
	_, msg := fntest.ErrorBody(t, body)
	assert.Contains(t, msg, "refused the code")

	c = newBrowserClient(t, isCallback)
	q := stopped(c)
	status, body = callback(c, q)
	require.Equal(t, http.StatusOK, status, "%s", body)
	var res map[string]any
	require.NoError(t, json.Unmarshal(body, &res))
	// The same code again, with a fresh login's state and cookie.
	next := stopped(c)
	status, body = callback(c, url.Values{"state": {next.Get("state")}, "code": {q.Get("code")}})
	assert.Equal(t, http.StatusUnauthorized, status, "%s", body)
}
