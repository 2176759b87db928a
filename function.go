// Package function is the all-in-one StreamSpace function: every function in
// one Service, for small installs and `make run`. Each REST route is mounted
// once, on the function that owns it; a CloudEvent posted to /events/<name>
// goes to that function (the all-in-one Triggers subscribe with those paths),
// and one posted elsewhere goes to the function the routing table names.
package function

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/streamspace-dev/functions/events"
	auth "github.com/streamspace-dev/functions/functions/auth"
	autoscale "github.com/streamspace-dev/functions/functions/autoscale"
	mailtest "github.com/streamspace-dev/functions/functions/mailtest"
	restore "github.com/streamspace-dev/functions/functions/restore"
	sharing "github.com/streamspace-dev/functions/functions/sharing"
	snapshot "github.com/streamspace-dev/functions/functions/snapshot"
	tags "github.com/streamspace-dev/functions/functions/tags"
	versioning "github.com/streamspace-dev/functions/functions/versioning"
	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/metrics"
	"github.com/streamspace-dev/functions/shared/runtime"
	"github.com/streamspace-dev/functions/shared/service"
)

// member is what the all-in-one needs of each function.
type member interface {
	Start(ctx context.Context, env map[string]string) error
	Stop(ctx context.Context) error
	Handle(w http.ResponseWriter, r *http.Request)
	Routes() []string
}

// Function holds every function and the router in front of them.
type Function struct {
	members map[string]member
	order   []string
	rest    *http.ServeMux
	pool    *pgxpool.Pool // shared by every member
	forget  func()        // unregisters the pool's metrics
}

// Name labels the all-in-one's own metrics, such as its shared pool's.
const Name = "all-in-one"

// New returns the all-in-one function with every function built in.
func New() *Function {
	return newWith(map[string]member{
		auth.Name:       auth.New(),
		autoscale.Name:  autoscale.New(),
		restore.Name:    restore.New(),
		sharing.Name:    sharing.New(),
		snapshot.Name:   snapshot.New(),
		tags.Name:       tags.New(),
		mailtest.Name:   mailtest.New(),
		versioning.Name: versioning.New(),
	})
}

func newWith(members map[string]member) *Function {
	f := &Function{members: members}
	f.order = slices.Sorted(maps.Keys(members))
	return f
}

// Functions names the functions this Service contains.
func (f *Function) Functions() []string { return slices.Clone(f.order) }

// Start opens one database pool for every function, starts each with the
// same environment, then mounts each one's REST routes. A route claimed
// twice is a start-up error. One pool keeps an instance at
// DATABASE_POOL_MAX connections however many functions it holds, which is
// what the connection budget counts (docs/deploy.md). A function whose
// Start says it is not configured (runtime.ErrNotConfigured) is left out,
// with a log line saying why.
func (f *Function) Start(ctx context.Context, env map[string]string) (err error) {
	pool, err := service.OpenPool(ctx, env)
	if err != nil {
		return fmt.Errorf("%s: %w", Name, err)
	}
	forget, err := runtime.Metrics(ctx).Register(Name, metrics.Pool(pool))
	if err != nil {
		pool.Close()
		return fmt.Errorf("%s: metrics: %w", Name, err)
	}
	ctx = service.WithPool(ctx, pool)
	rest := http.NewServeMux()
	var started []string
	defer func() {
		if err != nil {
			for _, name := range started {
				f.members[name].Stop(ctx)
			}
			forget()
			pool.Close()
		}
	}()
	for _, name := range f.order {
		m := f.members[name]
		if err := m.Start(ctx, env); err != nil {
			if errors.Is(err, runtime.ErrNotConfigured) {
				runtime.Logger(ctx).Info("function left out: not configured", "function", name, "reason", err.Error())
				delete(f.members, name)
				continue
			}
			return fmt.Errorf("start %s: %w", name, err)
		}
		started = append(started, name)
		for _, pattern := range m.Routes() {
			if err := mount(rest, pattern, m); err != nil {
				return fmt.Errorf("mount %s route %q: %w", name, pattern, err)
			}
		}
	}
	f.order = slices.Sorted(maps.Keys(f.members))
	f.rest, f.pool, f.forget = rest, pool, forget
	return nil
}

func mount(mux *http.ServeMux, pattern string, m member) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%v", p)
		}
	}()
	mux.HandleFunc(pattern, m.Handle)
	return nil
}

// Stop stops every function, then closes their pool.
func (f *Function) Stop(ctx context.Context) error {
	var all []error
	for _, name := range f.order {
		all = append(all, f.members[name].Stop(ctx))
	}
	if f.pool != nil {
		f.forget()
		f.pool.Close()
	}
	return errors.Join(all...)
}

// Handle routes a request to the function that owns it.
func (f *Function) Handle(w http.ResponseWriter, r *http.Request) {
	if name, ok := strings.CutPrefix(r.URL.Path, "/events/"); ok {
		m, found := f.members[name]
		if !found {
			// Final on the event path: a Trigger naming a function this
			// Service lacks is a configuration error no retry can fix.
			runtime.WriteEventError(w, r, errs.E(errs.NotFound, "no function %q here", name))
			return
		}
		m.Handle(w, r)
		return
	}
	if runtime.IsCloudEvent(r) {
		f.routeEvent(w, r)
		return
	}
	if _, pattern := f.rest.Handler(r); pattern == "" {
		runtime.WriteError(w, r, errs.E(errs.NotFound, "no route for %s %s", r.Method, r.URL.Path))
		return
	}
	f.rest.ServeHTTP(w, r)
}

// routeEvent delivers an event posted to / to the functions the routing
// table names for its type and source, as the broker's Triggers would
// (`func deploy` subscribes the all-in-one at /). The delivery is
// authenticated first, by every member's event-path check, before a byte of
// its body is read: a structured event's type is in the body, which can be
// megabytes. Binary-mode attributes are in headers; a structured event is
// peeked without being consumed, since each member reads the body again.
func (f *Function) routeEvent(w http.ResponseWriter, r *http.Request) {
	for _, name := range f.order {
		if err := runtime.AuthenticateEvent(http.HandlerFunc(f.members[name].Handle), r); err != nil {
			runtime.WriteEventError(w, r, err)
			return
		}
	}
	typ, source := r.Header.Get("Ce-Type"), r.Header.Get("Ce-Source")
	var body []byte
	if typ == "" {
		var err error
		if body, err = runtime.PeekBody(r); err != nil {
			runtime.WriteEventError(w, r, err)
			return
		}
		var e cloudevents.Event
		if err := e.UnmarshalJSON(body); err == nil {
			typ, source = e.Type(), e.Source()
		}
	}
	var owners []member
	for _, route := range events.Routes {
		if route.Type == typ && (route.Source == "" || route.Source == source) {
			if m, ok := f.members[route.Function]; ok && !slices.Contains(owners, m) {
				owners = append(owners, m)
			}
		}
	}
	switch len(owners) {
	case 0:
		runtime.WriteEventError(w, r, errs.E(errs.Invalid, "no function here handles event type %q from %q", typ, source))
	case 1:
		owners[0].Handle(w, r)
	default:
		if body == nil {
			var err error
			if body, err = runtime.PeekBody(r); err != nil {
				runtime.WriteEventError(w, r, err)
				return
			}
		}
		w.WriteHeader(fanOut(r, body, owners))
	}
}

// fanOut delivers one event to several members and returns the status the
// broker should act on: a retry if any member asked for one (those that
// already handled it see a duplicate next time), else the first refusal,
// else 202. Replies are not forwarded; no event routed to several
// functions has one.
func fanOut(r *http.Request, body []byte, owners []member) int {
	status := http.StatusAccepted
	for _, m := range owners {
		req := r.Clone(r.Context())
		req.Body = io.NopCloser(bytes.NewReader(body))
		rec := &statusOnly{header: http.Header{}}
		m.Handle(rec, req)
		switch code := rec.status(); {
		case code >= 500:
			status = code
		case code >= 300 && status < 300:
			status = code
		}
	}
	return status
}

// statusOnly is a ResponseWriter that keeps only the status.
type statusOnly struct {
	header http.Header
	code   int
}

func (s *statusOnly) Header() http.Header { return s.header }
func (s *statusOnly) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
	}
}
func (s *statusOnly) Write(b []byte) (int, error) {
	s.WriteHeader(http.StatusOK)
	return len(b), nil
}
func (s *statusOnly) status() int {
	if s.code == 0 {
		return http.StatusOK
	}
	return s.code
}
