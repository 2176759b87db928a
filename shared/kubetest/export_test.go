package kubetest_test

import "time"

// The waits are for conditions; these bound them generously for a busy machine.
const (
	testTimeout  = time.Minute
	pollInterval = 20 * time.Millisecond
)
