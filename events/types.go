// Package events is the event contract of StreamSpace Functions: the type
// names, a Go struct and a JSON Schema for each type's data, and the routing
// table that the deploy Triggers, the all-in-one function and the local
// broker all derive from.
package events

// Event types, named io.streamspace.<noun>.<verb>.v1.
const (
	SessionCreated     = "io.streamspace.session.created.v1"
	SessionTerminated  = "io.streamspace.session.terminated.v1"
	SessionTagsUpdated = "io.streamspace.session.tags.updated.v1"

	AutoscaleScaled = "io.streamspace.autoscale.scaled.v1"
	AutoscaleFailed = "io.streamspace.autoscale.failed.v1"

	SnapshotRequested = "io.streamspace.snapshot.requested.v1"
	SnapshotProgress  = "io.streamspace.snapshot.progress.v1"
	SnapshotCompleted = "io.streamspace.snapshot.completed.v1"
	SnapshotFailed    = "io.streamspace.snapshot.failed.v1"

	RestoreRequested = "io.streamspace.snapshot.restore.requested.v1"
	RestoreProgress  = "io.streamspace.snapshot.restore.progress.v1"
	RestoreCompleted = "io.streamspace.snapshot.restore.completed.v1"
	RestoreFailed    = "io.streamspace.snapshot.restore.failed.v1"

	TemplateUpdated         = "io.streamspace.template.updated.v1"
	TemplateShared          = "io.streamspace.template.shared.v1"
	TemplateShareRevoked    = "io.streamspace.template.share.revoked.v1"
	TemplateVersionCreated  = "io.streamspace.template.version.created.v1"
	TemplateVersionRestored = "io.streamspace.template.version.restored.v1"

	NotificationCreated = "io.streamspace.notification.created.v1"

	IntegrationTested        = "io.streamspace.integration.tested.v1"
	IntegrationHealthChanged = "io.streamspace.integration.health.changed.v1"

	UserLogin = "io.streamspace.user.login.v1"

	// APIServerAdd and APIServerDelete are what Knative's ApiServerSource
	// emits in Resource mode when an object it watches is created or
	// deleted; the data is the whole object. The autoscale function's
	// source watches StreamSpace's Sessions (stream.space/v1alpha1), so
	// these stand for session.created and session.terminated.
	APIServerAdd    = "dev.knative.apiserver.resource.add"
	APIServerDelete = "dev.knative.apiserver.resource.delete"

	// Ping is the type Knative's PingSource emits; the source tells which
	// schedule fired.
	Ping = "dev.knative.sources.ping"
)

// PingSource names the source attribute of a PingSource's events, as Knative
// sets it: /apis/v1/namespaces/<namespace>/pingsources/<name>.
func PingSource(namespace, name string) string {
	return "/apis/v1/namespaces/" + namespace + "/pingsources/" + name
}

// FunctionsNamespace is the namespace the functions are deployed in
// (deploy/), and so the namespace of their PingSources: Knative puts it in
// the source attribute of every ping. It is not where the sessions run
// (STREAMSPACE_NAMESPACE, default streamspace): the functions have a
// namespace of their own so that their Secrets are out of reach of the
// exec grant they hold in the sessions' namespace (docs/deploy.md).
const FunctionsNamespace = "streamspace-functions"

// The PingSources the functions subscribe to, in FunctionsNamespace.
const (
	AutoscaleTickSource = "/apis/v1/namespaces/" + FunctionsNamespace + "/pingsources/autoscale-tick"
	MailHealthSource    = "/apis/v1/namespaces/" + FunctionsNamespace + "/pingsources/mail-health"
	// OutboxDrainSource wakes every function that emits events, so events
	// queued while the sink was down leave even when no request comes.
	OutboxDrainSource = "/apis/v1/namespaces/" + FunctionsNamespace + "/pingsources/outbox-drain"
	// TagsRefreshSource makes the tags function refresh the popular-tag
	// counts, bounding how stale they can be.
	TagsRefreshSource = "/apis/v1/namespaces/" + FunctionsNamespace + "/pingsources/tags-refresh"
	// PruneSource makes every function that records processed events delete
	// the records older than PROCESSED_EVENTS_RETENTION.
	PruneSource = "/apis/v1/namespaces/" + FunctionsNamespace + "/pingsources/processed-events-prune"
	// SnapshotRetentionSource makes the snapshot function enforce retention
	// (expired snapshots, maxSnapshots per session) and sweep the objects
	// whose row is gone, daily.
	SnapshotRetentionSource = "/apis/v1/namespaces/" + FunctionsNamespace + "/pingsources/snapshot-retention"
	// SnapshotScheduleSource makes the snapshot function take the automatic
	// snapshots that are due, and take over jobs whose owner died.
	SnapshotScheduleSource = "/apis/v1/namespaces/" + FunctionsNamespace + "/pingsources/snapshot-schedule"
)
