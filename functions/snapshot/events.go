package function

import (
	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/homesnap"
)

// Phase is the phase a snapshot.progress event reports.
type Phase string

// The phases of a snapshot job.
const (
	// PhaseStreaming: the pod's tar is being read, compressed and uploaded.
	PhaseStreaming Phase = "streaming"
)

// requested asks for snapshot s to be taken (the job's trigger).
func requested(s Snapshot) (cloudevents.Event, error) {
	return events.New(Name, events.SnapshotRequested, events.SnapshotRequestedData{
		SnapshotID: s.ID, SessionID: s.SessionID, UserID: s.UserID, Name: s.Name, Description: s.Description,
	})
}

// progressed reports how far the job of s got.
func progressed(s Snapshot, p homesnap.Progress) (cloudevents.Event, error) {
	return events.New(Name, events.SnapshotProgress, events.SnapshotProgressData{
		SnapshotID: s.ID, SessionID: s.SessionID, Phase: string(PhaseStreaming), Bytes: p.Bytes, Entries: p.Entries,
	})
}

// completed reports s stored as m says.
func completed(s Snapshot, m homesnap.Manifest) (cloudevents.Event, error) {
	return events.New(Name, events.SnapshotCompleted, events.SnapshotCompletedData{
		SnapshotID: s.ID, SessionID: s.SessionID, UserID: s.UserID, SizeBytes: m.SizeBytes,
		SHA256: m.SHA256, FileCount: m.Entries, ObjectKey: m.Archive,
	})
}

// failedEvent reports that s could not be taken, and why.
func failedEvent(s Snapshot, reason string) (cloudevents.Event, error) {
	return events.New(Name, events.SnapshotFailed, events.SnapshotFailedData{
		SnapshotID: s.ID, SessionID: s.SessionID, UserID: s.UserID, Reason: reason,
	})
}
