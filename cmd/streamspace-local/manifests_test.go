package main

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"knative.dev/eventing/pkg/eventfilter"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	function "github.com/streamspace-dev/functions"
	"github.com/streamspace-dev/functions/events"
)

// allInOneOverlay finds deploy/overlays/all-in-one from this package.
func allInOneOverlay(t *testing.T) string {
	t.Helper()
	dir, err := findOverlay("deploy/overlays/all-in-one")
	require.NoError(t, err)
	return dir
}

// allInOneContains reports whether the all-in-one function has a member
// called name: an unstarted all-in-one answers an event for a member it
// has with that member's 503 "starting", and 404 for one it lacks.
func allInOneContains(name string) bool {
	return slices.Contains(function.New().Functions(), name)
}

func TestLoadAllInOneOverlay(t *testing.T) {
	m, err := loadOverlay(allInOneOverlay(t))
	require.NoError(t, err)
	require.Len(t, m.Brokers, 1)
	b := m.Brokers[0]
	assert.Equal(t, "default", b.Name)
	assert.Equal(t, events.FunctionsNamespace, b.Namespace)
	d := b.Spec.Delivery
	assert.True(t, d != nil && d.Retry != nil && d.DeadLetterSink != nil, "Broker delivery %+v, want retries and a dead-letter sink", d)
	pings := map[string]bool{}
	for _, p := range m.PingSources {
		pings[events.PingSource(p.Namespace, p.Name)] = true
	}
	for _, want := range []string{events.AutoscaleTickSource, events.MailHealthSource} {
		assert.True(t, pings[want], "no PingSource with source %s", want)
	}
	require.NotEmpty(t, m.Triggers)
	// The event-auth component is in the overlay: every Trigger asks for a
	// delivery token, which the local broker then signs.
	for _, tr := range m.Triggers {
		aud := tr.Spec.Subscriber.Audience
		assert.True(t, aud != nil && *aud != "", "Trigger %s has no subscriber audience", tr.Name)
	}
}

// TestAllInOneTriggersCoverRoutes checks the overlay against the routing
// table with the same filter and resolver code the local broker runs: each
// routed event reaches /events/<function> on the all-in-one, and no Trigger
// delivers to a function the all-in-one lacks (its events would be retried
// and dead-lettered).
func TestAllInOneTriggersCoverRoutes(t *testing.T) {
	m, err := loadOverlay(allInOneOverlay(t))
	require.NoError(t, err)
	base, _ := apis.ParseURL("http://function.test")
	res := resolver{services: map[string]*apis.URL{allInOneService: base}}
	var subs []*subscription
	for _, tr := range m.Triggers {
		s, err := newSubscription(tr, m.Brokers[0], res)
		require.NoError(t, err)
		t.Cleanup(s.filter.Cleanup)
		subs = append(subs, s)
		fn, ok := strings.CutPrefix(s.subscriber.Path, "/events/")
		if !assert.True(t, ok && s.subscriber.Host == base.Host, "trigger %s delivers to %s, want %s/events/<function>", s.name, s.subscriber, base) {
			continue
		}
		assert.True(t, allInOneContains(fn), "trigger %s delivers to %s, which the all-in-one does not contain", s.name, fn)
	}
	require.False(t, allInOneContains("no-such-function"), "the membership probe cannot tell members from strangers")
	// Rows sharing a (type, source) fan out: the Triggers must deliver such
	// an event to exactly the functions the table names for it.
	type key struct{ typ, source string }
	want := map[key][]string{}
	for _, row := range events.Routes {
		if allInOneContains(row.Function) {
			k := key{row.Type, row.Source}
			want[k] = append(want[k], base.String()+"/events/"+row.Function)
		}
	}
	checked := 0
	for k, urls := range want {
		checked++
		e := newEvent(k.typ, nil)
		if k.source != "" {
			e.SetSource(k.source)
		}
		var got []string
		for _, s := range subs {
			if s.filter.Filter(context.Background(), e) != eventfilter.FailFilter {
				got = append(got, s.subscriber.String())
			}
		}
		slices.Sort(got)
		slices.Sort(urls)
		assert.Equal(t, urls, got, "event %s from %q: where the Triggers deliver it", k.typ, k.source)
	}
	assert.NotZero(t, checked, "no routing table row names a function of the all-in-one")
}

func TestLoadOverlayDecodesKnativeTypes(t *testing.T) {
	m, err := loadOverlay(filepath.Join("testdata", "minimal"))
	require.NoError(t, err)
	require.Len(t, m.Brokers, 1)
	require.Len(t, m.Triggers, 1)
	require.Len(t, m.PingSources, 1)
	tr := m.Triggers[0]
	assert.Equal(t, defaultNamespace, tr.Namespace)
	assert.Len(t, tr.Spec.Filters, 2)
	base, _ := apis.ParseURL("http://127.0.0.1:9")
	s, err := newSubscription(tr, m.Brokers[0], resolver{services: map[string]*apis.URL{allInOneService: base}})
	require.NoError(t, err)
	defer s.filter.Cleanup()
	assert.Equal(t, "http://127.0.0.1:9/events/ui", s.subscriber.String())
	assert.Equal(t, 2, s.retry.RetryMax, "the Broker's retries")
	tests := []struct {
		name, typ, source string
		pass              bool
	}{
		{"type and source match", events.SnapshotCompleted, events.SourceOf("snapshot"), true},
		{"another source", events.SnapshotCompleted, events.SourceOf("restore"), false},
		{"another type", events.TemplateUpdated, events.SourceOf("snapshot"), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEvent(tc.typ, nil)
			e.SetSource(tc.source)
			assert.Equal(t, tc.pass, s.filter.Filter(context.Background(), e) != eventfilter.FailFilter)
		})
	}
}

func TestLoadOverlayRefuses(t *testing.T) {
	tests := []struct {
		name, dir, want string
	}{
		{"an unknown field, named", filepath.Join("testdata", "unknown-field"), "filtr"},
		{"a folder that is no overlay", filepath.Join("testdata", "no-such-overlay"), "kustomize build"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadOverlay(tc.dir)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestResolve(t *testing.T) {
	fn, _ := apis.ParseURL("http://127.0.0.1:8080")
	ingress, _ := apis.ParseURL("http://127.0.0.1:8081/")
	res := resolver{
		services: map[string]*apis.URL{allInOneService: fn},
		brokers:  map[string]*apis.URL{"streamspace/default": ingress},
	}
	abs, _ := apis.ParseURL("http://example.test/hook")
	rel, _ := apis.ParseURL("/events/tags")
	tests := []struct {
		name string
		dest destination
		want string
	}{
		{"service ref with uri", destination{kind: "Service", api: "serving.knative.dev/v1", name: allInOneService, uri: rel}, "http://127.0.0.1:8080/events/tags"},
		{"service ref", destination{kind: "Service", api: "serving.knative.dev/v1", name: allInOneService}, "http://127.0.0.1:8080"},
		{"broker ref", destination{kind: "Broker", api: "eventing.knative.dev/v1", name: "default"}, "http://127.0.0.1:8081/"},
		{"absolute uri", destination{uri: abs}, "http://example.test/hook"},
		{"unknown service", destination{kind: "Service", api: "serving.knative.dev/v1", name: "tags"}, ""},
		{"broker in another namespace", destination{kind: "Broker", api: "eventing.knative.dev/v1", name: "default", ns: "other"}, ""},
		{"relative uri alone", destination{uri: rel}, ""},
		{"absolute uri beside a ref", destination{kind: "Service", api: "serving.knative.dev/v1", name: allInOneService, uri: abs}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := res.resolve(tc.dest.build(), "streamspace")
			if tc.want == "" {
				assert.Error(t, err, "resolved to %s", got)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got.String())
		})
	}
}

// destination builds a duckv1.Destination from the parts a test names.
type destination struct {
	kind, api, name, ns string
	uri                 *apis.URL
}

func (d destination) build() duckv1.Destination {
	out := duckv1.Destination{URI: d.uri}
	if d.kind != "" {
		out.Ref = &duckv1.KReference{Kind: d.kind, APIVersion: d.api, Name: d.name, Namespace: d.ns}
	}
	return out
}
