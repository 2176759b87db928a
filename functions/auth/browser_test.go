package function_test

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	tags "github.com/streamspace-dev/functions/functions/tags"
	"github.com/streamspace-dev/functions/shared/fntest"
)

// chromiumPath is Debian's chromium package.
const chromiumPath = "/usr/bin/chromium"

// newBrowser starts headless Chromium for the test.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	_, err := exec.LookPath(chromiumPath)
	require.NoError(t, err, "Chromium is not installed; install it with: apt-get install -y chromium")
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromiumPath), chromedp.NoSandbox)
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(cancel)
	return ctx
}

// pollAcrossNavigations waits, up to patience, until expr holds in the
// page. The page navigates meanwhile (the login's redirects), and a
// navigation destroys the JavaScript context a poll runs in: the poll then
// fails with "Cannot find context with specified id" or "Execution context
// was destroyed", and starts again in the new page.
func pollAcrossNavigations(ctx context.Context, expr string) error {
	deadline := time.Now().Add(patience)
	for {
		_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(time.Until(deadline))))
		lost := err != nil && (strings.Contains(err.Error(), "Cannot find context with specified id") ||
			strings.Contains(err.Error(), "Execution context was destroyed"))
		if !lost || time.Now().After(deadline) {
			return err
		}
	}
}

// TestBrowserLogin: a real browser goes providers → login → Hydra →
// callback → complete, which stores the session in localStorage as
// StreamSpace's UI keeps it and navigates to returnUrl; the stored token
// then works on a REST route.
func TestBrowserLogin(t *testing.T) {
	e := startHydra(t, "    syncGroups: true\n")
	e.hydra.SetUser(e.client.ID, hydraUser("browser-ann", "engineering"))
	ctx := newBrowser(t)
	defer func() {
		if !t.Failed() {
			return
		}
		// The page the browser ended on, for whoever reads the failure.
		if shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(80)); err == nil {
			p := filepath.Join("testdata", "browser-failure.png")
			if os.WriteFile(p, shot, 0o644) == nil {
				t.Logf("screenshot of the failing page: %s", p)
			}
		}
	}()

	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(e.front+"/api/v1/auth/oidc/providers")))
	loginURL, err := chromedp.Run(ctx, chromedp.Evaluate[string](`JSON.parse(document.body.innerText)[0].loginUrl`))
	require.NoError(t, err)
	assert.Equal(t, e.front+"/api/v1/auth/oidc/hydra/login", loginURL)

	// The return page: any same-origin path; the providers list will do.
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(loginURL+"?returnUrl=%2Fapi%2Fv1%2Fauth%2Foidc%2Fproviders%3Fdone%3D1")))
	err = pollAcrossNavigations(ctx, `location.search === "?done=1" && localStorage.getItem("streamspace-auth") !== null`)
	require.NoError(t, err, "the browser never came back with a session")
	loc, err := chromedp.Run(ctx, chromedp.Location())
	require.NoError(t, err)
	assert.Equal(t, e.front+"/api/v1/auth/oidc/providers?done=1", loc)
	assert.NotContains(t, loc, "token")

	raw, err := chromedp.Run(ctx, chromedp.Evaluate[string](`localStorage.getItem("streamspace-auth")`))
	require.NoError(t, err)
	var stored struct {
		State struct {
			User struct {
				ID       string `json:"id"`
				Username string `json:"username"`
				Role     string `json:"role"`
			} `json:"user"`
			Token           string `json:"token"`
			ExpiresAt       string `json:"expiresAt"`
			IsAuthenticated bool   `json:"isAuthenticated"`
		} `json:"state"`
		Version int `json:"version"`
	}
	require.NoError(t, json.Unmarshal([]byte(raw), &stored), raw)
	assert.True(t, stored.State.IsAuthenticated)
	assert.Equal(t, "browser-ann", stored.State.User.Username)
	assert.Equal(t, "user", stored.State.User.Role)
	assert.NotEmpty(t, stored.State.ExpiresAt)
	require.NotEmpty(t, stored.State.Token)

	tagsFn := fntest.StartOn(t, e.h.Pool, tags.New(), map[string]string{
		"STREAMSPACE_JWT_SECRET_FILE": e.h.Env["STREAMSPACE_JWT_SECRET_FILE"],
	})
	status, out := tagsFn.Do(http.MethodGet, "/api/v1/search/filters/tags", stored.State.Token, nil)
	assert.Equal(t, http.StatusOK, status, "%s", out)

	// The fragment was cleared from history, and no log line holds the token.
	assert.NotContains(t, e.h.Logs.String(), stored.State.Token)
	assert.False(t, strings.Contains(e.hydra.Logs(), stored.State.Token))
}

// TestBrowserCompletePageRefusesForeignReturn: a crafted complete-page
// link cannot send the browser to another origin.
func TestBrowserCompletePageRefusesForeignReturn(t *testing.T) {
	e := startLoop(t, "", nil)
	ctx := newBrowser(t)
	u := e.h.URL + "/api/v1/auth/oidc/complete#token=t&expiresAt=2030-01-01T00:00:00Z&user=e30&returnUrl=" +
		"https%3A%2F%2Fevil.example%2F"
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(u)))
	err := pollAcrossNavigations(ctx, `location.pathname === "/"`)
	require.NoError(t, err)
	loc, err := chromedp.Run(ctx, chromedp.Location())
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(loc, e.h.URL+"/"), loc)
}
