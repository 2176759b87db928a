package authn

import (
	"bytes"
	"fmt"
	"io"
	"os"
)

// maxSecretFileBytes bounds what ReadSecretFile reads: a JWT secret is tens
// of bytes, and a wrong path should not read a disk image.
const maxSecretFileBytes = 64 << 10

// ReadSecretFile reads StreamSpace's JWT_SECRET from path
// (STREAMSPACE_JWT_SECRET_FILE), a file a Kubernetes Secret mounts. One
// trailing newline, as an editor or `echo` leaves it, is dropped. An empty
// or short secret is refused. Errors name the variable and never hold the
// file's contents.
func ReadSecretFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("STREAMSPACE_JWT_SECRET_FILE: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("STREAMSPACE_JWT_SECRET_FILE: read %s: %w", path, err)
	}
	if len(b) > maxSecretFileBytes {
		return nil, fmt.Errorf("STREAMSPACE_JWT_SECRET_FILE %s is larger than %d bytes: not a JWT secret", path, maxSecretFileBytes)
	}
	b = bytes.TrimSuffix(b, []byte("\n"))
	b = bytes.TrimSuffix(b, []byte("\r"))
	switch {
	case len(b) == 0:
		return nil, fmt.Errorf("STREAMSPACE_JWT_SECRET_FILE %s is empty", path)
	case len(b) < MinSecretBytes:
		return nil, fmt.Errorf("STREAMSPACE_JWT_SECRET_FILE %s holds a secret shorter than %d bytes; StreamSpace's API refuses such a JWT_SECRET", path, MinSecretBytes)
	}
	return b, nil
}
