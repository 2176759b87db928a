package function

// The job_leases rows of the popular-tag refresh, for tests that hold or
// age them.
const (
	RefreshJob        = refreshJob
	RefreshRequestJob = refreshRequestJob
)
