package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"knative.dev/pkg/apis"

	function "github.com/streamspace-dev/functions"
	"github.com/streamspace-dev/functions/shared/authn/localissuer"
	"github.com/streamspace-dev/functions/shared/runtime"
)

// Audience is the aud of the development tokens and what the function
// expects.
const Audience = "streamspace-api"

// allInOneService is the Knative Service of the all-in-one overlay
// (deploy/overlays/all-in-one/service.yaml), which the function started
// here stands in for.
const allInOneService = "streamspace"

// Paths served on the broker port besides the ingress.
const (
	jwksPath        = "/.well-known/jwks.json"
	deadLettersPath = "/dead-letters"
)

// drainTimeout bounds how long deliveries in flight may finish on
// shutdown before their retries are cut short.
const drainTimeout = 20 * time.Second

// runner is one local run: the broker port (ingress, JWKS, dead-letter
// log), the all-in-one function, and the PingSource schedules.
type runner struct {
	log *slog.Logger

	FunctionURL string
	BrokerURL   string
	Database    string
	Schema      int
	// LoadedSchema says StreamSpace's schema was loaded into the throwaway
	// database before migrating.
	LoadedSchema bool
	Overlay      string
	Issuer       *localissuer.Issuer
	Broker       *Broker
	Manifests    *Manifests
	DeadLetters  string
	Seeded       bool
	// Login is the auth function's local provider, or why there is none.
	Login *localLogin
	// EventAudience is the audience of the broker's delivery tokens, empty
	// when the overlay's Triggers name none (no event-auth component).
	EventAudience string

	// Kube is the Kubernetes API the autoscale function uses, nil when the
	// run was configured without one (Config.Kube false).
	Kube *localKube
	// Snapshots is what snapshot and restore run against; never nil once
	// started, its Status says when they are off.
	Snapshots *localSnapshots

	brokerSrv   *http.Server
	deadLetters *deadLetterLog
	pings       *pinger
	// Mail is Mailpit and the mailtest function's settings for it; nil
	// when Mailpit is not built.
	Mail         *localMail
	stopFunction context.CancelFunc
	functionDone chan error
}

// start migrates the database, loads the overlay, and starts the broker
// port, the function and the schedules; it returns once the function is
// ready. observe, when set, receives every delivery's result.
func start(ctx context.Context, cfg Config, environ map[string]string, log *slog.Logger, observe func(Delivery)) (_ *runner, err error) {
	r := &runner{log: log, DeadLetters: cfg.DeadLetterFile, Seeded: cfg.Seed}
	defer func() {
		if err != nil {
			r.shutdown(context.Background())
		}
	}()

	dbURL := databaseURL(cfg.DatabaseURL, environ)
	r.Database = describeDatabase(dbURL)
	// Only a database the runner was given by pg_virtualenv's PG*
	// variables is throwaway; a DATABASE_URL is the operator's.
	st, err := prepareDatabase(ctx, dbURL, cfg.DatabaseURL == "")
	if err != nil {
		return nil, err
	}
	r.Schema, r.LoadedSchema = st.Version, st.LoadedSchema
	if cfg.Seed {
		if err := seedDemo(ctx, dbURL); err != nil {
			return nil, err
		}
	}

	if r.Overlay, err = findOverlay(cfg.Overlay); err != nil {
		return nil, err
	}
	if r.Manifests, err = loadOverlay(r.Overlay); err != nil {
		return nil, err
	}
	if n := len(r.Manifests.Brokers); n != 1 {
		return nil, fmt.Errorf("overlay %s has %d Brokers; the local run serves exactly one", r.Overlay, n)
	}
	kb := r.Manifests.Brokers[0]

	fnLn, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(cfg.Port))
	if err != nil {
		return nil, fmt.Errorf("function port: %w", err)
	}
	brokerLn, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(cfg.BrokerPort))
	if err != nil {
		fnLn.Close()
		return nil, fmt.Errorf("broker port: %w", err)
	}
	r.FunctionURL = "http://" + fnLn.Addr().String()
	r.BrokerURL = "http://" + brokerLn.Addr().String()
	functionURL, _ := apis.ParseURL(r.FunctionURL)
	ingress, _ := apis.ParseURL(r.BrokerURL + "/")
	deadLetters, _ := apis.ParseURL(r.BrokerURL + deadLettersPath)
	res := resolver{
		services: map[string]*apis.URL{allInOneService: functionURL},
		brokers:  map[string]*apis.URL{kb.Namespace + "/" + kb.Name: ingress},
	}

	if r.Issuer, err = localissuer.New(r.BrokerURL); err != nil {
		fnLn.Close()
		brokerLn.Close()
		return nil, err
	}
	if r.deadLetters, err = openDeadLetterLog(cfg.DeadLetterFile, log.With("component", "dead-letters")); err != nil {
		fnLn.Close()
		brokerLn.Close()
		return nil, err
	}
	r.Broker, err = newBroker(brokerOptions{
		Broker:      kb,
		Triggers:    r.Manifests.Triggers,
		Resolver:    res,
		Ingress:     ingress,
		DeadLetters: deadLetters,
		Logger:      log.With("component", "broker"),
		Observe:     observe,
		Tokens: func(subject, audience string) (string, error) {
			return r.Issuer.Token(subject, "", audience, deliveryTokenTTL)
		},
	})
	if err != nil {
		fnLn.Close()
		brokerLn.Close()
		return nil, err
	}
	audience, subjects, err := r.Broker.EventAuth()
	if err != nil {
		fnLn.Close()
		brokerLn.Close()
		return nil, err
	}
	r.EventAudience = audience

	mux := http.NewServeMux()
	mux.Handle("GET "+jwksPath, r.Issuer.JWKSHandler())
	mux.Handle(deadLettersPath, r.deadLetters)
	mux.Handle("/", r.Broker)
	r.brokerSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	go r.brokerSrv.Serve(brokerLn)

	provided := map[string]string{
		"PORT":          strconv.Itoa(fnLn.Addr().(*net.TCPAddr).Port),
		"DATABASE_URL":  dbURL,
		"K_SINK":        ingress.String(),
		"AUTH_ISSUER":   r.Issuer.URL(),
		"AUTH_AUDIENCE": Audience,
		"AUTH_JWKS_URL": r.BrokerURL + jwksPath,
	}
	r.Login = &localLogin{Off: "off (LOCAL_OIDC_LOGIN=false)"}
	if cfg.Login {
		login, loginEnv, err := startLogin(ctx, r.FunctionURL, dbURL)
		if err != nil {
			fnLn.Close()
			return nil, err
		}
		r.Login = login
		for k, v := range loginEnv {
			provided[k] = v
		}
	}
	if r.Mail, err = startMail(ctx, environ); err != nil {
		fnLn.Close()
		return nil, err
	}
	if r.Mail != nil {
		for k, v := range r.Mail.Env {
			provided[k] = v
		}
	}
	localDir := filepath.Join(os.TempDir(), "streamspace-local")
	if cfg.Kube {
		ns := namespace(environ)
		if r.Kube, err = startKube(ctx, environ, ns, localDir, r.Manifests); err != nil {
			fnLn.Close()
			return nil, err
		}
		if r.Kube.Kubeconfig != "" {
			provided["KUBECONFIG"] = r.Kube.Kubeconfig
			provided["STREAMSPACE_NAMESPACE"] = ns
		}
	}
	if r.Snapshots, err = startSnapshots(ctx, environ, r.Kube, namespace(environ), localDir); err != nil {
		fnLn.Close()
		return nil, err
	}
	for k, v := range r.Snapshots.Env {
		provided[k] = v
	}
	env := functionEnv(environ, provided, r.eventAuthEnv(audience, subjects))
	fnCtx, stopFunction := context.WithCancel(context.WithoutCancel(ctx))
	r.stopFunction, r.functionDone = stopFunction, make(chan error, 1)
	ready := make(chan struct{})
	go func() {
		r.functionDone <- runtime.Serve(fnCtx, function.New(), runtime.Options{
			Listener: fnLn,
			Env:      env,
			Logger:   log.With("component", "function"),
			OnReady:  func(net.Addr) { close(ready) },
		})
	}()
	select {
	case <-ready:
	case err := <-r.functionDone:
		r.functionDone <- err
		return nil, fmt.Errorf("function: %w", err)
	case <-ctx.Done():
		return nil, ctx.Err()
	}

	client, err := cloudevents.NewClientHTTP()
	if err != nil {
		return nil, err
	}
	if r.pings, err = startPings(r.Manifests.PingSources, res, client, log.With("component", "pingsource")); err != nil {
		return nil, err
	}
	return r, nil
}

// deliveryTokenTTL is the lifetime of a delivery's token; each delivery
// gets a fresh one, as Knative's token provider refreshes them.
const deliveryTokenTTL = 5 * time.Minute

// eventAuthEnv configures the function's event path the way the
// event-auth component does in a cluster, with the local issuer standing in
// for the cluster's service-account issuer: the broker signs each delivery
// for the Triggers' audience with the Trigger's subject. Nothing when the
// Triggers name no audience.
func (r *runner) eventAuthEnv(audience string, subjects []string) map[string]string {
	if audience == "" {
		return nil
	}
	return map[string]string{
		"EVENT_AUTH_ISSUER":   r.Issuer.URL(),
		"EVENT_AUTH_AUDIENCE": audience,
		"EVENT_AUTH_JWKS_URL": r.BrokerURL + jwksPath,
		"EVENT_AUTH_SUBJECTS": strings.Join(subjects, ","),
	}
}

// functionEnv is the local function's environment: the runner's own, with
// what the runner provides set over it. EVENT_AUTH_* are never inherited:
// they must name the issuer that signs this broker's deliveries, so only
// eventAuth sets them.
func functionEnv(environ map[string]string, provided, eventAuth map[string]string) map[string]string {
	env := make(map[string]string, len(environ)+len(provided)+len(eventAuth))
	for k, v := range environ {
		if !strings.HasPrefix(k, "EVENT_AUTH_") {
			env[k] = v
		}
	}
	for k, v := range provided {
		env[k] = v
	}
	for k, v := range eventAuth {
		env[k] = v
	}
	return env
}

// shutdown stops the schedules, lets deliveries in flight finish (up to
// drainTimeout or ctx), then drains and stops the function, and closes the
// broker port last so replies and emitted events still arrive meanwhile.
func (r *runner) shutdown(ctx context.Context) error {
	var errs []error
	if r.pings != nil {
		r.pings.Stop()
	}
	if r.Broker != nil {
		dctx, cancel := context.WithTimeout(ctx, drainTimeout)
		if err := r.Broker.Drain(dctx); err != nil {
			r.log.Warn("deliveries still in flight are cancelled", "err", err)
		}
		cancel()
	}
	if r.stopFunction != nil {
		r.stopFunction()
		errs = append(errs, <-r.functionDone)
	}
	if r.Broker != nil {
		r.Broker.Close()
	}
	if r.brokerSrv != nil {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		errs = append(errs, r.brokerSrv.Shutdown(sctx))
		cancel()
	}
	if r.deadLetters != nil {
		errs = append(errs, r.deadLetters.Close())
	}
	r.Login.stop()
	r.Mail.stop()
	r.Snapshots.Stop()
	r.Kube.Stop()
	return errors.Join(errs...)
}

// namespace is where the sessions run: STREAMSPACE_NAMESPACE, as the
// functions read it.
func namespace(environ map[string]string) string {
	if ns := environ["STREAMSPACE_NAMESPACE"]; ns != "" {
		return ns
	}
	return "streamspace"
}
