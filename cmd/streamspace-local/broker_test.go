package main

import (
	"net/http"
	"strings"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	knbroker "knative.dev/eventing/pkg/broker"

	"github.com/streamspace-dev/functions/events"
)

func TestTriggerFiltersDecideDelivery(t *testing.T) {
	legacy := newSubscriber(t, nil)
	exact := newSubscriber(t, nil)
	prefix := newSubscriber(t, nil)
	tb := newTestBroker(t, nil,
		trigger("legacy-template-updated", legacy, onType(events.TemplateUpdated)),
		trigger("exact-autoscale-tick", exact, withFilters(
			eventingv1.SubscriptionsAPIFilter{Exact: map[string]string{"type": events.Ping}},
			eventingv1.SubscriptionsAPIFilter{Exact: map[string]string{"source": events.AutoscaleTickSource}},
		)),
		trigger("prefix-snapshot", prefix, withFilters(
			eventingv1.SubscriptionsAPIFilter{Prefix: map[string]string{"type": "io.streamspace.snapshot."}},
		)),
	)

	tests := []struct {
		name       string
		event      cloudevents.Event
		structured bool
		want       map[*subscriber]bool
	}{
		{"legacy attributes filter, binary mode", newEvent(events.TemplateUpdated, map[string]string{"templateId": "t", "change": "updated"}), false,
			map[*subscriber]bool{legacy: true}},
		{"legacy attributes filter, structured mode", newEvent(events.TemplateUpdated, map[string]string{"templateId": "t", "change": "updated"}), true,
			map[*subscriber]bool{legacy: true}},
		{"all of two exact filters", func() cloudevents.Event {
			e := newEvent(events.Ping, map[string]string{"job": "autoscale.evaluate"})
			e.SetSource(events.AutoscaleTickSource)
			return e
		}(), false, map[*subscriber]bool{exact: true}},
		{"one exact filter of two fails", func() cloudevents.Event {
			e := newEvent(events.Ping, map[string]string{"job": "mail.health"})
			e.SetSource(events.MailHealthSource)
			return e
		}(), false, map[*subscriber]bool{}},
		{"prefix filter", newEvent(events.SnapshotRequested, map[string]string{"sessionId": "s"}), true,
			map[*subscriber]bool{prefix: true}},
		{"no trigger matches", newEvent(events.SessionTagsUpdated, map[string]string{}), false,
			map[*subscriber]bool{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := map[*subscriber]int{legacy: len(legacy.Events()), exact: len(exact.Events()), prefix: len(prefix.Events())}
			tb.publish(t, tc.event, tc.structured)
			tb.settle(t)
			for sub, n := range before {
				got := sub.Events()[n:]
				if tc.want[sub] {
					if len(got) != 1 || got[0].ID() != tc.event.ID() {
						t.Errorf("subscriber %s got %d events, want the one published", sub.URL, len(got))
					}
					continue
				}
				if len(got) != 0 {
					t.Errorf("subscriber %s got %d events (%s), want none", sub.URL, len(got), got[0].Type())
				}
			}
		})
	}
}

func TestDeliveredEventCarriesBrokerAttributes(t *testing.T) {
	sub := newSubscriber(t, nil)
	tb := newTestBroker(t, nil, trigger("all", sub))
	e := newEvent(events.TemplateUpdated, map[string]string{"templateId": "t", "change": "updated"})
	tb.publish(t, e, false)
	d := tb.next(t)
	if d.Outcome != Delivered || d.Status != http.StatusAccepted || d.Attempts != 1 {
		t.Fatalf("delivery %+v, want delivered with 202 in 1 attempt", d)
	}
	got := sub.Events()[0]
	ext := got.Extensions()
	if _, ok := ext[knbroker.EventArrivalTime]; !ok {
		t.Errorf("delivered event has no %s extension", knbroker.EventArrivalTime)
	}
	if v, ok := ext[knbroker.TTLAttribute]; ok {
		t.Errorf("delivered event carries %s=%v; the broker removes it before delivery", knbroker.TTLAttribute, v)
	}
	if ns := sub.Requests()[0].Header.Get("Kn-Namespace"); ns != testNamespace {
		t.Errorf("Kn-Namespace header %q, want %q", ns, testNamespace)
	}
	if string(got.Data()) != string(e.Data()) || got.Source() != e.Source() {
		t.Errorf("delivered %s from %s, want %s from %s", got.Data(), got.Source(), e.Data(), e.Source())
	}
}

func TestRetriesAsTheDeliverySpecSays(t *testing.T) {
	tests := []struct {
		name         string
		status       int
		broker       int32
		trigger      *int32
		wantAttempts int
	}{
		{"503 is retried, broker spec", http.StatusServiceUnavailable, 3, nil, 4},
		{"503 is retried, trigger spec wins", http.StatusServiceUnavailable, 3, ptrInt32(1), 2},
		{"404 is retried", http.StatusNotFound, 2, nil, 3},
		{"429 is retried", http.StatusTooManyRequests, 1, nil, 2},
		{"400 is final", http.StatusBadRequest, 3, nil, 1},
		{"422 is final", http.StatusUnprocessableEntity, 3, nil, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sub := newSubscriber(t, answer(tc.status))
			var opts []func(*eventingv1.Trigger)
			if tc.trigger != nil {
				opts = append(opts, withDelivery(retrying(*tc.trigger, true)))
			}
			tb := newTestBroker(t, retrying(tc.broker, true), trigger("failing", sub, opts...))
			e := newEvent(events.TemplateUpdated, map[string]string{"templateId": "t", "change": "updated"})
			tb.publish(t, e, false)

			d := tb.next(t)
			if d.Attempts != tc.wantAttempts || len(sub.Events()) != tc.wantAttempts {
				t.Errorf("attempts: delivery says %d, subscriber saw %d, want %d", d.Attempts, len(sub.Events()), tc.wantAttempts)
			}
			if d.Outcome != DeadLettered || d.Status != tc.status {
				t.Errorf("delivery outcome %q status %d, want %q %d", d.Outcome, d.Status, DeadLettered, tc.status)
			}
			lines := tb.deadLetterLines(t)
			if len(lines) != 1 {
				t.Fatalf("dead-letter file has %d lines, want 1", len(lines))
			}
			dl := lines[0]
			if dl.Event.ID() != e.ID() || dl.Trigger != testNamespace+"/failing" || dl.Code != tc.status {
				t.Errorf("dead letter id %q trigger %q code %d, want %q %q %d", dl.Event.ID(), dl.Trigger, dl.Code, e.ID(), testNamespace+"/failing", tc.status)
			}
			if dl.Destination != sub.URL.String() {
				t.Errorf("dead letter destination %q, want %q", dl.Destination, sub.URL)
			}
			if !strings.Contains(tb.Logs.String(), `"msg":"dead letter"`) {
				t.Error("no dead letter line in the log")
			}
		})
	}
}

func TestNoDeadLetterSinkMeansFailed(t *testing.T) {
	sub := newSubscriber(t, answer(http.StatusInternalServerError))
	tb := newTestBroker(t, retrying(1, false), trigger("failing", sub))
	tb.publish(t, newEvent(events.TemplateUpdated, nil), false)
	d := tb.next(t)
	if d.Outcome != Failed || d.Attempts != 2 {
		t.Errorf("delivery outcome %q after %d attempts, want %q after 2", d.Outcome, d.Attempts, Failed)
	}
	if lines := tb.deadLetterLines(t); len(lines) != 0 {
		t.Errorf("dead-letter file has %d lines, want none without a dead-letter sink", len(lines))
	}
}

func TestReplyReentersTheBroker(t *testing.T) {
	downstream := newSubscriber(t, nil)
	upstream := newSubscriber(t, replyWith(func(in cloudevents.Event) cloudevents.Event {
		out := newEvent(events.SnapshotCompleted, map[string]string{"for": in.ID()})
		out.SetSource(events.SourceOf("snapshot"))
		return out
	}))
	tb := newTestBroker(t, retrying(0, true),
		trigger("upstream", upstream, onType(events.SnapshotRequested)),
		trigger("downstream", downstream, onType(events.SnapshotCompleted)),
	)
	tb.publish(t, newEvent(events.SnapshotRequested, map[string]string{"sessionId": "s"}), false)
	byTrigger := map[string]Delivery{}
	for range 2 {
		d := tb.next(t)
		byTrigger[d.Trigger] = d
	}
	if d := byTrigger[testNamespace+"/upstream"]; !d.Replied || d.Outcome != Delivered {
		t.Errorf("upstream delivery %+v, want delivered with a reply", d)
	}
	got := downstream.Events()
	if len(got) != 1 || got[0].Type() != events.SnapshotCompleted {
		t.Fatalf("downstream got %d events, want the reply", len(got))
	}
	if len(upstream.Events()) != 1 {
		t.Errorf("upstream got %d events, want 1: the reply must be routed by its own type", len(upstream.Events()))
	}
}

func TestReplyLoopEndsWithTTL(t *testing.T) {
	// A subscriber that answers every event with another of the same type
	// would loop forever; the TTL the ingress counts down stops it. An
	// event arriving with TTL 3 is delivered twice (TTL 2, then its reply
	// with 1); the next reply reaches TTL 0 and is refused.
	echo := newSubscriber(t, replyWith(func(in cloudevents.Event) cloudevents.Event {
		return newEvent(in.Type(), nil)
	}))
	tb := newTestBroker(t, retrying(0, true), trigger("echo", echo, onType(events.TemplateUpdated)))
	e := newEvent(events.TemplateUpdated, nil)
	if err := knbroker.SetTTL(e.Context, 3); err != nil {
		t.Fatal(err)
	}
	tb.publish(t, e, false)
	tb.settle(t)
	if n := len(echo.Events()); n != 2 {
		t.Errorf("echo subscriber got %d events, want 2", n)
	}
	if lines := tb.deadLetterLines(t); len(lines) != 1 {
		t.Errorf("dead-letter file has %d lines, want 1 for the refused reply", len(lines))
	}
}

func TestIngressRefuses(t *testing.T) {
	tb := newTestBroker(t, nil)
	tests := []struct {
		name, method, path, contentType, body string
		header                                map[string]string
		want                                  int
	}{
		{"not a CloudEvent", http.MethodPost, "/", "application/json", `{"a":1}`, nil, http.StatusBadRequest},
		{"missing id", http.MethodPost, "/", "application/json", `{}`,
			map[string]string{"Ce-Specversion": "1.0", "Ce-Type": "t", "Ce-Source": "/s"}, http.StatusBadRequest},
		{"GET", http.MethodGet, "/", "", "", nil, http.StatusMethodNotAllowed},
		{"another broker", http.MethodPost, "/other/default", "application/json", `{}`,
			map[string]string{"Ce-Specversion": "1.0", "Ce-Id": "1", "Ce-Type": "t", "Ce-Source": "/s"}, http.StatusNotFound},
		{"its own path", http.MethodPost, "/" + testNamespace + "/default", "application/json", `{}`,
			map[string]string{"Ce-Specversion": "1.0", "Ce-Id": "1", "Ce-Type": "t", "Ce-Source": "/s"}, http.StatusAccepted},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, tb.URL+tc.path, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if tc.contentType != "" {
				req.Header.Set("Content-Type", tc.contentType)
			}
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
}

func TestTriggerForAnotherBrokerIsAnError(t *testing.T) {
	sub := newSubscriber(t, nil)
	tr := trigger("elsewhere", sub)
	tr.Spec.Broker = "other"
	kb := &eventingv1.Broker{}
	kb.Name, kb.Namespace = "default", testNamespace
	if _, err := newBroker(brokerOptions{Broker: kb, Triggers: []*eventingv1.Trigger{tr}}); err == nil {
		t.Error("newBroker accepted a Trigger of another Broker")
	}
}

func ptrInt32(v int32) *int32 { return &v }
