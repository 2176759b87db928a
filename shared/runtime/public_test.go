package runtime_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/runtime"
)

// TestPublicRoutes: a public route is served without a token, while a
// Route beside it still needs one, and a public handler's error is written
// in the error shape.
func TestPublicRoutes(t *testing.T) {
	mux := runtime.NewMux("test", allowAll{}, validateNothing)
	mux.Public("GET /api/v1/open", func(w http.ResponseWriter, _ *http.Request) error {
		_, err := io.WriteString(w, "open")
		return err
	})
	mux.Public("GET /api/v1/open/refused", func(http.ResponseWriter, *http.Request) error {
		return errs.E(errs.Invalid, "returnUrl: not allowed")
	})
	mux.Route("GET /api/v1/closed", func(w http.ResponseWriter, _ *http.Request, _ authn.Identity) error {
		_, err := io.WriteString(w, "closed")
		return err
	})
	assert.ElementsMatch(t, []string{"GET /api/v1/open", "GET /api/v1/open/refused", "GET /api/v1/closed"}, mux.Patterns())

	tests := []struct {
		name   string
		path   string
		status int
		body   string
	}{
		{name: "public without a token", path: "/api/v1/open", status: http.StatusOK, body: "open"},
		{name: "public error", path: "/api/v1/open/refused", status: http.StatusBadRequest,
			body: `{"error":"Bad Request","message":"returnUrl: not allowed","code":"invalid"}` + "\n"},
		{name: "authenticated route without a token", path: "/api/v1/closed", status: http.StatusUnauthorized},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.path, nil))
			assert.Equal(t, tc.status, rec.Code)
			if tc.body != "" {
				assert.Equal(t, tc.body, rec.Body.String())
			}
		})
	}
}
