package events_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/errs"
)

// eventTypes is the table of every event type (the subtest name) and its Go
// struct; the tests below run one subtest per row.
var eventTypes = []struct {
	name string // the event type
	zero any    // its data struct, zero-valued
}{
	{name: events.Ping, zero: events.PingData{}},
	{name: events.SessionCreated, zero: events.SessionCreatedData{}},
	{name: events.SessionTerminated, zero: events.SessionTerminatedData{}},
	{name: events.SessionTagsUpdated, zero: events.SessionTagsUpdatedData{}},
	{name: events.AutoscaleScaled, zero: events.AutoscaleScaledData{}},
	{name: events.AutoscaleFailed, zero: events.AutoscaleFailedData{}},
	{name: events.APIServerAdd, zero: events.APIServerResourceData{}},
	{name: events.APIServerDelete, zero: events.APIServerResourceData{}},
	{name: events.SnapshotRequested, zero: events.SnapshotRequestedData{}},
	{name: events.SnapshotProgress, zero: events.SnapshotProgressData{}},
	{name: events.SnapshotCompleted, zero: events.SnapshotCompletedData{}},
	{name: events.SnapshotFailed, zero: events.SnapshotFailedData{}},
	{name: events.RestoreRequested, zero: events.RestoreRequestedData{}},
	{name: events.RestoreProgress, zero: events.RestoreProgressData{}},
	{name: events.RestoreCompleted, zero: events.RestoreCompletedData{}},
	{name: events.RestoreFailed, zero: events.RestoreFailedData{}},
	{name: events.TemplateUpdated, zero: events.TemplateUpdatedData{}},
	{name: events.TemplateShared, zero: events.TemplateSharedData{}},
	{name: events.TemplateShareRevoked, zero: events.TemplateShareRevokedData{}},
	{name: events.TemplateVersionCreated, zero: events.TemplateVersionCreatedData{}},
	{name: events.TemplateVersionRestored, zero: events.TemplateVersionRestoredData{}},
	{name: events.NotificationCreated, zero: events.NotificationCreatedData{}},
	{name: events.IntegrationTested, zero: events.IntegrationTestedData{}},
	{name: events.IntegrationHealthChanged, zero: events.IntegrationHealthChangedData{}},
	{name: events.UserLogin, zero: events.UserLoginData{}},
}

func load(t *testing.T, path string) cloudevents.Event {
	t.Helper()
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	var e cloudevents.Event
	require.NoError(t, json.Unmarshal(raw, &e), path)
	return e
}

func TestEveryTypeHasSchemaStructAndSamples(t *testing.T) {
	types := events.Types()
	slices.Sort(types)
	var structs []string
	for _, tc := range eventTypes {
		structs = append(structs, tc.name)
	}
	slices.Sort(structs)
	require.Equal(t, structs, types, "schemas (got) must cover exactly the types with a struct (want)")

	tests := []struct {
		name string
		dir  string
	}{
		{name: "valid sample", dir: "../testdata/events"},
		{name: "invalid sample", dir: "../testdata/events/invalid"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, typ := range types {
				assert.FileExists(t, filepath.Join(tc.dir, typ+".json"), "%s: no sample in %s", typ, tc.dir)
			}
		})
	}
}

func TestSamplesValidateAndRoundTrip(t *testing.T) {
	tests := eventTypes
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := load(t, filepath.Join("../testdata/events", tc.name+".json"))
			require.NoError(t, events.Validate(e), "sample refused")
			assert.Equal(t, events.SchemaURI(tc.name), e.DataSchema(), "dataschema")

			// Data → struct → JSON must give back the same document.
			ptr := reflect.New(reflect.TypeOf(tc.zero))
			require.NoError(t, json.Unmarshal(e.Data(), ptr.Interface()))
			again, err := json.Marshal(ptr.Interface())
			require.NoError(t, err)
			assert.JSONEq(t, string(e.Data()), string(again), "round trip changed data")

			// And New builds a valid event from the struct.
			built, err := events.New("test", tc.name, ptr.Elem().Interface())
			require.NoError(t, err, "New")
			assert.Equal(t, "/streamspace/functions/test", built.Source(), "New left source unset: %s", built)
			assert.NotEmpty(t, built.ID(), "New left id unset: %s", built)
			assert.False(t, built.Time().IsZero(), "New left time unset: %s", built)
		})
	}
}

func TestInvalidSamplesAreRefusedNamingTheField(t *testing.T) {
	tests := eventTypes
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := load(t, filepath.Join("../testdata/events/invalid", tc.name+".json"))
			err := events.Validate(e)
			require.Error(t, err, "invalid sample accepted")
			assert.Equal(t, errs.Invalid, errs.KindOf(err), "kind")
			assert.Contains(t, err.Error(), "/", "message names no field")
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
		{name: "unknown type", mutate: func(e *cloudevents.Event) { e.SetType("io.streamspace.nope.v1") }, want: "unknown event type"},
		{name: "no data", mutate: func(e *cloudevents.Event) { e.DataEncoded = nil }, want: "data of"},
		{name: "not json", mutate: func(e *cloudevents.Event) { e.DataEncoded = []byte("{") }, want: "not JSON"},
		{name: "xml content type", mutate: func(e *cloudevents.Event) { e.SetDataContentType("application/xml") }, want: "datacontenttype"},
		{name: "missing id", mutate: func(e *cloudevents.Event) { e.SetID("") }, want: "invalid cloudevent"},
		{name: "missing field", mutate: func(e *cloudevents.Event) { e.DataEncoded = []byte(`{"change":"updated"}`) }, want: "templateId"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := good.Clone()
			tc.mutate(&e)
			assert.ErrorContains(t, events.Validate(e), tc.want)
		})
	}
}

func TestNewRefusesInvalidData(t *testing.T) {
	tests := []struct {
		name string
		typ  string
		data any
	}{
		{name: "no templateId", typ: events.TemplateUpdated, data: events.TemplateUpdatedData{Change: "updated"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := events.New("tags", tc.typ, tc.data)
			assert.Error(t, err, "New accepted invalid data")
		})
	}
}

func TestEveryRoutedTypeHasASchema(t *testing.T) {
	types := events.Types()
	for _, r := range events.Routes {
		t.Run(r.Type+" to "+r.Function, func(t *testing.T) {
			assert.Contains(t, types, r.Type, "route %+v: no schema", r)
		})
	}
}
