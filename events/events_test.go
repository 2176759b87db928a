package events_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/errs"
)

// dataTypes maps every event type to its Go struct.
var dataTypes = map[string]any{
	events.Ping:                     events.PingData{},
	events.SessionCreated:           events.SessionCreatedData{},
	events.SessionTerminated:        events.SessionTerminatedData{},
	events.SessionTagsUpdated:       events.SessionTagsUpdatedData{},
	events.AutoscaleScaled:          events.AutoscaleScaledData{},
	events.AutoscaleFailed:          events.AutoscaleFailedData{},
	events.SnapshotRequested:        events.SnapshotRequestedData{},
	events.SnapshotProgress:         events.SnapshotProgressData{},
	events.SnapshotCompleted:        events.SnapshotCompletedData{},
	events.SnapshotFailed:           events.SnapshotFailedData{},
	events.RestoreRequested:         events.RestoreRequestedData{},
	events.RestoreProgress:          events.RestoreProgressData{},
	events.RestoreCompleted:         events.RestoreCompletedData{},
	events.RestoreFailed:            events.RestoreFailedData{},
	events.TemplateUpdated:          events.TemplateUpdatedData{},
	events.TemplateShared:           events.TemplateSharedData{},
	events.TemplateShareRevoked:     events.TemplateShareRevokedData{},
	events.TemplateVersionCreated:   events.TemplateVersionCreatedData{},
	events.TemplateVersionRestored:  events.TemplateVersionRestoredData{},
	events.NotificationCreated:      events.NotificationCreatedData{},
	events.IntegrationTested:        events.IntegrationTestedData{},
	events.IntegrationHealthChanged: events.IntegrationHealthChangedData{},
	events.UserLogin:                events.UserLoginData{},
}

func load(t *testing.T, path string) cloudevents.Event {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var e cloudevents.Event
	if err := json.Unmarshal(raw, &e); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return e
}

func TestEveryTypeHasSchemaStructAndSamples(t *testing.T) {
	types := events.Types()
	slices.Sort(types)
	var want []string
	for typ := range dataTypes {
		want = append(want, typ)
	}
	slices.Sort(want)
	if !slices.Equal(types, want) {
		t.Fatalf("schemas cover %v, structs cover %v", types, want)
	}
	for _, typ := range types {
		for _, dir := range []string{"../testdata/events", "../testdata/events/invalid"} {
			if _, err := os.Stat(filepath.Join(dir, typ+".json")); err != nil {
				t.Errorf("%s: no sample in %s", typ, dir)
			}
		}
	}
}

func TestSamplesValidateAndRoundTrip(t *testing.T) {
	for typ, zero := range dataTypes {
		t.Run(typ, func(t *testing.T) {
			e := load(t, filepath.Join("../testdata/events", typ+".json"))
			if err := events.Validate(e); err != nil {
				t.Fatalf("sample refused: %v", err)
			}
			if got, want := e.DataSchema(), events.SchemaURI(typ); got != want {
				t.Errorf("dataschema %q, want %q", got, want)
			}
			// Data → struct → JSON must give back the same document.
			ptr := reflect.New(reflect.TypeOf(zero))
			if err := json.Unmarshal(e.Data(), ptr.Interface()); err != nil {
				t.Fatal(err)
			}
			again, err := json.Marshal(ptr.Interface())
			if err != nil {
				t.Fatal(err)
			}
			var a, b any
			json.Unmarshal(e.Data(), &a)
			json.Unmarshal(again, &b)
			if !reflect.DeepEqual(a, b) {
				t.Errorf("round trip changed data:\n got  %s\n want %s", again, e.Data())
			}
			// And New builds a valid event from the struct.
			built, err := events.New("test", typ, ptr.Elem().Interface())
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			if built.Source() != "/streamspace/functions/test" || built.ID() == "" || built.Time().IsZero() {
				t.Errorf("New left attributes unset: %s", built)
			}
		})
	}
}

func TestInvalidSamplesAreRefusedNamingTheField(t *testing.T) {
	for typ := range dataTypes {
		t.Run(typ, func(t *testing.T) {
			e := load(t, filepath.Join("../testdata/events/invalid", typ+".json"))
			err := events.Validate(e)
			if err == nil {
				t.Fatal("invalid sample accepted")
			}
			if k := errs.KindOf(err); k != errs.Invalid {
				t.Errorf("kind %q, want invalid", k)
			}
			if !strings.Contains(err.Error(), "/") {
				t.Errorf("message %q names no field", err)
			}
		})
	}
}

func TestValidateRefuses(t *testing.T) {
	good := load(t, "../testdata/events/"+events.TemplateUpdated+".json")
	tests := []struct {
		name   string
		mutate func(*cloudevents.Event)
		want   string
	}{
		{"unknown type", func(e *cloudevents.Event) { e.SetType("io.streamspace.nope.v1") }, "unknown event type"},
		{"no data", func(e *cloudevents.Event) { e.DataEncoded = nil }, "data of"},
		{"not json", func(e *cloudevents.Event) { e.DataEncoded = []byte("{") }, "not JSON"},
		{"xml content type", func(e *cloudevents.Event) { e.SetDataContentType("application/xml") }, "datacontenttype"},
		{"missing id", func(e *cloudevents.Event) { e.SetID("") }, "invalid cloudevent"},
		{"missing field", func(e *cloudevents.Event) { e.DataEncoded = []byte(`{"change":"updated"}`) }, "templateId"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := good.Clone()
			tc.mutate(&e)
			err := events.Validate(e)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want error containing %q", err, tc.want)
			}
		})
	}
}

func TestNewRefusesInvalidData(t *testing.T) {
	_, err := events.New("tags", events.TemplateUpdated, events.TemplateUpdatedData{Change: "updated"})
	if err == nil {
		t.Fatal("New accepted data without templateId")
	}
}

func TestEveryRoutedTypeHasASchema(t *testing.T) {
	types := events.Types()
	for _, r := range events.Routes {
		if !slices.Contains(types, r.Type) {
			t.Errorf("route %+v: no schema", r)
		}
	}
}
