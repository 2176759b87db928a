package events

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/google/uuid"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"golang.org/x/text/language"
	"golang.org/x/text/message"

	"github.com/streamspace-dev/functions/shared/errs"
)

// SchemaBase is the URI prefix of every dataschema this contract publishes.
const SchemaBase = "https://schemas.streamspace.io/events/"

// SchemaURI is the dataschema of an event type.
func SchemaURI(eventType string) string { return SchemaBase + eventType + ".json" }

// SourceOf is the source attribute of events a function emits.
func SourceOf(function string) string { return "/streamspace/functions/" + function }

//go:embed schemas/*.json
var schemaFS embed.FS

// compiled holds every event type's compiled schema, built on first use.
var compiled = sync.OnceValues(func() (map[string]*jsonschema.Schema, error) {
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	names, err := fs.Glob(schemaFS, "schemas/*.json")
	if err != nil {
		return nil, err
	}
	types := make([]string, 0, len(names))
	for _, name := range names {
		raw, err := schemaFS.ReadFile(name)
		if err != nil {
			return nil, err
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("schema %s: %w", name, err)
		}
		typ := strings.TrimSuffix(strings.TrimPrefix(name, "schemas/"), ".json")
		if err := c.AddResource(SchemaURI(typ), doc); err != nil {
			return nil, fmt.Errorf("schema %s: %w", name, err)
		}
		types = append(types, typ)
	}
	schemas := make(map[string]*jsonschema.Schema, len(types))
	for _, typ := range types {
		s, err := c.Compile(SchemaURI(typ))
		if err != nil {
			return nil, fmt.Errorf("compile schema %s: %w", typ, err)
		}
		schemas[typ] = s
	}
	return schemas, nil
})

// Types lists every event type that has a schema.
func Types() []string {
	s, err := compiled()
	if err != nil {
		panic(err)
	}
	out := make([]string, 0, len(s))
	for t := range s {
		out = append(out, t)
	}
	return out
}

// New builds an event of eventType from function with data, setting every
// attribute the contract requires: a unique id, source, time,
// datacontenttype and dataschema. The data is validated against the schema,
// so a function cannot emit what its consumers would refuse.
func New(function, eventType string, data any) (cloudevents.Event, error) {
	e := cloudevents.NewEvent()
	e.SetID(uuid.NewString())
	e.SetSource(SourceOf(function))
	e.SetType(eventType)
	e.SetTime(time.Now().UTC())
	e.SetDataSchema(SchemaURI(eventType))
	if err := e.SetData(cloudevents.ApplicationJSON, data); err != nil {
		return e, fmt.Errorf("encode %s data: %w", eventType, err)
	}
	if err := Validate(e); err != nil {
		return e, fmt.Errorf("emit %s: %w", eventType, err)
	}
	return e, nil
}

// Validate checks the event's attributes and its data against the schema of
// its type. Every failure is an errs.Invalid whose message names the field.
func Validate(e cloudevents.Event) error {
	if err := e.Validate(); err != nil {
		return errs.E(errs.Invalid, "invalid cloudevent: %v", err)
	}
	all, err := compiled()
	if err != nil {
		return fmt.Errorf("load event schemas: %w", err)
	}
	s, ok := all[e.Type()]
	if !ok {
		return errs.E(errs.Invalid, "unknown event type %q", e.Type())
	}
	if ct := e.DataContentType(); ct != "" && !strings.HasPrefix(ct, cloudevents.ApplicationJSON) {
		return errs.E(errs.Invalid, "datacontenttype %q: want %s", ct, cloudevents.ApplicationJSON)
	}
	raw := e.Data()
	if len(raw) == 0 {
		raw = []byte("null")
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		return errs.E(errs.Invalid, "data of %s is not JSON: %v", e.Type(), err)
	}
	if err := s.Validate(inst); err != nil {
		return errs.E(errs.Invalid, "data of %s: %s", e.Type(), describe(err))
	}
	return nil
}

var printer = message.NewPrinter(language.English)

// describe turns a schema validation error into one line naming the field,
// e.g. `/sessionIds/0: minLength: got 0, want 1`.
func describe(err error) string {
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return err.Error()
	}
	leaf := ve
	for len(leaf.Causes) > 0 {
		leaf = leaf.Causes[0]
	}
	field := "/" + strings.Join(leaf.InstanceLocation, "/")
	return field + ": " + leaf.ErrorKind.LocalizedString(printer)
}

// Decode validates e and unmarshals its data into a T.
func Decode[T any](e cloudevents.Event) (T, error) {
	var v T
	if err := Validate(e); err != nil {
		return v, err
	}
	if err := json.Unmarshal(e.Data(), &v); err != nil {
		return v, errs.E(errs.Invalid, "data of %s: %v", e.Type(), err)
	}
	return v, nil
}
