// Package function is the sharing function: it shares session templates with
// users and teams (StreamSpace groups) at read, write or manage level, lists
// a template's active shares a page at a time and revokes them. Every change
// writes an audit row, notifies the grantee (each member, for a team) and
// queues its events, all in the transaction that makes the change.
package function

import (
	"context"
	"net/http"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/service"
)

// Name is the function's name: its Service, its event source suffix and its
// log label.
const Name = "sharing"

// Config is the sharing function's environment: only what every function
// shares, since sharing has no tunables of its own.
type Config struct {
	// Base is DATABASE_URL, K_SINK, the token settings and the rest every
	// function reads (docs/runtime.md).
	service.Base
}

// Function serves the sharing routes.
type Function struct {
	svc *service.Service
}

// New returns an unstarted sharing function.
func New() *Function { return &Function{} }

// Start reads the config, connects, and registers the routes and the
// PingSources every emitting function answers.
func (f *Function) Start(ctx context.Context, env map[string]string) error {
	var cfg Config
	svc, err := service.Start(ctx, Name, env, &cfg, events.Validate)
	if err != nil {
		return err
	}
	f.svc = svc
	svc.Mux.Route("GET /api/v1/session-templates/{id}/shares", f.listShares)
	svc.Mux.Route("POST /api/v1/session-templates/{id}/share", f.share)
	svc.Mux.Route("DELETE /api/v1/session-templates/{id}/shares/{shareId}", f.revoke)
	svc.Mux.OnSource(events.Ping, events.OutboxDrainSource, svc.DrainOutbox)
	svc.Mux.OnSource(events.Ping, events.PruneSource, svc.PruneProcessed)
	return nil
}

// Stop sends what the outbox still holds, within a bound, and closes the
// database pool.
func (f *Function) Stop(ctx context.Context) error { return f.svc.Stop(ctx) }

// Ready reports whether the function can serve: not before Start, nor
// while event deliveries cannot be authenticated.
func (f *Function) Ready(ctx context.Context) (bool, error) { return f.svc.Ready(ctx) }

// Handle serves the routes and events; it answers 503 before Start.
func (f *Function) Handle(w http.ResponseWriter, r *http.Request) { f.svc.Handle(w, r) }

// Routes lists the REST patterns served, for the all-in-one function.
func (f *Function) Routes() []string { return f.svc.Routes() }
