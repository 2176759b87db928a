package function_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	tags "github.com/streamspace-dev/functions/functions/tags"
	"github.com/streamspace-dev/functions/shared/fntest"
)

// TestES256Tokens: without StreamSpace's JWT secret the function issues
// ES256 tokens with a kid, serves their JWKS and discovery document, and
// another function configured with AUTH_JWKS_URL accepts them.
func TestES256Tokens(t *testing.T) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	require.NoError(t, err)
	keyFile := writeFile(t, "signing.pem", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})))
	e := startLoop(t, "", map[string]string{"STREAMSPACE_JWT_SECRET_FILE": "", "AUTH_SIGNING_KEY_FILE": keyFile})

	resp, body := e.complete(t, "ivy", nil, true)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	res := loginResult(t, body)
	hdr := decodeHeader(t, res.Token)
	assert.Equal(t, "ES256", hdr["alg"])
	require.NotEmpty(t, hdr["kid"])
	claims := decodePayload(t, res.Token)
	assert.Equal(t, publicURL+"/api/v1/auth", claims["iss"])
	assert.Equal(t, "streamspace-api", claims["aud"])
	assert.Equal(t, res.User.ID, claims["sub"])
	assert.Equal(t, "user", claims["role"])

	status, out := e.h.Do(http.MethodGet, "/api/v1/auth/.well-known/jwks.json", "", nil)
	require.Equal(t, http.StatusOK, status)
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	require.NoError(t, json.Unmarshal(out, &set))
	require.Len(t, set.Keys, 1)
	assert.Equal(t, hdr["kid"], set.Keys[0]["kid"])
	assert.Equal(t, "EC", set.Keys[0]["kty"])
	assert.NotContains(t, set.Keys[0], "d", "the private part is never served")

	status, out = e.h.Do(http.MethodGet, "/api/v1/auth/.well-known/openid-configuration", "", nil)
	require.Equal(t, http.StatusOK, status)
	assert.JSONEq(t, `{"issuer":"https://streamspace.test/api/v1/auth","jwks_uri":"https://streamspace.test/api/v1/auth/.well-known/jwks.json",
		"id_token_signing_alg_values_supported":["ES256"],"subject_types_supported":["public"],"response_types_supported":["code"]}`, string(out))

	tagsFn := fntest.StartOn(t, e.h.Pool, tags.New(), map[string]string{
		"STREAMSPACE_JWT_SECRET_FILE": "",
		"AUTH_ISSUER":                 publicURL + "/api/v1/auth",
		"AUTH_AUDIENCE":               "streamspace-api",
		"AUTH_JWKS_URL":               e.h.URL + "/api/v1/auth/.well-known/jwks.json",
	})
	status, out = tagsFn.Do(http.MethodGet, "/api/v1/search/filters/tags", res.Token, nil)
	assert.Equal(t, http.StatusOK, status, "%s", out)
}
