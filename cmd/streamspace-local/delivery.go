package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	eventingapis "knative.dev/eventing/pkg/apis"
	knbroker "knative.dev/eventing/pkg/broker"
	"knative.dev/eventing/pkg/kncloudevents"
	duckv1 "knative.dev/pkg/apis/duck/v1"
)

// Outcomes of a delivery.
const (
	// Delivered: the subscriber answered 2xx (and its reply, if any, reached
	// the ingress).
	Delivered = "delivered"
	// DeadLettered: delivery failed for good and the event went to the
	// dead-letter log.
	DeadLettered = "dead-lettered"
	// Failed: delivery failed for good and no dead-letter sink took it.
	Failed = "failed"
)

// Delivery is the result of delivering one event to one Trigger's
// subscriber.
type Delivery struct {
	EventID, EventType, EventSource string
	// Trigger is the Trigger's namespace/name.
	Trigger    string
	Subscriber string
	// Status is the subscriber's last HTTP status, 0 when it never answered.
	Status int
	// Attempts counts requests to the subscriber: 1 plus the retries.
	Attempts int
	Outcome  string
	// Replied says the subscriber answered with an event that was sent
	// back to the broker ingress.
	Replied  bool
	Duration time.Duration
	// Err is why a delivery that is not Delivered failed.
	Err error
}

// deliver sends e to s's subscriber with Knative's dispatcher: the retry
// policy of the delivery spec, the reply back into the ingress with the TTL
// the event had, and on final failure the dead-letter log when the spec
// names a dead-letter sink.
func (b *Broker) deliver(s *subscription, e cloudevents.Event, ttl int32) {
	start := time.Now()
	e = e.Clone()
	// Subscribers never see the TTL, as in Knative's broker filter.
	_ = knbroker.DeleteTTL(e.Context)

	reply := *b.ingress
	reply.RawQuery = url.Values{ttlParam: {strconv.Itoa(int(ttl))}}.Encode()
	counter := &attemptCounter{subscriber: s.subscriber.String(), reply: reply.String()}
	retry := s.retry
	retry.CheckRetry = counter.wrap(s.retry.CheckRetry)

	header := http.Header{}
	header.Set(eventingapis.KnNamespaceHeader, s.namespace)
	if s.audience != "" {
		token, err := b.tokens(s.subject, s.audience)
		if err != nil {
			d := Delivery{EventID: e.ID(), EventType: e.Type(), EventSource: e.Source(), Trigger: s.name,
				Subscriber: s.subscriber.String(), Outcome: Failed, Err: fmt.Errorf("delivery token: %w", err)}
			b.logDelivery(d)
			if b.observe != nil {
				b.observe(d)
			}
			return
		}
		header.Set("Authorization", "Bearer "+token)
	}
	// The dispatcher rewrites the addressables it is given, so each
	// delivery gets its own.
	opts := []kncloudevents.SendOption{
		kncloudevents.WithHeader(header),
		kncloudevents.WithRetryConfig(&retry),
		kncloudevents.WithReply(&duckv1.Addressable{URL: &reply}),
	}
	if s.deadLetter {
		dls := *b.deadLetters
		dls.RawQuery = url.Values{"trigger": {s.name}}.Encode()
		opts = append(opts, kncloudevents.WithDeadLetterSink(&duckv1.Addressable{URL: &dls}))
	}
	if s.format != nil {
		opts = append(opts, kncloudevents.WithEventFormat(s.format))
	}
	subscriber := *s.subscriber
	_, err := b.dispatcher.SendEvent(b.ctx, e, duckv1.Addressable{URL: &subscriber}, opts...)

	d := counter.result()
	d.EventID, d.EventType, d.EventSource = e.ID(), e.Type(), e.Source()
	d.Trigger, d.Subscriber = s.name, s.subscriber.String()
	d.Duration = time.Since(start)
	switch {
	case err != nil:
		d.Outcome, d.Err = Failed, err
	case !is2xx(d.Status):
		d.Outcome = DeadLettered
		d.Err = errors.New("subscriber answered " + statusText(d.Status))
	case counter.replyFailed():
		d.Outcome = DeadLettered
		d.Err = errors.New("the broker ingress refused the reply")
	default:
		d.Outcome = Delivered
	}
	b.logDelivery(d)
	if b.observe != nil {
		b.observe(d)
	}
}

func (b *Broker) logDelivery(d Delivery) {
	level := slog.LevelInfo
	switch d.Outcome {
	case DeadLettered:
		level = slog.LevelWarn
	case Failed:
		level = slog.LevelError
	}
	attrs := []slog.Attr{
		slog.String("eventId", d.EventID),
		slog.String("eventType", d.EventType),
		slog.String("eventSource", d.EventSource),
		slog.String("trigger", d.Trigger),
		slog.String("subscriber", d.Subscriber),
		slog.Int("status", d.Status),
		slog.Int("attempts", d.Attempts),
		slog.String("outcome", d.Outcome),
		slog.Bool("replied", d.Replied),
		slog.Int64("durationMs", d.Duration.Milliseconds()),
	}
	if d.Err != nil {
		attrs = append(attrs, slog.String("err", d.Err.Error()))
	}
	b.log.LogAttrs(context.Background(), level, "delivery", attrs...)
}

func is2xx(status int) bool { return status >= 200 && status <= 299 }

func statusText(status int) string {
	if status == 0 {
		return "nothing (no response)"
	}
	return strconv.Itoa(status) + " " + http.StatusText(status)
}

// attemptCounter watches the dispatcher's retry decisions, which it asks
// once per request, to count the requests to the subscriber and see
// whether a reply went to the ingress. Requests are told apart by URL,
// since the dispatcher uses one retry policy for the subscriber, the reply
// and the dead-letter sink.
type attemptCounter struct {
	subscriber, reply string

	mu          sync.Mutex
	attempts    int
	status      int
	replies     int
	replyStatus int
}

func (c *attemptCounter) wrap(next kncloudevents.CheckRetry) kncloudevents.CheckRetry {
	return func(ctx context.Context, resp *http.Response, err error) (bool, error) {
		target, status := "", 0
		var uerr *url.Error
		switch {
		case resp != nil && resp.Request != nil:
			target, status = resp.Request.URL.String(), resp.StatusCode
		case errors.As(err, &uerr):
			target = uerr.URL
		}
		c.mu.Lock()
		switch target {
		case c.subscriber:
			c.attempts++
			c.status = status
		case c.reply:
			c.replies++
			c.replyStatus = status
		}
		c.mu.Unlock()
		return next(ctx, resp, err)
	}
}

func (c *attemptCounter) result() Delivery {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Delivery{Attempts: c.attempts, Status: c.status, Replied: c.replies > 0 && is2xx(c.replyStatus)}
}

// replyFailed says a reply was sent to the ingress and not accepted.
func (c *attemptCounter) replyFailed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.replies > 0 && !is2xx(c.replyStatus)
}
