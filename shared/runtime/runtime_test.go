package runtime_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/logging"
	"github.com/streamspace-dev/functions/shared/runtime"
)

// fn is a function whose Start waits for a signal, for readiness tests.
type fn struct {
	release chan struct{}
	entered chan struct{}
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
	f := &fn{release: make(chan struct{}), entered: make(chan struct{}, 1), mux: runtime.NewMux("test", allowAll{}, validateNothing)}
	f.mux.Route("POST /api/v1/echo", func(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
		var v map[string]any
		if err := runtime.DecodeJSON(r, &v); err != nil {
			return err
		}
		runtime.WriteJSON(w, http.StatusOK, v)
		return nil
	})
	f.mux.Route("GET /api/v1/panic", func(http.ResponseWriter, *http.Request, authn.Identity) error { panic("boom") })
	f.mux.Route("GET /api/v1/slow", func(w http.ResponseWriter, r *http.Request, _ authn.Identity) error {
		f.entered <- struct{}{}
		time.Sleep(300 * time.Millisecond) // still in flight when the drain starts
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

type server struct {
	url  string
	logs *fntest.Buffer
	stop context.CancelFunc
	done chan error
}

func serve(t *testing.T, f *fn, opts runtime.Options) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
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

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func waitReady(t *testing.T, url string) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if resp, err := http.Get(url + runtime.ReadinessPath); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("never ready")
}

func TestReadinessWaitsForStart(t *testing.T) {
	f := newFn()
	s := serve(t, f, runtime.Options{})
	waitListening(t, s.url)
	if code, _ := get(t, s.url+runtime.ReadinessPath); code != http.StatusServiceUnavailable {
		t.Errorf("readiness before Start finished: %d, want 503", code)
	}
	if code, _ := get(t, s.url+runtime.LivenessPath); code != http.StatusOK {
		t.Errorf("liveness during Start: %d, want 200", code)
	}
	if code, _ := get(t, s.url+"/api/v1/echo"); code != http.StatusServiceUnavailable {
		t.Errorf("request before Start finished: %d, want 503", code)
	}
	close(f.release)
	waitReady(t, s.url)
}

func waitListening(t *testing.T, url string) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if resp, err := http.Get(url + runtime.LivenessPath); err == nil {
			resp.Body.Close()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("not listening")
}

func TestServeHonoursPORT(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	f := newFn()
	close(f.release)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runtime.Serve(ctx, f, runtime.Options{Env: map[string]string{"PORT": port}, Logger: logging.New(io.Discard, slog.LevelInfo)})
	}()
	defer func() { cancel(); <-done }()
	waitReady(t, "http://127.0.0.1:"+port)
}

func TestRequestHandling(t *testing.T) {
	f := newFn()
	close(f.release)
	s := serve(t, f, runtime.Options{MaxBodyBytes: 1024})
	waitReady(t, s.url)

	post := func(body string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, s.url+"/api/v1/echo", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer x")
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	authed := func(path string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, s.url+path, nil)
		req.Header.Set("Authorization", "Bearer x")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	if code, body := post(`{"a":1}`); code != 200 || !strings.Contains(body, `"a":1`) {
		t.Errorf("echo: %d %s", code, body)
	}
	if code, body := post(`{"a":"` + strings.Repeat("x", 2048) + `"}`); code != http.StatusRequestEntityTooLarge || !strings.Contains(body, `"too_large"`) {
		t.Errorf("oversized body: %d %s, want 413", code, body)
	}
	if code, body := authed("/api/v1/panic"); code != 500 || !strings.Contains(body, `"internal"`) || strings.Contains(body, "boom") {
		t.Errorf("panic: %d %s, want 500 without internals", code, body)
	}
	if !strings.Contains(s.logs.String(), "runtime_test.go") || !strings.Contains(s.logs.String(), `"panic":"boom"`) {
		t.Errorf("panic log lacks the stack: %s", s.logs.String())
	}
	if code, body := authed("/api/v1/internal"); code != 500 || strings.Contains(body, "unexpected EOF") {
		t.Errorf("internal error leaked: %d %s", code, body)
	}
	if !strings.Contains(s.logs.String(), "unexpected EOF") {
		t.Error("internal error not logged")
	}
	if code, body := get(t, s.url+"/api/v1/slow"); code != 401 {
		t.Errorf("no token: %d %s", code, body)
	}
	if code, body := authed("/api/v1/nowhere"); code != 404 || !strings.Contains(body, `"not_found"`) {
		t.Errorf("unknown route: %d %s", code, body)
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
	f := newFn()
	close(f.release)
	s := serve(t, f, runtime.Options{})
	waitReady(t, s.url)

	for _, structured := range []bool{false, true} {
		code, reply := fntest.Deliver(t, s.url, event("io.test.ping.v1"), structured)
		if code != http.StatusAccepted || reply != nil {
			t.Errorf("structured=%v: %d %v, want 202 and no reply (events leave through the outbox)", structured, code, reply)
		}
	}
	tests := []struct {
		typ  string
		want int
	}{
		{"io.test.down.v1", http.StatusServiceUnavailable}, // transient: the broker retries
		{"io.test.gone.v1", http.StatusBadRequest},         // final, never 404 (Knative retries 404)
		{"io.test.unknown.v1", http.StatusBadRequest},
	}
	for _, tc := range tests {
		if code, _ := fntest.Deliver(t, s.url, event(tc.typ), false); code != tc.want {
			t.Errorf("%s: %d, want %d", tc.typ, code, tc.want)
		}
	}

	req, _ := http.NewRequest(http.MethodPost, s.url, strings.NewReader(`[{"specversion":"1.0"}]`))
	req.Header.Set("Content-Type", "application/cloudevents-batch+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("batch mode: %d, want 400", resp.StatusCode)
	}

	req, _ = http.NewRequest(http.MethodPost, s.url, strings.NewReader(`{"specversion":"1.0","id":`))
	req.Header.Set("Content-Type", "application/cloudevents+json")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("malformed structured event: %d, want 400", resp.StatusCode)
	}

	traced := event("io.test.ping.v1")
	traced.SetID("traced-1")
	traced.SetExtension("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	fntest.Deliver(t, s.url, traced, true)

	var found, tracedLogged bool
	for _, line := range s.logs.Lines() {
		if line["eventId"] == "traced-1" && line["traceparent"] == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" {
			tracedLogged = true
		}
		if line["eventId"] == "evt-1" && line["eventType"] == "io.test.ping.v1" && line["outcome"] == "handled" &&
			line["eventSource"] == "/test" && line["durationMs"] != nil && line["status"] == float64(202) {
			found = true
		}
	}
	if !found {
		t.Errorf("no complete log line for the ping event:\n%s", s.logs.String())
	}
	if !tracedLogged {
		t.Errorf("structured event's traceparent not in its log line:\n%s", s.logs.String())
	}
}

func TestSIGTERMDrainsInFlightRequests(t *testing.T) {
	f := newFn()
	close(f.release)
	s := serve(t, f, runtime.Options{DrainTimeout: 5 * time.Second})
	waitReady(t, s.url)

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
		b, _ := io.ReadAll(resp.Body)
		result <- string(b)
	}()
	<-f.entered
	s.stop()
	if got := <-result; got != "finished" {
		t.Errorf("in-flight request got %q, want it to finish during the drain", got)
	}
	if err := <-s.done; err != nil {
		t.Errorf("Serve: %v", err)
	}
	s.done <- nil // for Cleanup
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.stopped {
		t.Error("Stop was not called after the drain")
	}
}

func TestErrorBodyShape(t *testing.T) {
	rec := &recorder{header: http.Header{}}
	req, _ := http.NewRequest(http.MethodGet, "/", nil)
	runtime.WriteError(rec, req, errs.E(errs.Conflict, "already shared"))
	var body map[string]string
	if err := json.Unmarshal(rec.body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"error": "Conflict", "message": "already shared", "code": "conflict"}
	if rec.status != 409 || !maps.Equal(body, want) {
		t.Errorf("got %d %v, want 409 %v", rec.status, body, want)
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
	f := newFn()
	close(f.release)
	s := serve(t, f, runtime.Options{})
	waitReady(t, s.url)
	for _, structured := range []bool{false, true} {
		// No token: a CloudEvent posted through the public ingress to a
		// REST path must meet the bearer check, not an event handler.
		code, _ := fntest.Deliver(t, s.url+"/api/v1/echo", event("io.test.ping.v1"), structured)
		if code != http.StatusUnauthorized {
			t.Errorf("structured=%v: CloudEvent on a REST path got %d, want 401", structured, code)
		}
	}
}
