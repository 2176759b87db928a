// Package fntest starts a function the way production does — runtime.Serve
// on a real listener — against a real PostgreSQL database (dbtest), a real
// token issuer serving a JWKS (localissuer), StreamSpace's JWT secret in a
// file, and a recording CloudEvents sink, so tests speak HTTP and
// CloudEvents to it like the broker and the UI.
package fntest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jws"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/authn/localissuer"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
	"github.com/streamspace-dev/functions/shared/logging"
	"github.com/streamspace-dev/functions/shared/runtime"
)

// Audience is the aud every harness JWKS token carries.
const Audience = "streamspace-api"

// drainTimeout is the harness's drain on stop. A drain is not what the
// harness tests (the runtime's own tests do), so it is long enough for any
// busy machine; a drain that still cannot finish is a real hang.
const drainTimeout = 5 * time.Minute

// client sends the harness's requests. Its own transport lets Stop close
// the harness's idle connections before the function drains.
var client = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}

// streamSpaceTokenTTL is the lifetime StreamSpace's API gives its tokens.
const streamSpaceTokenTTL = 24 * time.Hour

// Harness is one running function and the real components around it.
type Harness struct {
	tb          testing.TB
	URL         string
	Pool        *pgxpool.Pool
	DatabaseURL string
	Issuer      *localissuer.Issuer
	Sink        *Sink
	Logs        *Buffer
	Env         map[string]string

	secret []byte // StreamSpace's JWT_SECRET, as STREAMSPACE_JWT_SECRET_FILE holds it
}

// PgBouncerEnv names PgBouncer's connection string (keyword/value or URL,
// its database is replaced), set by `make test`'s second pass
// (scripts/with-pgbouncer). When it is set, every function the harness
// starts reaches its database through PgBouncer in transaction mode, as
// behind the deploy's pooler; the harness's own Pool, like StreamSpace's
// API and the migrations, stays on PostgreSQL directly.
const PgBouncerEnv = "TEST_PGBOUNCER_URL"

// Start serves f with a fresh database and returns once it is ready, however
// long a busy machine takes (a Start that fails ends the test). env adds to
// or overrides the harness's environment.
func Start(tb testing.TB, f runtime.Function, env map[string]string) *Harness {
	tb.Helper()
	return StartOn(tb, dbtest.New(tb), f, env)
}

// StartOn is Start on pool's database (from dbtest), for a test that
// prepares the database first, such as a role the function connects as.
func StartOn(tb testing.TB, pool *pgxpool.Pool, f runtime.Function, env map[string]string) *Harness {
	tb.Helper()
	h := &Harness{tb: tb, Logs: &Buffer{}, Sink: NewSink(tb)}
	h.Pool = pool
	h.DatabaseURL = dbtest.URL(tb, h.Pool)
	if bouncer := os.Getenv(PgBouncerEnv); bouncer != "" {
		u, err := dbtest.WithDatabase(bouncer, h.Pool.Config().ConnConfig.Database)
		if err != nil {
			tb.Fatalf("fntest: %s: %v", PgBouncerEnv, err)
		}
		h.DatabaseURL = u
	}

	iss, issuerURL := ServeIssuer(tb)
	h.Issuer = iss

	// StreamSpace's JWT_SECRET, mounted as a file as in the cluster, with
	// the trailing newline a file written by hand has.
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		tb.Fatal(err)
	}
	h.secret = []byte(hex.EncodeToString(raw))
	secretFile := filepath.Join(tb.TempDir(), "jwt-secret")
	if err := os.WriteFile(secretFile, append(append([]byte(nil), h.secret...), '\n'), 0o600); err != nil {
		tb.Fatal(err)
	}

	h.Env = map[string]string{
		"DATABASE_URL":                h.DatabaseURL,
		"K_SINK":                      h.Sink.URL,
		"AUTH_ISSUER":                 issuerURL,
		"AUTH_AUDIENCE":               Audience,
		"AUTH_JWKS_URL":               issuerURL,
		"STREAMSPACE_JWT_SECRET_FILE": secretFile,
		"OUTBOX_INTERVAL":             "100ms",
	}
	for k, v := range env {
		h.Env[k] = v
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- runtime.Serve(ctx, f, runtime.Options{
			Listener:     ln,
			Env:          h.Env,
			Logger:       logging.New(h.Logs, slog.LevelDebug),
			DrainTimeout: drainTimeout,
			OnReady:      func(net.Addr) { close(ready) },
		})
	}()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		tb.Fatalf("function did not start: %v", err)
	}
	tb.Cleanup(func() {
		// The harness's own idle keep-alive connections would hold the
		// drain up (a connection that never sent a request counts as busy
		// for its first seconds), so they go first.
		client.CloseIdleConnections()
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("function stopped with error: %v", err)
		}
		if tb.Failed() {
			tb.Logf("function log:\n%s", h.Logs.String())
		}
	})
	h.URL = "http://" + ln.Addr().String()
	if bouncer := os.Getenv(PgBouncerEnv); bouncer != "" && h.Env["DATABASE_URL"] == h.DatabaseURL {
		h.requireBouncerClient(bouncer)
	}
	return h
}

// requireBouncerClient fails the test unless PgBouncer's admin console
// lists a client connection to the harness's database: the function's pool
// keeps the connection its start-up ping opened, so one is there when the
// function reaches its database through PgBouncer.
func (h *Harness) requireBouncerClient(bouncer string) {
	h.tb.Helper()
	n, err := BouncerClients(bouncer, h.Pool.Config().ConnConfig.Database)
	if err != nil {
		h.tb.Fatalf("fntest: PgBouncer's admin console: %v", err)
	}
	if n == 0 {
		h.tb.Fatalf("fntest: %s is set, but PgBouncer has no client for the function's database", PgBouncerEnv)
	}
}

// BouncerClients counts the client connections PgBouncer at bouncer (a
// connection string) has to database, from its admin console (SHOW
// CLIENTS), which the connecting user may read as one of admin_users.
func BouncerClients(bouncer, database string) (int, error) {
	admin, err := dbtest.WithDatabase(bouncer, "pgbouncer")
	if err != nil {
		return 0, err
	}
	cfg, err := pgx.ParseConfig(admin)
	if err != nil {
		return 0, fmt.Errorf("%s cannot be parsed", PgBouncerEnv)
	}
	// The admin console speaks only the simple query protocol.
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "show clients")
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		row, err := rows.Values()
		if err != nil {
			return 0, err
		}
		for i, fd := range rows.FieldDescriptions() {
			if fd.Name == "database" && fmt.Sprint(row[i]) == database {
				n++
			}
		}
	}
	return n, rows.Err()
}

// Token returns a valid bearer token for subject with role, from the
// harness's identity provider (checked against its JWKS).
func (h *Harness) Token(subject string, role authn.Role) string {
	h.tb.Helper()
	tok, err := h.Issuer.Token(subject, role, Audience, time.Hour)
	if err != nil {
		h.tb.Fatal(err)
	}
	return tok
}

// StreamSpaceToken returns a token as StreamSpace's API signs one at login
// (api/internal/auth/jwt.go): HS256 with its JWT_SECRET, claims user_id,
// username, email, role, iss "streamspace-api", sub, a jti, and 24 hours of
// validity. The function accepts it only while userID is an active row of
// users (AddUser), and takes the role from that row.
func (h *Harness) StreamSpaceToken(userID string, role authn.Role) string {
	h.tb.Helper()
	jti := make([]byte, 32)
	if _, err := rand.Read(jti); err != nil {
		h.tb.Fatal(err)
	}
	now := time.Now()
	username, email := userNames(userID)
	payload, err := json.Marshal(map[string]any{
		"user_id":  userID,
		"username": username,
		"email":    email,
		"role":     string(role),
		"jti":      hex.EncodeToString(jti),
		"iss":      authn.StreamSpaceIssuer,
		"sub":      userID,
		"iat":      now.Unix(),
		"exp":      now.Add(streamSpaceTokenTTL).Unix(),
		"nbf":      now.Unix(),
	})
	if err != nil {
		h.tb.Fatal(err)
	}
	hdr := jws.NewHeaders()
	if err := hdr.Set(jws.TypeKey, "JWT"); err != nil {
		h.tb.Fatal(err)
	}
	tok, err := jws.Sign(payload, jws.WithKey(jwa.HS256(), h.secret, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		h.tb.Fatal(err)
	}
	return string(tok)
}

// AddUser inserts an active StreamSpace user (a row of its users table)
// with role; username and email are derived from id.
func (h *Harness) AddUser(id string, role authn.Role) {
	h.tb.Helper()
	username, email := userNames(id)
	if _, err := h.Pool.Exec(context.Background(),
		`insert into users (id, username, email, role, active) values ($1, $2, $3, $4, true)`,
		id, username, email, string(role)); err != nil {
		h.tb.Fatalf("add user %s: %v", id, err)
	}
}

func userNames(id string) (username, email string) {
	return id, id + "@streamspace.test"
}

// Do sends a REST request with token (none when empty) and a JSON body (none
// when nil; a string or []byte is sent as is), and returns the status and
// response body.
func (h *Harness) Do(method, path, token string, body any) (int, []byte) {
	h.tb.Helper()
	status, _, out := h.DoHeader(method, path, token, body)
	return status, out
}

// DoHeader is Do that also returns the response's header.
func (h *Harness) DoHeader(method, path, token string, body any) (int, http.Header, []byte) {
	h.tb.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			h.tb.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, h.URL+path, rd)
	if err != nil {
		h.tb.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		h.tb.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		h.tb.Fatal(err)
	}
	return resp.StatusCode, resp.Header, out
}

// Deliver posts e to the function as the broker does, in binary mode or, with
// structured, in structured mode. It returns the status and the reply event,
// if any.
func (h *Harness) Deliver(e cloudevents.Event, structured bool) (int, *cloudevents.Event) {
	h.tb.Helper()
	return Deliver(h.tb, h.URL, e, structured)
}

// DeliverHeader posts e to the function in binary mode, as the broker
// does, and returns the status and the response's header (a 503's
// Retry-After).
func (h *Harness) DeliverHeader(e cloudevents.Event) (int, http.Header) {
	h.tb.Helper()
	req, err := http.NewRequest(http.MethodPost, h.URL, nil)
	if err != nil {
		h.tb.Fatal(err)
	}
	if err := cehttp.WriteRequest(binding.WithForceBinary(context.Background()), binding.ToMessage(&e), req); err != nil {
		h.tb.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		h.tb.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header
}

// Deliver posts e to url as the broker does.
func Deliver(tb testing.TB, url string, e cloudevents.Event, structured bool) (int, *cloudevents.Event) {
	tb.Helper()
	return DeliverWithToken(tb, url, e, structured, "")
}

// DeliverWithToken is Deliver with the bearer token Knative's
// authentication-oidc feature adds (none when empty).
func DeliverWithToken(tb testing.TB, url string, e cloudevents.Event, structured bool, token string) (int, *cloudevents.Event) {
	tb.Helper()
	req, err := http.NewRequest(http.MethodPost, url, nil)
	if err != nil {
		tb.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	ctx := context.Background()
	if structured {
		ctx = binding.WithForceStructured(ctx)
	} else {
		ctx = binding.WithForceBinary(ctx)
	}
	if err := cehttp.WriteRequest(ctx, binding.ToMessage(&e), req); err != nil {
		tb.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	msg := cehttp.NewMessageFromHttpResponse(resp)
	if msg.ReadEncoding() == binding.EncodingUnknown {
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, nil
	}
	reply, err := binding.ToEvent(ctx, msg)
	if err != nil {
		tb.Fatalf("decode reply: %v", err)
	}
	return resp.StatusCode, reply
}

// Count runs a query that returns one integer, such as a count(*).
func (h *Harness) Count(sql string, args ...any) int {
	h.tb.Helper()
	var n int
	if err := h.Pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		h.tb.Fatalf("%s: %v", sql, err)
	}
	return n
}

// ErrorBody decodes an {"error","message","code"} response body (StreamSpace's
// shape), failing the test when raw is not one.
func ErrorBody(tb testing.TB, raw []byte) (code, message string) {
	tb.Helper()
	var e runtime.ErrorBody
	if err := json.Unmarshal(raw, &e); err != nil || e.Code == "" || e.Error == "" || e.Message == "" {
		tb.Fatalf("error body %s is not {error,message,code}", raw)
	}
	return string(e.Code), e.Message
}

// Buffer is a concurrency-safe log sink.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Lines decodes every JSON log line written so far.
func (b *Buffer) Lines() []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// ServeIssuer starts a token issuer whose JWKS is served on a loopback
// server for the rest of the test, and returns it with its URL (its iss and
// its JWKS URL both).
func ServeIssuer(tb testing.TB) (*localissuer.Issuer, string) {
	tb.Helper()
	srv := httptest.NewServer(nil)
	tb.Cleanup(srv.Close)
	iss, err := localissuer.New(srv.URL)
	if err != nil {
		tb.Fatal(err)
	}
	srv.Config.Handler = iss.JWKSHandler()
	return iss, srv.URL
}
