// Package oidctest runs a real OpenID provider for tests: Ory Hydra v2 (built
// by scripts/tools, found by shared/testbin) on loopback, with its store in a
// database of its own on the test PostgreSQL server, and a login and
// consent app played by the test through Hydra's admin API. A test binary
// starts one Hydra (Shared) and stops it in TestMain (StopShared); each test
// registers its own OAuth client and says who logs in through it.
package oidctest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/shared/testbin"
)

// startTimeout bounds migrating Hydra's store and waiting for it to be
// ready on a busy machine.
const startTimeout = 3 * time.Minute

// User is who logs in through a client: the subject Hydra's login accept
// names, and the claims its consent accept puts into the ID token (and
// userinfo).
type User struct {
	Subject string
	Claims  map[string]any
}

// Client is an OAuth client registered at Hydra.
type Client struct {
	ID     string
	Secret string
}

// Hydra is a running Hydra and its login and consent app.
type Hydra struct {
	// Issuer is the issuer exactly as Hydra's discovery document states it.
	Issuer string
	// Public and Admin are the base URLs of Hydra's two ports.
	Public string
	Admin  string

	app    *httptest.Server
	cmd    *exec.Cmd
	exited chan error
	logs   *syncBuffer
	dbURL  string
	dbName string

	serverURL string // the PostgreSQL server Hydra's database is on
	demo      []User // offered on the login page

	mu    sync.Mutex
	users map[string]User // by client id
}

var (
	sharedMu  sync.Mutex
	shared    *Hydra
	sharedErr error
)

// Shared returns the test binary's Hydra, starting it on first use; the
// test fails when it cannot start. TestMain stops it with StopShared.
func Shared(tb testing.TB) *Hydra {
	tb.Helper()
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared == nil && sharedErr == nil {
		shared, sharedErr = Start()
	}
	if sharedErr != nil {
		tb.Fatalf("oidctest: %v", sharedErr)
	}
	return shared
}

// StopShared stops the Hydra Shared started, if any.
func StopShared() {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared != nil {
		shared.Stop()
		shared = nil
	}
}

// Options configure a Hydra started with StartWith.
type Options struct {
	// DatabaseURL names the PostgreSQL server Hydra gets a database of its
	// own on; empty is DATABASE_URL, or the PG* variables.
	DatabaseURL string
	// Users, when set, are offered on a login page for a client that has
	// no user set: a person picks one in the browser (make run's demo).
	Users []User
}

// Start migrates a fresh database on the test PostgreSQL server (the one
// DATABASE_URL or the PG* variables name) and serves Hydra on loopback.
func Start() (*Hydra, error) { return StartWith(Options{}) }

// StartWith is Start with options.
func StartWith(opts Options) (*Hydra, error) {
	bin, err := testbin.Lookup("hydra")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	h := &Hydra{logs: &syncBuffer{}, users: map[string]User{}, exited: make(chan error, 1), demo: opts.Users}
	h.serverURL = opts.DatabaseURL
	if h.serverURL == "" {
		h.serverURL = os.Getenv("DATABASE_URL")
	}
	if err := h.createDatabase(ctx); err != nil {
		return nil, err
	}
	h.app = httptest.NewServer(h.appHandler())
	ok := false
	defer func() {
		if !ok {
			h.Stop()
		}
	}()
	migrate := exec.CommandContext(ctx, bin, "migrate", "sql", "-e", "--yes")
	migrate.Env = append(os.Environ(), "DSN="+h.dbURL)
	if out, err := migrate.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("hydra migrate: %v\n%s", err, out)
	}
	pub, adm, err := freePorts()
	if err != nil {
		return nil, err
	}
	h.Public = "http://127.0.0.1:" + strconv.Itoa(pub)
	h.Admin = "http://127.0.0.1:" + strconv.Itoa(adm)
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	h.cmd = exec.Command(bin, "serve", "all", "--dev", "--sqa-opt-out")
	h.cmd.Env = append(os.Environ(),
		"DSN="+h.dbURL,
		"URLS_SELF_ISSUER="+h.Public,
		"URLS_LOGIN="+h.app.URL+"/login",
		"URLS_CONSENT="+h.app.URL+"/consent",
		"URLS_LOGOUT="+h.app.URL+"/logout",
		"SECRETS_SYSTEM="+hex.EncodeToString(secret),
		"SERVE_PUBLIC_HOST=127.0.0.1", "SERVE_PUBLIC_PORT="+strconv.Itoa(pub),
		"SERVE_ADMIN_HOST=127.0.0.1", "SERVE_ADMIN_PORT="+strconv.Itoa(adm),
		"LOG_LEVEL=warn",
	)
	h.cmd.Stdout, h.cmd.Stderr = h.logs, h.logs
	if err := h.cmd.Start(); err != nil {
		return nil, fmt.Errorf("hydra serve: %w", err)
	}
	go func() { h.exited <- h.cmd.Wait() }()
	if err := h.waitReady(ctx); err != nil {
		return nil, err
	}
	var disc struct {
		Issuer string `json:"issuer"`
	}
	if err := getJSON(ctx, h.Public+"/.well-known/openid-configuration", &disc); err != nil {
		return nil, fmt.Errorf("hydra discovery: %w", err)
	}
	h.Issuer = disc.Issuer
	ok = true
	return h, nil
}

func freePorts() (int, int, error) {
	a, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, 0, err
	}
	defer a.Close()
	b, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, 0, err
	}
	defer b.Close()
	return a.Addr().(*net.TCPAddr).Port, b.Addr().(*net.TCPAddr).Port, nil
}

func (h *Hydra) createDatabase(ctx context.Context) error {
	cfg, err := pgx.ParseConfig(h.serverURL)
	if err != nil {
		return errors.New("the database URL (or the PG* variables) does not name a PostgreSQL server")
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect to PostgreSQL (run the tests under pg_virtualenv): %w", err)
	}
	defer conn.Close(ctx)
	h.dbName = "hydra_" + strings.ToLower(rand.Text()[:12])
	if _, err := conn.Exec(ctx, "create database "+pgx.Identifier{h.dbName}.Sanitize()); err != nil {
		return fmt.Errorf("create Hydra's database: %w", err)
	}
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(cfg.User, cfg.Password),
		Host:     net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))),
		Path:     "/" + h.dbName,
		RawQuery: "sslmode=disable",
	}
	if strings.HasPrefix(cfg.Host, "/") {
		// A Unix socket directory goes in the query, as libpq reads it.
		u.Host = ""
		u.RawQuery = "sslmode=disable&host=" + url.QueryEscape(cfg.Host) + "&port=" + strconv.Itoa(int(cfg.Port))
	}
	h.dbURL = u.String()
	return nil
}

func (h *Hydra) dropDatabase() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg, err := pgx.ParseConfig(h.serverURL)
	if err != nil {
		return
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return
	}
	defer conn.Close(ctx)
	conn.Exec(ctx, "drop database if exists "+pgx.Identifier{h.dbName}.Sanitize()+" with (force)")
}

// waitReady polls the admin health endpoint until Hydra answers or exits.
func (h *Hydra) waitReady(ctx context.Context) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.Admin+"/health/ready", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case err := <-h.exited:
			h.exited <- err
			return fmt.Errorf("hydra exited before it was ready: %v\n%s", err, h.logs.String())
		case <-ctx.Done():
			return fmt.Errorf("hydra not ready in %s:\n%s", startTimeout, h.logs.String())
		case <-tick.C:
		}
	}
}

// Stop ends Hydra, its app and its database.
func (h *Hydra) Stop() {
	if h.cmd != nil && h.cmd.Process != nil {
		h.cmd.Process.Kill()
		<-h.exited
	}
	if h.app != nil {
		h.app.Close()
	}
	if h.dbName != "" {
		h.dropDatabase()
	}
}

// Logs is what Hydra wrote so far.
func (h *Hydra) Logs() string { return h.logs.String() }

// NewClient registers a confidential client (client_secret_basic) with the
// code flow, the given redirect URIs and post-logout redirect URIs, and
// the scopes openid, profile, email and groups.
func (h *Hydra) NewClient(tb testing.TB, redirectURIs, postLogoutURIs []string) Client {
	tb.Helper()
	c, err := h.CreateClient(context.Background(), redirectURIs, postLogoutURIs)
	if err != nil {
		tb.Fatalf("oidctest: %v", err)
	}
	return c
}

// CreateClient is NewClient returning its error.
func (h *Hydra) CreateClient(ctx context.Context, redirectURIs, postLogoutURIs []string) (Client, error) {
	secret := make([]byte, 24)
	if _, err := rand.Read(secret); err != nil {
		return Client{}, err
	}
	body, _ := json.Marshal(map[string]any{
		"client_secret":              hex.EncodeToString(secret),
		"grant_types":                []string{"authorization_code"},
		"response_types":             []string{"code"},
		"scope":                      "openid profile email groups",
		"redirect_uris":              redirectURIs,
		"post_logout_redirect_uris":  postLogoutURIs,
		"token_endpoint_auth_method": "client_secret_basic",
	})
	var out struct {
		ClientID     string `json:"client_id"`
		ClientSecret string `json:"client_secret"`
	}
	if err := h.admin(ctx, http.MethodPost, "/admin/clients", body, &out); err != nil {
		return Client{}, fmt.Errorf("create client: %w", err)
	}
	return Client{ID: out.ClientID, Secret: out.ClientSecret}, nil
}

// SetUser makes u the user who logs in through client from now on.
func (h *Hydra) SetUser(clientID string, u User) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.users[clientID] = u
}

func (h *Hydra) user(clientID string) (User, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	u, ok := h.users[clientID]
	return u, ok
}

// appHandler is the login, consent and logout app: it accepts each
// challenge for the client's user through the admin API and sends the
// browser on to where Hydra says.
func (h *Hydra) appHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /login", func(w http.ResponseWriter, r *http.Request) {
		ch := r.URL.Query().Get("login_challenge")
		var req struct {
			Client struct {
				ClientID string `json:"client_id"`
			} `json:"client"`
		}
		if err := h.admin(r.Context(), http.MethodGet, "/admin/oauth2/auth/requests/login?login_challenge="+url.QueryEscape(ch), nil, &req); err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		u, ok := h.user(req.Client.ClientID)
		if !ok {
			picked, found := h.demoUser(r.URL.Query().Get("user"))
			if !found {
				h.pickPage(w, ch)
				return
			}
			u = picked
		}
		body, _ := json.Marshal(map[string]any{"subject": u.Subject})
		h.accept(w, r, "/admin/oauth2/auth/requests/login/accept?login_challenge="+url.QueryEscape(ch), body)
	})
	mux.HandleFunc("GET /consent", func(w http.ResponseWriter, r *http.Request) {
		ch := r.URL.Query().Get("consent_challenge")
		var req struct {
			Subject           string   `json:"subject"`
			RequestedScope    []string `json:"requested_scope"`
			RequestedAudience []string `json:"requested_access_token_audience"`
			Client            struct {
				ClientID string `json:"client_id"`
			} `json:"client"`
		}
		if err := h.admin(r.Context(), http.MethodGet, "/admin/oauth2/auth/requests/consent?consent_challenge="+url.QueryEscape(ch), nil, &req); err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		u, ok := h.user(req.Client.ClientID)
		if !ok {
			u, _ = h.demoUser(req.Subject)
		}
		body, _ := json.Marshal(map[string]any{
			"grant_scope":                 req.RequestedScope,
			"grant_access_token_audience": req.RequestedAudience,
			"session":                     map[string]any{"id_token": u.Claims},
		})
		h.accept(w, r, "/admin/oauth2/auth/requests/consent/accept?consent_challenge="+url.QueryEscape(ch), body)
	})
	mux.HandleFunc("GET /logout", func(w http.ResponseWriter, r *http.Request) {
		ch := r.URL.Query().Get("logout_challenge")
		h.accept(w, r, "/admin/oauth2/auth/requests/logout/accept?logout_challenge="+url.QueryEscape(ch), nil)
	})
	return mux
}

// demoUser is the offered user with subject sub.
func (h *Hydra) demoUser(sub string) (User, bool) {
	for _, u := range h.demo {
		if u.Subject == sub && sub != "" {
			return u, true
		}
	}
	return User{}, false
}

// pickPage offers the demo users, each a link that logs in as them.
func (h *Hydra) pickPage(w http.ResponseWriter, challenge string) {
	if len(h.demo) == 0 {
		http.Error(w, "no user set for this client", http.StatusForbidden)
		return
	}
	var b strings.Builder
	b.WriteString("<!doctype html><html><head><meta charset=\"utf-8\"><title>Demo login</title></head><body><h1>Log in as</h1><ul>")
	for _, u := range h.demo {
		q := url.Values{"login_challenge": {challenge}, "user": {u.Subject}}
		fmt.Fprintf(&b, `<li><a href="/login?%s">%s</a></li>`, html.EscapeString(q.Encode()), html.EscapeString(u.Subject))
	}
	b.WriteString("</ul></body></html>")
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'none'")
	io.WriteString(w, b.String())
}

func (h *Hydra) accept(w http.ResponseWriter, r *http.Request, path string, body []byte) {
	var out struct {
		RedirectTo string `json:"redirect_to"`
	}
	if err := h.admin(r.Context(), http.MethodPut, path, body, &out); err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	http.Redirect(w, r, out.RedirectTo, http.StatusFound)
}

// admin calls Hydra's admin API.
func (h *Hydra) admin(ctx context.Context, method, path string, body []byte, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, h.Admin+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, raw)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(raw, out)
}

func getJSON(ctx context.Context, u string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// syncBuffer is a bytes.Buffer safe for Hydra's two output streams.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
