package function_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	function "github.com/streamspace-dev/functions/functions/auth"
	tags "github.com/streamspace-dev/functions/functions/tags"
	"github.com/streamspace-dev/functions/shared/authn/localissuer"
	"github.com/streamspace-dev/functions/shared/fntest"
)

func TestProviders(t *testing.T) {
	e := startLoop(t, "", nil)
	status, body := e.h.Do(http.MethodGet, "/api/v1/auth/oidc/providers", "", nil)
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.JSONEq(t, `[{"id":"loop","displayName":"Loopback","loginUrl":"https://streamspace.test/api/v1/auth/oidc/loop/login"}]`, string(body))
}

// TestLoginRedirect: the login redirects to the provider with the code
// flow's parameters, and binds state, nonce and verifier to the browser
// with a sealed cookie limited to the callback.
func TestLoginRedirect(t *testing.T) {
	e := startLoop(t, "", nil)
	a := e.login(t, "loop", "/sessions")
	b := e.login(t, "loop", "/sessions")
	q := a.location.Query()
	assert.Equal(t, e.op.URL()+"/authorize", a.location.Scheme+"://"+a.location.Host+a.location.Path)
	assert.Equal(t, "code", q.Get("response_type"))
	assert.Equal(t, "streamspace", q.Get("client_id"))
	assert.Equal(t, publicURL+"/api/v1/auth/oidc/loop/callback", q.Get("redirect_uri"))
	assert.Equal(t, "openid profile email groups", q.Get("scope"))
	assert.Equal(t, "S256", q.Get("code_challenge_method"))
	state, err := base64.RawURLEncoding.DecodeString(a.state)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, len(state)*8, 128, "state bits")
	assert.NotEqual(t, a.state, b.state)
	assert.NotEqual(t, a.nonce, b.nonce)
	assert.NotEmpty(t, a.nonce)
	assert.Len(t, a.challenge, 43)

	c := a.cookie
	assert.Equal(t, "__Secure-streamspace-oidc", c.Name)
	assert.True(t, c.HttpOnly)
	assert.True(t, c.Secure)
	assert.Equal(t, http.SameSiteLaxMode, c.SameSite)
	assert.Equal(t, 600, c.MaxAge)
	assert.Equal(t, "/api/v1/auth/oidc/loop/callback", c.Path)
	assert.Empty(t, c.Domain, "host-only on the public URL's host")
	for _, secret := range []string{a.state, a.nonce} {
		assert.NotContains(t, c.Value, secret, "the cookie is sealed")
	}
}

// TestLoginCreatesUserAndIssuesToken: a first login makes the StreamSpace
// user, its identity, the provider's groups and memberships, an audit row
// and a user.login event, and answers with a StreamSpace token that the
// tags function accepts.
func TestLoginCreatesUserAndIssuesToken(t *testing.T) {
	e := startLoop(t, `    syncGroups: true
    roleRules:
      - {group: admins, role: admin}
`, nil)
	resp, body := e.complete(t, "alice", nil, true)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	res := loginResult(t, body)
	assert.Equal(t, "/sessions", res.ReturnURL)
	assert.Equal(t, "alice", res.User.Username)
	assert.Equal(t, "alice@example.com", res.User.Email)
	assert.Equal(t, "User alice", res.User.FullName)
	assert.Equal(t, "admin", res.User.Role)
	assert.Equal(t, "oidc", res.User.Provider)
	assert.True(t, res.User.Active)
	assert.Len(t, res.User.Groups, 2)
	assert.WithinDuration(t, time.Now().Add(24*time.Hour), res.ExpiresAt, time.Hour)

	assert.Equal(t, 1, e.h.Count(`select count(*) from users where id = $1 and provider = 'oidc' and role = 'admin' and active`, res.User.ID))
	assert.Equal(t, 1, e.h.Count(`select count(*) from auth_identities where provider = 'loop' and subject = 'alice' and user_id = $1`, res.User.ID))
	assert.Equal(t, 2, e.h.Count(`select count(*) from groups g join auth_provider_groups p on p.group_id = g.id
		where p.provider = 'loop' and g.type = 'team' and g.name in ('loop/engineering', 'loop/admins')`))
	assert.Equal(t, 2, e.h.Count(`select count(*) from group_memberships where user_id = $1`, res.User.ID))
	assert.Equal(t, 1, e.h.Count(`select count(*) from audit_log where user_id = $1 and action = 'user.login'
		and changes->>'provider' = 'loop' and (changes->>'created')::bool`, res.User.ID))
	evs := e.h.Sink.WaitFor(context.Background(), "io.streamspace.user.login.v1", patience)
	require.Len(t, evs, 1)
	ev := evs[0]
	assert.Equal(t, "io.streamspace.user.login.v1", ev.Type())
	assert.JSONEq(t, `{"userId":"`+res.User.ID+`","provider":"oidc:loop","email":"alice@example.com","role":"admin"}`, string(ev.Data()))

	claims := decodePayload(t, res.Token)
	assert.Equal(t, res.User.ID, claims["user_id"])
	assert.Equal(t, res.User.ID, claims["sub"])
	assert.Equal(t, "alice", claims["username"])
	assert.Equal(t, "streamspace-api", claims["iss"])
	assert.Len(t, claims["jti"], 64)
	assert.ElementsMatch(t, toAny(res.User.Groups), claims["groups"])
	for _, k := range []string{"iat", "nbf", "exp"} {
		assert.Contains(t, claims, k)
	}
	hdr := decodeHeader(t, res.Token)
	assert.Equal(t, map[string]any{"alg": "HS256", "typ": "JWT"}, hdr)

	// The tags function, configured with the same secret, accepts it.
	tagsFn := fntest.StartOn(t, e.h.Pool, tags.New(), map[string]string{
		"STREAMSPACE_JWT_SECRET_FILE": e.h.Env["STREAMSPACE_JWT_SECRET_FILE"],
	})
	status, out := tagsFn.Do(http.MethodGet, "/api/v1/search/filters/tags", res.Token, nil)
	assert.Equal(t, http.StatusOK, status, "%s", out)
	status, _ = tagsFn.Do(http.MethodGet, "/api/v1/search/filters/tags", res.Token[:len(res.Token)-2]+"xx", nil)
	assert.Equal(t, http.StatusUnauthorized, status)
}

// TestCallbackRedirectsWithFragment: without Accept: application/json the
// callback sends the browser to the complete page with the token in the
// fragment, never in a query, and the cookie is deleted.
func TestCallbackRedirectsWithFragment(t *testing.T) {
	e := startLoop(t, "", nil)
	resp, body := e.complete(t, "bob", nil, false)
	require.Equal(t, http.StatusFound, resp.StatusCode, "%s", body)
	loc, err := url.Parse(resp.Header.Get("Location"))
	require.NoError(t, err)
	assert.Equal(t, publicURL+"/api/v1/auth/oidc/complete", loc.Scheme+"://"+loc.Host+loc.Path)
	assert.Empty(t, loc.RawQuery)
	frag, err := url.ParseQuery(loc.Fragment)
	require.NoError(t, err)
	assert.NotEmpty(t, frag.Get("token"))
	assert.Equal(t, "/sessions", frag.Get("returnUrl"))
	_, err = time.Parse(time.RFC3339Nano, frag.Get("expiresAt"))
	assert.NoError(t, err)
	raw, err := base64.RawURLEncoding.DecodeString(frag.Get("user"))
	require.NoError(t, err)
	var u function.User
	require.NoError(t, json.Unmarshal(raw, &u))
	assert.Equal(t, "bob", u.Username)
	require.Len(t, resp.Cookies(), 1)
	assert.Equal(t, -1, resp.Cookies()[0].MaxAge)
	assert.Equal(t, "no-referrer", resp.Header.Get("Referrer-Policy"))
	assert.NotContains(t, e.h.Logs.String(), frag.Get("token"))
}

// TestAttacks: every forged, replayed or mismatched callback is refused,
// and no user row and no token come of it.
func TestAttacks(t *testing.T) {
	e := startLoop(t, "", nil)
	// A first good login fetches the keys once.
	resp, body := e.complete(t, "first", nil, true)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	users := e.h.Count(`select count(*) from users`)
	stranger, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)

	type attempt struct {
		state  string
		code   string
		cookie *http.Cookie
	}
	good := func(t *testing.T, s started, token string, info map[string]any) attempt {
		code := "code-" + s.state[:10]
		e.op.grant(code, s.challenge, token, info)
		return attempt{s.state, code, s.cookie}
	}
	signed := func(edit func(c map[string]any), opts ...localissuer.SignOption) func(t *testing.T, s started) attempt {
		return func(t *testing.T, s started) attempt {
			c := e.op.claims("mallory", s.nonce)
			if edit != nil {
				edit(c)
			}
			return good(t, s, e.sign(t, c, opts...), map[string]any{"sub": "mallory"})
		}
	}
	tests := []struct {
		name   string
		setup  func(t *testing.T, s started) attempt
		status int
		code   string
	}{
		{name: "missing state", status: http.StatusBadRequest, code: "invalid", setup: func(t *testing.T, s started) attempt {
			a := signed(nil)(t, s)
			a.state = ""
			return a
		}},
		{name: "mismatched state", status: http.StatusUnauthorized, setup: func(t *testing.T, s started) attempt {
			a := signed(nil)(t, s)
			a.state = strings.Repeat("A", len(s.state))
			return a
		}},
		{name: "missing cookie", status: http.StatusUnauthorized, setup: func(t *testing.T, s started) attempt {
			a := signed(nil)(t, s)
			a.cookie = nil
			return a
		}},
		{name: "tampered cookie", status: http.StatusUnauthorized, setup: func(t *testing.T, s started) attempt {
			a := signed(nil)(t, s)
			v := []byte(a.cookie.Value)
			v[len(v)/2] ^= 1
			a.cookie = &http.Cookie{Name: a.cookie.Name, Value: string(v)}
			return a
		}},
		{name: "cookie of another login", status: http.StatusUnauthorized, setup: func(t *testing.T, s started) attempt {
			a := signed(nil)(t, s)
			a.cookie = e.login(t, "loop", "").cookie
			return a
		}},
		{name: "wrong nonce", status: http.StatusUnauthorized, setup: signed(func(c map[string]any) { c["nonce"] = "other" })},
		{name: "no nonce", status: http.StatusUnauthorized, setup: signed(func(c map[string]any) { delete(c, "nonce") })},
		{name: "wrong PKCE verifier", status: http.StatusUnauthorized, setup: func(t *testing.T, s started) attempt {
			c := e.op.claims("mallory", s.nonce)
			code := "code-pkce-" + s.state[:6]
			e.op.grant(code, strings.Repeat("x", 43), e.sign(t, c), nil)
			return attempt{s.state, code, s.cookie}
		}},
		{name: "alg none", status: http.StatusUnauthorized, setup: func(t *testing.T, s started) attempt {
			c, err := json.Marshal(e.op.claims("mallory", s.nonce))
			require.NoError(t, err)
			tok := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + base64.RawURLEncoding.EncodeToString(c) + "."
			return good(t, s, tok, nil)
		}},
		{name: "HS256 signed with the client secret", status: http.StatusUnauthorized,
			setup: signed(nil, localissuer.WithAlgorithm(jwa.HS256()), localissuer.WithKey([]byte("loop-client-secret")))},
		{name: "unknown kid", status: http.StatusUnauthorized,
			setup: signed(nil, localissuer.WithKey(stranger), localissuer.WithKeyID("unknown-kid"))},
		{name: "wrong iss", status: http.StatusUnauthorized, setup: signed(func(c map[string]any) { c["iss"] = "https://evil.example" })},
		{name: "wrong aud", status: http.StatusUnauthorized, setup: signed(func(c map[string]any) { c["aud"] = "another-client" })},
		{name: "several audiences without azp", status: http.StatusUnauthorized, setup: signed(func(c map[string]any) { c["aud"] = []string{"streamspace", "another"} })},
		{name: "azp of another client", status: http.StatusUnauthorized, setup: signed(func(c map[string]any) { c["azp"] = "another" })},
		{name: "expired", status: http.StatusUnauthorized, setup: signed(func(c map[string]any) {
			c["exp"] = time.Now().Add(-time.Hour).Unix()
			c["iat"] = time.Now().Add(-2 * time.Hour).Unix()
		})},
		{name: "no iat", status: http.StatusUnauthorized, setup: signed(func(c map[string]any) { delete(c, "iat") })},
		{name: "userinfo sub mismatch", status: http.StatusUnauthorized, setup: func(t *testing.T, s started) attempt {
			return good(t, s, e.sign(t, e.op.claims("mallory", s.nonce)), map[string]any{"sub": "someone-else", "email": "x@example.com"})
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := e.login(t, "loop", "/")
			a := tc.setup(t, s)
			q := url.Values{"code": {a.code}}
			if a.state != "" {
				q.Set("state", a.state)
			}
			resp, body := e.callback(t, "loop", q, a.cookie, true)
			assert.Equal(t, tc.status, resp.StatusCode, "%s", body)
			assert.NotContains(t, string(body), `"token":`)
			assert.Equal(t, users, e.h.Count(`select count(*) from users`), "no user row")
		})
	}

	t.Run("replayed state", func(t *testing.T) {
		s := e.login(t, "loop", "/")
		a := signed(nil)(t, s)
		resp, body := e.callback(t, "loop", url.Values{"state": {a.state}, "code": {a.code}}, a.cookie, true)
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
		e.op.grant("code-again", s.challenge, e.sign(t, e.op.claims("mallory", s.nonce)), map[string]any{"sub": "mallory"})
		resp, body = e.callback(t, "loop", url.Values{"state": {a.state}, "code": {"code-again"}}, a.cookie, true)
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "%s", body)
		_, msg := fntest.ErrorBody(t, body)
		assert.Contains(t, msg, "already used")
	})
	t.Run("code replay", func(t *testing.T) {
		s := e.login(t, "loop", "/")
		a := signed(nil)(t, s)
		resp, body := e.callback(t, "loop", url.Values{"state": {a.state}, "code": {a.code}}, a.cookie, true)
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
		// A new login of the same browser sends the used code again: the
		// provider refuses it.
		s2 := e.login(t, "loop", "/")
		resp, body = e.callback(t, "loop", url.Values{"state": {s2.state}, "code": {a.code}}, s2.cookie, true)
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "%s", body)
	})
	t.Run("unknown kid refetches the keys once per interval", func(t *testing.T) {
		before := e.op.jwksFetches.Load()
		for range 3 {
			s := e.login(t, "loop", "/")
			a := signed(nil, localissuer.WithKey(stranger), localissuer.WithKeyID("unknown-kid"))(t, s)
			resp, _ := e.callback(t, "loop", url.Values{"state": {a.state}, "code": {a.code}}, a.cookie, true)
			assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
		}
		// The table above already refetched once for its unknown kid.
		assert.Equal(t, before, e.op.jwksFetches.Load())
	})

	logs := e.h.Logs.String()
	for _, secret := range []string{"loop-client-secret", "code-", "at-code"} {
		assert.NotContains(t, logs, secret)
	}
}

// TestRefusals: users the mapping refuses get 403, no row and no token.
func TestRefusals(t *testing.T) {
	e := startLoop(t, `    allowedEmailDomains: [example.com]
    allowedGroups: [engineering]
`, nil)
	tests := []struct {
		name string
		sub  string
		edit func(c map[string]any)
	}{
		{name: "unverified email", sub: "u1", edit: func(c map[string]any) { c["email_verified"] = false }},
		{name: "email_verified absent", sub: "u2", edit: func(c map[string]any) { delete(c, "email_verified") }},
		{name: "disallowed domain", sub: "u3", edit: func(c map[string]any) { c["email"] = "u3@evil.example" }},
		{name: "no allowed group", sub: "u4", edit: func(c map[string]any) { c["groups"] = []any{"sales"} }},
		{name: "no email", sub: "u5", edit: func(c map[string]any) { delete(c, "email") }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := e.complete(t, tc.sub, tc.edit, true)
			assert.Equal(t, http.StatusForbidden, resp.StatusCode, "%s", body)
			assert.Equal(t, 0, e.h.Count(`select count(*) from auth_identities where subject = $1`, tc.sub))
			assert.Equal(t, 0, e.h.Count(`select count(*) from users where username = $1`, tc.sub))
		})
	}
	t.Run("inactive user", func(t *testing.T) {
		resp, body := e.complete(t, "carol", nil, true)
		require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
		id := loginResult(t, body).User.ID
		_, err := e.h.Pool.Exec(context.Background(), `update users set active = false where id = $1`, id)
		require.NoError(t, err)
		audits := e.h.Count(`select count(*) from audit_log where user_id = $1`, id)
		resp, body = e.complete(t, "carol", nil, true)
		assert.Equal(t, http.StatusForbidden, resp.StatusCode, "%s", body)
		assert.Equal(t, audits, e.h.Count(`select count(*) from audit_log where user_id = $1`, id))
	})
	t.Run("email of a local account", func(t *testing.T) {
		e.h.AddUser("dave", "user") // dave@streamspace.test
		resp, body := e.complete(t, "dave-idp", func(c map[string]any) { c["email"] = "DAVE@streamspace.test" }, true)
		assert.Equal(t, http.StatusForbidden, resp.StatusCode, "%s", body)
		assert.Equal(t, 0, e.h.Count(`select count(*) from auth_identities where subject = 'dave-idp'`))
	})
}

// TestRolesAndGroupsFollowTheToken: at every login the role follows the
// rules and memberships in the provider's groups match the token; local
// groups are never joined; usernames never take over a local user.
func TestRolesAndGroupsFollowTheToken(t *testing.T) {
	e := startLoop(t, `    syncGroups: true
    roleRules:
      - {group: admins, role: admin}
      - {group: ops, role: operator}
`, nil)
	ctx := context.Background()
	e.h.AddUser("erin", "user") // a local user holding the username
	_, err := e.h.Pool.Exec(ctx, `insert into groups (id, name, type) values ('local-eng', 'loop/engineering', 'team')`)
	require.NoError(t, err)

	resp, body := e.complete(t, "erin", func(c map[string]any) { c["email"] = "erin@corp.example" }, true)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	u := loginResult(t, body).User
	assert.Equal(t, "erin-2", u.Username)
	assert.Equal(t, "admin", u.Role)
	assert.Equal(t, 0, e.h.Count(`select count(*) from group_memberships where group_id = 'local-eng'`))
	assert.Equal(t, 1, e.h.Count(`select count(*) from group_memberships m join groups g on g.id = m.group_id where m.user_id = $1`, u.ID))
	assert.Contains(t, e.h.Logs.String(), "identity provider group not synced")

	// A membership in a local group is StreamSpace's, not the provider's.
	_, err = e.h.Pool.Exec(ctx, `insert into group_memberships (id, user_id, group_id) values ('m-local', $1, 'local-eng')`, u.ID)
	require.NoError(t, err)

	// Removed from admins, added to ops and sales; the email changed too.
	resp, body = e.complete(t, "erin", func(c map[string]any) {
		c["email"] = "erin.new@corp.example"
		c["groups"] = []any{"ops", "sales"}
	}, true)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	again := loginResult(t, body).User
	assert.Equal(t, u.ID, again.ID, "same (provider, sub), same user")
	assert.Equal(t, "operator", again.Role)
	assert.Equal(t, "erin.new@corp.example", again.Email)
	names := groupNames(t, e, u.ID)
	assert.Equal(t, []string{"loop/engineering", "loop/ops", "loop/sales"}, names, "the local group loop/engineering is kept")
	assert.Equal(t, 1, e.h.Count(`select count(*) from group_memberships where id = 'm-local'`))
	assert.Equal(t, 1, e.h.Count(`select count(*) from users where email like 'erin%@corp.example'`))
}

// TestRolesLeftAloneWithoutRules: with no role rules, an admin promoted in
// StreamSpace stays admin after logging in.
func TestRolesLeftAloneWithoutRules(t *testing.T) {
	e := startLoop(t, "", nil)
	resp, body := e.complete(t, "frank", nil, true)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	u := loginResult(t, body).User
	assert.Equal(t, "user", u.Role)
	_, err := e.h.Pool.Exec(context.Background(), `update users set role = 'admin' where id = $1`, u.ID)
	require.NoError(t, err)
	resp, body = e.complete(t, "frank", nil, true)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	assert.Equal(t, "admin", loginResult(t, body).User.Role)
	assert.Equal(t, "admin", decodePayload(t, loginResult(t, body).Token)["role"])
}

// TestOpenRedirects: every returnUrl form that would leave the allowed
// origins is refused at login and logout; allowed ones pass.
func TestOpenRedirects(t *testing.T) {
	e := startLoop(t, "", nil)
	tests := []struct {
		name      string
		returnURL string
		ok        bool
	}{
		{name: "path", returnURL: "/sessions?tab=mine#x", ok: true},
		{name: "allowed origin", returnURL: "https://ui.streamspace.test/home", ok: true},
		{name: "own origin", returnURL: "https://streamspace.test/home", ok: true},
		{name: "protocol-relative", returnURL: "//evil.example/x"},
		{name: "backslash", returnURL: `/\evil.example`},
		{name: "other origin", returnURL: "https://evil.example/"},
		{name: "javascript", returnURL: "javascript:alert(1)"},
		{name: "javascript upper case", returnURL: "JaVaScRiPt:alert(1)"},
		{name: "data", returnURL: "data:text/html,hi"},
		{name: "encoded slashes", returnURL: "/%2F%2Fevil.example"},
		{name: "encoded backslash", returnURL: "/%5Cevil.example"},
		{name: "double-encoded slashes", returnURL: "/%252F%252Fevil.example"},
		{name: "encoded javascript", returnURL: "javascript%3Aalert(1)"},
		{name: "encoded scheme", returnURL: "%6Aavascript:alert(1)"},
		{name: "tab inside", returnURL: "/\t/evil.example"},
		{name: "userinfo", returnURL: "https://ui.streamspace.test@evil.example/"},
		{name: "lookalike origin", returnURL: "https://ui.streamspace.test.evil.example/"},
		{name: "http downgrade", returnURL: "http://ui.streamspace.test/"},
		{name: "relative without slash", returnURL: "evil.example"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, route := range []string{"login", "logout"} {
				resp, err := noRedirect.Get(e.h.URL + "/api/v1/auth/oidc/loop/" + route + "?returnUrl=" + url.QueryEscape(tc.returnURL))
				require.NoError(t, err)
				resp.Body.Close()
				if tc.ok {
					assert.Equal(t, http.StatusFound, resp.StatusCode, route)
				} else {
					assert.Equal(t, http.StatusBadRequest, resp.StatusCode, route)
					assert.Empty(t, resp.Header.Get("Location"), route)
				}
			}
		})
	}
}

// TestLogout: RP-initiated logout at the provider's end_session_endpoint,
// coming back to the public URL.
func TestLogout(t *testing.T) {
	e := startLoop(t, "", nil)
	resp, err := noRedirect.Get(e.h.URL + "/api/v1/auth/oidc/loop/logout?returnUrl=%2Fbye")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusFound, resp.StatusCode)
	loc, err := url.Parse(resp.Header.Get("Location"))
	require.NoError(t, err)
	assert.Equal(t, e.op.URL()+"/logout", loc.Scheme+"://"+loc.Host+loc.Path)
	assert.Equal(t, "streamspace", loc.Query().Get("client_id"))
	assert.Equal(t, publicURL+"/bye", loc.Query().Get("post_logout_redirect_uri"))

	status, _ := e.h.Do(http.MethodGet, "/api/v1/auth/oidc/nobody/logout", "", nil)
	assert.Equal(t, http.StatusNotFound, status)
}

// TestCompletePage: the page has a strict CSP allowing only its own script
// by hash, and is never cached.
func TestCompletePage(t *testing.T) {
	e := startLoop(t, "", nil)
	status, hdr, body := e.h.DoHeader(http.MethodGet, "/api/v1/auth/oidc/complete", "", nil)
	require.Equal(t, http.StatusOK, status)
	csp := hdr.Get("Content-Security-Policy")
	assert.Contains(t, csp, "default-src 'none'")
	assert.Contains(t, csp, "script-src 'sha256-")
	assert.NotContains(t, csp, "unsafe-eval")
	assert.NotContains(t, strings.SplitN(csp, "script-src", 2)[1], "unsafe-inline")
	assert.Equal(t, "no-store", hdr.Get("Cache-Control"))
	assert.Equal(t, "no-referrer", hdr.Get("Referrer-Policy"))
	assert.Contains(t, string(body), `var origins = ["https://ui.streamspace.test"];`)
	assert.Contains(t, string(body), "streamspace-auth")
}

// TestRedisSession: with StreamSpace's Redis the login writes
// session:{jti} as its session store does, and a function that checks
// sessions accepts the token.
func TestRedisSession(t *testing.T) {
	rs := startRedis(t)
	e := startLoop(t, "", map[string]string{"STREAMSPACE_REDIS_URL": rs.URL})
	resp, body := e.complete(t, "gina", nil, true)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	res := loginResult(t, body)
	jti := decodePayload(t, res.Token)["jti"].(string)
	raw, err := rs.client.Get(context.Background(), "session:"+jti).Result()
	require.NoError(t, err)
	var rec map[string]any
	require.NoError(t, json.Unmarshal([]byte(raw), &rec))
	assert.Equal(t, jti, rec["session_id"])
	assert.Equal(t, res.User.ID, rec["user_id"])
	assert.Equal(t, "gina", rec["username"])
	assert.Equal(t, "user", rec["role"])
	for _, k := range []string{"created_at", "expires_at", "ip_address", "user_agent"} {
		assert.Contains(t, rec, k)
	}
	ttl, err := rs.client.TTL(context.Background(), "session:"+jti).Result()
	require.NoError(t, err)
	assert.InDelta(t, (24 * time.Hour).Seconds(), ttl.Seconds(), 120)

	tagsFn := fntest.StartOn(t, e.h.Pool, tags.New(), map[string]string{
		"STREAMSPACE_JWT_SECRET_FILE": e.h.Env["STREAMSPACE_JWT_SECRET_FILE"],
		"STREAMSPACE_REDIS_URL":       rs.URL,
	})
	status, out := tagsFn.Do(http.MethodGet, "/api/v1/search/filters/tags", res.Token, nil)
	assert.Equal(t, http.StatusOK, status, "%s", out)
	require.NoError(t, rs.client.Del(context.Background(), "session:"+jti).Err())
	status, _ = tagsFn.Do(http.MethodGet, "/api/v1/search/filters/tags", res.Token, nil)
	assert.Equal(t, http.StatusUnauthorized, status, "logged out in StreamSpace")
}

// TestConfigErrors: bad configuration stops start-up naming the variable.
func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{name: "client secret in the environment", env: map[string]string{"OIDC_PROVIDER_URL": "https://idp.example", "OIDC_CLIENT_ID": "c", "OIDC_CLIENT_SECRET": "s"}, want: "OIDC_CLIENT_SECRET"},
		{name: "no provider", env: map[string]string{"OIDC_PROVIDERS_FILE": ""}, want: "OIDC_PROVIDERS_FILE"},
		{name: "public URL with a path", env: map[string]string{"AUTH_PUBLIC_URL": "https://streamspace.test/app"}, want: "AUTH_PUBLIC_URL"},
		{name: "public URL over http", env: map[string]string{"AUTH_PUBLIC_URL": "http://streamspace.test"}, want: "AUTH_PUBLIC_URL"},
		{name: "bad return origin", env: map[string]string{"AUTH_ALLOWED_RETURN_ORIGINS": "javascript:x"}, want: "AUTH_ALLOWED_RETURN_ORIGINS"},
		{name: "no signing key", env: map[string]string{"STREAMSPACE_JWT_SECRET_FILE": ""}, want: "AUTH_SIGNING_KEY_FILE"},
		{name: "two signing keys", env: map[string]string{"AUTH_SIGNING_KEY_FILE": "/k.pem"}, want: "not both"},
		{name: "redirect URI elsewhere", env: map[string]string{"OIDC_PROVIDER_URL": "https://idp.example", "OIDC_CLIENT_ID": "c", "OIDC_REDIRECT_URI": "https://evil.example/cb"}, want: "OIDC_REDIRECT_URI"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			file := writeFile(t, "p.yaml", "providers:\n  - {id: x, issuer: 'https://idp.example', clientId: c}\n")
			env := map[string]string{
				"DATABASE_URL": "postgres://nowhere.invalid/db", "STREAMSPACE_JWT_SECRET_FILE": writeFile(t, "s", strings.Repeat("k", 40)),
				"AUTH_PUBLIC_URL": publicURL, "OIDC_PROVIDERS_FILE": file,
			}
			for k, v := range tc.env {
				env[k] = v
			}
			err := function.New().Start(context.Background(), env)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func decodePart(t *testing.T, tok string, i int) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	require.Len(t, parts, 3)
	raw, err := base64.RawURLEncoding.DecodeString(parts[i])
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(raw, &m))
	return m
}

func decodeHeader(t *testing.T, tok string) map[string]any  { return decodePart(t, tok, 0) }
func decodePayload(t *testing.T, tok string) map[string]any { return decodePart(t, tok, 1) }

func toAny(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

func groupNames(t *testing.T, e *env, userID string) []string {
	t.Helper()
	rows, err := e.h.Pool.Query(context.Background(),
		`select g.name from group_memberships m join groups g on g.id = m.group_id where m.user_id = $1 order by g.name`, userID)
	require.NoError(t, err)
	var names []string
	for rows.Next() {
		var n string
		require.NoError(t, rows.Scan(&n))
		names = append(names, n)
	}
	require.NoError(t, rows.Err())
	return names
}

// TestHMACWhenConfigured: a provider configured with allowHMAC may sign
// ID tokens with the client secret; without it the same token is refused
// (TestAttacks).
func TestHMACWhenConfigured(t *testing.T) {
	e := startLoop(t, "    allowHMAC: true\n", nil)
	tests := []struct {
		name   string
		key    []byte
		status int
	}{
		{name: "signed with the client secret", key: []byte("loop-client-secret"), status: http.StatusOK},
		{name: "signed with another secret", key: []byte("not-the-client-secret"), status: http.StatusUnauthorized},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := e.login(t, "loop", "/")
			claims := e.op.claims("hmac-"+strings.ReplaceAll(tc.name, " ", "-"), s.nonce)
			code := "code-" + s.state[:8]
			e.op.grant(code, s.challenge, e.sign(t, claims, localissuer.WithAlgorithm(jwa.HS256()), localissuer.WithKey(tc.key)),
				map[string]any{"sub": claims["sub"]})
			resp, body := e.callback(t, "loop", url.Values{"state": {s.state}, "code": {code}}, s.cookie, true)
			assert.Equal(t, tc.status, resp.StatusCode, "%s", body)
		})
	}
}
