package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/db/dbtest"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/logging"
	"github.com/streamspace-dev/functions/shared/runtime"
)

// insecureJar sends the login cookie (Secure) over the loopback http of
// the local run, as browsers do for 127.0.0.1.
type insecureJar struct{ *cookiejar.Jar }

func (j insecureJar) SetCookies(u *url.URL, cookies []*http.Cookie) {
	for _, c := range cookies {
		c.Secure = false
	}
	j.Jar.SetCookies(u, cookies)
}

// TestLocalRunLogin: with Ory Hydra built, the local run prints a login URL
// that works: the demo user picked on Hydra's page comes back through the
// callback with a token the functions accept.
func TestLocalRunLogin(t *testing.T) {
	pool := dbtest.New(t)
	cfg := Config{
		DatabaseURL:    dbtest.URL(t, pool),
		Overlay:        "deploy/overlays/all-in-one",
		DeadLetterFile: filepath.Join(t.TempDir(), "dead-letters.jsonl"),
		Seed:           true,
		Login:          true,
	}
	logs := &fntest.Buffer{}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r, err := start(ctx, cfg, runtime.Environ(), logging.New(logs, slog.LevelDebug), nil)
	require.NoError(t, err, "start; log:\n%s", logs.String())
	t.Cleanup(func() {
		http.DefaultClient.CloseIdleConnections()
		assert.NoError(t, r.shutdown(context.Background()))
	})
	require.NotEmpty(t, r.Login.LoginURL, r.Login.Off)

	var banner bytes.Buffer
	require.NoError(t, r.banner(&banner))
	assert.Contains(t, banner.String(), r.Login.LoginURL)

	jar, err := cookiejar.New(nil)
	require.NoError(t, err)
	client := &http.Client{Jar: insecureJar{jar}, Timeout: time.Minute, CheckRedirect: func(req *http.Request, _ []*http.Request) error {
		if strings.HasSuffix(req.URL.Path, "/complete") {
			return http.ErrUseLastResponse
		}
		return nil
	}}
	resp, err := client.Get(r.Login.LoginURL)
	require.NoError(t, err)
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", page)
	link := regexp.MustCompile(`href="(/login\?[^"]*user=oidc-admin[^"]*)"`).FindSubmatch(page)
	require.NotNil(t, link, "Hydra's login page offers oidc-admin:\n%s", page)
	pick, err := resp.Request.URL.Parse(strings.ReplaceAll(string(link[1]), "&amp;", "&"))
	require.NoError(t, err)
	resp, err = client.Get(pick.String())
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusFound, resp.StatusCode)
	loc, err := url.Parse(resp.Header.Get("Location"))
	require.NoError(t, err)
	frag, err := url.ParseQuery(loc.Fragment)
	require.NoError(t, err)
	token := frag.Get("token")
	require.NotEmpty(t, token, "log:\n%s", logs.String())

	req, err := http.NewRequest(http.MethodGet, r.FunctionURL+"/api/v1/search/filters/tags", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
}
