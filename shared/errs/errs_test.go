package errs_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/streamspace-dev/functions/shared/errs"
)

func TestStatusTable(t *testing.T) {
	// Knative retries 404, 408, 409 and 429: no final outcome may use them.
	knativeRetries := []int{http.StatusNotFound, http.StatusRequestTimeout, http.StatusConflict, http.StatusTooManyRequests}

	tests := []struct {
		name        string
		err         error
		rest, event int
		retry       bool
	}{
		{name: "invalid", err: errs.E(errs.Invalid, "x"), rest: 400, event: 400, retry: false},
		{name: "unauthenticated", err: errs.E(errs.Unauthenticated, "x"), rest: 401, event: 401, retry: false},
		{name: "forbidden", err: errs.E(errs.Forbidden, "x"), rest: 403, event: 403, retry: false},
		// Knative retries 404 and 409: on the event path they are final 400s.
		{name: "not found", err: errs.E(errs.NotFound, "x"), rest: 404, event: 400, retry: false},
		{name: "conflict", err: errs.E(errs.Conflict, "x"), rest: 409, event: 400, retry: false},
		{name: "too large", err: errs.E(errs.TooLarge, "x"), rest: 413, event: 413, retry: false},
		{name: "unprocessable", err: errs.E(errs.Unprocessable, "x"), rest: 422, event: 422, retry: false},
		{name: "unavailable", err: errs.E(errs.Unavailable, "x"), rest: 503, event: 503, retry: true},
		{name: "internal", err: errs.E(errs.Internal, "x"), rest: 500, event: 500, retry: true},
		{name: "plain error", err: errors.New("plain"), rest: 500, event: 500, retry: true},
		{name: "deadline exceeded", err: context.DeadlineExceeded, rest: 503, event: 503, retry: true},
		{name: "wrapped not found", err: fmt.Errorf("wrapped: %w", errs.E(errs.NotFound, "x")), rest: 404, event: 400, retry: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.rest, errs.HTTPStatus(tc.err), "HTTPStatus(%v)", tc.err)
			assert.Equal(t, tc.event, errs.EventStatus(tc.err), "EventStatus(%v)", tc.err)
			assert.Equal(t, tc.retry, errs.Retryable(tc.err), "Retryable(%v)", tc.err)
			s := errs.EventStatus(tc.err)
			assert.NotContains(t, knativeRetries, s, "EventStatus(%v) = %d, which Knative would retry", tc.err, s)
		})
	}
}

func TestMessagesKeepInternalsInside(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{name: "a plain error shows as internal", err: errors.New("pq: password authentication failed for user app"), want: "internal error"},
		{name: "a client error shows its message without the cause", err: errs.Wrap(errs.Invalid, errors.New("secret cause"), "tags[0]: too long"), want: "tags[0]: too long"},
		{name: "an Internal error's message does not leak", err: errs.Wrap(errs.Internal, errors.New("secret"), "boom"), want: "internal error"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, errs.Message(tc.err))
		})
	}
}
