package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/google/uuid"
	"github.com/robfig/cron/v3"
	sourcesv1 "knative.dev/eventing/pkg/apis/sources/v1"
)

// pingEvent is the event a PingSource sends on each tick, built as
// Knative's mtping adapter builds it: type dev.knative.sources.ping, source
// /apis/v1/namespaces/<namespace>/pingsources/<name>, the CloudEvent
// overrides' extensions, and the data with its content type. The id is set
// per tick.
func pingEvent(src *sourcesv1.PingSource) (cloudevents.Event, error) {
	e := cloudevents.NewEvent()
	e.SetType(sourcesv1.PingSourceEventType)
	e.SetSource(sourcesv1.PingSourceSource(src.Namespace, src.Name))
	if o := src.Spec.CloudEventOverrides; o != nil {
		for key, value := range o.Extensions {
			e.SetExtension(key, value)
		}
	}
	var data []byte
	switch {
	case src.Spec.DataBase64 != "":
		raw, err := base64.StdEncoding.DecodeString(src.Spec.DataBase64)
		if err != nil {
			return e, fmt.Errorf("pingsource %s/%s: dataBase64: %w", src.Namespace, src.Name, err)
		}
		data = raw
	case src.Spec.Data != "":
		data = []byte(src.Spec.Data)
	}
	if data != nil {
		if err := e.SetData(src.Spec.ContentType, data); err != nil {
			return e, fmt.Errorf("pingsource %s/%s: data: %w", src.Namespace, src.Name, err)
		}
	}
	return e, nil
}

// cronParser reads schedules as Knative's PingSource does: five fields, an
// optional leading seconds field, and descriptors such as @hourly.
var cronParser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// pinger fires PingSources on their schedules.
type pinger struct {
	cron *cron.Cron
}

// startPings schedules every source; on each tick its event goes to the
// address its sink resolves to, with a fresh id and time.
func startPings(sources []*sourcesv1.PingSource, res resolver, client cloudevents.Client, log *slog.Logger) (*pinger, error) {
	c := cron.New(cron.WithParser(cronParser))
	for _, src := range sources {
		name := src.Namespace + "/" + src.Name
		e, err := pingEvent(src)
		if err != nil {
			return nil, err
		}
		sink, err := res.resolve(src.Spec.Sink, src.Namespace)
		if err != nil {
			return nil, fmt.Errorf("pingsource %s: sink: %w", name, err)
		}
		schedule := src.Spec.Schedule
		if src.Spec.Timezone != "" {
			schedule = "CRON_TZ=" + src.Spec.Timezone + " " + schedule
		}
		target := sink.String()
		_, err = c.AddFunc(schedule, func() {
			tick := e.Clone()
			tick.SetID(uuid.NewString())
			tick.SetTime(time.Now().UTC())
			ctx := cloudevents.ContextWithTarget(context.Background(), target)
			// The mtping adapter's retry policy.
			ctx = cloudevents.ContextWithRetriesExponentialBackoff(ctx, 50*time.Millisecond, 5)
			if result := client.Send(ctx, tick); !cloudevents.IsACK(result) {
				log.Error("ping not sent", "pingsource", name, "eventId", tick.ID(), "target", target, "err", result)
				return
			}
			log.Info("ping sent", "pingsource", name, "eventId", tick.ID(), "eventSource", tick.Source())
		})
		if err != nil {
			return nil, fmt.Errorf("pingsource %s: schedule %q: %w", name, src.Spec.Schedule, err)
		}
	}
	c.Start()
	return &pinger{cron: c}, nil
}

// Stop ends the schedules and waits for ticks in progress.
func (p *pinger) Stop() { <-p.cron.Stop().Done() }
