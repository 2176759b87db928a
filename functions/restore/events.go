package function

import (
	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/streamspace-dev/functions/events"
)

// requested asks for job j to run (queued with the job row).
func requested(jobID string, in RestoreInput, userID string) (cloudevents.Event, error) {
	return events.New(Name, events.RestoreRequested, events.RestoreRequestedData{
		RestoreJobID: jobID, SnapshotID: in.SnapshotID, SessionID: in.TargetSessionID, UserID: userID,
	})
}

// progressed reports that job j entered phase p.
func progressed(j job, p Phase) (cloudevents.Event, error) {
	return events.New(Name, events.RestoreProgress, events.RestoreProgressData{
		RestoreJobID: j.ID, SnapshotID: j.SnapshotID, SessionID: j.TargetSessionID, Phase: string(p),
	})
}

// completed reports a restore that finished; files is the number of
// entries restored.
func completed(j job, files int64) (cloudevents.Event, error) {
	return events.New(Name, events.RestoreCompleted, events.RestoreCompletedData{
		RestoreJobID: j.ID, SnapshotID: j.SnapshotID, SessionID: j.TargetSessionID, FileCount: files,
	})
}

// failed reports a restore that did not finish, whether /config was put
// back as it was, and whether putting it back failed.
func failed(j job, reason string, rolledBack, rollbackFailed bool) (cloudevents.Event, error) {
	return events.New(Name, events.RestoreFailed, events.RestoreFailedData{
		RestoreJobID: j.ID, SnapshotID: j.SnapshotID, SessionID: j.TargetSessionID, Reason: truncate(reason, 4000),
		RolledBack: rolledBack, RollbackFailed: rollbackFailed,
	})
}

// truncate cuts s to at most n bytes on a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}
