package service_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/jackc/pgx/v5"

	"github.com/google/uuid"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/authn/localissuer"
	"github.com/streamspace-dev/functions/shared/db"
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
	svc.Mux.Route("GET /api/v1/whoami", func(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
		runtime.WriteJSON(w, http.StatusOK, who)
		return nil
	})
	return nil
}
func (c *counter) Stop(ctx context.Context) error                { return c.svc.Stop(ctx) }
func (c *counter) Handle(w http.ResponseWriter, r *http.Request) { c.svc.Handle(w, r) }

func effects(t *testing.T, h *fntest.Harness) int {
	t.Helper()
	var n int
	err := h.Pool.QueryRow(context.Background(),
		`select extract(epoch from heartbeat_at - created_at)::int from job_leases where name = 'counter'`).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestEventDeliveredTenTimesHasOneEffect(t *testing.T) {
	h := fntest.Start(t, &counter{}, nil)
	if _, err := h.Pool.Exec(context.Background(),
		`insert into job_leases (name, owner, lease_until, heartbeat_at, created_at) values ('counter', 'test', now(), now(), now())`); err != nil {
		t.Fatal(err)
	}
	e := cloudevents.NewEvent()
	e.SetID("once-1")
	e.SetSource("/test")
	e.SetType(counted)
	e.SetData(cloudevents.ApplicationJSON, map[string]string{})

	var wg sync.WaitGroup
	statuses := make(chan int, 5)
	for i := range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, _ := h.Deliver(e, i%2 == 0)
			statuses <- status
		}()
	}
	wg.Wait()
	close(statuses)
	for i := range 5 {
		if status, _ := h.Deliver(e, false); status != http.StatusAccepted {
			t.Errorf("sequential delivery %d: %d, want 202", i, status)
		}
	}
	for s := range statuses {
		if s != http.StatusAccepted {
			t.Errorf("concurrent delivery: %d, want 202", s)
		}
	}
	if got := effects(t, h); got != 1 {
		t.Errorf("%d effects after 10 deliveries, want 1", got)
	}
	var dups int
	for _, line := range h.Logs.Lines() {
		if line["eventId"] == "once-1" && line["duplicate"] == true {
			dups++
		}
	}
	if dups != 9 {
		t.Errorf("%d deliveries logged as duplicates, want 9", dups)
	}

	// Another event with the same id from another source is its own event.
	e.SetSource("/other")
	h.Deliver(e, false)
	if got := effects(t, h); got != 2 {
		t.Errorf("%d effects after a second source, want 2", got)
	}
}

func TestOutboxDrainPingSendsWhatIsQueued(t *testing.T) {
	// No periodic relay during the test: only the ping can send.
	h := fntest.Start(t, &counter{}, map[string]string{"OUTBOX_INTERVAL": "1h"})
	ob, err := outbox.New(h.Pool, "counter", h.Sink.URL, 0, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	queued := cloudevents.NewEvent()
	queued.SetID(uuid.NewString())
	queued.SetSource("/streamspace/functions/counter")
	queued.SetType("io.test.queued.v1")
	queued.SetData(cloudevents.ApplicationJSON, map[string]string{})
	if err := db.InTx(context.Background(), h.Pool, func(tx pgx.Tx) error { return ob.Add(context.Background(), tx, queued) }); err != nil {
		t.Fatal(err)
	}
	if n := len(h.Sink.Events()); n != 0 {
		t.Fatalf("%d events sent before the ping", n)
	}
	ping := cloudevents.NewEvent()
	ping.SetID("ping-1")
	ping.SetSource("/apis/v1/namespaces/streamspace/pingsources/outbox-drain")
	ping.SetType("dev.knative.sources.ping")
	ping.SetData(cloudevents.ApplicationJSON, map[string]string{"job": "outbox.drain"})
	if status, _ := h.Deliver(ping, false); status != http.StatusAccepted {
		t.Fatalf("ping: %d", status)
	}
	if got := h.Sink.Events(); len(got) != 1 || got[0].ID() != queued.ID() {
		t.Errorf("after the ping the sink has %v, want the queued %s", got, queued.ID())
	}
}

func TestEventPathVerifiesTheBrokersToken(t *testing.T) {
	// The cluster's token issuer, standing in for the API server's.
	cluster := httptest.NewServer(nil)
	t.Cleanup(cluster.Close)
	iss, err := localissuer.New(cluster.URL)
	if err != nil {
		t.Fatal(err)
	}
	cluster.Config.Handler = iss.JWKSHandler()
	const (
		audience = "serving.knative.dev/service/streamspace/counter"
		broker   = "system:serviceaccount:knative-eventing:broker-oidc"
	)
	h := fntest.Start(t, &counter{}, map[string]string{
		"EVENT_AUTH_ISSUER":   cluster.URL,
		"EVENT_AUTH_AUDIENCE": audience,
		"EVENT_AUTH_JWKS_URL": cluster.URL,
		"EVENT_AUTH_SUBJECTS": broker,
	})
	if _, err := h.Pool.Exec(context.Background(),
		`insert into job_leases (name, owner, lease_until, heartbeat_at, created_at) values ('counter', 'test', now(), now(), now())`); err != nil {
		t.Fatal(err)
	}
	token := func(sub, aud string) string {
		tok, err := iss.Token(sub, authn.User, aud, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	tests := []struct {
		name  string
		token string
		want  int
	}{
		{"no token", "", http.StatusUnauthorized},
		{"the REST issuer's token", h.Token("alice", authn.Admin), http.StatusUnauthorized},
		{"another audience", token(broker, "serving.knative.dev/service/streamspace/other"), http.StatusUnauthorized},
		{"a subject not on the list", token("system:serviceaccount:streamspace:desktop", audience), http.StatusUnauthorized},
		{"the broker", token(broker, audience), http.StatusAccepted},
	}
	for i, tc := range tests {
		e := cloudevents.NewEvent()
		e.SetID(fmt.Sprintf("oidc-%d", i))
		e.SetSource("/test")
		e.SetType(counted)
		e.SetData(cloudevents.ApplicationJSON, map[string]string{})
		if status, _ := fntest.DeliverWithToken(t, h.URL, e, false, tc.token); status != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, status, tc.want)
		}
	}
	if got := effects(t, h); got != 1 {
		t.Errorf("%d effects, want only the broker's delivery to count", got)
	}
}

func TestEventAuthConfigIsAllOrNothing(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"EVENT_AUTH_AUDIENCE": "a"}, "EVENT_AUTH_ISSUER"},
		{map[string]string{"EVENT_AUTH_ISSUER": "https://k8s", "EVENT_AUTH_JWKS_URL": "https://k8s/jwks"}, "EVENT_AUTH_AUDIENCE"},
		{map[string]string{"EVENT_AUTH_ISSUER": "https://k8s", "EVENT_AUTH_AUDIENCE": "a"}, "EVENT_AUTH_JWKS_URL"},
		{map[string]string{"EVENT_AUTH_ISSUER": "https://k8s", "EVENT_AUTH_AUDIENCE": "a", "EVENT_AUTH_JWKS_URL": "k8s/jwks"}, "EVENT_AUTH_JWKS_URL"},
	} {
		env := map[string]string{
			"DATABASE_URL": "postgres://x@127.0.0.1:1/x", "AUTH_ISSUER": "https://i", "AUTH_AUDIENCE": "a", "AUTH_JWKS_URL": "https://i/jwks",
		}
		for k, v := range tc.env {
			env[k] = v
		}
		_, err := service.Start(context.Background(), "counter", env, &service.Base{}, func(cloudevents.Event) error { return nil })
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want an error naming %s", tc.env, err, tc.want)
		}
	}
}

func TestEventPathAnswers503WhenTheDatabaseIsDown(t *testing.T) {
	h := fntest.Start(t, &counter{}, nil)
	// Cut the function off from its database: terminate its connections and
	// forbid new ones.
	ctx := context.Background()
	cfg := h.Pool.Config().ConnConfig.Copy()
	name := cfg.Database
	dbname := pgx.Identifier{name}.Sanitize()
	cfg.Database = "postgres"
	admin, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, `alter database `+dbname+` allow_connections false`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Exec(ctx, `alter database `+dbname+` allow_connections true`) })
	if _, err := admin.Exec(ctx, `select pg_terminate_backend(pid) from pg_stat_activity where datname = $1`, name); err != nil {
		t.Fatal(err)
	}

	e := cloudevents.NewEvent()
	e.SetID("down-1")
	e.SetSource("/test")
	e.SetType(counted)
	e.SetData(cloudevents.ApplicationJSON, map[string]string{})
	if status, _ := h.Deliver(e, false); status != http.StatusServiceUnavailable {
		t.Errorf("database down: %d, want 503 so the broker retries", status)
	}
}

func TestConfigErrorsNameTheVariable(t *testing.T) {
	for _, missing := range []string{"DATABASE_URL", "AUTH_ISSUER", "AUTH_AUDIENCE", "AUTH_JWKS_URL"} {
		env := map[string]string{
			"DATABASE_URL": "postgres://x@127.0.0.1:1/x", "AUTH_ISSUER": "https://i", "AUTH_AUDIENCE": "a", "AUTH_JWKS_URL": "https://i/jwks",
		}
		delete(env, missing)
		var cfg service.Base
		err := service.Load(env, &cfg)
		if err == nil || !strings.Contains(err.Error(), missing) {
			t.Errorf("without %s: %v", missing, err)
		}
	}
}

func TestUnparsableValuesNameTheVariable(t *testing.T) {
	var cfg service.Base
	err := service.Load(map[string]string{
		"DATABASE_URL": "postgres://x@127.0.0.1:1/x", "AUTH_ISSUER": "https://i", "AUTH_AUDIENCE": "a", "AUTH_JWKS_URL": "https://i/jwks",
		"OUTBOX_INTERVAL": "often",
	}, &cfg)
	if err == nil || !strings.Contains(err.Error(), "OUTBOX_INTERVAL") {
		t.Errorf("got %v, want an error naming OUTBOX_INTERVAL", err)
	}
}

func TestSecretsStayOutOfTheLog(t *testing.T) {
	// A start-up failure with a password in DATABASE_URL.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()
	const password = "Sup3r-S3cret-pw"
	logs := &fntest.Buffer{}
	log := logging.New(logs, slog.LevelDebug)
	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	err := runtime.Serve(context.Background(), &counter{}, runtime.Options{
		Listener: ln2,
		Logger:   log,
		Env: map[string]string{
			"DATABASE_URL": "postgres://app:" + password + "@" + closed + "/streamspace",
			"AUTH_ISSUER":  "https://i", "AUTH_AUDIENCE": "a", "AUTH_JWKS_URL": "https://i/jwks",
		},
	})
	if err == nil {
		t.Fatal("Serve started without a database")
	}
	log.Error("function stopped", "err", err)
	if strings.Contains(err.Error(), password) || strings.Contains(logs.String(), password) {
		t.Errorf("password leaked: err=%v\nlog=%s", err, logs.String())
	}

	// Requests with a bearer token, good and bad.
	h := fntest.Start(t, &counter{}, nil)
	tok := h.Token("alice", authn.User)
	if status, _ := h.Do(http.MethodGet, "/api/v1/whoami", tok, nil); status != http.StatusOK {
		t.Fatalf("whoami: %d", status)
	}
	h.Do(http.MethodGet, "/api/v1/whoami", tok+"x", nil)
	if strings.Contains(h.Logs.String(), tok[len(tok)-20:]) {
		t.Errorf("token in the log:\n%s", h.Logs.String())
	}
}
