package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"go.uber.org/zap"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	knbroker "knative.dev/eventing/pkg/broker"
	"knative.dev/eventing/pkg/eventfilter"
	"knative.dev/eventing/pkg/eventingtls"
	"knative.dev/eventing/pkg/kncloudevents"
	"knative.dev/pkg/apis"
	"knative.dev/pkg/logging"
	"knative.dev/pkg/system"
)

// maxTTL is how many times an event may pass through the broker as a reply
// to a reply, Knative's broker ingress default; it stops reply loops.
const maxTTL = 255

// ttlParam carries a reply's remaining TTL on the ingress URL. Knative's
// broker filter re-attaches the TTL to a reply before it reaches the
// ingress; here the dispatcher sends the reply itself, so the ingress takes
// it from the reply address instead.
const ttlParam = "ttl"

// Broker is a Knative Broker in process: an ingress that accepts
// CloudEvents, Knative's own Trigger filters to choose subscribers, and
// Knative's own dispatcher to deliver with each Trigger's retry, reply and
// dead-letter settings.
type Broker struct {
	name, namespace string
	subs            []*subscription
	dispatcher      *kncloudevents.Dispatcher
	ttl             func(context.Context, cloudevents.Event) cloudevents.Event
	ingress         *apis.URL
	deadLetters     *apis.URL
	log             *slog.Logger
	observe         func(Delivery)
	tokens          TokenSource

	ctx    context.Context // deliveries run under it; cancelled by Close
	cancel context.CancelFunc
	work   inflight
}

// brokerOptions configure newBroker.
type brokerOptions struct {
	Broker   *eventingv1.Broker
	Triggers []*eventingv1.Trigger
	// Resolver gives subscribers local addresses.
	Resolver resolver
	// Ingress is the broker's own address; replies are sent there.
	Ingress *apis.URL
	// DeadLetters is the dead-letter log's address.
	DeadLetters *apis.URL
	Logger      *slog.Logger
	// Observe, when set, receives every delivery's result.
	Observe func(Delivery)
	// Tokens signs the token of a delivery to a Trigger with a subscriber
	// audience. Required when any Trigger has one.
	Tokens TokenSource
}

// TokenSource returns a bearer token for subject and audience.
type TokenSource func(subject, audience string) (string, error)

// newBroker prepares every Trigger of o.Broker. A Trigger for another
// Broker, a subscriber without a local address or an invalid delivery spec
// is an error: the cluster would not deliver it either.
func newBroker(o brokerOptions) (*Broker, error) {
	// The dispatcher names the system namespace when it builds a dead
	// letter's error attributes, and Knative's system package panics
	// without it. Outside a cluster it names nothing real.
	if os.Getenv(system.NamespaceEnvKey) == "" {
		if err := os.Setenv(system.NamespaceEnvKey, "knative-eventing"); err != nil {
			return nil, err
		}
	}
	b := &Broker{
		name:        o.Broker.Name,
		namespace:   o.Broker.Namespace,
		dispatcher:  kncloudevents.NewDispatcher(eventingtls.ClientConfig{}, nil),
		ttl:         knbroker.TTLDefaulter(zap.NewNop(), maxTTL),
		ingress:     o.Ingress,
		deadLetters: o.DeadLetters,
		log:         o.Logger,
		observe:     o.Observe,
		tokens:      o.Tokens,
	}
	for _, t := range o.Triggers {
		if t.Spec.Broker != b.name || t.Namespace != b.namespace {
			b.closeFilters()
			return nil, fmt.Errorf("trigger %s/%s: broker %s/%s is not in the overlay", t.Namespace, t.Name, t.Namespace, t.Spec.Broker)
		}
		s, err := newSubscription(t, o.Broker, o.Resolver)
		if err != nil {
			b.closeFilters()
			return nil, err
		}
		if s.audience != "" && o.Tokens == nil {
			b.closeFilters()
			return nil, fmt.Errorf("trigger %s: subscriber audience %q, but no issuer signs delivery tokens", s.name, s.audience)
		}
		b.subs = append(b.subs, s)
	}
	b.ctx, b.cancel = context.WithCancel(logging.WithLogger(context.Background(), zap.NewNop().Sugar()))
	return b, nil
}

// EventAuth is what a subscriber must accept to take this broker's
// deliveries: the one audience the Triggers ask their tokens for, and the
// subjects those tokens carry, or "" and nil when no Trigger names an
// audience. Triggers that disagree on the audience are an error, since the
// one local function checks one.
func (b *Broker) EventAuth() (audience string, subjects []string, err error) {
	for i, s := range b.subs {
		if i > 0 && s.audience != audience {
			return "", nil, fmt.Errorf("trigger %s: subscriber audience %q differs from the other Triggers' %q", s.name, s.audience, audience)
		}
		audience = s.audience
		if s.audience != "" && !slices.Contains(subjects, s.subject) {
			subjects = append(subjects, s.subject)
		}
	}
	return audience, subjects, nil
}

// Triggers returns the names (namespace/name) of the Triggers in order.
func (b *Broker) Triggers() []string {
	out := make([]string, len(b.subs))
	for i, s := range b.subs {
		out[i] = s.name
	}
	return out
}

// ServeHTTP is the broker ingress. It accepts a CloudEvent in binary or
// structured mode on / or /<namespace>/<broker>, answers 202 once the
// matching deliveries are under way, and 400 for what is not a valid event.
func (b *Broker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "the broker ingress accepts POST only", http.StatusMethodNotAllowed)
		return
	}
	if p := strings.Trim(r.URL.Path, "/"); p != "" && p != b.namespace+"/"+b.name {
		http.Error(w, "no broker at "+r.URL.Path, http.StatusNotFound)
		return
	}
	msg := cehttp.NewMessageFromHttpRequest(r)
	defer msg.Finish(nil)
	e, err := binding.ToEvent(r.Context(), msg)
	if err == nil {
		err = e.Validate()
	}
	if err != nil {
		b.log.Warn("event refused", "status", http.StatusBadRequest, "err", err)
		http.Error(w, "not a valid CloudEvent: "+err.Error(), http.StatusBadRequest)
		return
	}
	if status := b.Publish(*e, r.URL.Query().Get(ttlParam)); status != http.StatusAccepted {
		http.Error(w, http.StatusText(status), status)
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

// Publish stamps e as Knative's ingress does (knativearrivaltime, and the
// TTL that ends reply loops), starts a delivery for every Trigger whose
// filter passes it, and returns the ingress status. replyTTL is the TTL a
// reply carried through its ingress address, empty for a new event.
func (b *Broker) Publish(e cloudevents.Event, replyTTL string) int {
	e.SetExtension(knbroker.EventArrivalTime, cloudevents.Timestamp{Time: time.Now().UTC()})
	if _, err := knbroker.GetTTL(e.Context); err != nil && replyTTL != "" {
		if n, err := strconv.Atoi(replyTTL); err == nil && n >= 0 && n <= maxTTL {
			_ = knbroker.SetTTL(e.Context, int32(n))
		}
	}
	e = b.ttl(b.ctx, e)
	ttl, err := knbroker.GetTTL(e.Context)
	if err != nil || ttl <= 0 {
		b.log.Warn("event dropped: TTL exhausted, the event was a reply too many times",
			"eventId", e.ID(), "eventType", e.Type(), "eventSource", e.Source())
		return http.StatusBadRequest
	}
	var subs []*subscription
	matched := []string{}
	for _, s := range b.subs {
		if s.filter.Filter(b.ctx, e) != eventfilter.FailFilter {
			subs, matched = append(subs, s), append(matched, s.name)
		}
	}
	b.log.Info("event received", "eventId", e.ID(), "eventType", e.Type(), "eventSource", e.Source(),
		"triggers", matched)
	for _, s := range subs {
		if !b.work.add() {
			return http.StatusServiceUnavailable
		}
		go func() {
			defer b.work.done()
			b.deliver(s, e, ttl)
		}()
	}
	return http.StatusAccepted
}

// Drain waits until no delivery is in flight or ctx ends. The ingress
// still accepts events meanwhile, so replies of in-flight deliveries are
// routed too.
func (b *Broker) Drain(ctx context.Context) error { return b.work.wait(ctx) }

// Close refuses new events, cancels deliveries still in flight (their
// retries stop), waits for them to return, and releases the filters.
func (b *Broker) Close() {
	b.work.close()
	b.cancel()
	_ = b.work.wait(context.Background())
	b.closeFilters()
}

func (b *Broker) closeFilters() {
	for _, s := range b.subs {
		s.filter.Cleanup()
	}
}

// inflight counts running deliveries. Unlike a sync.WaitGroup it may grow
// while someone waits, which replies during a drain need.
type inflight struct {
	mu     sync.Mutex
	n      int
	idle   chan struct{} // closed when n drops to zero
	closed bool
}

// add records a new delivery, or reports false once closed.
func (f *inflight) add() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	if f.n == 0 {
		f.idle = make(chan struct{})
	}
	f.n++
	return true
}

func (f *inflight) done() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n--
	if f.n == 0 {
		close(f.idle)
	}
}

func (f *inflight) close() {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
}

// wait returns when nothing is in flight, or ctx's error when it ends first.
func (f *inflight) wait(ctx context.Context) error {
	for {
		f.mu.Lock()
		if f.n == 0 {
			f.mu.Unlock()
			return nil
		}
		idle := f.idle
		f.mu.Unlock()
		select {
		case <-idle:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
