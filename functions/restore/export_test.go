package function

import "github.com/streamspace-dev/functions/shared/db"

// Objects and Pods are the storage and pod clients a job uses, for tests
// that wrap them with a fault.
type (
	Objects = objects
	Pods    = pods
)

// WithFaults makes f wrap its storage and pod clients with wrap when it
// starts.
func WithFaults(f *Function, wrap func(Objects, Pods) (Objects, Pods)) *Function {
	f.wrap = wrap
	return f
}

// ClearCmd and ExtractCmd are the job's clear and extract commands, for the
// benchmark that measures them.
var (
	ClearCmd   = clearCmd
	ExtractCmd = extractCmd
)

// WithLeases makes f give each job's lease to seen as it is taken.
func WithLeases(f *Function, seen func(*db.Lease)) *Function {
	f.onLease = seen
	return f
}
