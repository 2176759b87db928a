package function_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	function "github.com/streamspace-dev/functions/functions/auth"
	"github.com/streamspace-dev/functions/shared/authn/localissuer"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/oidctest"
)

// patience bounds every wait on a condition.
const patience = time.Minute

// publicURL is AUTH_PUBLIC_URL in tests that call the routes directly: it
// only has to be where the redirect_uri and the complete page point.
const publicURL = "https://streamspace.test"

func TestMain(m *testing.M) {
	code := m.Run()
	oidctest.StopShared()
	os.Exit(code)
}

// noRedirect is a client that returns redirects instead of following them.
var noRedirect = &http.Client{
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	Timeout:       patience,
}

// grant is what the loopback provider answers for one code.
type grant struct {
	challenge string
	idToken   string
	userinfo  map[string]any
}

// loopOP is a loopback OpenID provider of the test's own: its discovery
// document, a JWKS from a localissuer key, a token endpoint that checks the
// PKCE verifier and answers with whatever ID token the test signed, and a
// userinfo endpoint. It makes the tokens a real provider never would.
type loopOP struct {
	srv    *httptest.Server
	Issuer *localissuer.Issuer

	mu     sync.Mutex
	disc   map[string]any
	grants map[string]grant
	used   map[string]bool

	jwksFetches atomic.Int32
}

func newLoopOP(t *testing.T) *loopOP {
	t.Helper()
	op := &loopOP{grants: map[string]grant{}, used: map[string]bool{}}
	op.srv = httptest.NewServer(http.HandlerFunc(op.serve))
	t.Cleanup(op.srv.Close)
	iss, err := localissuer.New(op.srv.URL)
	require.NoError(t, err)
	op.Issuer = iss
	op.disc = map[string]any{
		"issuer":                                op.srv.URL,
		"authorization_endpoint":                op.srv.URL + "/authorize",
		"token_endpoint":                        op.srv.URL + "/token",
		"userinfo_endpoint":                     op.srv.URL + "/userinfo",
		"jwks_uri":                              op.srv.URL + "/jwks",
		"end_session_endpoint":                  op.srv.URL + "/logout",
		"id_token_signing_alg_values_supported": []string{"RS256", "HS256"},
		"code_challenge_methods_supported":      []string{"S256"},
	}
	return op
}

func (op *loopOP) URL() string { return op.srv.URL }

func (op *loopOP) serve(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/.well-known/openid-configuration":
		op.mu.Lock()
		defer op.mu.Unlock()
		json.NewEncoder(w).Encode(op.disc)
	case "/jwks":
		op.jwksFetches.Add(1)
		op.Issuer.JWKSHandler().ServeHTTP(w, r)
	case "/token":
		r.ParseForm()
		code := r.PostForm.Get("code")
		op.mu.Lock()
		g, ok := op.grants[code]
		replay := op.used[code]
		op.used[code] = true
		op.mu.Unlock()
		sum := sha256.Sum256([]byte(r.PostForm.Get("code_verifier")))
		if !ok || replay || base64.RawURLEncoding.EncodeToString(sum[:]) != g.challenge {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"error":"invalid_grant"}`)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"access_token": "at-" + code, "token_type": "Bearer", "expires_in": 300, "id_token": g.idToken,
		})
	case "/userinfo":
		code := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer at-")
		op.mu.Lock()
		g, ok := op.grants[code]
		op.mu.Unlock()
		if !ok {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		json.NewEncoder(w).Encode(g.userinfo)
	default:
		http.NotFound(w, r)
	}
}

// grant makes code redeemable with the verifier behind challenge, for an
// ID token and a userinfo answer.
func (op *loopOP) grant(code, challenge, idToken string, userinfo map[string]any) {
	op.mu.Lock()
	defer op.mu.Unlock()
	op.grants[code] = grant{challenge: challenge, idToken: idToken, userinfo: userinfo}
}

// claims are an ID token's claims as a correct provider signs them.
func (op *loopOP) claims(sub, nonce string) map[string]any {
	now := time.Now()
	return map[string]any{
		"iss": op.srv.URL, "aud": "streamspace", "sub": sub, "nonce": nonce,
		"iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(),
		"email": sub + "@example.com", "email_verified": true,
		"preferred_username": sub, "name": "User " + sub,
		"groups": []any{"engineering", "admins"},
	}
}

// env is a started auth function with a loopback provider "loop".
type env struct {
	h  *fntest.Harness
	op *loopOP
}

// writeFile writes content into a new file in the test's temp dir.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
	return p
}

// startLoop starts the auth function with the loopback provider, its
// YAML extended by extra lines, and the env overrides.
func startLoop(t *testing.T, extra string, overrides map[string]string) *env {
	t.Helper()
	op := newLoopOP(t)
	secret := writeFile(t, "client-secret", "loop-client-secret\n")
	file := writeFile(t, "providers.yaml", `providers:
  - id: loop
    displayName: Loopback
    issuer: `+op.URL()+`
    clientId: streamspace
    clientSecretFile: `+secret+`
    scopes: [profile, email, groups]
`+extra)
	vars := map[string]string{
		"AUTH_PUBLIC_URL":             publicURL,
		"AUTH_ALLOWED_RETURN_ORIGINS": "https://ui.streamspace.test",
		"OIDC_PROVIDERS_FILE":         file,
	}
	for k, v := range overrides {
		vars[k] = v
	}
	return &env{h: fntest.Start(t, function.New(), vars), op: op}
}

// started is a login begun at the function: the redirect's parameters and
// the cookie it set.
type started struct {
	location  *url.URL
	cookie    *http.Cookie
	setCookie string
	state     string
	nonce     string
	challenge string
}

func (e *env) login(t *testing.T, provider, returnURL string) started {
	t.Helper()
	u := e.h.URL + "/api/v1/auth/oidc/" + provider + "/login"
	if returnURL != "" {
		u += "?returnUrl=" + url.QueryEscape(returnURL)
	}
	resp, err := noRedirect.Get(u)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusFound, resp.StatusCode, "login: %s", body)
	loc, err := url.Parse(resp.Header.Get("Location"))
	require.NoError(t, err)
	cookies := resp.Cookies()
	require.Len(t, cookies, 1)
	q := loc.Query()
	return started{
		location: loc, cookie: cookies[0], setCookie: resp.Header.Get("Set-Cookie"),
		state: q.Get("state"), nonce: q.Get("nonce"), challenge: q.Get("code_challenge"),
	}
}

// callback calls the callback as the provider's redirect would, with the
// cookie (none when nil), asking for JSON when asJSON.
func (e *env) callback(t *testing.T, provider string, query url.Values, cookie *http.Cookie, asJSON bool) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet,
		e.h.URL+"/api/v1/auth/oidc/"+provider+"/callback?"+query.Encode(), nil)
	require.NoError(t, err)
	if cookie != nil {
		req.AddCookie(&http.Cookie{Name: cookie.Name, Value: cookie.Value})
	}
	if asJSON {
		req.Header.Set("Accept", "application/json")
	}
	resp, err := noRedirect.Do(req)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	return resp, body
}

// sign signs claims with the provider's key (RS256, its kid).
func (e *env) sign(t *testing.T, claims map[string]any, opts ...localissuer.SignOption) string {
	t.Helper()
	tok, err := e.op.Issuer.Sign(claims, opts...)
	require.NoError(t, err)
	return tok
}

// complete runs a login whose provider answers with idToken made from the
// login's nonce, and returns the callback's answer.
func (e *env) complete(t *testing.T, sub string, edit func(claims map[string]any), asJSON bool) (*http.Response, []byte) {
	t.Helper()
	s := e.login(t, "loop", "/sessions")
	claims := e.op.claims(sub, s.nonce)
	if edit != nil {
		edit(claims)
	}
	code := "code-" + s.state[:8]
	e.op.grant(code, s.challenge, e.sign(t, claims), map[string]any{"sub": sub})
	return e.callback(t, "loop", url.Values{"state": {s.state}, "code": {code}}, s.cookie, asJSON)
}

// loginResult decodes the callback's JSON answer.
func loginResult(t *testing.T, body []byte) function.LoginResult {
	t.Helper()
	var res function.LoginResult
	require.NoError(t, json.Unmarshal(body, &res), "%s", body)
	return res
}

// redisServer is a real redis-server (Debian package redis-server) on a
// free loopback port, stopped when the test ends.
type redisServer struct {
	URL    string
	client *redis.Client
}

func startRedis(t *testing.T) *redisServer {
	t.Helper()
	path, err := exec.LookPath("redis-server")
	require.NoError(t, err, "redis-server is not installed; install it with: apt-get install -y redis-server")
	// Another process may take the free port before redis-server binds it;
	// then it exits and another port is tried.
	for range 5 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
		require.NoError(t, ln.Close())
		cmd := exec.Command(path, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			"--daemonize", "no", "--dir", t.TempDir())
		require.NoError(t, cmd.Start())
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + port, MaxRetries: -1})
		ready := false
	wait:
		for deadline := time.Now().Add(patience); time.Now().Before(deadline); {
			if client.Ping(context.Background()).Err() == nil {
				ready = true
				break
			}
			select {
			case <-exited:
				break wait
			case <-time.After(10 * time.Millisecond):
			}
		}
		if ready {
			t.Cleanup(func() {
				client.Close()
				cmd.Process.Kill()
				<-exited
			})
			return &redisServer{URL: "redis://127.0.0.1:" + port + "/0", client: client}
		}
		client.Close()
		cmd.Process.Kill()
		<-exited
	}
	require.FailNow(t, "redis-server did not start")
	return nil
}
