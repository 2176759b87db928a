package main

import (
	"context"
	"fmt"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"go.uber.org/zap"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/eventing/pkg/auth"
	"knative.dev/eventing/pkg/eventfilter"
	"knative.dev/eventing/pkg/eventfilter/attributes"
	"knative.dev/eventing/pkg/eventfilter/subscriptionsapi"
	"knative.dev/eventing/pkg/kncloudevents"
	"knative.dev/pkg/apis"
)

// subscription is one Trigger made ready to deliver: Knative's filter for
// it, its subscriber's local address and the retry settings of its
// delivery spec.
type subscription struct {
	// name is the Trigger's namespace/name.
	name       string
	namespace  string
	filter     eventfilter.Filter
	subscriber *apis.URL
	retry      kncloudevents.RetryConfig
	// deadLetter says whether the delivery spec names a dead-letter sink;
	// the local dead-letter log stands in for whichever it names.
	deadLetter bool
	format     *eventingduckv1.FormatType
	// audience is the Trigger's subscriber audience, empty for none. With
	// one, each delivery carries a token for it whose subject is subject,
	// the Trigger's own OIDC ServiceAccount, as Knative's broker filter
	// sends with the authentication-oidc feature on.
	audience, subject string
}

// newSubscription prepares t for broker b. The delivery spec is the
// Trigger's if it has one, else the Broker's, as Knative's Trigger
// reconciler chooses.
func newSubscription(t *eventingv1.Trigger, b *eventingv1.Broker, res resolver) (*subscription, error) {
	name := t.Namespace + "/" + t.Name
	subscriber, err := res.resolve(t.Spec.Subscriber, t.Namespace)
	if err != nil {
		return nil, fmt.Errorf("trigger %s: subscriber: %w", name, err)
	}
	delivery := t.Spec.Delivery
	if delivery == nil {
		delivery = b.Spec.Delivery
	}
	if delivery == nil {
		delivery = &eventingduckv1.DeliverySpec{}
	}
	retry, err := kncloudevents.RetryConfigFromDeliverySpec(*delivery)
	if err != nil {
		return nil, fmt.Errorf("trigger %s: delivery: %w", name, err)
	}
	filter, err := triggerFilter(t)
	if err != nil {
		return nil, fmt.Errorf("trigger %s: %w", name, err)
	}
	s := &subscription{
		name:       name,
		namespace:  t.Namespace,
		filter:     filter,
		subscriber: subscriber,
		retry:      retry,
		deadLetter: delivery.DeadLetterSink != nil,
		format:     delivery.Format,
	}
	if aud := t.Spec.Subscriber.Audience; aud != nil && *aud != "" {
		s.audience, s.subject = *aud, triggerSubject(t)
	}
	return s, nil
}

// triggerSubject is the token subject of t's deliveries: the ServiceAccount
// Knative creates for the Trigger, named by Knative's own code.
func triggerSubject(t *eventingv1.Trigger) string {
	sa := auth.GetOIDCServiceAccountNameForResource(eventingv1.SchemeGroupVersion.WithKind("Trigger"), t.ObjectMeta)
	return "system:serviceaccount:" + t.Namespace + ":" + sa
}

// triggerFilter builds the filter Knative's broker applies to t: the
// subscriptions API `filters` when present (each one materialized by
// Knative), else the legacy `filter.attributes` exact match, else one that
// passes everything.
func triggerFilter(t *eventingv1.Trigger) (eventfilter.Filter, error) {
	switch {
	case len(t.Spec.Filters) > 0:
		filters := subscriptionsapi.MaterializeFiltersList(zap.NewNop(), t.Spec.Filters)
		if len(filters) != len(t.Spec.Filters) {
			// Knative's webhook refuses such a Trigger; the broker would
			// silently skip the filter and deliver more than intended.
			return nil, fmt.Errorf("%d of its %d filters cannot be compiled", len(t.Spec.Filters)-len(filters), len(t.Spec.Filters))
		}
		return allOf(filters), nil
	case t.Spec.Filter != nil:
		return attributes.NewAttributesFilter(t.Spec.Filter.Attributes), nil
	default:
		return subscriptionsapi.NewNoFilter(), nil
	}
}

// allOf passes an event that no filter fails, with the results of
// subscriptionsapi.NewAllFilter. That filter is not used for the top level
// because its reordering goroutine updates per-filter counters that its
// Filter method copies without synchronisation (knative/eventing v0.50.0
// pkg/eventfilter/subscriptionsapi/all_filter.go), a data race the race
// detector reports as soon as two filters are evaluated.
type allOf []eventfilter.Filter

// Filter returns FailFilter at the first failing filter, else the last
// filter's result.
func (a allOf) Filter(ctx context.Context, e cloudevents.Event) eventfilter.FilterResult {
	res := eventfilter.NoFilter
	for _, f := range a {
		if res = f.Filter(ctx, e); res == eventfilter.FailFilter {
			return res
		}
	}
	return res
}

// Cleanup releases every filter.
func (a allOf) Cleanup() {
	for _, f := range a {
		f.Cleanup()
	}
}
