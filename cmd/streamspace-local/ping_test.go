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

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/logging"
)

func pingSource(name string, spec sourcesv1.PingSourceSpec) *sourcesv1.PingSource {
	p := &sourcesv1.PingSource{Spec: spec}
	p.Name, p.Namespace = name, events.FunctionsNamespace
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
			require.NoError(t, err)
			assert.Equal(t, events.Ping, e.Type())
			assert.Equal(t, tc.wantSource, e.Source())
			assert.Equal(t, tc.wantData, string(e.Data()))
			assert.Equal(t, tc.wantCT, e.DataContentType())
			if tc.wantExtName != "" {
				assert.Equal(t, tc.wantExt, e.Extensions()[tc.wantExtName], "extension %s", tc.wantExtName)
			}
			// The contract's schema for ping data accepts what the
			// manifests send once an id is set per tick.
			e.SetID("1")
			assert.NoError(t, events.Validate(e))
		})
	}
}

func TestStartPings(t *testing.T) {
	sink := fntest.NewSink(t)
	sinkURL, _ := apis.ParseURL(sink.URL)
	ingress := sinkURL.ResolveReference(&apis.URL{Path: "/"})
	res := resolver{brokers: map[string]*apis.URL{events.FunctionsNamespace + "/default": ingress}}
	brokerSink := func(name string) duckv1.SourceSpec {
		return duckv1.SourceSpec{Sink: duckv1.Destination{Ref: &duckv1.KReference{
			APIVersion: "eventing.knative.dev/v1", Kind: "Broker", Name: name}}}
	}
	tests := []struct {
		name    string
		src     *sourcesv1.PingSource
		wantErr bool
	}{
		{name: "fires into its sink", src: pingSource("autoscale-tick", sourcesv1.PingSourceSpec{
			// Every second, so the test waits one second at most.
			Schedule: "* * * * * *", ContentType: "application/json", Data: `{"job":"autoscale.evaluate"}`,
			SourceSpec: brokerSink("default"),
		})},
		{name: "a sink without a local address is an error", src: pingSource("lost", sourcesv1.PingSourceSpec{
			Schedule: "* * * * *", SourceSpec: brokerSink("elsewhere"),
		}), wantErr: true},
		{name: "a bad schedule is an error", src: pingSource("bad", sourcesv1.PingSourceSpec{
			Schedule: "every minute", SourceSpec: brokerSink("default"),
		}), wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			client, err := cloudevents.NewClientHTTP()
			require.NoError(t, err)
			p, err := startPings([]*sourcesv1.PingSource{tc.src}, res, client, logging.New(&fntest.Buffer{}, slog.LevelInfo))
			if tc.wantErr {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			t.Cleanup(p.Stop)
			got := sink.WaitFor(context.Background(), events.Ping, waitTimeout)
			require.NotEmpty(t, got, "no ping within %s", waitTimeout)
			e := got[0]
			assert.Equal(t, events.AutoscaleTickSource, e.Source())
			assert.Equal(t, `{"job":"autoscale.evaluate"}`, string(e.Data()))
			assert.NotEmpty(t, e.ID())
			assert.False(t, e.Time().IsZero())
		})
	}
}
