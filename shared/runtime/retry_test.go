package runtime_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/runtime"
)

// TestRetryAfter checks every 503 tells the client when to try again, and
// no other answer does.
func TestRetryAfter(t *testing.T) {
	tests := []struct {
		name       string
		err        error
		wantStatus int
		want       string
	}{
		{"unavailable", errs.E(errs.Unavailable, "database unavailable"), http.StatusServiceUnavailable, "1"},
		{"a lock timeout, classified", errs.Wrap(errs.Unavailable, errors.New("55P03"), "database unavailable"), http.StatusServiceUnavailable, "1"},
		{"not found", errs.E(errs.NotFound, "no such template"), http.StatusNotFound, ""},
		{"internal", errors.New("boom"), http.StatusInternalServerError, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			runtime.WriteError(w, httptest.NewRequest(http.MethodGet, "/api/v1/x", nil), tc.err)
			assert.Equal(t, tc.wantStatus, w.Code)
			assert.Equal(t, tc.want, w.Header().Get("Retry-After"))
		})
	}
}
