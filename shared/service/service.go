// Package service wires what every function needs from its environment: the
// typed config, the database pool, the token verifier, the outbox for
// emitted events and the Mux that serves events and REST routes. A
// function's Start calls Start here, then registers its routes and events.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caarlos0/env/v11"
	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/metrics"
	"github.com/streamspace-dev/functions/shared/outbox"
	"github.com/streamspace-dev/functions/shared/runtime"
)

// Base is the configuration every function shares (docs/runtime.md). A function's
// own config struct embeds it.
type Base struct {
	// DatabaseURL is the PostgreSQL connection string.
	DatabaseURL string `env:"DATABASE_URL,required"`
	// Settings size the pool (DATABASE_POOL_MAX, DATABASE_POOL_MIN,
	// DATABASE_POOL_IDLE) and bound every transaction
	// (DATABASE_STATEMENT_TIMEOUT, DATABASE_LOCK_TIMEOUT); their defaults
	// are db.Defaults.
	db.Settings
	// Sink is where emitted events go; Knative's SinkBinding sets it.
	Sink string `env:"K_SINK"`
	// AuthIssuer is the expected iss of an identity provider's bearer
	// tokens. AUTH_ISSUER, AUTH_AUDIENCE and AUTH_JWKS_URL are all three set
	// or none; this mode, StreamSpace's tokens, or both must be configured.
	AuthIssuer string `env:"AUTH_ISSUER"`
	// AuthAudience is the expected aud of the identity provider's tokens.
	AuthAudience string `env:"AUTH_AUDIENCE"`
	// AuthJWKSURL serves the identity provider's signing keys.
	AuthJWKSURL string `env:"AUTH_JWKS_URL"`
	// AuthRoleClaim is the dotted claim path holding the role in the
	// identity provider's tokens.
	AuthRoleClaim string `env:"AUTH_ROLE_CLAIM" envDefault:"role"`
	// StreamSpaceJWTSecretFile is the path of a file, mounted from a
	// Kubernetes Secret, holding StreamSpace's JWT_SECRET. Set, the tokens
	// StreamSpace's API signs (HS256) are accepted; the secret itself is
	// never in the environment.
	StreamSpaceJWTSecretFile string `env:"STREAMSPACE_JWT_SECRET_FILE"`
	// StreamSpaceRedisURL is StreamSpace's Redis, when its API runs with
	// CACHE_ENABLED: a StreamSpace token is then accepted only while its
	// session:{jti} key exists, so a logout ends it here too.
	StreamSpaceRedisURL string `env:"STREAMSPACE_REDIS_URL"`
	// UserCacheTTL is how long the check of a StreamSpace token's user
	// (present and active in users, and its role) is reused: a deactivated
	// user or a demoted admin keeps access at most this long.
	UserCacheTTL time.Duration `env:"STREAMSPACE_USER_CACHE_TTL" envDefault:"5s"`
	// Namespace is where StreamSpace sessions run.
	Namespace string `env:"STREAMSPACE_NAMESPACE" envDefault:"streamspace"`
	// EventAuthIssuer, when set, makes every CloudEvent delivery carry a
	// bearer token from this issuer, as Knative Eventing's
	// authentication-oidc feature sends: the cluster's service-account
	// token issuer. EventAuthAudience is this function's audience and
	// EventAuthJWKSURL the issuer's keys, which must be readable without
	// credentials.
	EventAuthIssuer   string `env:"EVENT_AUTH_ISSUER"`
	EventAuthAudience string `env:"EVENT_AUTH_AUDIENCE"`
	EventAuthJWKSURL  string `env:"EVENT_AUTH_JWKS_URL"`
	// EventAuthSubjects, when set, are the only token subjects accepted on
	// the event path (the broker's OIDC service accounts), since any
	// workload able to mount a projected token could name our audience.
	EventAuthSubjects []string `env:"EVENT_AUTH_SUBJECTS" envSeparator:","`
	// OutboxInterval is how often undelivered events are retried.
	OutboxInterval time.Duration `env:"OUTBOX_INTERVAL" envDefault:"15s"`
	// OutboxMaxAttempts is how many refused sends an emitted event gets
	// before it moves to event_dead_letters.
	OutboxMaxAttempts int `env:"OUTBOX_MAX_ATTEMPTS" envDefault:"20"`
	// SinkTokenFile holds the OIDC token every emitted event carries when
	// Knative's authentication-oidc is on: the SinkBinding mounts it there
	// and rotates it. While the file is absent, events go without a token.
	SinkTokenFile string `env:"SINK_OIDC_TOKEN_FILE" envDefault:"/oidc/token"`
	// ProcessedRetention is how long the record of a processed event is
	// kept: far longer than any redelivery, including the long delivery
	// timeouts of snapshot and restore.
	ProcessedRetention time.Duration `env:"PROCESSED_EVENTS_RETENTION" envDefault:"168h"`
}

// base lets Start reach the Base inside any config that embeds it.
func (b *Base) base() *Base { return b }

type hasBase interface{ base() *Base }

// Load parses env into cfg, a pointer to a struct that embeds Base. A
// missing or unparsable variable is an error that names it.
func Load(environ map[string]string, cfg any) error {
	// A variable that is unset leaves its field as it is, so the database
	// settings start from the defaults shared/db keeps in one place.
	if b, ok := cfg.(hasBase); ok {
		b.base().Settings = db.Defaults()
	}
	err := env.ParseWithOptions(cfg, env.Options{Environment: environ})
	if err == nil {
		return nil
	}
	var agg env.AggregateError
	if !errors.As(err, &agg) {
		return fmt.Errorf("config: %w", err)
	}
	all := make([]error, 0, len(agg.Errors))
	for _, e := range agg.Errors {
		var pe env.ParseError
		if errors.As(e, &pe) {
			e = fmt.Errorf("%s: %w", envKey(cfg, pe.Name), pe.Err)
		}
		all = append(all, e)
	}
	return fmt.Errorf("config: %w", errors.Join(all...))
}

// envKey is the variable behind a config field: the library reports parse
// errors by Go field name, which an operator never sees.
func envKey(cfg any, field string) string {
	t := reflect.TypeOf(cfg)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if sf, ok := t.FieldByName(field); ok {
		if key, _, _ := strings.Cut(sf.Tag.Get("env"), ","); key != "" {
			return key
		}
	}
	return field
}

// eventVerifier is the event path's token check, or nil when
// EVENT_AUTH_ISSUER is unset.
func (b *Base) eventVerifier(ctx context.Context) (*authn.Verifier, error) {
	if b.EventAuthIssuer == "" {
		if b.EventAuthAudience != "" || b.EventAuthJWKSURL != "" || len(b.EventAuthSubjects) > 0 {
			return nil, errors.New("config: EVENT_AUTH_ISSUER is required when any other EVENT_AUTH_* variable is set")
		}
		return nil, nil
	}
	v, err := authn.NewVerifier(ctx, authn.Config{
		Issuer:    b.EventAuthIssuer,
		Audience:  b.EventAuthAudience,
		JWKSURL:   b.EventAuthJWKSURL,
		EnvPrefix: "EVENT_AUTH_",
	})
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return v, nil
}

// authConfig is the REST verifier's configuration from b, without the
// database: the StreamSpace secret is read here, so a missing or short one
// stops start-up before anything connects. The caller closes the session
// store, when there is one.
func (b *Base) authConfig() (authn.Config, *authn.RedisSessions, error) {
	cfg := authn.Config{
		Issuer:       b.AuthIssuer,
		Audience:     b.AuthAudience,
		JWKSURL:      b.AuthJWKSURL,
		RoleClaim:    b.AuthRoleClaim,
		UserCacheTTL: b.UserCacheTTL,
	}
	if b.StreamSpaceJWTSecretFile != "" {
		secret, err := authn.ReadSecretFile(b.StreamSpaceJWTSecretFile)
		if err != nil {
			return authn.Config{}, nil, fmt.Errorf("config: %w", err)
		}
		cfg.StreamSpaceSecret = secret
	}
	var sessions *authn.RedisSessions
	if b.StreamSpaceRedisURL != "" {
		s, err := authn.NewRedisSessions(b.StreamSpaceRedisURL)
		if err != nil {
			return authn.Config{}, nil, fmt.Errorf("config: %w", err)
		}
		sessions, cfg.Sessions = s, s
	}
	if err := cfg.Validate(); err != nil {
		if sessions != nil {
			sessions.Close()
		}
		return authn.Config{}, nil, fmt.Errorf("config: %w", err)
	}
	return cfg, sessions, nil
}

// senders authenticates event deliveries: a valid token and, when a list
// is configured, a subject on it.
type senders struct {
	verifier *authn.Verifier
	allowed  []string
}

func (s senders) Authenticate(r *http.Request) (authn.Identity, error) {
	who, err := s.verifier.Authenticate(r)
	if err != nil {
		return who, err
	}
	if len(s.allowed) > 0 && !slices.Contains(s.allowed, who.Subject) {
		return authn.Identity{}, errs.E(errs.Unauthenticated, "event sender %q is not allowed", who.Subject)
	}
	return who, nil
}

// Service is one started function's dependencies.
type Service struct {
	Name   string
	Pool   *pgxpool.Pool
	Outbox *outbox.Outbox
	Mux    *runtime.Mux
	Log    *slog.Logger

	ownsPool      bool                 // false when the pool came from WithPool
	metrics       *metrics.Registry    // nil when not served by runtime.Serve
	forget        func()               // unregisters the pool and outbox collectors
	eventAuth     *authn.Verifier      // nil without EVENT_AUTH_*
	eventAuthDown atomic.Bool          // the last readiness check failed on it
	sessions      *authn.RedisSessions // nil without STREAMSPACE_REDIS_URL
	retention     time.Duration
	timeouts      db.Timeouts // every transaction's bounds
	stop          context.CancelFunc
	relayed       chan struct{}
}

type poolKey struct{}

// WithPool makes Start use pool instead of opening one. The all-in-one runs
// several functions in one process; one pool for all of them keeps an
// instance's connections at DATABASE_POOL_MAX, as the connection budget
// counts them (docs/deploy.md). A Service never closes a pool it was given,
// and the pool's metrics are its opener's to register.
func WithPool(ctx context.Context, pool *pgxpool.Pool) context.Context {
	return context.WithValue(ctx, poolKey{}, pool)
}

// OpenPool opens the pool that environ's DATABASE_URL and DATABASE_POOL_*
// settings describe, with the defaults and checks every function's own
// pool gets.
func OpenPool(ctx context.Context, environ map[string]string) (*pgxpool.Pool, error) {
	var cfg Base
	if err := Load(environ, &cfg); err != nil {
		return nil, err
	}
	if err := cfg.Settings.Validate(); err != nil {
		return nil, err
	}
	return db.OpenWith(ctx, cfg.DatabaseURL, cfg.Settings)
}

// Start loads cfg from environ (and runs its Validate method, when it has
// one, before anything connects), connects to the database, prepares the
// verifier and the outbox, and returns a Service whose Mux is ready for the
// function's routes and event handlers. validate checks every incoming event
// (events.Validate).
func Start(ctx context.Context, name string, environ map[string]string, cfg hasBase, validate func(cloudevents.Event) error) (*Service, error) {
	if err := Load(environ, cfg); err != nil {
		return nil, err
	}
	if v, ok := cfg.(interface{ Validate() error }); ok {
		if err := v.Validate(); err != nil {
			return nil, err
		}
	}
	b := cfg.base()
	log := runtime.Logger(ctx).With("function", name)
	// Configuration is checked in full before anything connects.
	if b.OutboxMaxAttempts < 1 {
		return nil, fmt.Errorf("%s: config: OUTBOX_MAX_ATTEMPTS is %d: want at least 1", name, b.OutboxMaxAttempts)
	}
	if err := b.Settings.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	eventAuth, err := b.eventVerifier(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	authCfg, sessions, err := b.authConfig()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	closeSessions := func() {
		if sessions != nil {
			sessions.Close()
		}
	}
	pool, shared := ctx.Value(poolKey{}).(*pgxpool.Pool)
	if !shared {
		if pool, err = db.OpenWith(ctx, b.DatabaseURL, b.Settings); err != nil {
			closeSessions()
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	closePool := func() {
		if !shared {
			pool.Close()
		}
	}
	// StreamSpace tokens are checked against its users table.
	authCfg.Users = db.ReadOnly{DB: pool}
	verifier, err := authn.NewVerifier(ctx, authCfg)
	if err != nil {
		closeSessions()
		closePool()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	ob, err := outbox.New(pool, name, b.Sink, b.OutboxMaxAttempts, log, outbox.WithTokenFile(b.SinkTokenFile))
	if err != nil {
		closeSessions()
		closePool()
		return nil, err
	}
	reg := runtime.Metrics(ctx)
	collectors := []prometheus.Collector{metrics.Outbox(outboxStats(ob))}
	if !shared {
		collectors = append(collectors, metrics.Pool(pool))
	}
	forget, err := reg.Register(name, collectors...)
	if err != nil {
		closeSessions()
		closePool()
		return nil, fmt.Errorf("%s: metrics: %w", name, err)
	}
	mux := runtime.NewMux(name, verifier, validate)
	if eventAuth != nil {
		mux.RequireEventAuth(senders{eventAuth, b.EventAuthSubjects})
	}
	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	relayed := make(chan struct{})
	go func() {
		defer close(relayed)
		ob.Run(runCtx, b.OutboxInterval)
	}()
	return &Service{
		Name:      name,
		Pool:      pool,
		ownsPool:  !shared,
		Outbox:    ob,
		Mux:       mux,
		Log:       log,
		metrics:   reg,
		forget:    forget,
		eventAuth: eventAuth,
		sessions:  sessions,
		retention: b.ProcessedRetention,
		timeouts:  b.Settings.Timeouts(),
		stop:      stop,
		relayed:   relayed,
	}, nil
}

// Ready reports whether the function can serve: not before Start, and not
// while event authentication is configured but the issuer's signing keys
// cannot be fetched. Every delivery would then be refused with 401, which
// the broker does not retry, and land in the dead-letter sink; not ready,
// the function gets no deliveries and the error says why. A function's
// Ready calls it, so it may be called on a nil *Service.
func (s *Service) Ready(ctx context.Context) (bool, error) {
	if s == nil {
		return false, nil
	}
	if s.eventAuth == nil {
		return true, nil
	}
	if ok, err := s.eventAuth.Ready(ctx); !ok {
		err = fmt.Errorf("event authentication: %w", err)
		if !s.eventAuthDown.Swap(true) {
			s.Log.Error("not ready: event deliveries cannot be authenticated", "err", err)
		}
		return false, err
	}
	if s.eventAuthDown.Swap(false) {
		s.Log.Info("event authentication keys fetched; ready")
	}
	return true, nil
}

// finalFlush bounds the last send of queued events when an instance stops,
// inside Knative's termination grace period.
const finalFlush = 5 * time.Second

// Stop ends the outbox relay, gives queued events one last bounded chance
// to leave (what does not stays queued for the next instance), and closes
// the pool.
func (s *Service) Stop(ctx context.Context) error {
	if s == nil {
		return nil
	}
	s.stop()
	<-s.relayed
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalFlush)
	defer cancel()
	if _, err := s.Outbox.Drain(fctx); err != nil {
		s.Log.Warn("final outbox flush failed; events stay queued", "err", err)
	}
	s.forget()
	if s.ownsPool {
		s.Pool.Close()
	}
	if s.sessions != nil {
		if err := s.sessions.Close(); err != nil {
			s.Log.Warn("closing the session store failed", "err", err)
		}
	}
	return nil
}

// Job returns the metrics of this function's long job named job (its
// active and failed counts at /metrics): Start when one begins, Done with
// its error when it ends.
func (s *Service) Job(job string) *metrics.JobMetrics { return s.metrics.Job(s.Name, job) }

// outboxStats reads ob's numbers for the metrics.
func outboxStats(ob *outbox.Outbox) func(context.Context) (metrics.OutboxStats, error) {
	return func(ctx context.Context) (metrics.OutboxStats, error) {
		st, err := ob.Stats(ctx)
		return metrics.OutboxStats(st), err
	}
}

// Handle serves the function's events and REST routes; it answers 503 until
// Start has run, so a function's Handle can call it on a nil *Service.
func (s *Service) Handle(w http.ResponseWriter, r *http.Request) {
	if s == nil {
		runtime.WriteError(w, r, errs.E(errs.Unavailable, "function is starting"))
		return
	}
	// Every transaction a handler begins gets the configured bounds.
	s.Mux.ServeHTTP(w, r.WithContext(db.WithTimeouts(r.Context(), s.timeouts)))
}

// Routes lists the REST patterns the function serves, for the all-in-one;
// none before Start.
func (s *Service) Routes() []string {
	if s == nil {
		return nil
	}
	return s.Mux.Patterns()
}

// DrainOutbox is the handler of the outbox-drain PingSource: waking the
// function is most of its work (Start runs the relay), and it sends what is
// due before answering, so a backlog left while every instance was scaled to
// zero goes out within one schedule period.
func (s *Service) DrainOutbox(ctx context.Context, _ cloudevents.Event) error {
	sent, err := s.Outbox.Drain(ctx)
	runtime.AddLogAttrs(ctx, slog.Int("sent", sent))
	return err
}

// PruneProcessed is the handler of the processed-events-prune PingSource: it
// deletes this function's records of events processed longer ago than
// PROCESSED_EVENTS_RETENTION, so the table stays bounded.
func (s *Service) PruneProcessed(ctx context.Context, _ cloudevents.Event) error {
	var n int64
	err := db.InTx(db.WithTimeouts(ctx, s.timeouts), s.Pool, func(tx pgx.Tx) error {
		var err error
		n, err = db.PruneProcessed(ctx, tx, s.Name, s.retention)
		return err
	})
	runtime.AddLogAttrs(ctx, slog.Int64("pruned", n))
	return err
}

// Work is one unit of work: the changes it makes in tx and the events that
// report them. Commit and Once run it.
type Work func(tx pgx.Tx) ([]cloudevents.Event, error)

// Commit runs work in one transaction and queues the events it returns in the
// outbox in that same transaction, so the change and its events commit
// together or not at all. After commit the outbox relay is kicked: the events
// leave without the caller waiting on the sink (docs/runtime.md).
func (s *Service) Commit(ctx context.Context, work Work) error {
	var queued int
	// A unit of work run outside Handle (a background job) gets the
	// configured bounds too.
	ctx = db.WithTimeouts(ctx, s.timeouts)
	err := db.InTx(ctx, s.Pool, func(tx pgx.Tx) error {
		evs, err := work(tx)
		if err != nil {
			return err
		}
		queued = len(evs)
		return s.Outbox.Add(ctx, tx, evs...)
	})
	if err == nil && queued > 0 {
		s.Outbox.Kick()
	}
	return err
}

// Once is Commit for the effect of event e, applied at most once: the effect,
// its events and the record that (source, id) was processed by this function
// commit in one transaction. A redelivery of a processed event returns
// done=false and changes nothing; a concurrent one waits on the first and
// then does the same.
func (s *Service) Once(ctx context.Context, e cloudevents.Event, effect Work) (done bool, err error) {
	err = s.Commit(ctx, func(tx pgx.Tx) ([]cloudevents.Event, error) {
		first, err := db.MarkProcessed(ctx, tx, s.Name, e.Source(), e.ID())
		if err != nil || !first {
			return nil, err
		}
		done = true
		return effect(tx)
	})
	if err != nil {
		return false, err
	}
	if !done {
		runtime.MarkDuplicate(ctx)
	}
	return done, nil
}
