package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/cloudevents/sdk-go/v2/types"
	"knative.dev/eventing/pkg/kncloudevents/attributes"
)

// deadLetterLog is the local dead-letter sink: where the cluster's Broker
// sends what exhausted its retries to event_display, the local broker sends
// it here. Each dead letter becomes one JSON log line and one JSON line
// appended to a file.
type deadLetterLog struct {
	path string
	log  *slog.Logger

	mu   sync.Mutex
	file *os.File
}

// DeadLetter is one line of the dead-letter file.
type DeadLetter struct {
	Received time.Time `json:"received"`
	// Trigger is the namespace/name of the Trigger whose delivery failed.
	Trigger string `json:"trigger"`
	// Destination, Code and Data are Knative's knativeerrordest,
	// knativeerrorcode and knativeerrordata: where delivery failed, the
	// last HTTP status and the start of the response body.
	Destination string            `json:"destination,omitempty"`
	Code        int               `json:"code,omitempty"`
	Data        string            `json:"data,omitempty"`
	Event       cloudevents.Event `json:"event"`
}

// openDeadLetterLog appends to path, creating it and its folder.
func openDeadLetterLog(path string, log *slog.Logger) (*deadLetterLog, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("dead-letter log: %w", err)
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("dead-letter log: %w", err)
	}
	return &deadLetterLog{path: path, log: log, file: f}, nil
}

// ServeHTTP records the CloudEvent in the request and answers 202; the
// query parameter trigger names the Trigger it failed for.
func (d *deadLetterLog) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "the dead-letter log accepts POST only", http.StatusMethodNotAllowed)
		return
	}
	msg := cehttp.NewMessageFromHttpRequest(r)
	defer msg.Finish(nil)
	e, err := binding.ToEvent(r.Context(), msg)
	if err != nil {
		http.Error(w, "not a CloudEvent: "+err.Error(), http.StatusBadRequest)
		return
	}
	dl := DeadLetter{Received: time.Now().UTC(), Trigger: r.URL.Query().Get("trigger"), Event: *e}
	ext := e.Extensions()
	if v, ok := ext[attributes.KnativeErrorDestExtensionKey]; ok {
		dl.Destination, _ = types.ToString(v)
	}
	if v, ok := ext[attributes.KnativeErrorCodeExtensionKey]; ok {
		code, _ := types.ToInteger(v)
		dl.Code = int(code)
	}
	if v, ok := ext[attributes.KnativeErrorDataExtensionKey]; ok {
		s, _ := types.ToString(v)
		if raw, err := base64.StdEncoding.DecodeString(s); err == nil {
			s = string(raw)
		}
		dl.Data = s
	}
	if err := d.append(dl); err != nil {
		d.log.Error("dead letter not written to file", "eventId", e.ID(), "file", d.path, "err", err)
		http.Error(w, "dead-letter file: "+err.Error(), http.StatusInternalServerError)
		return
	}
	d.log.Warn("dead letter",
		"eventId", e.ID(), "eventType", e.Type(), "eventSource", e.Source(), "trigger", dl.Trigger,
		"errorDestination", dl.Destination, "errorCode", dl.Code, "errorData", dl.Data, "file", d.path)
	w.WriteHeader(http.StatusAccepted)
}

func (d *deadLetterLog) append(dl DeadLetter) error {
	line, err := json.Marshal(dl)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	_, err = d.file.Write(append(line, '\n'))
	return err
}

// Close closes the file.
func (d *deadLetterLog) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.file.Close()
}
