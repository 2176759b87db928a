package kubetest

import (
	"errors"
	"io"

	"github.com/streamspace-dev/functions/shared/errs"
)

// The two ways Kubernetes' exec path breaks a stream as it ends
// (docs/snapshots.md, "Exec streams can be cut short"), for the tests of
// the code that survives them. A real server shows them only by chance, so
// tests run the real command and lose its tail with these.

// CutWriter passes on the first Left bytes written to it and drops the
// rest, reporting every write as whole: a stream cut short on its way.
type CutWriter struct {
	W    io.Writer
	Left int64
}

func (c *CutWriter) Write(p []byte) (int, error) {
	n := int64(len(p))
	if k := min(n, c.Left); k > 0 {
		if _, err := c.W.Write(p[:k]); err != nil {
			return 0, err
		}
		c.Left -= k
	}
	return int(n), nil
}

// Reset is the failure kube.Client.Exec returns when the connection was
// reset under an exec (its exit status lost), worded as client-go words it.
func Reset(pod string) error {
	return errs.Wrap(errs.Unavailable, errors.New("error reading from error stream: read message: read tcp 127.0.0.1:52694->127.0.0.1:37355: read: connection reset by peer"),
		"exec in pod %s failed", pod)
}
