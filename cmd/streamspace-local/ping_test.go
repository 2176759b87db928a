package main

import (
	"context"
	"encoding/base64"
	"log/slog"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	sourcesv1 "knative.dev/eventing/pkg/apis/sources/v1"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/logging"
)

func pingSource(name string, spec sourcesv1.PingSourceSpec) *sourcesv1.PingSource {
	p := &sourcesv1.PingSource{Spec: spec}
	p.Name, p.Namespace = name, events.DefaultNamespace
	return p
}

func TestPingEventAttributes(t *testing.T) {
	tests := []struct {
		name        string
		src         *sourcesv1.PingSource
		wantSource  string
		wantData    string
		wantCT      string
		wantExtName string
		wantExt     string
	}{
		{
			name: "autoscale tick",
			src: pingSource("autoscale-tick", sourcesv1.PingSourceSpec{
				Schedule: "* * * * *", ContentType: "application/json", Data: `{"job":"autoscale.evaluate"}`}),
			wantSource: events.AutoscaleTickSource, wantData: `{"job":"autoscale.evaluate"}`, wantCT: "application/json",
		},
		{
			name: "mail health with base64 data and an extension override",
			src: pingSource("mail-health", sourcesv1.PingSourceSpec{
				Schedule: "*/5 * * * *", ContentType: "application/json",
				DataBase64: base64.StdEncoding.EncodeToString([]byte(`{"job":"mail.health"}`)),
				SourceSpec: duckv1.SourceSpec{CloudEventOverrides: &duckv1.CloudEventOverrides{
					Extensions: map[string]string{"team": "platform"}}},
			}),
			wantSource: events.MailHealthSource, wantData: `{"job":"mail.health"}`, wantCT: "application/json",
			wantExtName: "team", wantExt: "platform",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, err := pingEvent(tc.src)
			if err != nil {
				t.Fatal(err)
			}
			if e.Type() != events.Ping || e.Source() != tc.wantSource {
				t.Errorf("type %q source %q, want %q %q", e.Type(), e.Source(), events.Ping, tc.wantSource)
			}
			if string(e.Data()) != tc.wantData || e.DataContentType() != tc.wantCT {
				t.Errorf("data %s (%s), want %s (%s)", e.Data(), e.DataContentType(), tc.wantData, tc.wantCT)
			}
			if tc.wantExtName != "" {
				if got := e.Extensions()[tc.wantExtName]; got != tc.wantExt {
					t.Errorf("extension %s = %v, want %q", tc.wantExtName, got, tc.wantExt)
				}
			}
			// The contract's schema for ping data accepts what the
			// manifests send once an id is set per tick.
			e.SetID("1")
			if err := events.Validate(e); err != nil {
				t.Errorf("ping event does not validate: %v", err)
			}
		})
	}
}

func TestPingSourceFiresIntoItsSink(t *testing.T) {
	sink := fntest.NewSink(t)
	sinkURL, _ := apis.ParseURL(sink.URL)
	ingress := sinkURL.ResolveReference(&apis.URL{Path: "/"})
	res := resolver{brokers: map[string]*apis.URL{events.DefaultNamespace + "/default": ingress}}
	src := pingSource("autoscale-tick", sourcesv1.PingSourceSpec{
		// Every second, so the test waits one second at most.
		Schedule: "* * * * * *", ContentType: "application/json", Data: `{"job":"autoscale.evaluate"}`,
		SourceSpec: duckv1.SourceSpec{Sink: duckv1.Destination{Ref: &duckv1.KReference{
			APIVersion: "eventing.knative.dev/v1", Kind: "Broker", Name: "default"}}},
	})
	client, err := cloudevents.NewClientHTTP()
	if err != nil {
		t.Fatal(err)
	}
	p, err := startPings([]*sourcesv1.PingSource{src}, res, client, logging.New(&fntest.Buffer{}, slog.LevelInfo))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	got := sink.WaitFor(context.Background(), events.Ping, waitTimeout)
	if len(got) == 0 {
		t.Fatalf("no ping within %s", waitTimeout)
	}
	e := got[0]
	if e.Source() != events.AutoscaleTickSource || string(e.Data()) != `{"job":"autoscale.evaluate"}` {
		t.Errorf("ping from %q with %s, want %q with the PingSource's data", e.Source(), e.Data(), events.AutoscaleTickSource)
	}
	if e.ID() == "" || e.Time().IsZero() {
		t.Errorf("ping id %q time %v, want both set", e.ID(), e.Time())
	}
}

func TestPingSourceWithoutLocalSinkIsAnError(t *testing.T) {
	src := pingSource("lost", sourcesv1.PingSourceSpec{Schedule: "* * * * *",
		SourceSpec: duckv1.SourceSpec{Sink: duckv1.Destination{Ref: &duckv1.KReference{
			APIVersion: "eventing.knative.dev/v1", Kind: "Broker", Name: "elsewhere"}}}})
	client, err := cloudevents.NewClientHTTP()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := startPings([]*sourcesv1.PingSource{src}, resolver{}, client, slog.Default()); err == nil {
		t.Error("startPings accepted a sink with no local address")
	}
}
