package runtime

import (
	"context"
	"log/slog"
	"net/http"
	"strings"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/metrics"
)

// Authenticator tells who sent a REST request.
type Authenticator interface {
	Authenticate(r *http.Request) (authn.Identity, error)
}

// RouteHandler serves an authenticated REST request. A returned error is
// written as a JSON error body with the status of its kind.
type RouteHandler func(w http.ResponseWriter, r *http.Request, who authn.Identity) error

// EventHandler handles one CloudEvent whose data already passed its schema.
// It never replies on the HTTP response: an event that results from another
// goes through the outbox in the effect's transaction (docs/runtime.md), since
// a reply lost after commit would never be sent again. An error's kind
// decides whether the broker retries (see errs.EventStatus).
type EventHandler func(ctx context.Context, e cloudevents.Event) error

// Mux is one function's handler: CloudEvents by type and REST routes by
// pattern on a single http.Handler (docs/runtime.md).
type Mux struct {
	function  string
	auth      Authenticator
	validate  func(cloudevents.Event) error
	routes    *http.ServeMux
	patterns  []string
	events    map[eventKey]EventHandler
	eventAuth Authenticator
}

// NewMux returns a Mux for function. auth checks every REST request;
// validate checks every event before its handler runs.
func NewMux(function string, auth Authenticator, validate func(cloudevents.Event) error) *Mux {
	return &Mux{
		function: function,
		auth:     auth,
		validate: validate,
		routes:   http.NewServeMux(),
		events:   make(map[eventKey]EventHandler),
	}
}

// Route serves pattern (an http.ServeMux pattern with method, e.g.
// "POST /api/v1/batch/sessions/update-tags") with h, behind authentication.
func (m *Mux) Route(pattern string, h RouteHandler) {
	m.patterns = append(m.patterns, pattern)
	m.routes.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		AddLogAttrs(r.Context(), slog.String("function", m.function))
		setRoute(r.Context(), m.function, pattern)
		who, err := m.auth.Authenticate(r)
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="streamspace"`)
			WriteError(w, r, err)
			return
		}
		AddLogAttrs(r.Context(), slog.String("user", who.Subject))
		if err := h(w, r, who); err != nil {
			WriteError(w, r, err)
		}
	})
}

// PublicHandler serves a REST request that carries no token. A returned
// error is written as a JSON error body with the status of its kind.
type PublicHandler func(w http.ResponseWriter, r *http.Request) error

// Public serves pattern with h and no authentication. It is for the few
// routes a caller uses before holding a token (a login and its callback);
// every other route goes through Route.
func (m *Mux) Public(pattern string, h PublicHandler) {
	m.patterns = append(m.patterns, pattern)
	m.routes.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		AddLogAttrs(r.Context(), slog.String("function", m.function))
		setRoute(r.Context(), m.function, pattern)
		if err := h(w, r); err != nil {
			WriteError(w, r, err)
		}
	})
}

// RequireEventAuth makes every CloudEvent delivery authenticate with a; a
// delivery that does not is refused with 401 before it is decoded. Knative
// Eventing's authentication-oidc feature sends such a token.
func (m *Mux) RequireEventAuth(a Authenticator) { m.eventAuth = a }

// eventKey selects an event handler: a type, and a source when the handler
// is for one source of that type only (each PingSource's events share one
// type and differ by source).
type eventKey struct{ typ, source string }

// On handles events of eventType from any source with h.
func (m *Mux) On(eventType string, h EventHandler) { m.events[eventKey{typ: eventType}] = h }

// OnSource handles events of eventType from source with h; it takes
// precedence over a handler registered with On for the same type.
func (m *Mux) OnSource(eventType, source string, h EventHandler) {
	m.events[eventKey{eventType, source}] = h
}

func (m *Mux) handler(e *cloudevents.Event) (EventHandler, bool) {
	if h, ok := m.events[eventKey{e.Type(), e.Source()}]; ok {
		return h, true
	}
	h, ok := m.events[eventKey{typ: e.Type()}]
	return h, ok
}

// Patterns lists the REST patterns this Mux serves.
func (m *Mux) Patterns() []string { return append([]string(nil), m.patterns...) }

// ServeHTTP sends CloudEvents to their handler and everything else to the
// REST routes.
func (m *Mux) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if IsCloudEvent(r) {
		m.serveEvent(w, r)
		return
	}
	if _, pattern := m.routes.Handler(r); pattern == "" {
		WriteError(w, r, errs.E(errs.NotFound, "no route for %s %s", r.Method, r.URL.Path))
		return
	}
	m.routes.ServeHTTP(w, r)
}

// RESTPrefix is where the REST routes live. It is the only prefix the
// ingress exposes, so nothing under it is ever taken for an event.
const RESTPrefix = "/api/"

// IsCloudEvent reports whether r carries a CloudEvent in binary or
// structured mode to the event path. A request under RESTPrefix never does,
// whatever its headers: the event path is cluster-internal, and a CloudEvent
// posted through the public ingress must not skip the bearer-token check.
func IsCloudEvent(r *http.Request) bool {
	if r.Method != http.MethodPost || strings.HasPrefix(r.URL.Path, RESTPrefix) {
		return false
	}
	if r.Header.Get("Ce-Specversion") != "" {
		return true
	}
	return strings.HasPrefix(r.Header.Get("Content-Type"), "application/cloudevents")
}

func (m *Mux) serveEvent(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	AddLogAttrs(ctx, slog.String("function", m.function))
	check, checking := ctx.Value(authCheckKey{}).(*authCheck)
	if checking {
		check.reached = true
	}
	if m.eventAuth != nil {
		who, err := m.eventAuth.Authenticate(r)
		if err != nil {
			if checking {
				check.err = err
				return
			}
			m.refuse(w, r, metrics.UnknownEventType, err)
			return
		}
		AddLogAttrs(ctx, slog.String("sender", who.Subject))
	}
	if checking {
		return
	}
	d := &delivery{typ: metrics.UnknownEventType}
	r = r.WithContext(context.WithValue(ctx, deliveryKey{}, d))
	defer func() {
		// A handler that panicked is answered with a 500 by the middleware,
		// which the broker retries.
		if p := recover(); p != nil {
			Metrics(ctx).Event(m.function, d.typ, metrics.Retry)
			panic(p)
		}
	}()
	if err := m.deliver(r, d); err != nil {
		m.refuse(w, r, d.typ, err)
		return
	}
	outcome := metrics.Handled
	if d.duplicate {
		outcome = metrics.Duplicate
	}
	// The log keeps "handled" with duplicate=true, as it always has.
	AddLogAttrs(ctx, slog.String("outcome", string(metrics.Handled)))
	Metrics(ctx).Event(m.function, d.typ, outcome)
	w.WriteHeader(http.StatusAccepted)
}

// refuse answers a delivery that failed and counts it under eventType.
func (m *Mux) refuse(w http.ResponseWriter, r *http.Request, eventType string, err error) {
	Metrics(r.Context()).Event(m.function, eventType, eventOutcome(err))
	WriteEventError(w, r, err)
}

// deliver decodes the CloudEvent in r and runs its handler. It sets d.typ
// to the event's type once m has a handler for it, so the metrics' type
// label takes only the types m registered.
func (m *Mux) deliver(r *http.Request, d *delivery) error {
	ctx := r.Context()
	msg := cehttp.NewMessageFromHttpRequest(r)
	defer msg.Finish(nil)
	if msg.ReadEncoding() == binding.EncodingBatch {
		return errs.E(errs.Invalid, "batched CloudEvents are not accepted")
	}
	e, err := binding.ToEvent(ctx, msg)
	if err != nil {
		return classifyBody(errs.Wrap(errs.Invalid, err, "malformed CloudEvent: %v", err))
	}
	AddLogAttrs(ctx,
		slog.String("eventId", e.ID()),
		slog.String("eventType", e.Type()),
		slog.String("eventSource", e.Source()))
	// In binary mode traceparent is a header the middleware logs; in
	// structured mode it is an extension attribute inside the body.
	if r.Header.Get("traceparent") == "" {
		if tp, ok := e.Extensions()["traceparent"].(string); ok {
			AddLogAttrs(ctx, slog.String("traceparent", tp))
		}
	}
	h, ok := m.handler(e)
	if !ok {
		return errs.E(errs.Invalid, "function %s does not handle event type %q from %q", m.function, e.Type(), e.Source())
	}
	d.typ = e.Type()
	if err := m.validate(*e); err != nil {
		return err
	}
	return h(ctx, *e)
}

// eventOutcome is the outcome of a delivery that failed with err: a retry
// when the broker is asked to deliver it again, else a rejection.
func eventOutcome(err error) metrics.EventOutcome {
	if errs.Retryable(err) {
		return metrics.Retry
	}
	return metrics.Rejected
}

// WriteEventError answers a CloudEvent delivery that failed, with the
// event-path status of err's kind: under 500 tells the broker the event is
// final, 5xx asks for a retry. The outcome goes to the request's log line.
func WriteEventError(w http.ResponseWriter, r *http.Request, err error) {
	AddLogAttrs(r.Context(), slog.String("outcome", string(eventOutcome(err))), slog.String("error", err.Error()))
	writeErrorBody(w, errs.EventStatus(err), err)
}

type authCheckKey struct{}

// authCheck is what a Mux found when asked only to authenticate a delivery.
type authCheck struct {
	reached bool // a Mux ran the check
	err     error
}

// AuthenticateEvent runs h's event-path authentication on the CloudEvent
// delivery r, and nothing else: h sees r's headers and an empty body, and
// stops right after the check. A router in front of several functions (the
// all-in-one) calls it before it reads a byte of the body. It returns the
// refusal, or nil when r passed or h's Mux requires no event
// authentication. A handler that never reached a Mux's check (one still
// starting, or not a Mux) cannot vouch for r, and the answer is a retryable
// refusal.
func AuthenticateEvent(h http.Handler, r *http.Request) error {
	check := &authCheck{}
	// The probe logs nothing of its own: the caller's answer to r carries
	// the outcome into r's one log line.
	ctx := context.WithValue(r.Context(), logKey{}, &requestLog{})
	probe := r.Clone(context.WithValue(ctx, authCheckKey{}, check))
	probe.Body = http.NoBody
	probe.ContentLength = 0
	h.ServeHTTP(discard{header: http.Header{}}, probe)
	if !check.reached {
		return errs.E(errs.Unavailable, "the delivery's credentials could not be checked")
	}
	return check.err
}

// discard is a ResponseWriter that drops everything.
type discard struct{ header http.Header }

func (d discard) Header() http.Header       { return d.header }
func (discard) WriteHeader(int)             {}
func (discard) Write(b []byte) (int, error) { return len(b), nil }
