package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/google/uuid"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	"knative.dev/pkg/ptr"

	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/logging"
)

// waitTimeout bounds every wait for asynchronous work in these tests. Waits
// end as soon as their condition holds; the bound is generous so that a busy
// machine, or a delivery in the broker's retry backoff, never fails a test.
const waitTimeout = 2 * time.Minute

const testNamespace = "streamspace"

// subscriber is a recording CloudEvents receiver on loopback. respond
// decides each answer; nil accepts with 202.
type subscriber struct {
	URL *apis.URL

	mu       sync.Mutex
	events   []cloudevents.Event
	requests []*http.Request
	respond  func(n int, e cloudevents.Event, w http.ResponseWriter)
}

func newSubscriber(t *testing.T, respond func(n int, e cloudevents.Event, w http.ResponseWriter)) *subscriber {
	t.Helper()
	s := &subscriber{respond: respond}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e, err := binding.ToEvent(r.Context(), cehttp.NewMessageFromHttpRequest(r))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		s.events = append(s.events, *e)
		s.requests = append(s.requests, r)
		n := len(s.events)
		s.mu.Unlock()
		if s.respond == nil {
			w.WriteHeader(http.StatusAccepted)
			return
		}
		s.respond(n, *e, w)
	}))
	t.Cleanup(srv.Close)
	s.URL = apis.HTTP(srv.Listener.Addr().String())
	return s
}

// Events returns what the subscriber received, in order.
func (s *subscriber) Events() []cloudevents.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]cloudevents.Event(nil), s.events...)
}

// Requests returns the HTTP requests that carried the events.
func (s *subscriber) Requests() []*http.Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*http.Request(nil), s.requests...)
}

// answer returns a respond func that always answers status.
func answer(status int) func(int, cloudevents.Event, http.ResponseWriter) {
	return func(_ int, _ cloudevents.Event, w http.ResponseWriter) { w.WriteHeader(status) }
}

// testBroker is a Broker served on loopback with a dead-letter log, as
// start wires it, for Triggers built in the test.
type testBroker struct {
	*Broker
	URL         string
	DeadLetters string
	Deliveries  chan Delivery
	Logs        *fntest.Buffer
}

// newTestBroker serves a Broker default/streamspace whose delivery is
// delivery, with triggers.
func newTestBroker(t *testing.T, delivery *eventingduckv1.DeliverySpec, triggers ...*eventingv1.Trigger) *testBroker {
	t.Helper()
	return newTestBrokerWith(t, delivery, nil, triggers...)
}

// newTestBrokerWith is newTestBroker whose delivery tokens come from tokens.
func newTestBrokerWith(t *testing.T, delivery *eventingduckv1.DeliverySpec, tokens TokenSource, triggers ...*eventingv1.Trigger) *testBroker {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	base := "http://" + ln.Addr().String()
	ingress, _ := apis.ParseURL(base + "/")
	dlURL, _ := apis.ParseURL(base + deadLettersPath)
	logs := &fntest.Buffer{}
	log := logging.New(logs, slog.LevelDebug)
	tb := &testBroker{
		URL:         base,
		DeadLetters: filepath.Join(t.TempDir(), "dead-letters.jsonl"),
		Deliveries:  make(chan Delivery, 100),
		Logs:        logs,
	}
	dl, err := openDeadLetterLog(tb.DeadLetters, log)
	require.NoError(t, err)
	kb := &eventingv1.Broker{Spec: eventingv1.BrokerSpec{Delivery: delivery}}
	kb.Name, kb.Namespace = "default", testNamespace
	b, err := newBroker(brokerOptions{
		Broker:      kb,
		Triggers:    triggers,
		Resolver:    resolver{brokers: map[string]*apis.URL{testNamespace + "/default": ingress}},
		Ingress:     ingress,
		DeadLetters: dlURL,
		Logger:      log,
		Observe:     func(d Delivery) { tb.Deliveries <- d },
		Tokens:      tokens,
	})
	require.NoError(t, err)
	tb.Broker = b
	mux := http.NewServeMux()
	mux.Handle(deadLettersPath, dl)
	mux.Handle("/", b)
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() {
		b.Close()
		srv.Close()
		dl.Close()
		if t.Failed() {
			t.Logf("broker log:\n%s", logs.String())
		}
	})
	return tb
}

// next waits for the next delivery result.
func (tb *testBroker) next(t *testing.T) Delivery {
	t.Helper()
	select {
	case d := <-tb.Deliveries:
		return d
	case <-time.After(waitTimeout):
		require.FailNow(t, "no delivery", "none within %s", waitTimeout)
		return Delivery{}
	}
}

// settle waits until no delivery is in flight. Every delivery of an event
// starts before the ingress answers, so after settle nothing more arrives.
func (tb *testBroker) settle(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	require.NoError(t, tb.Drain(ctx), "deliveries still in flight after %s", waitTimeout)
}

// deadLetterLines decodes the dead-letter file.
func (tb *testBroker) deadLetterLines(t *testing.T) []DeadLetter {
	t.Helper()
	return readDeadLetters(t, tb.DeadLetters)
}

func readDeadLetters(t *testing.T, path string) []DeadLetter {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	var out []DeadLetter
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var dl DeadLetter
		require.NoError(t, json.Unmarshal(sc.Bytes(), &dl), "dead-letter line %q", sc.Text())
		out = append(out, dl)
	}
	require.NoError(t, sc.Err())
	return out
}

// trigger builds a Trigger of the test broker delivering to sub.
func trigger(name string, sub *subscriber, opts ...func(*eventingv1.Trigger)) *eventingv1.Trigger {
	t := &eventingv1.Trigger{Spec: eventingv1.TriggerSpec{
		Broker:     "default",
		Subscriber: duckv1.Destination{URI: sub.URL},
	}}
	t.Name, t.Namespace = name, testNamespace
	for _, o := range opts {
		o(t)
	}
	return t
}

// onType is the legacy attributes filter on type.
func onType(typ string) func(*eventingv1.Trigger) {
	return func(t *eventingv1.Trigger) {
		t.Spec.Filter = &eventingv1.TriggerFilter{Attributes: eventingv1.TriggerFilterAttributes{"type": typ}}
	}
}

// withFilters sets the subscriptions API filters.
func withFilters(f ...eventingv1.SubscriptionsAPIFilter) func(*eventingv1.Trigger) {
	return func(t *eventingv1.Trigger) { t.Spec.Filters = f }
}

// withAudience sets the subscriber's OIDC audience.
func withAudience(aud string) func(*eventingv1.Trigger) {
	return func(t *eventingv1.Trigger) { t.Spec.Subscriber.Audience = &aud }
}

// withDelivery sets the Trigger's own delivery spec.
func withDelivery(d *eventingduckv1.DeliverySpec) func(*eventingv1.Trigger) {
	return func(t *eventingv1.Trigger) { t.Spec.Delivery = d }
}

// retrying is a delivery spec with retry retries, a short exponential
// backoff, and a dead-letter sink when deadLetter is set.
func retrying(retry int32, deadLetter bool) *eventingduckv1.DeliverySpec {
	policy := eventingduckv1.BackoffPolicyExponential
	d := &eventingduckv1.DeliverySpec{Retry: ptr.Int32(retry), BackoffPolicy: &policy, BackoffDelay: ptr.String("PT0.1S")}
	if deadLetter {
		d.DeadLetterSink = &duckv1.Destination{Ref: &duckv1.KReference{APIVersion: "serving.knative.dev/v1", Kind: "Service", Name: "event-dead-letter"}}
	}
	return d
}

// newEvent returns a valid event of typ with JSON data.
func newEvent(typ string, data any) cloudevents.Event {
	e := cloudevents.NewEvent()
	e.SetID(uuid.NewString())
	e.SetType(typ)
	e.SetSource("/test")
	e.SetTime(time.Now().UTC())
	if data != nil {
		_ = e.SetData(cloudevents.ApplicationJSON, data)
	}
	return e
}

// publish posts e to the broker ingress and checks the 202.
func (tb *testBroker) publish(t *testing.T, e cloudevents.Event, structured bool) {
	t.Helper()
	status, _ := fntest.Deliver(t, tb.URL+"/", e, structured)
	require.Equal(t, http.StatusAccepted, status, "ingress status")
}

// replyWith returns a respond func that answers each event with reply
// (binary mode, 200).
func replyWith(reply func(in cloudevents.Event) cloudevents.Event) func(int, cloudevents.Event, http.ResponseWriter) {
	return func(_ int, in cloudevents.Event, w http.ResponseWriter) {
		out := reply(in)
		if err := cehttp.WriteResponseWriter(context.Background(), binding.ToMessage(&out), http.StatusOK, w); err != nil {
			_, _ = io.WriteString(w, err.Error())
		}
	}
}
