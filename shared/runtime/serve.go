// Package runtime serves a function: knative func's instanced shape (New,
// Handle, and optional Start, Stop, Ready, Alive) behind one HTTP server with
// health endpoints, Prometheus metrics, a request body limit, panic
// recovery, one JSON log line per request, and a graceful drain on SIGTERM.
package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/logging"
	"github.com/streamspace-dev/functions/shared/metrics"
)

// Function is the one method every function has.
type Function interface {
	Handle(w http.ResponseWriter, r *http.Request)
}

// The optional methods of knative func's instanced functions.
type (
	starter interface {
		Start(ctx context.Context, cfg map[string]string) error
	}
	stopper interface {
		Stop(ctx context.Context) error
	}
	readier interface {
		Ready(ctx context.Context) (bool, error)
	}
	aliver interface {
		Alive(ctx context.Context) (bool, error)
	}
)

// Health endpoint paths, as knative func serves them.
const (
	ReadinessPath = "/health/readiness"
	LivenessPath  = "/health/liveness"
)

// DefaultMaxBodyBytes bounds a request body unless Options says otherwise.
const DefaultMaxBodyBytes = 4 << 20

// Options configure Serve. The zero value serves on PORT (default 8080).
type Options struct {
	// Listener, when set, is used instead of listening on PORT.
	Listener net.Listener
	// Env is passed to Start; nil means the process environment.
	Env map[string]string
	// Logger receives the request log; nil means JSON to stderr.
	Logger *slog.Logger
	// MaxBodyBytes bounds request bodies; past it the function reads an
	// error and answers 413.
	MaxBodyBytes int64
	// DrainTimeout bounds how long in-flight requests may finish after
	// ctx ends. Default 25s, under Knative's default 30s grace period.
	DrainTimeout time.Duration
	// OnReady, when set, is called once the function is ready.
	OnReady func(addr net.Addr)
	// Metrics is served at MetricsPath and passed to Start; nil means a
	// new registry for this Serve.
	Metrics *metrics.Registry
}

// Main serves f until SIGTERM or SIGINT and exits non-zero on failure. It is
// the whole of a function binary's main.
func Main(f Function) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log := logging.New(os.Stderr, slog.LevelInfo)
	slog.SetDefault(log)
	if err := Serve(ctx, f, Options{Logger: log}); err != nil {
		log.Error("function stopped", "err", err)
		os.Exit(1)
	}
}

// Serve runs f: Start with the environment, serve HTTP until ctx is done,
// drain in-flight requests, then Stop. Readiness is false until Start
// returns; a Start error ends Serve.
func Serve(ctx context.Context, f Function, o Options) error {
	if o.Logger == nil {
		o.Logger = logging.New(os.Stderr, slog.LevelInfo)
	}
	if o.Env == nil {
		o.Env = Environ()
	}
	if o.MaxBodyBytes == 0 {
		o.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if o.DrainTimeout == 0 {
		o.DrainTimeout = 25 * time.Second
	}
	if o.Metrics == nil {
		o.Metrics = metrics.New()
	}
	ctx = WithMetrics(ctx, o.Metrics)
	ln := o.Listener
	if ln == nil {
		port := o.Env["PORT"]
		if port == "" {
			port = "8080"
		}
		var err error
		if ln, err = net.Listen("tcp", ":"+port); err != nil {
			return fmt.Errorf("listen on PORT %s: %w", port, err)
		}
	}

	var started atomic.Bool
	srv := newServer(ctx, Handler(f, &started, o.Logger, o.MaxBodyBytes, o.Metrics), o.Logger)
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	// Start runs while the server already answers health checks, so a slow
	// Start shows as not ready rather than as a refused connection.
	if s, ok := f.(starter); ok {
		if err := s.Start(WithLogger(ctx, o.Logger), o.Env); err != nil {
			srv.Close()
			return fmt.Errorf("start: %w", err)
		}
	}
	started.Store(true)
	o.Logger.Info("function ready", "addr", ln.Addr().String())
	if o.OnReady != nil {
		o.OnReady(ln.Addr())
	}

	var err error
	select {
	case err = <-serveErr:
	case <-ctx.Done():
		o.Logger.Info("draining", "timeout", o.DrainTimeout.String())
		dctx, cancel := context.WithTimeout(context.Background(), o.DrainTimeout)
		if err = srv.Shutdown(dctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
			// What is still in flight is cut off, so Stop runs on time.
			srv.Close()
			err = fmt.Errorf("drain: requests still in flight after %s: %w", o.DrainTimeout, err)
		}
		cancel()
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	if s, ok := f.(stopper); ok {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err = errors.Join(err, s.Stop(sctx))
	}
	return err
}

// The server's timeouts. Every request reaches a function through Knative's
// queue-proxy, which is not a slow client, so these bound only what a
// misbehaving peer can hold: a connection that sends no headers, a body that
// trickles in, an idle keep-alive connection. There is no write timeout: a
// long job's handler answers when its work is done.
const (
	// readHeaderTimeout bounds reading a request's headers.
	readHeaderTimeout = 10 * time.Second
	// readTimeout bounds reading a whole request, headers and a body of up
	// to DefaultMaxBodyBytes.
	readTimeout = time.Minute
	// idleTimeout is how long a keep-alive connection may wait for its next
	// request. It is longer than the 90 s a Go proxy keeps an idle
	// connection, so the proxy closes first and never sends a request on a
	// connection this end is closing.
	idleTimeout = 2 * time.Minute
)

// newServer is the HTTP server Serve runs h with; its requests' contexts
// outlive ctx so that a drain lets them finish.
func newServer(ctx context.Context, h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		IdleTimeout:       idleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
}

// Handler wraps f with the health endpoints, reg's metrics endpoint and the
// per-request middleware. started reports whether Start has finished; a nil
// reg is a new registry.
func Handler(f Function, started *atomic.Bool, log *slog.Logger, maxBody int64, reg *metrics.Registry) http.Handler {
	if reg == nil {
		reg = metrics.New()
	}
	mux := http.NewServeMux()
	mux.Handle("GET "+MetricsPath, reg.Handler())
	mux.HandleFunc("GET "+ReadinessPath, func(w http.ResponseWriter, r *http.Request) {
		ok := started.Load()
		var err error
		if rd, has := f.(readier); ok && has {
			ok, err = rd.Ready(r.Context())
		}
		health(w, ok, err, log)
	})
	mux.HandleFunc("GET "+LivenessPath, func(w http.ResponseWriter, r *http.Request) {
		ok, err := true, error(nil)
		if a, has := f.(aliver); has {
			ok, err = a.Alive(r.Context())
		}
		health(w, ok, err, log)
	})
	mux.Handle("/", middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Knative sends no traffic before readiness; anyone else who does
		// gets a retryable answer rather than a half-started function.
		if !started.Load() {
			WriteError(w, r, errs.E(errs.Unavailable, "function is starting"))
			return
		}
		f.Handle(w, r)
	}), log, maxBody, reg))
	return mux
}

func health(w http.ResponseWriter, ok bool, err error, log *slog.Logger) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err != nil {
		log.Warn("health check failed", "err", err)
	}
	if !ok || err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "NOT OK")
		return
	}
	fmt.Fprintln(w, "OK")
}

// Environ returns the process environment as a map, as knative func passes
// it to Start.
func Environ() map[string]string {
	env := make(map[string]string)
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	return env
}

type loggerKey struct{}

// WithLogger returns ctx carrying log; Serve passes it to Start so a
// function logs where its server does.
func WithLogger(ctx context.Context, log *slog.Logger) context.Context {
	return context.WithValue(ctx, loggerKey{}, log)
}

// Logger returns the logger in ctx, or slog.Default().
func Logger(ctx context.Context) *slog.Logger {
	if l, ok := ctx.Value(loggerKey{}).(*slog.Logger); ok {
		return l
	}
	return slog.Default()
}
