package runtime

import (
	"context"
	"log/slog"
	"net/http"
	"runtime/debug"
	"sync"
	"time"

	"github.com/streamspace-dev/functions/shared/metrics"
)

// requestLog collects what handlers learn about a request (event id, type,
// outcome, ...) so the middleware writes it in the request's one log line.
type requestLog struct {
	mu    sync.Mutex
	attrs []slog.Attr
	// function and route name the REST route that served the request, if
	// one did; the request is counted under them.
	function, route string
}

type logKey struct{}

// AddLogAttrs adds attributes to the current request's log line.
func AddLogAttrs(ctx context.Context, attrs ...slog.Attr) {
	if rl, ok := ctx.Value(logKey{}).(*requestLog); ok {
		rl.mu.Lock()
		rl.attrs = append(rl.attrs, attrs...)
		rl.mu.Unlock()
	}
}

type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// middleware bounds the body, turns a panic into a 500 with the stack in the
// log, writes one log line per request, and counts REST requests in reg,
// which it passes on to the handlers in the request's context.
func middleware(next http.Handler, log *slog.Logger, maxBody int64, reg *metrics.Registry) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rl := &requestLog{}
		ctx := context.WithValue(r.Context(), logKey{}, rl)
		r = r.WithContext(WithMetrics(ctx, reg))
		sw := &statusWriter{ResponseWriter: w}
		r.Body = http.MaxBytesReader(sw, r.Body, maxBody)

		defer func() {
			level := slog.LevelInfo
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				level = slog.LevelError
				AddLogAttrs(r.Context(), slog.Any("panic", p), slog.String("stack", string(debug.Stack())))
				if sw.status == 0 {
					WriteError(sw, r, errPanic)
				}
			}
			if sw.status >= 500 {
				level = slog.LevelError
			}
			attrs := []slog.Attr{
				slog.String("method", r.Method),
				slog.String("path", r.URL.Path),
				slog.Int("status", sw.status),
				slog.Float64("durationMs", float64(time.Since(start).Microseconds())/1000),
			}
			if tp := r.Header.Get("traceparent"); tp != "" {
				attrs = append(attrs, slog.String("traceparent", tp))
			}
			rl.mu.Lock()
			attrs = append(attrs, rl.attrs...)
			function, route := rl.function, rl.route
			rl.mu.Unlock()
			if route != "" {
				reg.Request(function, route, sw.status)
			}
			log.LogAttrs(r.Context(), level, "request", attrs...)
		}()
		next.ServeHTTP(sw, r)
	})
}
