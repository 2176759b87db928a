package errs_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/streamspace-dev/functions/shared/errs"
)

func TestStatusTable(t *testing.T) {
	tests := []struct {
		err         error
		rest, event int
		retry       bool
	}{
		{errs.E(errs.Invalid, "x"), 400, 400, false},
		{errs.E(errs.Unauthenticated, "x"), 401, 401, false},
		{errs.E(errs.Forbidden, "x"), 403, 403, false},
		// Knative retries 404 and 409: on the event path they are final 400s.
		{errs.E(errs.NotFound, "x"), 404, 400, false},
		{errs.E(errs.Conflict, "x"), 409, 400, false},
		{errs.E(errs.TooLarge, "x"), 413, 413, false},
		{errs.E(errs.Unprocessable, "x"), 422, 422, false},
		{errs.E(errs.Unavailable, "x"), 503, 503, true},
		{errs.E(errs.Internal, "x"), 500, 500, true},
		{errors.New("plain"), 500, 500, true},
		{context.DeadlineExceeded, 503, 503, true},
		{fmt.Errorf("wrapped: %w", errs.E(errs.NotFound, "x")), 404, 400, false},
	}
	for _, tc := range tests {
		if got := errs.HTTPStatus(tc.err); got != tc.rest {
			t.Errorf("HTTPStatus(%v) = %d, want %d", tc.err, got, tc.rest)
		}
		if got := errs.EventStatus(tc.err); got != tc.event {
			t.Errorf("EventStatus(%v) = %d, want %d", tc.err, got, tc.event)
		}
		if got := errs.Retryable(tc.err); got != tc.retry {
			t.Errorf("Retryable(%v) = %v, want %v", tc.err, got, tc.retry)
		}
		// Knative retries 404, 408, 409 and 429: no final outcome may use them.
		if s := errs.EventStatus(tc.err); s < 500 && (s == http.StatusNotFound || s == http.StatusRequestTimeout || s == http.StatusConflict || s == http.StatusTooManyRequests) {
			t.Errorf("EventStatus(%v) = %d, which Knative would retry", tc.err, s)
		}
	}
}

func TestMessagesKeepInternalsInside(t *testing.T) {
	if got := errs.Message(errors.New("pq: password authentication failed for user app")); got != "internal error" {
		t.Errorf("internal error shown as %q", got)
	}
	if got := errs.Message(errs.Wrap(errs.Invalid, errors.New("secret cause"), "tags[0]: too long")); got != "tags[0]: too long" {
		t.Errorf("got %q, want the client message without the cause", got)
	}
	if got := errs.Message(errs.Wrap(errs.Internal, errors.New("secret"), "boom")); got != "internal error" {
		t.Errorf("an Internal error's message leaked: %q", got)
	}
}
