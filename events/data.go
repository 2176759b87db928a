package events

import "time"

// PingData is the payload the PingSources are configured to send.
type PingData struct {
	Job string `json:"job"`
}

// SessionCreatedData is sent by the session controller when a session starts.
type SessionCreatedData struct {
	SessionID  string    `json:"sessionId"`
	UserID     string    `json:"userId"`
	TemplateID string    `json:"templateId"`
	Namespace  string    `json:"namespace,omitempty"`
	CreatedAt  time.Time `json:"createdAt"`
}

// SessionTerminatedData is sent by the session controller when a session ends.
type SessionTerminatedData struct {
	SessionID    string    `json:"sessionId"`
	UserID       string    `json:"userId"`
	TemplateID   string    `json:"templateId"`
	Namespace    string    `json:"namespace,omitempty"`
	Reason       string    `json:"reason,omitempty"`
	TerminatedAt time.Time `json:"terminatedAt"`
}

// APIServerResourceData is the data of an ApiServerSource event in Resource
// mode: the Kubernetes object as the API server returned it. Only the
// fields a consumer reads are checked by its schema (apiVersion, kind,
// metadata.name and namespace); the rest is kept as it came.
type APIServerResourceData map[string]any

// SessionTagsUpdatedData reports one batch tag operation.
type SessionTagsUpdatedData struct {
	BatchID    string   `json:"batchId"`
	UserID     string   `json:"userId"`
	Operation  string   `json:"operation"`
	Tags       []string `json:"tags"`
	SessionIDs []string `json:"sessionIds"`
}

// AutoscaleScaledData records a scaling decision that changed replicas.
type AutoscaleScaledData struct {
	DecisionID   string `json:"decisionId"`
	PolicyID     string `json:"policyId"`
	Namespace    string `json:"namespace"`
	Deployment   string `json:"deployment"`
	FromReplicas int32  `json:"fromReplicas"`
	ToReplicas   int32  `json:"toReplicas"`
	Reason       string `json:"reason"`
}

// AutoscaleFailedData records a policy evaluation that could not complete.
type AutoscaleFailedData struct {
	PolicyID   string `json:"policyId"`
	Namespace  string `json:"namespace"`
	Deployment string `json:"deployment"`
	Reason     string `json:"reason"`
}

// SnapshotRequestedData asks the snapshot function to archive a session's /config.
type SnapshotRequestedData struct {
	SnapshotID  string `json:"snapshotId"`
	SessionID   string `json:"sessionId"`
	UserID      string `json:"userId"`
	Name        string `json:"name,omitempty"`
	Description string `json:"description,omitempty"`
}

// SnapshotProgressData reports a phase of a running snapshot.
type SnapshotProgressData struct {
	SnapshotID string `json:"snapshotId"`
	SessionID  string `json:"sessionId"`
	Phase      string `json:"phase"`
	Bytes      int64  `json:"bytes"`
	// Entries is the number of archive entries read so far.
	Entries int64 `json:"entries,omitempty"`
}

// SnapshotCompletedData describes a stored snapshot archive.
type SnapshotCompletedData struct {
	SnapshotID string `json:"snapshotId"`
	SessionID  string `json:"sessionId"`
	UserID     string `json:"userId"`
	SizeBytes  int64  `json:"sizeBytes"`
	SHA256     string `json:"sha256"`
	FileCount  int64  `json:"fileCount"`
	ObjectKey  string `json:"objectKey"`
}

// SnapshotFailedData reports a snapshot that did not complete.
type SnapshotFailedData struct {
	SnapshotID string `json:"snapshotId"`
	SessionID  string `json:"sessionId"`
	UserID     string `json:"userId,omitempty"`
	Reason     string `json:"reason"`
}

// RestoreRequestedData asks the restore function to restore a snapshot.
type RestoreRequestedData struct {
	RestoreJobID string `json:"restoreJobId"`
	SnapshotID   string `json:"snapshotId"`
	SessionID    string `json:"sessionId"`
	UserID       string `json:"userId"`
}

// RestoreProgressData reports a phase of a running restore.
type RestoreProgressData struct {
	RestoreJobID string `json:"restoreJobId"`
	SnapshotID   string `json:"snapshotId"`
	SessionID    string `json:"sessionId"`
	Phase        string `json:"phase"`
}

// RestoreCompletedData reports a finished restore.
type RestoreCompletedData struct {
	RestoreJobID string `json:"restoreJobId"`
	SnapshotID   string `json:"snapshotId"`
	SessionID    string `json:"sessionId"`
	FileCount    int64  `json:"fileCount"`
}

// RestoreFailedData reports a restore that did not complete, and whether the
// session's previous /config was put back.
type RestoreFailedData struct {
	RestoreJobID string `json:"restoreJobId"`
	SnapshotID   string `json:"snapshotId"`
	SessionID    string `json:"sessionId"`
	Reason       string `json:"reason"`
	// RolledBack is true when /config was cleared and then put back from
	// the pre-restore backup.
	RolledBack bool `json:"rolledBack"`
	// RollbackFailed is true when /config was cleared and putting the
	// backup back failed too: the session's /config needs an operator.
	// Both false: the job failed before touching /config. Absent from
	// events emitted before the field existed, which reads false.
	RollbackFailed bool `json:"rollbackFailed"`
}

// TemplateUpdatedData tells subscribers a template's content or access changed.
type TemplateUpdatedData struct {
	TemplateID string `json:"templateId"`
	UserID     string `json:"userId,omitempty"`
	Change     string `json:"change"`
}

// TemplateSharedData reports a new or changed share.
type TemplateSharedData struct {
	TemplateID      string `json:"templateId"`
	ShareID         string `json:"shareId"`
	SharedBy        string `json:"sharedBy"`
	UserID          string `json:"userId,omitempty"`
	TeamID          string `json:"teamId,omitempty"`
	PermissionLevel string `json:"permissionLevel"`
	PreviousLevel   string `json:"previousLevel,omitempty"`
}

// TemplateShareRevokedData reports a revoked share.
type TemplateShareRevokedData struct {
	TemplateID      string `json:"templateId"`
	ShareID         string `json:"shareId"`
	RevokedBy       string `json:"revokedBy"`
	UserID          string `json:"userId,omitempty"`
	TeamID          string `json:"teamId,omitempty"`
	PermissionLevel string `json:"permissionLevel"`
}

// TemplateVersionCreatedData reports a new template version.
type TemplateVersionCreatedData struct {
	TemplateID string   `json:"templateId"`
	Version    int      `json:"version"`
	CreatedBy  string   `json:"createdBy"`
	Tags       []string `json:"tags"`
}

// TemplateVersionRestoredData reports a template restored from a version.
type TemplateVersionRestoredData struct {
	TemplateID    string `json:"templateId"`
	Version       int    `json:"version"`
	BackupVersion int    `json:"backupVersion"`
	RestoredBy    string `json:"restoredBy"`
}

// NotificationCreatedData reports a notification stored for a user.
type NotificationCreatedData struct {
	NotificationID string `json:"notificationId"`
	UserID         string `json:"userId"`
	Kind           string `json:"kind"`
	Title          string `json:"title"`
	Message        string `json:"message"`
}

// IntegrationTestedData reports the result of an integration test.
type IntegrationTestedData struct {
	IntegrationID string `json:"integrationId"`
	Provider      string `json:"provider"`
	Success       bool   `json:"success"`
	ErrorClass    string `json:"errorClass,omitempty"`
	Message       string `json:"message"`
	LatencyMs     int64  `json:"latencyMs"`
}

// IntegrationHealthChangedData reports an integration turning healthy or unhealthy.
type IntegrationHealthChangedData struct {
	IntegrationID string `json:"integrationId"`
	Healthy       bool   `json:"healthy"`
	Previous      string `json:"previous"`
	ErrorClass    string `json:"errorClass,omitempty"`
}

// UserLoginData records a completed login.
type UserLoginData struct {
	UserID   string `json:"userId"`
	Provider string `json:"provider"`
	Email    string `json:"email,omitempty"`
	Role     string `json:"role"`
}
