// Command streamspace-local is `make run`: the all-in-one function on
// http://127.0.0.1:8080 with everything around it that a cluster provides.
//
//   - PostgreSQL: DATABASE_URL, or the PG* variables pg_virtualenv sets. The
//     functions run on StreamSpace's database, so a throwaway one without
//     StreamSpace's tables first gets StreamSpace's schema
//     (testdata/streamspace/schema.sql); a DATABASE_URL never does. The
//     migrations are applied next, as the migration Job does, then the demo
//     rows.
//   - Tokens: a local issuer signs development tokens; its JWKS is served on
//     the broker port.
//   - Knative Eventing: the Broker, Triggers and PingSources of
//     deploy/overlays/all-in-one, run in process by Knative's own filter and
//     dispatcher code on http://127.0.0.1:8081 (K_SINK), with a dead-letter
//     log in place of the dead-letter sink. Where the Triggers name a
//     subscriber audience (the event-auth component), each delivery carries
//     a token of the Trigger's ServiceAccount signed by the local issuer, as
//     with Knative's authentication-oidc, and the function checks it.
//
// It prints a ready line, development tokens and curl commands, and drains
// on SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/streamspace-dev/functions/shared/logging"
	"github.com/streamspace-dev/functions/shared/runtime"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "streamspace-local:", err)
		os.Exit(1)
	}
}

// run serves until ctx ends, then drains.
func run(ctx context.Context) error {
	environ := runtime.Environ()
	cfg, err := parseConfig(os.Args[1:], environ)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	log := logging.New(os.Stderr, slog.LevelInfo)
	r, err := start(ctx, cfg, environ, log, nil)
	if err != nil {
		return err
	}
	log.Info("ready", "function", r.FunctionURL, "broker", r.BrokerURL+"/", "deadLetters", r.DeadLetters,
		"triggers", r.Broker.Triggers())
	if err := r.banner(os.Stdout); err != nil {
		r.shutdown(context.Background())
		return err
	}
	select {
	case <-ctx.Done():
		log.Info("stopping: draining deliveries, then the function")
	case err := <-r.functionDone:
		// The function stopped by itself; put its result back for shutdown.
		r.functionDone <- err
		log.Error("function stopped", "err", err)
	}
	if err := r.shutdown(context.Background()); err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}
