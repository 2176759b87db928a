package service_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/logging"
	"github.com/streamspace-dev/functions/shared/outbox"
	"github.com/streamspace-dev/functions/shared/runtime"
	"github.com/streamspace-dev/functions/shared/service"
)

const counted = "io.test.counted.v1"

// counter is a function whose one event handler increments a row, once per
// event, through Service.Once.
type counter struct{ svc *service.Service }

func (c *counter) Start(ctx context.Context, env map[string]string) error {
	var cfg service.Base
	svc, err := service.Start(ctx, "counter", env, &cfg, func(cloudevents.Event) error { return nil })
	if err != nil {
		return err
	}
	c.svc = svc
	svc.Mux.On(counted, func(ctx context.Context, e cloudevents.Event) error {
		_, err := svc.Once(ctx, e, func(tx pgx.Tx) ([]cloudevents.Event, error) {
			_, err := tx.Exec(ctx, `update job_leases set heartbeat_at = heartbeat_at + interval '1 second' where name = 'counter'`)
			return nil, err
		})
		return err
	})
	svc.Mux.On("dev.knative.sources.ping", svc.DrainOutbox)
	svc.Mux.Route("POST /api/v1/count", func(w http.ResponseWriter, r *http.Request, _ authn.Identity) error {
		err := svc.Commit(r.Context(), func(tx pgx.Tx) ([]cloudevents.Event, error) {
			_, err := tx.Exec(r.Context(), `update job_leases set heartbeat_at = heartbeat_at + interval '1 second' where name = 'counter'`)
			return nil, err
		})
		if err != nil {
			return err
		}
		runtime.WriteJSON(w, http.StatusOK, map[string]bool{"counted": true})
		return nil
	})
	svc.Mux.Route("GET /api/v1/whoami", func(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
		runtime.WriteJSON(w, http.StatusOK, who)
		return nil
	})
	return nil
}
func (c *counter) Stop(ctx context.Context) error                { return c.svc.Stop(ctx) }
func (c *counter) Ready(ctx context.Context) (bool, error)       { return c.svc.Ready(ctx) }
func (c *counter) Handle(w http.ResponseWriter, r *http.Request) { c.svc.Handle(w, r) }

func effects(t *testing.T, h *fntest.Harness) int {
	t.Helper()
	var n int
	err := h.Pool.QueryRow(context.Background(),
		`select extract(epoch from heartbeat_at - created_at)::int from job_leases where name = 'counter'`).Scan(&n)
	require.NoError(t, err)
	return n
}

// startCounter serves the counter function with env and its effect row.
func startCounter(t *testing.T, env map[string]string) *fntest.Harness {
	t.Helper()
	return counterOn(t, fntest.Start(t, &counter{}, env))
}

// counterOn adds the counter's effect row to h's database.
func counterOn(t *testing.T, h *fntest.Harness) *fntest.Harness {
	t.Helper()
	_, err := h.Pool.Exec(context.Background(),
		`insert into job_leases (name, owner, lease_until, heartbeat_at, created_at) values ('counter', 'test', now(), now(), now())`)
	require.NoError(t, err)
	return h
}

func countedEvent(id, source string) cloudevents.Event {
	e := cloudevents.NewEvent()
	e.SetID(id)
	e.SetSource(source)
	e.SetType(counted)
	e.SetData(cloudevents.ApplicationJSON, map[string]string{})
	return e
}

func TestEventDeliveredTenTimesHasOneEffect(t *testing.T) {
	h := startCounter(t, nil)
	e := countedEvent("once-1", "/test")
	// The steps run in order; effects counts all effects so far.
	tests := []struct {
		name    string
		deliver func(t *testing.T)
		effects int
	}{
		{"five deliveries at once", func(t *testing.T) {
			var wg sync.WaitGroup
			statuses := make(chan int, 5)
			for i := range 5 {
				wg.Go(func() {
					status, _ := h.Deliver(e, i%2 == 0)
					statuses <- status
				})
			}
			wg.Wait()
			close(statuses)
			for s := range statuses {
				assert.Equal(t, http.StatusAccepted, s, "concurrent delivery")
			}
		}, 1},
		{"five more in a row", func(t *testing.T) {
			for i := range 5 {
				status, _ := h.Deliver(e, false)
				assert.Equal(t, http.StatusAccepted, status, "sequential delivery %d", i)
			}
		}, 1},
		{"nine logged as duplicates", func(t *testing.T) {
			var dups int
			for _, line := range h.Logs.Lines() {
				if line["eventId"] == "once-1" && line["duplicate"] == true {
					dups++
				}
			}
			assert.Equal(t, 9, dups)
		}, 1},
		{"the same id from another source is its own event", func(t *testing.T) {
			status, _ := h.Deliver(countedEvent("once-1", "/other"), false)
			assert.Equal(t, http.StatusAccepted, status)
		}, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.deliver(t)
			assert.Equal(t, tc.effects, effects(t, h))
		})
	}
}

func TestOutboxDrainPingSendsWhatIsQueued(t *testing.T) {
	tests := []struct {
		name   string
		queued int
	}{
		{"one event", 1},
		{"more than a batch", 150},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// No periodic relay during the test, and its first drain done
			// before anything is queued: only the ping can send.
			h := fntest.Start(t, &counter{}, map[string]string{"OUTBOX_INTERVAL": "1h"})
			require.Eventually(t, func() bool {
				for _, line := range h.Logs.Lines() {
					if line["msg"] == "outbox relay started" {
						return true
					}
				}
				return false
			}, time.Minute, 10*time.Millisecond, "the relay's first drain never ended")
			ob, err := outbox.New(h.Pool, "counter", h.Sink.URL, 0, slog.New(slog.DiscardHandler))
			require.NoError(t, err)
			var want []string
			var queued []cloudevents.Event
			for range tc.queued {
				e := cloudevents.NewEvent()
				e.SetID(uuid.NewString())
				e.SetSource("/streamspace/functions/counter")
				e.SetType("io.test.queued.v1")
				e.SetData(cloudevents.ApplicationJSON, map[string]string{})
				queued = append(queued, e)
				want = append(want, e.ID())
			}
			require.NoError(t, db.InTx(context.Background(), h.Pool, func(tx pgx.Tx) error {
				return ob.Add(context.Background(), tx, queued...)
			}))
			require.Empty(t, h.Sink.Events(), "events sent before the ping")

			ping := cloudevents.NewEvent()
			ping.SetID("ping-1")
			ping.SetSource("/apis/v1/namespaces/streamspace-functions/pingsources/outbox-drain")
			ping.SetType("dev.knative.sources.ping")
			ping.SetData(cloudevents.ApplicationJSON, map[string]string{"job": "outbox.drain"})
			status, _ := h.Deliver(ping, false)
			require.Equal(t, http.StatusAccepted, status)
			// The ping answers once what was due went out.
			var got []string
			for _, e := range h.Sink.Events() {
				got = append(got, e.ID())
			}
			assert.ElementsMatch(t, want, got)
		})
	}
}

func TestEventPathVerifiesTheBrokersToken(t *testing.T) {
	// The cluster's token issuer, standing in for the API server's.
	iss, clusterURL := fntest.ServeIssuer(t)
	const (
		audience = "serving.knative.dev/service/streamspace/counter"
		broker   = "system:serviceaccount:knative-eventing:broker-oidc"
	)
	h := startCounter(t, map[string]string{
		"EVENT_AUTH_ISSUER":   clusterURL,
		"EVENT_AUTH_AUDIENCE": audience,
		"EVENT_AUTH_JWKS_URL": clusterURL,
		"EVENT_AUTH_SUBJECTS": broker,
	})
	token := func(sub, aud string) string {
		tok, err := iss.Token(sub, authn.User, aud, time.Minute)
		require.NoError(t, err)
		return tok
	}
	tests := []struct {
		name  string
		token string
		want  int
	}{
		{"no token", "", http.StatusUnauthorized},
		{"the REST issuer's token", h.Token("alice", authn.Admin), http.StatusUnauthorized},
		{"a StreamSpace token", h.StreamSpaceToken("admin", authn.Admin), http.StatusUnauthorized},
		{"another audience", token(broker, "serving.knative.dev/service/streamspace/other"), http.StatusUnauthorized},
		{"a subject not on the list", token("system:serviceaccount:streamspace:desktop", audience), http.StatusUnauthorized},
		{"the broker", token(broker, audience), http.StatusAccepted},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, _ := fntest.DeliverWithToken(t, h.URL, countedEvent(fmt.Sprintf("oidc-%d", i), "/test"), false, tc.token)
			assert.Equal(t, tc.want, status)
		})
	}
	assert.Equal(t, 1, effects(t, h), "only the broker's delivery counts")
}

// validEnv is an environment service.Start accepts, up to the database.
func validEnv(overrides map[string]string) map[string]string {
	env := map[string]string{
		"DATABASE_URL": "postgres://x@127.0.0.1:1/x", "AUTH_ISSUER": "https://i", "AUTH_AUDIENCE": "a", "AUTH_JWKS_URL": "https://i/jwks",
	}
	for k, v := range overrides {
		env[k] = v
	}
	return env
}

func TestEventAuthConfigIsAllOrNothing(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"an audience without an issuer", map[string]string{"EVENT_AUTH_AUDIENCE": "a"}, "EVENT_AUTH_ISSUER"},
		{"no audience", map[string]string{"EVENT_AUTH_ISSUER": "https://k8s", "EVENT_AUTH_JWKS_URL": "https://k8s/jwks"}, "EVENT_AUTH_AUDIENCE"},
		{"no JWKS URL", map[string]string{"EVENT_AUTH_ISSUER": "https://k8s", "EVENT_AUTH_AUDIENCE": "a"}, "EVENT_AUTH_JWKS_URL"},
		{"a JWKS URL that is not a URL", map[string]string{"EVENT_AUTH_ISSUER": "https://k8s", "EVENT_AUTH_AUDIENCE": "a", "EVENT_AUTH_JWKS_URL": "k8s/jwks"}, "EVENT_AUTH_JWKS_URL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := service.Start(context.Background(), "counter", validEnv(tc.env), &service.Base{}, func(cloudevents.Event) error { return nil })
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestEventPathAnswers503WhenTheDatabaseIsDown(t *testing.T) {
	tests := []struct {
		name       string
		structured bool
	}{
		{"binary", false},
		{"structured", true},
	}
	h := fntest.Start(t, &counter{}, nil)
	// Cut the function off from its database: terminate its connections and
	// forbid new ones.
	ctx := context.Background()
	cfg := h.Pool.Config().ConnConfig.Copy()
	name := cfg.Database
	dbname := pgx.Identifier{name}.Sanitize()
	cfg.Database = "postgres"
	admin, err := pgx.ConnectConfig(ctx, cfg)
	require.NoError(t, err)
	defer admin.Close(ctx)
	_, err = admin.Exec(ctx, `alter database `+dbname+` allow_connections false`)
	require.NoError(t, err)
	t.Cleanup(func() { admin.Exec(ctx, `alter database `+dbname+` allow_connections true`) })
	_, err = admin.Exec(ctx, `select pg_terminate_backend(pid, 60000) from pg_stat_activity where datname = $1`, name)
	require.NoError(t, err)

	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, _ := h.Deliver(countedEvent(fmt.Sprintf("down-%d", i), "/test"), tc.structured)
			assert.Equal(t, http.StatusServiceUnavailable, status, "database down: want 503 so the broker retries")
		})
	}
}

func TestConfigErrorsNameTheVariable(t *testing.T) {
	tests := []struct {
		name    string
		missing string
	}{
		{"no database", "DATABASE_URL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := validEnv(nil)
			delete(env, tc.missing)
			var cfg service.Base
			err := service.Load(env, &cfg)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.missing)
		})
	}
}

func TestUnparsableValuesNameTheVariable(t *testing.T) {
	tests := []struct {
		name, key, value string
	}{
		{"interval", "OUTBOX_INTERVAL", "often"},
		{"attempts", "OUTBOX_MAX_ATTEMPTS", "many"},
		{"retention", "PROCESSED_EVENTS_RETENTION", "a week"},
		{"user cache", "STREAMSPACE_USER_CACHE_TTL", "soon"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var cfg service.Base
			err := service.Load(validEnv(map[string]string{tc.key: tc.value}), &cfg)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.key)
		})
	}
}

func TestOutboxMaxAttempts(t *testing.T) {
	tests := []struct {
		name    string
		value   string // "" leaves the variable unset
		want    int
		wantErr bool // Start refuses it before connecting
	}{
		{"default", "", 20, false},
		{"set", "5", 5, false},
		{"zero", "0", 0, true},
		{"negative", "-3", -3, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := validEnv(nil)
			if tc.value != "" {
				env["OUTBOX_MAX_ATTEMPTS"] = tc.value
			}
			var cfg service.Base
			require.NoError(t, service.Load(env, &cfg))
			assert.Equal(t, tc.want, cfg.OutboxMaxAttempts)
			if !tc.wantErr {
				return
			}
			_, err := service.Start(context.Background(), "counter", env, &service.Base{}, func(cloudevents.Event) error { return nil })
			require.Error(t, err)
			assert.Contains(t, err.Error(), "OUTBOX_MAX_ATTEMPTS")
		})
	}
}

func TestSecretsStayOutOfTheLog(t *testing.T) {
	t.Run("a start-up failure with a password in DATABASE_URL", func(t *testing.T) {
		passwords := []struct{ name, password string }{
			{"plain", "Sup3r-S3cret-pw"},
			{"with @ and :", "Sup3r@S3cret:pw"},
		}
		for _, tc := range passwords {
			t.Run(tc.name, func(t *testing.T) {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				require.NoError(t, err)
				closed := ln.Addr().String()
				require.NoError(t, ln.Close())
				logs := &fntest.Buffer{}
				log := logging.New(logs, slog.LevelDebug)
				ln2, err := net.Listen("tcp", "127.0.0.1:0")
				require.NoError(t, err)
				err = runtime.Serve(context.Background(), &counter{}, runtime.Options{
					Listener: ln2,
					Logger:   log,
					Env: validEnv(map[string]string{
						"DATABASE_URL": "postgres://" + url.UserPassword("app", tc.password).String() + "@" + closed + "/streamspace",
					}),
				})
				require.Error(t, err, "Serve started without a database")
				log.Error("function stopped", "err", err)
				for _, form := range []string{tc.password, url.UserPassword("", tc.password).String()[1:]} {
					assert.NotContains(t, err.Error(), form)
					assert.NotContains(t, logs.String(), form)
				}
			})
		}
	})

	t.Run("requests with a bearer token, good and bad", func(t *testing.T) {
		h := fntest.Start(t, &counter{}, nil)
		tok := h.Token("alice", authn.User)
		tests := []struct {
			name  string
			token string
			want  int
		}{
			{"good", tok, http.StatusOK},
			{"bad", tok + "x", http.StatusUnauthorized},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				status, _ := h.Do(http.MethodGet, "/api/v1/whoami", tc.token, nil)
				assert.Equal(t, tc.want, status)
			})
		}
		assert.NotContains(t, h.Logs.String(), tok[len(tok)-20:], "token in the log")
	})
}

func TestAGivenPoolOutlivesTheService(t *testing.T) {
	pool := dbtest.New(t)
	tests := []struct {
		name  string
		given bool
	}{
		{"a pool it opens is closed when it stops", false},
		{"a pool it is given stays open for the others", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			if tc.given {
				ctx = service.WithPool(ctx, pool)
			}
			env := validEnv(map[string]string{"DATABASE_URL": dbtest.URL(t, pool)})
			svc, err := service.Start(ctx, "counter", env, &service.Base{}, func(cloudevents.Event) error { return nil })
			require.NoError(t, err)
			assert.Equal(t, tc.given, svc.Pool == pool)
			require.NoError(t, svc.Stop(ctx))
			err = svc.Pool.Ping(ctx)
			if tc.given {
				assert.NoError(t, err)
			} else {
				assert.Error(t, err)
			}
		})
	}
}
