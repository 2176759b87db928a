package runtime

import (
	"context"
	"log/slog"
	"net/http"
	"runtime/debug"
	"sync"
	"time"
)

// requestLog collects what handlers learn about a request (event id, type,
// outcome, ...) so the middleware writes it in the request's one log line.
type requestLog struct {
	mu    sync.Mutex
	attrs []slog.Attr
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
// log, and writes one log line per request.
func middleware(next http.Handler, log *slog.Logger, maxBody int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rl := &requestLog{}
		r = r.WithContext(context.WithValue(r.Context(), logKey{}, rl))
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
			rl.mu.Unlock()
			log.LogAttrs(r.Context(), level, "request", attrs...)
		}()
		next.ServeHTTP(sw, r)
	})
}
