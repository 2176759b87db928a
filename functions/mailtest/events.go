package function

import (
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/streamspace-dev/functions/events"
	mailer "github.com/streamspace-dev/functions/shared/mail"
)

// maxEventMessage is the schema's bound on integration.tested's message.
const maxEventMessage = 4096

// tested reports a test's outcome. Its message is the result's summary,
// which carries no secret (Result.Redact ran on it).
func tested(id string, provider Provider, res mailer.Result, message string) (cloudevents.Event, error) {
	if len(message) > maxEventMessage {
		message = message[:maxEventMessage]
	}
	return events.New(Name, events.IntegrationTested, events.IntegrationTestedData{
		IntegrationID: id,
		Provider:      string(provider),
		Success:       res.Success,
		ErrorClass:    string(res.Class),
		Message:       message,
		LatencyMs:     time.Duration(res.DurationMs * float64(time.Millisecond)).Milliseconds(),
	})
}

// healthChanged reports a change of health.
func healthChanged(id string, now, previous HealthStatus, class mailer.Class) (cloudevents.Event, error) {
	return events.New(Name, events.IntegrationHealthChanged, events.IntegrationHealthChangedData{
		IntegrationID: id,
		Healthy:       now == Healthy,
		Previous:      string(previous),
		ErrorClass:    string(class),
	})
}
