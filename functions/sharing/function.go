// Package function is the sharing function: it shares session templates with
// users and teams at read, write or manage level, lists a template's active
// shares and revokes them. Every change writes an audit row, notifies the
// grantee (each member, for a team) and emits its events, all in the
// transaction that makes the change.
package function

import (
	"context"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/service"
)

// Name is the function's name: its Service, its event source suffix and its
// log label.
const Name = "sharing"

// Config is the sharing function's environment: only what every function
// shares, since sharing has no tunables of its own.
type Config struct {
	service.Base
}

// Function serves the sharing routes.
type Function struct {
	*service.Service
	store *Store
}

// New returns an unstarted sharing function.
func New() *Function { return &Function{} }

// Start reads the config and registers the routes.
func (f *Function) Start(ctx context.Context, env map[string]string) error {
	var cfg Config
	svc, err := service.Start(ctx, Name, env, &cfg, events.Validate)
	if err != nil {
		return err
	}
	f.Service = svc
	f.store = &Store{Pool: svc.Pool}
	svc.Mux.Route("GET /api/v1/session-templates/{id}/shares", f.listShares)
	svc.Mux.Route("POST /api/v1/session-templates/{id}/share", f.share)
	svc.Mux.Route("DELETE /api/v1/session-templates/{id}/shares/{shareId}", f.revoke)
	svc.Mux.OnSource(events.Ping, events.OutboxDrainSource, svc.DrainOutbox)
	svc.Mux.OnSource(events.Ping, events.PruneSource, svc.PruneProcessed)
	return nil
}
