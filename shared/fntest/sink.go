package fntest

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
)

// Sink is a CloudEvents receiver standing in for K_SINK's broker ingress.
// It records what it accepted and can be told to refuse deliveries.
type Sink struct {
	URL string

	mu         sync.Mutex
	events     []cloudevents.Event
	failures   int
	failStatus int
	arrived    int
	refused    int
	held       chan struct{} // while non-nil, deliveries wait for it to close
}

// minWait is the least time the Wait methods give a condition: a generous
// floor, so a test's short timeout does not fail on a busy machine. They
// return as soon as the condition holds, so it costs nothing when it does.
const minWait = 30 * time.Second

func waitFor(timeout time.Duration) time.Duration { return max(timeout, minWait) }

// NewSink starts a sink for the test.
func NewSink(tb testing.TB) *Sink {
	s := &Sink{}
	srv := httptest.NewServer(http.HandlerFunc(s.serve))
	tb.Cleanup(srv.Close)
	s.URL = srv.URL
	return s
}

func (s *Sink) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.arrived++
	held := s.held
	s.mu.Unlock()
	if held != nil {
		<-held
	}
	s.mu.Lock()
	if s.failures > 0 {
		s.failures--
		s.refused++
		status := s.failStatus
		s.mu.Unlock()
		w.WriteHeader(status)
		return
	}
	s.mu.Unlock()
	e, err := binding.ToEvent(r.Context(), cehttp.NewMessageFromHttpRequest(r))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.events = append(s.events, *e)
	s.mu.Unlock()
	w.WriteHeader(http.StatusAccepted)
}

// FailNext makes the next n deliveries fail with 503.
func (s *Sink) FailNext(n int) { s.AnswerNext(n, http.StatusServiceUnavailable) }

// AnswerNext makes the next n deliveries fail with status, such as a
// permanent 400 or a retryable 429.
func (s *Sink) AnswerNext(n, status int) {
	s.mu.Lock()
	s.failures = n
	s.failStatus = status
	s.mu.Unlock()
}

// Hold makes deliveries wait until the returned release is called, like a
// sink that accepts connections and never answers.
func (s *Sink) Hold() (release func()) {
	ch := make(chan struct{})
	s.mu.Lock()
	s.held = ch
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			s.held = nil
			s.mu.Unlock()
			close(ch)
		})
	}
}

// WaitRefused waits up to timeout (at least minWait) until the sink refused
// at least one delivery, and reports whether it did.
func (s *Sink) WaitRefused(timeout time.Duration) bool {
	deadline := time.Now().Add(waitFor(timeout))
	for s.Refused() == 0 {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// Arrived reports how many deliveries reached the sink, held ones included.
func (s *Sink) Arrived() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.arrived
}

// Refused reports how many deliveries were refused.
func (s *Sink) Refused() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refused
}

// Events returns what the sink accepted, in arrival order.
func (s *Sink) Events() []cloudevents.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]cloudevents.Event(nil), s.events...)
}

// WaitFor waits up to timeout (at least minWait) until an event of
// eventType arrived and returns every such event.
func (s *Sink) WaitFor(ctx context.Context, eventType string, timeout time.Duration) []cloudevents.Event {
	return s.WaitForN(ctx, eventType, 1, timeout)
}

// WaitForN waits up to timeout (at least minWait) until n events of
// eventType arrived and returns every such event (fewer if the time ran
// out). Events leave the outbox after the response, so tests wait for them
// rather than expect them.
func (s *Sink) WaitForN(ctx context.Context, eventType string, n int, timeout time.Duration) []cloudevents.Event {
	deadline := time.Now().Add(waitFor(timeout))
	for {
		var out []cloudevents.Event
		for _, e := range s.Events() {
			if e.Type() == eventType {
				out = append(out, e)
			}
		}
		if len(out) >= n || time.Now().After(deadline) || ctx.Err() != nil {
			return out
		}
		time.Sleep(20 * time.Millisecond)
	}
}
