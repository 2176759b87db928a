package secretbox

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func key(b byte) []byte { return []byte(strings.Repeat(string([]byte{b}), 32)) }

func TestSealOpenAndRotate(t *testing.T) {
	old, err := New("k1", map[string][]byte{"k1": key(1)})
	require.NoError(t, err)
	sealed, err := old.Seal("password", "hunter2-secret")
	require.NoError(t, err)
	assert.NotContains(t, sealed, "hunter2")
	assert.Equal(t, "k1", KeyID(sealed))

	rotated, err := New("k2", map[string][]byte{"k1": key(1), "k2": key(2)})
	require.NoError(t, err)
	onlyNew, err := New("k2", map[string][]byte{"k2": key(2)})
	require.NoError(t, err)

	tests := []struct {
		name    string
		ring    *Keyring
		purpose string
		sealed  string
		want    string
		wantErr string
	}{
		{"the sealing key opens it", old, "password", sealed, "hunter2-secret", ""},
		{"after rotation the old key still opens it", rotated, "password", sealed, "hunter2-secret", ""},
		{"another purpose does not open it", old, "refreshToken", sealed, "", "does not open"},
		{"without the old key it does not open", onlyNew, "password", sealed, "", "not mounted"},
		{"a tampered value does not open", old, "password", sealed[:len(sealed)-2] + "AA", "", "cannot open"},
		{"plain text is not a sealed value", old, "password", "hunter2", "", "not a sealed value"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.ring.Open(tc.purpose, tc.sealed)
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.ErrorIs(t, err, ErrOpen)
				assert.Contains(t, err.Error(), tc.wantErr)
				assert.NotContains(t, err.Error(), "hunter2")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
	assert.True(t, rotated.Stale(sealed))
	resealed, err := rotated.Seal("password", "hunter2-secret")
	require.NoError(t, err)
	assert.False(t, rotated.Stale(resealed))
}

func TestLoad(t *testing.T) {
	tests := []struct {
		name    string
		files   map[string]string
		current string
		wantErr string
	}{
		{"a mounted Secret", map[string]string{"k1": base64.StdEncoding.EncodeToString(key(1)) + "\n", "..data": ""}, "k1", ""},
		{"a short key", map[string]string{"k1": base64.StdEncoding.EncodeToString([]byte("short"))}, "k1", "want 32"},
		{"the current key is missing", map[string]string{"k1": base64.StdEncoding.EncodeToString(key(1))}, "k2", "not among"},
		{"not base64", map[string]string{"k1": "!!!"}, "k1", "not base64"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, content := range tc.files {
				require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600))
			}
			_, err := Load(dir, tc.current)
			if tc.wantErr == "" {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.wantErr)
		})
	}
}
