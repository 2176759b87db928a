package function

import (
	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/streamspace-dev/functions/events"
)

// TemplateChange is the change field of a template.updated event this
// function emits.
type TemplateChange string

// ChangeRestored says a restore rewrote the template's content.
const ChangeRestored TemplateChange = "restored"

// versionCreated reports version v, added by who (the caller, who may not be
// a StreamSpace user and so may be missing from v.CreatedBy).
func versionCreated(v Version, by string) (cloudevents.Event, error) {
	return events.New(Name, events.TemplateVersionCreated, events.TemplateVersionCreatedData{
		TemplateID: v.TemplateID, Version: v.Number, CreatedBy: by, Tags: v.Tags,
	})
}

// restoredEvents reports a restore (template.version.restored, which names
// the auto-backup version it saved) and that the template's content changed
// (template.updated, on which the tags function drops its cached counts).
func restoredEvents(res Restored, by string) ([]cloudevents.Event, error) {
	restored, err := events.New(Name, events.TemplateVersionRestored, events.TemplateVersionRestoredData{
		TemplateID: res.TemplateID, Version: res.Version, BackupVersion: res.Backup.Number, RestoredBy: by,
	})
	if err != nil {
		return nil, err
	}
	updated, err := events.New(Name, events.TemplateUpdated, events.TemplateUpdatedData{
		TemplateID: res.TemplateID, UserID: by, Change: string(ChangeRestored),
	})
	if err != nil {
		return nil, err
	}
	return []cloudevents.Event{restored, updated}, nil
}
