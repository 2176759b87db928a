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

	function "github.com/streamspace-dev/functions"
	"github.com/streamspace-dev/functions/events"
)

// allInOneOverlay finds deploy/overlays/all-in-one from this package.
func allInOneOverlay(t *testing.T) string {
	t.Helper()
	dir, err := findOverlay("deploy/overlays/all-in-one")
	if err != nil {
		t.Fatal(err)
	}
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
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Brokers) != 1 {
		t.Fatalf("%d Brokers, want 1", len(m.Brokers))
	}
	b := m.Brokers[0]
	if b.Name != "default" || b.Namespace != events.DefaultNamespace {
		t.Errorf("Broker %s/%s, want %s/default", b.Namespace, b.Name, events.DefaultNamespace)
	}
	if d := b.Spec.Delivery; d == nil || d.Retry == nil || d.DeadLetterSink == nil {
		t.Errorf("Broker delivery %+v, want retries and a dead-letter sink", d)
	}
	pings := map[string]bool{}
	for _, p := range m.PingSources {
		pings[events.PingSource(p.Namespace, p.Name)] = true
	}
	for _, want := range []string{events.AutoscaleTickSource, events.MailHealthSource} {
		if !pings[want] {
			t.Errorf("no PingSource with source %s", want)
		}
	}
	if len(m.Triggers) == 0 {
		t.Error("no Triggers")
	}
}

// TestAllInOneTriggersCoverRoutes checks the overlay against the routing
// table with the same filter and resolver code the local broker runs: each
// routed event reaches /events/<function> on the all-in-one, and no Trigger
// delivers to a function the all-in-one lacks (its events would be retried
// and dead-lettered).
func TestAllInOneTriggersCoverRoutes(t *testing.T) {
	m, err := loadOverlay(allInOneOverlay(t))
	if err != nil {
		t.Fatal(err)
	}
	base, _ := apis.ParseURL("http://function.test")
	res := resolver{services: map[string]*apis.URL{allInOneService: base}}
	var subs []*subscription
	for _, tr := range m.Triggers {
		s, err := newSubscription(tr, m.Brokers[0], res)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.filter.Cleanup)
		subs = append(subs, s)
		fn, ok := strings.CutPrefix(s.subscriber.Path, "/events/")
		if !ok || s.subscriber.Host != base.Host {
			t.Errorf("trigger %s delivers to %s, want %s/events/<function>", s.name, s.subscriber, base)
			continue
		}
		if !allInOneContains(fn) {
			t.Errorf("trigger %s delivers to %s, which the all-in-one does not contain", s.name, fn)
		}
	}
	if allInOneContains("no-such-function") {
		t.Fatal("the membership probe cannot tell members from strangers")
	}
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
		if !slices.Equal(got, urls) {
			t.Errorf("event %s from %q: the Triggers deliver it to %v, want %v", k.typ, k.source, got, urls)
		}
	}
	if checked == 0 {
		t.Error("no routing table row names a function of the all-in-one")
	}
}

func TestLoadOverlayDecodesKnativeTypes(t *testing.T) {
	m, err := loadOverlay(filepath.Join("testdata", "minimal"))
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Brokers) != 1 || len(m.Triggers) != 1 || len(m.PingSources) != 1 {
		t.Fatalf("got %d Brokers, %d Triggers, %d PingSources, want 1 each", len(m.Brokers), len(m.Triggers), len(m.PingSources))
	}
	tr := m.Triggers[0]
	if tr.Namespace != defaultNamespace || len(tr.Spec.Filters) != 2 {
		t.Errorf("trigger namespace %q with %d filters, want %q with 2", tr.Namespace, len(tr.Spec.Filters), defaultNamespace)
	}
	base, _ := apis.ParseURL("http://127.0.0.1:9")
	s, err := newSubscription(tr, m.Brokers[0], resolver{services: map[string]*apis.URL{allInOneService: base}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.filter.Cleanup()
	if s.subscriber.String() != "http://127.0.0.1:9/events/ui" || s.retry.RetryMax != 2 {
		t.Errorf("subscriber %s with %d retries, want http://127.0.0.1:9/events/ui with the Broker's 2", s.subscriber, s.retry.RetryMax)
	}
	for _, tc := range []struct {
		typ, source string
		pass        bool
	}{
		{events.SnapshotCompleted, events.SourceOf("snapshot"), true},
		{events.SnapshotCompleted, events.SourceOf("restore"), false},
		{events.TemplateUpdated, events.SourceOf("snapshot"), false},
	} {
		e := newEvent(tc.typ, nil)
		e.SetSource(tc.source)
		if got := s.filter.Filter(context.Background(), e) != eventfilter.FailFilter; got != tc.pass {
			t.Errorf("%s from %s: passes %v, want %v", tc.typ, tc.source, got, tc.pass)
		}
	}
}

func TestLoadOverlayIsStrict(t *testing.T) {
	_, err := loadOverlay(filepath.Join("testdata", "unknown-field"))
	if err == nil || !strings.Contains(err.Error(), "filtr") {
		t.Errorf("got %v, want an error naming the unknown field filtr", err)
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
			switch {
			case tc.want == "" && err == nil:
				t.Errorf("resolved to %s, want an error", got)
			case tc.want != "" && err != nil:
				t.Errorf("error %v, want %s", err, tc.want)
			case tc.want != "" && got.String() != tc.want:
				t.Errorf("got %s, want %s", got, tc.want)
			}
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
