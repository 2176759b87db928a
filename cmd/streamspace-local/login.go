package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"github.com/streamspace-dev/functions/shared/oidctest"
	"github.com/streamspace-dev/functions/shared/testbin"
)

// loginProvider is the provider id of the local login.
const loginProvider = "hydra"

// demoLogins are the users the local Hydra offers on its login page: an
// admin by the role rule on group admins, and a user. Their emails differ
// from the seeded local users', whose accounts an OIDC login never takes
// over.
var demoLogins = []oidctest.User{
	{Subject: "oidc-admin", Claims: map[string]any{
		"email": "oidc-admin@example.com", "email_verified": true, "preferred_username": "oidc-admin",
		"name": "OIDC Admin", "groups": []any{"admins", "engineering"}}},
	{Subject: "oidc-user", Claims: map[string]any{
		"email": "oidc-user@example.com", "email_verified": true, "preferred_username": "oidc-user",
		"name": "OIDC User", "groups": []any{"engineering"}}},
}

// localLogin is the auth function's provider in a local run: Ory Hydra with
// a client whose redirect URI is the function's callback, and the files
// the function reads (providers, client secret, StreamSpace's JWT secret).
type localLogin struct {
	hydra *oidctest.Hydra
	dir   string
	// LoginURL starts a login in a browser.
	LoginURL string
	// Off says why there is no login, for the banner.
	Off string
}

// startLogin starts Hydra for the auth function when it is built, and
// returns the function's environment for it. Without Hydra the auth
// function stays unconfigured (the all-in-one leaves it out) and Off says
// how to build it.
func startLogin(ctx context.Context, functionURL, dbURL string) (*localLogin, map[string]string, error) {
	if _, err := testbin.Lookup("hydra"); err != nil {
		return &localLogin{Off: "off: Ory Hydra is not built (scripts/tools hydra, or set TOOLS_DIR to where it is)"}, nil, nil
	}
	h, err := oidctest.StartWith(oidctest.Options{DatabaseURL: dbURL, Users: demoLogins})
	if err != nil {
		return nil, nil, fmt.Errorf("hydra: %w", err)
	}
	l := &localLogin{hydra: h}
	ok := false
	defer func() {
		if !ok {
			l.stop()
		}
	}()
	client, err := h.CreateClient(ctx, []string{functionURL + "/api/v1/auth/oidc/" + loginProvider + "/callback"}, []string{functionURL + "/"})
	if err != nil {
		return nil, nil, fmt.Errorf("hydra: %w", err)
	}
	if l.dir, err = os.MkdirTemp("", "streamspace-local-login-"); err != nil {
		return nil, nil, err
	}
	// StreamSpace's JWT secret, as the cluster mounts it: the auth function
	// signs StreamSpace's tokens with it and every function accepts them.
	jwt := make([]byte, 32)
	if _, err := rand.Read(jwt); err != nil {
		return nil, nil, err
	}
	files := map[string]string{
		"jwt-secret":    hex.EncodeToString(jwt) + "\n",
		"client-secret": client.Secret + "\n",
		"providers.yaml": fmt.Sprintf(`providers:
  - id: %s
    displayName: Local Ory Hydra
    issuer: %s
    clientId: %s
    clientSecretFile: %s
    scopes: [profile, email, groups]
    syncGroups: true
    roleRules:
      - {group: admins, role: admin}
`, loginProvider, h.Issuer, client.ID, filepath.Join(l.dir, "client-secret")),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(l.dir, name), []byte(content), 0o600); err != nil {
			return nil, nil, err
		}
	}
	l.LoginURL = functionURL + "/api/v1/auth/oidc/" + loginProvider + "/login?returnUrl=%2Fapi%2Fv1%2Fauth%2Foidc%2Fproviders"
	ok = true
	return l, map[string]string{
		"AUTH_PUBLIC_URL":             functionURL,
		"OIDC_PROVIDERS_FILE":         filepath.Join(l.dir, "providers.yaml"),
		"STREAMSPACE_JWT_SECRET_FILE": filepath.Join(l.dir, "jwt-secret"),
	}, nil
}

// stop ends Hydra and removes the files.
func (l *localLogin) stop() {
	if l == nil {
		return
	}
	if l.hydra != nil {
		l.hydra.Stop()
	}
	if l.dir != "" {
		os.RemoveAll(l.dir)
	}
}
