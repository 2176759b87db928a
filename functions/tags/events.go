package function

import (
	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/streamspace-dev/functions/events"
)

// tagsUpdated is the session.tags.updated event that reports res to the UI:
// the sessions the batch changed. A batch that changed none emits nothing.
func tagsUpdated(caller string, res BatchResult) ([]cloudevents.Event, error) {
	if res.Updated == 0 {
		return nil, nil
	}
	ids := make([]string, 0, res.Updated)
	for _, r := range res.Results {
		if r.Outcome == Updated {
			ids = append(ids, r.SessionID)
		}
	}
	e, err := events.New(Name, events.SessionTagsUpdated, events.SessionTagsUpdatedData{
		BatchID:    res.BatchID,
		UserID:     caller,
		Operation:  string(res.Operation),
		Tags:       res.Tags,
		SessionIDs: ids,
	})
	if err != nil {
		return nil, err
	}
	return []cloudevents.Event{e}, nil
}
