package runtime_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/protocol"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/logging"
	"github.com/streamspace-dev/functions/shared/runtime"
)

const noopBody = `{"templateId":"firefox","change":"updated"}`

func noopRequest() *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(noopBody))
	r.Header.Set("Ce-Specversion", "1.0")
	r.Header.Set("Ce-Id", "bench-1")
	r.Header.Set("Ce-Source", "/bench")
	r.Header.Set("Ce-Type", "io.test.noop.v1")
	r.Header.Set("Content-Type", "application/json")
	return r
}

type noopFn struct{ mux *runtime.Mux }

func (f noopFn) Handle(w http.ResponseWriter, r *http.Request) { f.mux.ServeHTTP(w, r) }

// BenchmarkNoopEvent compares a no-op CloudEvent through the shared runtime
// (health mux, body limit, panic guard, one JSON log line, Mux dispatch)
// with the same event through a bare sdk-go receive handler.
func BenchmarkNoopEvent(b *testing.B) {
	b.Run("runtime", func(b *testing.B) {
		mux := runtime.NewMux("bench", allowAll{}, func(cloudevents.Event) error { return nil })
		mux.On("io.test.noop.v1", func(context.Context, cloudevents.Event) error { return nil })
		var started atomic.Bool
		started.Store(true)
		h := runtime.Handler(noopFn{mux}, &started, logging.New(io.Discard, slog.LevelInfo), runtime.DefaultMaxBodyBytes, nil)
		b.ReportAllocs()
		for b.Loop() {
			w := httptest.NewRecorder()
			h.ServeHTTP(w, noopRequest())
			require.Equal(b, http.StatusAccepted, w.Code)
		}
	})
	b.Run("sdk-go", func(b *testing.B) {
		p, err := cehttp.New()
		require.NoError(b, err)
		h, err := cloudevents.NewHTTPReceiveHandler(context.Background(), p, func(context.Context, cloudevents.Event) protocol.Result { return nil })
		require.NoError(b, err)
		b.ReportAllocs()
		for b.Loop() {
			w := httptest.NewRecorder()
			h.ServeHTTP(w, noopRequest())
			require.Equal(b, 2, w.Code/100, "status %d", w.Code)
		}
	})
}
