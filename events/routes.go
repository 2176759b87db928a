package events

// Route says that events of Type (and, when set, Source) go to Function.
type Route struct {
	Type     string
	Source   string
	Function string
	// Timeout, when set, is the Trigger's delivery.timeout (ISO 8601): how
	// long the broker waits for a long job's delivery to be answered.
	Timeout string
}

// SnapshotDeliveryTimeout is how long a snapshot job's delivery may stay
// open: the snapshot Service's timeoutSeconds (docs/snapshots.md).
const SnapshotDeliveryTimeout = "PT10M"

// RestoreDeliveryTimeout is how long a restore job's delivery may stay open:
// the restore Service's timeoutSeconds (docs/restore.md).
const RestoreDeliveryTimeout = "PT10M"

// Routes is the routing table. deploy/ has one Trigger per row, the
// all-in-one function dispatches by it, and the local broker loads the
// Triggers; a test in deploy keeps them in step.
var Routes = []Route{
	{Type: SessionCreated, Function: "autoscale"},
	{Type: SessionTerminated, Function: "autoscale"},
	{Type: Ping, Source: AutoscaleTickSource, Function: "autoscale"},
	{Type: APIServerAdd, Function: "autoscale"},
	{Type: APIServerDelete, Function: "autoscale"},
	{Type: Ping, Source: OutboxDrainSource, Function: "autoscale"},
	{Type: Ping, Source: PruneSource, Function: "autoscale"},
	{Type: SnapshotRequested, Function: "snapshot", Timeout: SnapshotDeliveryTimeout},
	{Type: Ping, Source: SnapshotRetentionSource, Function: "snapshot"},
	{Type: Ping, Source: SnapshotScheduleSource, Function: "snapshot"},
	{Type: RestoreRequested, Function: "restore", Timeout: RestoreDeliveryTimeout},
	{Type: TemplateUpdated, Function: "tags"},
	{Type: Ping, Source: MailHealthSource, Function: "mailtest"},
	{Type: Ping, Source: OutboxDrainSource, Function: "auth"},
	{Type: Ping, Source: OutboxDrainSource, Function: "mailtest"},
	{Type: Ping, Source: OutboxDrainSource, Function: "sharing"},
	{Type: Ping, Source: OutboxDrainSource, Function: "snapshot"},
	{Type: Ping, Source: OutboxDrainSource, Function: "tags"},
	{Type: Ping, Source: OutboxDrainSource, Function: "versioning"},
	{Type: Ping, Source: OutboxDrainSource, Function: "restore"},
	{Type: Ping, Source: TagsRefreshSource, Function: "tags"},
	{Type: Ping, Source: PruneSource, Function: "auth"},
	{Type: Ping, Source: PruneSource, Function: "mailtest"},
	{Type: Ping, Source: PruneSource, Function: "sharing"},
	{Type: Ping, Source: PruneSource, Function: "snapshot"},
	{Type: Ping, Source: PruneSource, Function: "tags"},
	{Type: Ping, Source: PruneSource, Function: "versioning"},
	{Type: Ping, Source: PruneSource, Function: "restore"},
}

// RoutesFor returns the rows that deliver to function.
func RoutesFor(function string) []Route {
	var out []Route
	for _, r := range Routes {
		if r.Function == function {
			out = append(out, r)
		}
	}
	return out
}
