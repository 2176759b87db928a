package runtime

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/streamspace-dev/functions/shared/errs"
)

var errPanic = errors.New("handler panicked")

// ErrorBody is the JSON body of every error answer, in StreamSpace's shape,
// which its UI reads: Error is a short text (the status's name), Message what
// the UI shows, Code the kind (docs/runtime.md).
type ErrorBody struct {
	Error   string    `json:"error"`
	Message string    `json:"message"`
	Code    errs.Kind `json:"code"`
}

// WriteJSON writes v as JSON with status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// WriteError writes err as an ErrorBody with the status of
// its kind. Only the client-safe message leaves the process; the full error
// goes to the request's log line.
func WriteError(w http.ResponseWriter, r *http.Request, err error) {
	err = classifyBody(err)
	AddLogAttrs(r.Context(), slog.String("error", err.Error()))
	writeErrorBody(w, errs.HTTPStatus(err), err)
}

// retryAfter is the Retry-After of every 503, in seconds: what makes one
// (a lock or statement timeout, a database out of connections, a function
// still starting) usually clears within a second or two, and a client or
// the broker that waits that long is not adding to it.
const retryAfter = "1"

// writeErrorBody writes err's ErrorBody with status; a 503 says when to
// try again.
func writeErrorBody(w http.ResponseWriter, status int, err error) {
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", retryAfter)
	}
	WriteJSON(w, status, ErrorBody{Error: http.StatusText(status), Message: errs.Message(err), Code: errs.KindOf(err)})
}

// classifyBody gives a body-size overrun its own kind wherever it surfaces.
func classifyBody(err error) error {
	var mb *http.MaxBytesError
	if errors.As(err, &mb) && errs.KindOf(err) != errs.TooLarge {
		return errs.Wrap(errs.TooLarge, err, "request body exceeds %d bytes", mb.Limit)
	}
	return err
}

// DecodeJSON reads one JSON object from r's body into v. Unknown fields,
// trailing data, wrong types and an oversized body are client errors whose
// message names the problem.
func DecodeJSON(r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return errs.E(errs.Invalid, "content type %q: want application/json", truncate(ct, maxQuoted))
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errs.E(errs.Invalid, "request body must hold one JSON object")
	}
	return nil
}

func decodeError(err error) error {
	var (
		mb  *http.MaxBytesError
		se  *json.SyntaxError
		ute *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &mb):
		return errs.Wrap(errs.TooLarge, err, "request body exceeds %d bytes", mb.Limit)
	case errors.Is(err, io.EOF):
		return errs.E(errs.Invalid, "request body is empty")
	case errors.As(err, &se):
		return errs.E(errs.Invalid, "malformed JSON at byte %d", se.Offset)
	case errors.As(err, &ute):
		return errs.E(errs.Invalid, "field %q: got %s, want %s", truncate(ute.Field, maxQuoted), ute.Value, ute.Type)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name, uerr := strconv.Unquote(strings.TrimPrefix(err.Error(), "json: unknown field "))
		if uerr != nil {
			return errs.E(errs.Invalid, "unknown field")
		}
		return errs.E(errs.Invalid, "unknown field %q", truncate(name, maxQuoted))
	default:
		return errs.Wrap(errs.Invalid, err, "malformed JSON: %s", fmt.Sprint(err))
	}
}

// maxQuoted bounds how much of a client's own text an error message quotes
// back, so a megabyte-long field name is not echoed into the answer and the
// log.
const maxQuoted = 64

// truncate returns s cut to at most n bytes on a rune boundary, with "…"
// added when anything was cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// PeekBody reads r's body and puts it back, so a router can look at it
// before the handler reads it.
func PeekBody(r *http.Request) ([]byte, error) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return nil, classifyBody(errs.Wrap(errs.Invalid, err, "read body"))
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	return body, nil
}
