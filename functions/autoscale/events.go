package function

import (
	"strconv"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/google/uuid"

	"github.com/streamspace-dev/functions/events"
)

// scaledEvent reports an applied change. deployment carries the target's
// name whatever its kind; the kind is in the reason.
func scaledEvent(decision uuid.UUID, p Policy, namespace, target string, d Decision) (cloudevents.Event, error) {
	return events.New(Name, events.AutoscaleScaled, events.AutoscaleScaledData{
		DecisionID:   decision.String(),
		PolicyID:     strconv.FormatInt(p.ID, 10),
		Namespace:    namespace,
		Deployment:   targetName(p, target),
		FromReplicas: d.Current,
		ToReplicas:   d.Desired,
		Reason:       truncate(target+": "+d.Reason, 4096),
	})
}

// failedEvent reports a refusal (when it starts or changes) or a failed
// write.
func failedEvent(p Policy, namespace string, o Outcome, why string) (cloudevents.Event, error) {
	return events.New(Name, events.AutoscaleFailed, events.AutoscaleFailedData{
		PolicyID:   strconv.FormatInt(p.ID, 10),
		Namespace:  namespace,
		Deployment: targetName(p, o.Target),
		Reason:     truncate(why, 4096),
	})
}

// targetName is the resolved object's name, or the policy's target_id when
// none was resolved.
func targetName(p Policy, target string) string {
	for i := len(target) - 1; i >= 0; i-- {
		if target[i] == '/' {
			return target[i+1:]
		}
	}
	if target != "" {
		return target
	}
	return p.TargetID
}
