package localissuer_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

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
	if rec.Code != http.StatusOK {
		t.Fatalf("got status %d, want %d", rec.Code, http.StatusOK)
	}
	if got := rec.Header().Get("Content-Type"); got != "application/json" {
		t.Errorf("got content type %q, want %q", got, "application/json")
	}
	var set jwks
	if err := json.Unmarshal(rec.Body.Bytes(), &set); err != nil {
		t.Fatalf("decode JWKS: %v", err)
	}
	return set
}

func kids(set jwks) []string {
	var out []string
	for _, k := range set.Keys {
		out = append(out, k.Kid)
	}
	return out
}

func TestJWKSAndRotate(t *testing.T) {
	iss, err := localissuer.New("https://issuer.test")
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	first := iss.KeyID()
	set := fetch(t, iss)
	if len(set.Keys) != 1 {
		t.Fatalf("got %d keys, want 1", len(set.Keys))
	}
	k := set.Keys[0]
	if k.Kid != first || k.Kty != "RSA" || k.Alg != "RS256" || k.Use != "sig" || k.D != "" {
		t.Errorf("got key %+v, want public RSA key %q for RS256 signatures", k, first)
	}

	if err := iss.Rotate(); err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	second := iss.KeyID()
	if second == first {
		t.Fatalf("got the same kid %q after Rotate, want a new one", second)
	}
	if got := kids(fetch(t, iss)); len(got) != 2 || got[0] != second || got[1] != first {
		t.Errorf("got kids %v, want [%s %s]", got, second, first)
	}

	if err := iss.Rotate(); err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	if got := kids(fetch(t, iss)); len(got) != 2 || got[0] != iss.KeyID() || got[1] != second {
		t.Errorf("got kids %v, want [%s %s]", got, iss.KeyID(), second)
	}
}

func TestHandlerMethods(t *testing.T) {
	iss, err := localissuer.New("https://issuer.test")
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	rec := httptest.NewRecorder()
	iss.JWKSHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/jwks", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("got status %d, want %d", rec.Code, http.StatusMethodNotAllowed)
	}
}

func TestArguments(t *testing.T) {
	if _, err := localissuer.New(""); err == nil {
		t.Errorf("got no error for an empty issuer URL, want one")
	}
	iss, err := localissuer.New("https://issuer.test")
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if _, err := iss.Token("user-1", "", "api", 0); err == nil {
		t.Errorf("got no error for a zero lifetime, want one")
	}
	if _, err := iss.Token("user-1", "", "api", time.Minute); err != nil {
		t.Errorf("got %v, want none", err)
	}
}
