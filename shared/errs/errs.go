// Package errs holds the small set of error kinds every function uses and the
// one table that maps them to HTTP statuses on REST routes and on the event path.
package errs

import (
	"context"
	"errors"
	"fmt"
	"net/http"
)

// Kind classifies an error by what the caller can do about it.
type Kind string

// The kinds. The string values are the "code" of a JSON error body.
const (
	Invalid         Kind = "invalid"
	Unauthenticated Kind = "unauthenticated"
	Forbidden       Kind = "forbidden"
	NotFound        Kind = "not_found"
	Conflict        Kind = "conflict"
	TooLarge        Kind = "too_large"
	Unprocessable   Kind = "unprocessable" // well-formed, but the answer would exceed a limit (a diff too large to return)
	Unavailable     Kind = "unavailable"
	Internal        Kind = "internal"
)

// Error is an error with a kind and a message that is safe to show a client.
// Err, when set, is the cause; it is logged, never shown.
type Error struct {
	Kind    Kind
	Message string
	Err     error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Message + ": " + e.Err.Error()
	}
	return e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// E returns an error of the given kind with a formatted client-safe message.
func E(kind Kind, format string, args ...any) *Error {
	return &Error{Kind: kind, Message: fmt.Sprintf(format, args...)}
}

// Wrap returns an error of the given kind whose cause is err. The message is
// shown to clients; err is not.
func Wrap(kind Kind, err error, format string, args ...any) *Error {
	return &Error{Kind: kind, Message: fmt.Sprintf(format, args...), Err: err}
}

// KindOf reports the kind of err: the kind of the first *Error in its chain,
// Unavailable for context deadlines, Internal otherwise.
func KindOf(err error) Kind {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return Unavailable
	}
	return Internal
}

// Message is the client-safe message of err. Errors that carry no kind are
// internal, and their text never leaves the process.
func Message(err error) string {
	var e *Error
	if errors.As(err, &e) && e.Kind != Internal {
		return e.Message
	}
	if KindOf(err) == Unavailable {
		return "a dependency is unavailable; try again"
	}
	return "internal error"
}

type statuses struct{ rest, event int }

// table is the one place kinds become statuses. On the event path a final
// outcome is a 4xx that Knative does not retry (so not found and conflict
// become 400, since Knative retries 404, 408, 409 and 429); only the
// retryable kinds are 5xx there.
var table = map[Kind]statuses{
	Invalid:         {http.StatusBadRequest, http.StatusBadRequest},
	Unauthenticated: {http.StatusUnauthorized, http.StatusUnauthorized},
	Forbidden:       {http.StatusForbidden, http.StatusForbidden},
	NotFound:        {http.StatusNotFound, http.StatusBadRequest},
	Conflict:        {http.StatusConflict, http.StatusBadRequest},
	TooLarge:        {http.StatusRequestEntityTooLarge, http.StatusRequestEntityTooLarge},
	Unprocessable:   {http.StatusUnprocessableEntity, http.StatusUnprocessableEntity},
	Unavailable:     {http.StatusServiceUnavailable, http.StatusServiceUnavailable},
	Internal:        {http.StatusInternalServerError, http.StatusInternalServerError},
}

// HTTPStatus is the status for err on a REST route.
func HTTPStatus(err error) int { return lookup(err).rest }

// EventStatus is the status for err when it answers a CloudEvent delivery.
// A status below 500 tells the broker not to retry.
func EventStatus(err error) int { return lookup(err).event }

// Retryable reports whether the broker should deliver the event again.
func Retryable(err error) bool { return EventStatus(err) >= 500 }

func lookup(err error) statuses {
	if s, ok := table[KindOf(err)]; ok {
		return s
	}
	return table[Internal]
}
