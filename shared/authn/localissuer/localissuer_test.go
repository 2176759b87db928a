package localissuer_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/authn/localissuer"
)

type jwks struct {
	Keys []struct {
		Kty string `json:"kty"`
		Kid string `json:"kid"`
		Alg string `json:"alg"`
		Use string `json:"use"`
		D   string `json:"d"`
	} `json:"keys"`
}

func fetch(t *testing.T, iss *localissuer.Issuer) jwks {
	t.Helper()
	rec := httptest.NewRecorder()
	iss.JWKSHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/jwks", nil))
	require.Equal(t, http.StatusOK, rec.Code)
	assert.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	var set jwks
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &set), "decode JWKS")
	return set
}

func kids(set jwks) []string {
	var out []string
	for _, k := range set.Keys {
		out = append(out, k.Kid)
	}
	return out
}

func newIssuer(t *testing.T) *localissuer.Issuer {
	t.Helper()
	iss, err := localissuer.New("https://issuer.test")
	require.NoError(t, err)
	return iss
}

func TestJWKSAndRotate(t *testing.T) {
	iss := newIssuer(t)
	first := iss.KeyID()
	var second string
	steps := []struct {
		name     string
		rotate   bool
		wantKids func() []string
	}{
		{name: "one public RSA key for RS256 signatures", wantKids: func() []string { return []string{first} }},
		{name: "after a rotation, the new key and the one it replaced", rotate: true, wantKids: func() []string {
			second = iss.KeyID()
			return []string{second, first}
		}},
		{name: "after another, the oldest is dropped", rotate: true, wantKids: func() []string { return []string{iss.KeyID(), second} }},
	}
	for _, s := range steps {
		ok := t.Run(s.name, func(t *testing.T) {
			if s.rotate {
				require.NoError(t, iss.Rotate())
			}
			set := fetch(t, iss)
			assert.Equal(t, s.wantKids(), kids(set))
			for _, k := range set.Keys {
				assert.Equal(t, "RSA", k.Kty)
				assert.Equal(t, "RS256", k.Alg)
				assert.Equal(t, "sig", k.Use)
				assert.Empty(t, k.D, "private part published")
			}
		})
		if !ok {
			return
		}
	}
	assert.NotEqual(t, first, second, "kid after Rotate")
}

func TestHandlerMethods(t *testing.T) {
	iss := newIssuer(t)
	tests := []struct {
		method string
		want   int
	}{
		{method: http.MethodGet, want: http.StatusOK},
		{method: http.MethodHead, want: http.StatusOK},
		{method: http.MethodPost, want: http.StatusMethodNotAllowed},
		{method: http.MethodDelete, want: http.StatusMethodNotAllowed},
	}
	for _, tc := range tests {
		t.Run(tc.method, func(t *testing.T) {
			rec := httptest.NewRecorder()
			iss.JWKSHandler().ServeHTTP(rec, httptest.NewRequest(tc.method, "/jwks", nil))
			assert.Equal(t, tc.want, rec.Code)
		})
	}
}

func TestArguments(t *testing.T) {
	tests := []struct {
		name    string
		call    func() error
		wantErr bool
	}{
		{name: "empty issuer URL", call: func() error { _, err := localissuer.New(""); return err }, wantErr: true},
		{name: "zero lifetime", call: func() error { _, err := newIssuer(t).Token("user-1", "", "api", 0); return err }, wantErr: true},
		{name: "a minute", call: func() error { _, err := newIssuer(t).Token("user-1", "", "api", time.Minute); return err }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if tc.wantErr {
				assert.Error(t, err)
				return
			}
			assert.NoError(t, err)
		})
	}
}
