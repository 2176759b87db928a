package main

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	knbroker "knative.dev/eventing/pkg/broker"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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
					if assert.Len(t, got, 1, "subscriber %s", sub.URL) {
						assert.Equal(t, tc.event.ID(), got[0].ID(), "subscriber %s", sub.URL)
					}
					continue
				}
				assert.Empty(t, got, "subscriber %s", sub.URL)
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
	require.Equal(t, Delivered, d.Outcome, "%+v", d)
	require.Equal(t, http.StatusAccepted, d.Status)
	require.Equal(t, 1, d.Attempts)
	got := sub.Events()[0]
	ext := got.Extensions()
	assert.Contains(t, ext, knbroker.EventArrivalTime)
	assert.NotContains(t, ext, knbroker.TTLAttribute, "the broker removes the TTL before delivery")
	assert.Equal(t, testNamespace, sub.Requests()[0].Header.Get("Kn-Namespace"))
	assert.Empty(t, sub.Requests()[0].Header.Get("Authorization"), "no token without a subscriber audience")
	assert.Equal(t, string(e.Data()), string(got.Data()))
	assert.Equal(t, e.Source(), got.Source())
}

func TestRetriesAsTheDeliverySpecSays(t *testing.T) {
	tests := []struct {
		name         string
		status       int
		broker       int32
		trigger      *int32
		noDeadLetter bool
		wantAttempts int
	}{
		{name: "503 is retried, broker spec", status: http.StatusServiceUnavailable, broker: 3, wantAttempts: 4},
		{name: "503 is retried, trigger spec wins", status: http.StatusServiceUnavailable, broker: 3, trigger: ptrInt32(1), wantAttempts: 2},
		{name: "404 is retried", status: http.StatusNotFound, broker: 2, wantAttempts: 3},
		{name: "429 is retried", status: http.StatusTooManyRequests, broker: 1, wantAttempts: 2},
		{name: "400 is final", status: http.StatusBadRequest, broker: 3, wantAttempts: 1},
		{name: "422 is final", status: http.StatusUnprocessableEntity, broker: 3, wantAttempts: 1},
		{name: "no dead-letter sink: failed, no dead letter", status: http.StatusInternalServerError, broker: 1, noDeadLetter: true, wantAttempts: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sub := newSubscriber(t, answer(tc.status))
			var opts []func(*eventingv1.Trigger)
			if tc.trigger != nil {
				opts = append(opts, withDelivery(retrying(*tc.trigger, !tc.noDeadLetter)))
			}
			tb := newTestBroker(t, retrying(tc.broker, !tc.noDeadLetter), trigger("failing", sub, opts...))
			e := newEvent(events.TemplateUpdated, map[string]string{"templateId": "t", "change": "updated"})
			tb.publish(t, e, false)

			d := tb.next(t)
			assert.Equal(t, tc.wantAttempts, d.Attempts, "attempts the delivery counted")
			assert.Len(t, sub.Events(), tc.wantAttempts, "attempts the subscriber saw")
			lines := tb.deadLetterLines(t)
			if tc.noDeadLetter {
				assert.Equal(t, Failed, d.Outcome)
				assert.Empty(t, lines)
				return
			}
			assert.Equal(t, DeadLettered, d.Outcome)
			assert.Equal(t, tc.status, d.Status)
			require.Len(t, lines, 1)
			dl := lines[0]
			assert.Equal(t, e.ID(), dl.Event.ID())
			assert.Equal(t, testNamespace+"/failing", dl.Trigger)
			assert.Equal(t, tc.status, dl.Code)
			assert.Equal(t, sub.URL.String(), dl.Destination)
			assert.Contains(t, tb.Logs.String(), `"msg":"dead letter"`)
		})
	}
}

// TestReplies: the local broker honours what Knative's does with a reply
// from a subscriber outside this repository (the functions never reply): it
// re-enters the ingress, is routed by its own type, and a loop of replies
// ends when the TTL runs out.
func TestReplies(t *testing.T) {
	tests := []struct {
		name  string
		check func(t *testing.T)
	}{
		{"a reply re-enters the broker", func(t *testing.T) {
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
			d := byTrigger[testNamespace+"/upstream"]
			assert.True(t, d.Replied, "upstream delivery %+v replied", d)
			assert.Equal(t, Delivered, d.Outcome)
			got := downstream.Events()
			require.Len(t, got, 1, "downstream gets the reply")
			assert.Equal(t, events.SnapshotCompleted, got[0].Type())
			assert.Len(t, upstream.Events(), 1, "the reply must be routed by its own type")
		}},
		{"a reply loop ends with the TTL", func(t *testing.T) {
			// An event arriving with TTL 3 is delivered twice (TTL 2, then
			// its reply with 1); the next reply reaches TTL 0 and is refused.
			echo := newSubscriber(t, replyWith(func(in cloudevents.Event) cloudevents.Event {
				return newEvent(in.Type(), nil)
			}))
			tb := newTestBroker(t, retrying(0, true), trigger("echo", echo, onType(events.TemplateUpdated)))
			e := newEvent(events.TemplateUpdated, nil)
			require.NoError(t, knbroker.SetTTL(e.Context, 3))
			tb.publish(t, e, false)
			tb.settle(t)
			assert.Len(t, echo.Events(), 2)
			assert.Len(t, tb.deadLetterLines(t), 1, "one dead letter for the refused reply")
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, tc.check)
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
			require.NoError(t, err)
			if tc.contentType != "" {
				req.Header.Set("Content-Type", tc.contentType)
			}
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, tc.want, resp.StatusCode)
		})
	}
}

func TestBrokerRefusesTriggers(t *testing.T) {
	sub := newSubscriber(t, nil)
	tests := []struct {
		name    string
		trigger *eventingv1.Trigger
		tokens  TokenSource
	}{
		{"of another Broker", trigger("elsewhere", sub, func(tr *eventingv1.Trigger) { tr.Spec.Broker = "other" }), nil},
		{"with an audience and no issuer", trigger("audience", sub, withAudience("fns")), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kb := &eventingv1.Broker{}
			kb.Name, kb.Namespace = "default", testNamespace
			_, err := newBroker(brokerOptions{Broker: kb, Triggers: []*eventingv1.Trigger{tc.trigger}, Tokens: tc.tokens})
			assert.Error(t, err)
		})
	}
}

// TestDeliveryTokens: a Trigger with a subscriber audience delivers with a
// bearer token for that audience whose subject is the Trigger's own OIDC
// ServiceAccount, as Knative's broker filter does; EventAuth reports what
// the subscriber must accept.
func TestDeliveryTokens(t *testing.T) {
	type minted struct{ subject, audience string }
	tests := []struct {
		name         string
		audiences    []string // one Trigger each; "" for none
		wantAudience string
		wantTokens   int
		wantErr      bool
	}{
		{name: "no audience, no token", audiences: []string{"", ""}},
		{name: "every Trigger with the audience", audiences: []string{"fns", "fns"}, wantAudience: "fns", wantTokens: 2},
		{name: "Triggers disagree", audiences: []string{"fns", ""}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sub := newSubscriber(t, nil)
			var mu sync.Mutex
			var got []minted
			tokens := func(subject, audience string) (string, error) {
				mu.Lock()
				defer mu.Unlock()
				got = append(got, minted{subject, audience})
				return "token-for-" + subject, nil
			}
			var triggers []*eventingv1.Trigger
			for i, aud := range tc.audiences {
				var opts []func(*eventingv1.Trigger)
				if aud != "" {
					opts = append(opts, withAudience(aud))
				}
				triggers = append(triggers, trigger(fmt.Sprintf("t%d", i), sub, opts...))
			}
			tb := newTestBrokerWith(t, nil, tokens, triggers...)
			audience, subjects, err := tb.EventAuth()
			if tc.wantErr {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.wantAudience, audience)
			assert.Len(t, subjects, tc.wantTokens)

			tb.publish(t, newEvent(events.TemplateUpdated, nil), false)
			tb.settle(t)
			mu.Lock()
			defer mu.Unlock()
			require.Len(t, got, tc.wantTokens)
			for _, r := range sub.Requests() {
				authz := r.Header.Get("Authorization")
				if tc.wantAudience == "" {
					assert.Empty(t, authz)
					continue
				}
				assert.True(t, strings.HasPrefix(authz, "Bearer token-for-system:serviceaccount:"+testNamespace+":t"), "Authorization %q", authz)
				assert.True(t, strings.HasSuffix(authz, "-oidc-eventing.knative.dev-trigger"), "Authorization %q", authz)
			}
			for _, m := range got {
				assert.Equal(t, tc.wantAudience, m.audience)
				assert.Contains(t, subjects, m.subject)
			}
		})
	}
}

func ptrInt32(v int32) *int32 { return &v }
