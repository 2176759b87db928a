package runtime_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/logging"
	"github.com/streamspace-dev/functions/shared/runtime"
)

// patience bounds every wait on a condition: generous, so a busy machine
// never fails a test, and only spent when something is wrong.
const patience = time.Minute

// fn is a function whose Start waits for a signal, for readiness tests, and
// whose slow route waits for another, for drain tests.
type fn struct {
	release chan struct{} // closing it lets Start return
	entered chan struct{} // the slow route sends on it when it starts
	finish  chan struct{} // closing it lets the slow route answer
	mux     *runtime.Mux
	stopped bool
	mu      sync.Mutex
}

type allowAll struct{}

func (allowAll) Authenticate(r *http.Request) (authn.Identity, error) {
	if r.Header.Get("Authorization") == "" {
		return authn.Identity{}, errs.E(errs.Unauthenticated, "missing bearer token")
	}
	return authn.Identity{Subject: "u1", Role: authn.User}, nil
}

func validateNothing(cloudevents.Event) error { return nil }

func newFn() *fn {
	f := &fn{
		release: make(chan struct{}),
		entered: make(chan struct{}, 1),
		finish:  make(chan struct{}),
		mux:     runtime.NewMux("test", allowAll{}, validateNothing),
	}
	f.mux.Route("POST /api/v1/echo", func(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
		var v map[string]any
		if err := runtime.DecodeJSON(r, &v); err != nil {
			return err
		}
		runtime.WriteJSON(w, http.StatusOK, v)
		return nil
	})
	f.mux.Route("POST /api/v1/typed", func(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
		var v struct {
			Count int `json:"count"`
		}
		if err := runtime.DecodeJSON(r, &v); err != nil {
			return err
		}
		runtime.WriteJSON(w, http.StatusOK, v)
		return nil
	})
	f.mux.Route("GET /api/v1/panic", func(http.ResponseWriter, *http.Request, authn.Identity) error { panic("boom") })
	f.mux.Route("GET /api/v1/slow", func(w http.ResponseWriter, r *http.Request, _ authn.Identity) error {
		f.entered <- struct{}{}
		<-f.finish
		io.WriteString(w, "finished")
		return nil
	})
	f.mux.Route("GET /api/v1/internal", func(http.ResponseWriter, *http.Request, authn.Identity) error {
		return io.ErrUnexpectedEOF
	})
	f.mux.On("io.test.ping.v1", func(ctx context.Context, e cloudevents.Event) error {
		return nil
	})
	f.mux.On("io.test.down.v1", func(context.Context, cloudevents.Event) error {
		return errs.E(errs.Unavailable, "database down")
	})
	f.mux.On("io.test.gone.v1", func(context.Context, cloudevents.Event) error {
		return errs.E(errs.NotFound, "no such session")
	})
	f.mux.On("io.test.panic.v1", func(context.Context, cloudevents.Event) error { panic("boom") })
	return f
}

func (f *fn) Start(ctx context.Context, _ map[string]string) error {
	<-f.release
	return nil
}
func (f *fn) Stop(context.Context) error {
	f.mu.Lock()
	f.stopped = true
	f.mu.Unlock()
	return nil
}
func (f *fn) Handle(w http.ResponseWriter, r *http.Request) { f.mux.ServeHTTP(w, r) }

func (f *fn) wasStopped() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stopped
}

type server struct {
	url  string
	logs *fntest.Buffer
	stop context.CancelFunc
	done chan error
}

func serve(t *testing.T, f *fn, opts runtime.Options) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := &server{url: "http://" + ln.Addr().String(), logs: &fntest.Buffer{}, done: make(chan error, 1)}
	opts.Listener = ln
	opts.Env = map[string]string{}
	opts.Logger = logging.New(s.logs, slog.LevelDebug)
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	go func() { s.done <- runtime.Serve(ctx, f, opts) }()
	t.Cleanup(func() { cancel(); <-s.done })
	return s
}

// started serves a function whose Start returns at once, and waits until it
// is ready.
func started(t *testing.T, opts runtime.Options) (*fn, *server) {
	t.Helper()
	f := newFn()
	close(f.release)
	s := serve(t, f, opts)
	waitStatus(t, s.url+runtime.ReadinessPath, http.StatusOK)
	return f, s
}

// do sends a request, with a bearer token when authed, and returns the
// status and body.
func do(t *testing.T, method, url, contentType, body string, authed bool) (int, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	require.NoError(t, err)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if authed {
		req.Header.Set("Authorization", "Bearer x")
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// waitStatus waits until url answers a GET with status.
func waitStatus(t *testing.T, url string, status int) {
	t.Helper()
	require.Eventually(t, func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == status
	}, patience, 10*time.Millisecond, "%s never answered %d", url, status)
}

func TestReadinessWaitsForStart(t *testing.T) {
	f := newFn()
	s := serve(t, f, runtime.Options{})
	// Liveness answers while Start runs, so this waits for the listener.
	waitStatus(t, s.url+runtime.LivenessPath, http.StatusOK)
	tests := []struct {
		name string
		path string
		want int
	}{
		{"readiness before Start finished", runtime.ReadinessPath, http.StatusServiceUnavailable},
		{"liveness during Start", runtime.LivenessPath, http.StatusOK},
		{"a request before Start finished", "/api/v1/echo", http.StatusServiceUnavailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _ := do(t, http.MethodGet, s.url+tc.path, "", "", false)
			assert.Equal(t, tc.want, code)
		})
	}
	close(f.release)
	waitStatus(t, s.url+runtime.ReadinessPath, http.StatusOK)
}

func TestServeHonoursPORT(t *testing.T) {
	tests := []struct{ name string }{{"free port"}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			_, port, err := net.SplitHostPort(ln.Addr().String())
			require.NoError(t, err)
			require.NoError(t, ln.Close())
			f := newFn()
			close(f.release)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				done <- runtime.Serve(ctx, f, runtime.Options{Env: map[string]string{"PORT": port}, Logger: logging.New(io.Discard, slog.LevelInfo)})
			}()
			defer func() { cancel(); assert.NoError(t, <-done) }()
			waitStatus(t, "http://127.0.0.1:"+port+runtime.ReadinessPath, http.StatusOK)
		})
	}
}

func TestRequestHandling(t *testing.T) {
	_, s := started(t, runtime.Options{MaxBodyBytes: 1024})
	tests := []struct {
		name       string
		method     string
		path       string
		body       string
		authed     bool
		wantStatus int
		wantBody   string // a substring of the answer
		notInBody  string // what must not leak into the answer
		wantLog    []string
	}{
		{name: "echo", method: http.MethodPost, path: "/api/v1/echo", body: `{"a":1}`, authed: true,
			wantStatus: http.StatusOK, wantBody: `"a":1`},
		{name: "oversized body", method: http.MethodPost, path: "/api/v1/echo", body: `{"a":"` + strings.Repeat("x", 2048) + `"}`, authed: true,
			wantStatus: http.StatusRequestEntityTooLarge, wantBody: `"too_large"`},
		{name: "panic", method: http.MethodGet, path: "/api/v1/panic", authed: true,
			wantStatus: http.StatusInternalServerError, wantBody: `"internal"`, notInBody: "boom",
			wantLog: []string{"runtime_test.go", `"panic":"boom"`}},
		{name: "internal error", method: http.MethodGet, path: "/api/v1/internal", authed: true,
			wantStatus: http.StatusInternalServerError, notInBody: "unexpected EOF", wantLog: []string{"unexpected EOF"}},
		{name: "no token", method: http.MethodGet, path: "/api/v1/slow",
			wantStatus: http.StatusUnauthorized, wantBody: `"unauthenticated"`},
		{name: "unknown route", method: http.MethodGet, path: "/api/v1/nowhere", authed: true,
			wantStatus: http.StatusNotFound, wantBody: `"not_found"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, body := do(t, tc.method, s.url+tc.path, "application/json", tc.body, tc.authed)
			assert.Equal(t, tc.wantStatus, code, body)
			assert.Contains(t, body, tc.wantBody)
			if tc.notInBody != "" {
				assert.NotContains(t, body, tc.notInBody)
			}
			for _, want := range tc.wantLog {
				assert.Contains(t, s.logs.String(), want)
			}
		})
	}
}

func TestDecodeJSONErrorsNameTheProblem(t *testing.T) {
	_, s := started(t, runtime.Options{})
	long := strings.Repeat("é", 10_000) // 20,000 bytes
	tests := []struct {
		name        string
		path        string
		contentType string
		body        string
		wantMessage string
		maxLen      int // of the message; 0: no bound checked
	}{
		{"unknown field", "/api/v1/typed", "application/json", `{"cuont":1}`, `unknown field "cuont"`, 0},
		{"a long unknown field is quoted in part", "/api/v1/typed", "application/json", `{"` + long + `":1}`,
			`unknown field "` + strings.Repeat("é", 32) + `…"`, 100},
		{"wrong type", "/api/v1/typed", "application/json", `{"count":"x"}`, `field "count": got string, want int`, 0},
		{"empty body", "/api/v1/typed", "application/json", ``, "request body is empty", 0},
		{"malformed", "/api/v1/typed", "application/json", `{"count":`, "malformed JSON", 0},
		{"trailing data", "/api/v1/typed", "application/json", `{"count":1} {}`, "one JSON object", 0},
		{"a long content type is quoted in part", "/api/v1/typed", "text/" + strings.Repeat("x", 5000), `{}`, `content type "text/xxx`, 150},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, body := do(t, http.MethodPost, s.url+tc.path, tc.contentType, tc.body, true)
			require.Equal(t, http.StatusBadRequest, code, body)
			kind, message := fntest.ErrorBody(t, []byte(body))
			assert.Equal(t, string(errs.Invalid), kind)
			assert.Contains(t, message, tc.wantMessage)
			if tc.maxLen > 0 {
				assert.LessOrEqual(t, len(message), tc.maxLen, "message %q", message)
			}
		})
	}
}

func event(typ string) cloudevents.Event {
	e := cloudevents.NewEvent()
	e.SetID("evt-1")
	e.SetSource("/test")
	e.SetType(typ)
	e.SetData(cloudevents.ApplicationJSON, map[string]string{"k": "v"})
	return e
}

func TestEvents(t *testing.T) {
	_, s := started(t, runtime.Options{})
	tests := []struct {
		name       string
		typ        string
		structured bool
		want       int
	}{
		{"binary, handled: no reply (events leave through the outbox)", "io.test.ping.v1", false, http.StatusAccepted},
		{"structured, handled", "io.test.ping.v1", true, http.StatusAccepted},
		{"transient: the broker retries", "io.test.down.v1", false, http.StatusServiceUnavailable},
		{"final, never 404 (Knative retries 404)", "io.test.gone.v1", false, http.StatusBadRequest},
		{"unknown type", "io.test.unknown.v1", false, http.StatusBadRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, reply := fntest.Deliver(t, s.url, event(tc.typ), tc.structured)
			assert.Equal(t, tc.want, code)
			assert.Nil(t, reply)
		})
	}

	raw := []struct {
		name        string
		contentType string
		body        string
	}{
		{"batch mode", "application/cloudevents-batch+json", `[{"specversion":"1.0"}]`},
		{"malformed structured event", "application/cloudevents+json", `{"specversion":"1.0","id":`},
	}
	for _, tc := range raw {
		t.Run(tc.name, func(t *testing.T) {
			code, _ := do(t, http.MethodPost, s.url, tc.contentType, tc.body, false)
			assert.Equal(t, http.StatusBadRequest, code)
		})
	}

	const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	traced := event("io.test.ping.v1")
	traced.SetID("traced-1")
	traced.SetExtension("traceparent", traceparent)
	code, _ := fntest.Deliver(t, s.url, traced, true)
	require.Equal(t, http.StatusAccepted, code)

	logged := []struct {
		name  string
		match func(line map[string]any) bool
	}{
		{"a complete line for the ping event", func(line map[string]any) bool {
			return line["eventId"] == "evt-1" && line["eventType"] == "io.test.ping.v1" && line["outcome"] == "handled" &&
				line["eventSource"] == "/test" && line["durationMs"] != nil && line["status"] == float64(202)
		}},
		{"a structured event's traceparent", func(line map[string]any) bool {
			return line["eventId"] == "traced-1" && line["traceparent"] == traceparent
		}},
	}
	for _, tc := range logged {
		t.Run(tc.name, func(t *testing.T) {
			assert.True(t, hasLine(s.logs, tc.match), "not in the log:\n%s", s.logs.String())
		})
	}
}

func hasLine(logs *fntest.Buffer, match func(map[string]any) bool) bool {
	for _, line := range logs.Lines() {
		if match(line) {
			return true
		}
	}
	return false
}

// slowRequest starts a request to the slow route and returns what it got:
// the body, or the error.
func slowRequest(s *server) <-chan string {
	result := make(chan string, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, s.url+"/api/v1/slow", nil)
		req.Header.Set("Authorization", "Bearer x")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			result <- err.Error()
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			result <- err.Error()
			return
		}
		result <- string(b)
	}()
	return result
}

// waitDraining waits until s stopped accepting connections: its drain has
// begun.
func waitDraining(t *testing.T, s *server) {
	t.Helper()
	require.Eventually(t, func() bool {
		resp, err := http.Get(s.url + runtime.LivenessPath)
		if err == nil {
			resp.Body.Close()
		}
		return err != nil
	}, patience, 10*time.Millisecond, "the server never stopped listening")
}

func TestSIGTERMDrainsInFlightRequests(t *testing.T) {
	tests := []struct {
		name         string
		drainTimeout time.Duration
	}{
		{"the default drain", 0},
		{"a configured drain", time.Hour},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, s := started(t, runtime.Options{DrainTimeout: tc.drainTimeout})
			result := slowRequest(s)
			<-f.entered
			s.stop()
			waitDraining(t, s)
			// The request is still in flight while the server drains.
			assert.False(t, f.wasStopped(), "Stop ran before the drain ended")
			close(f.finish)
			assert.Equal(t, "finished", <-result, "the in-flight request did not finish during the drain")
			assert.NoError(t, <-s.done)
			s.done <- nil // for Cleanup
			assert.True(t, f.wasStopped(), "Stop was not called after the drain")
		})
	}
}

func TestADrainThatCannotFinishIsAnError(t *testing.T) {
	tests := []struct {
		name         string
		drainTimeout time.Duration
	}{
		{"short drain", 50 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, s := started(t, runtime.Options{DrainTimeout: tc.drainTimeout})
			defer close(f.finish)
			result := slowRequest(s)
			<-f.entered
			s.stop()
			err := <-s.done
			s.done <- nil // for Cleanup
			require.Error(t, err, "Serve ended cleanly with a request cut off")
			assert.Contains(t, err.Error(), "drain")
			assert.ErrorIs(t, err, context.DeadlineExceeded)
			assert.True(t, f.wasStopped(), "Stop was not called after the drain gave up")
			assert.NotEqual(t, "finished", <-result, "the request was not cut off")
		})
	}
}

func TestServerTimeoutsAreSet(t *testing.T) {
	srv := runtime.NewServer(context.Background(), http.NotFoundHandler(), slog.New(slog.DiscardHandler))
	tests := []struct {
		name string
		got  time.Duration
		min  time.Duration
	}{
		{"ReadHeaderTimeout", srv.ReadHeaderTimeout, time.Second},
		{"ReadTimeout", srv.ReadTimeout, srv.ReadHeaderTimeout},
		// Past the 90 s a Go proxy keeps an idle connection.
		{"IdleTimeout", srv.IdleTimeout, 90 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Greater(t, tc.got, tc.min)
			assert.LessOrEqual(t, tc.got, 10*time.Minute)
		})
	}
	assert.Zero(t, srv.WriteTimeout, "a long job's handler answers when its work is done")
}

func TestErrorBodyShape(t *testing.T) {
	tests := []struct {
		name       string
		err        error
		wantStatus int
		want       map[string]string
	}{
		{"conflict", errs.E(errs.Conflict, "already shared"), http.StatusConflict,
			map[string]string{"error": "Conflict", "message": "already shared", "code": "conflict"}},
		{"not found", errs.E(errs.NotFound, "no such template"), http.StatusNotFound,
			map[string]string{"error": "Not Found", "message": "no such template", "code": "not_found"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{header: http.Header{}}
			req, err := http.NewRequest(http.MethodGet, "/", nil)
			require.NoError(t, err)
			runtime.WriteError(rec, req, tc.err)
			var body map[string]string
			require.NoError(t, json.Unmarshal(rec.body.Bytes(), &body))
			assert.Equal(t, tc.wantStatus, rec.status)
			assert.Equal(t, tc.want, body)
		})
	}
}

type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) WriteHeader(code int)        { r.status = code }
func (r *recorder) Write(b []byte) (int, error) { return r.body.Write(b) }

func TestCloudEventsOnRESTPathsAreREST(t *testing.T) {
	_, s := started(t, runtime.Options{})
	tests := []struct {
		name       string
		structured bool
	}{
		{"binary", false},
		{"structured", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// No token: a CloudEvent posted through the public ingress to a
			// REST path must meet the bearer check, not an event handler.
			code, _ := fntest.Deliver(t, s.url+"/api/v1/echo", event("io.test.ping.v1"), tc.structured)
			assert.Equal(t, http.StatusUnauthorized, code)
		})
	}
}

// senderCheck accepts event deliveries with the token "broker".
type senderCheck struct{}

func (senderCheck) Authenticate(r *http.Request) (authn.Identity, error) {
	if r.Header.Get("Authorization") != "Bearer broker" {
		return authn.Identity{}, errs.E(errs.Unauthenticated, "not the broker")
	}
	return authn.Identity{Subject: "broker"}, nil
}

func TestAuthenticateEventReadsNoBody(t *testing.T) {
	open := runtime.NewMux("open", allowAll{}, validateNothing)
	open.On("io.test.ping.v1", func(context.Context, cloudevents.Event) error { return nil })
	guarded := runtime.NewMux("guarded", allowAll{}, validateNothing)
	guarded.RequireEventAuth(senderCheck{})
	var handled int
	guarded.On("io.test.ping.v1", func(context.Context, cloudevents.Event) error { handled++; return nil })
	tests := []struct {
		name     string
		handler  http.Handler
		token    string
		wantKind errs.Kind // "" for no refusal
	}{
		{"no event authentication required", open, "", ""},
		{"the sender's token", guarded, "broker", ""},
		{"no token", guarded, "", errs.Unauthenticated},
		{"another token", guarded, "someone", errs.Unauthenticated},
		{"a handler that is not a Mux cannot vouch", http.NotFoundHandler(), "broker", errs.Unavailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body := &countingReader{r: strings.NewReader(`{"k":"v"}`)}
			req, err := http.NewRequest(http.MethodPost, "/", body)
			require.NoError(t, err)
			req.Header.Set("Ce-Specversion", "1.0")
			req.Header.Set("Ce-Id", "e1")
			req.Header.Set("Ce-Source", "/test")
			req.Header.Set("Ce-Type", "io.test.ping.v1")
			req.Header.Set("Content-Type", "application/json")
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			err = runtime.AuthenticateEvent(tc.handler, req)
			if tc.wantKind == "" {
				assert.NoError(t, err)
			} else {
				assert.Equal(t, tc.wantKind, errs.KindOf(err), "error %v", err)
			}
			assert.Zero(t, body.n, "the check read the body")
			assert.Zero(t, handled, "the check ran the handler")
		})
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}
