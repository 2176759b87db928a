package function

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/db/dbtest"
)

// BenchmarkStartup measures what a scale-from-zero costs: exec of the tags
// binary until /health/readiness answers 200, and the resident memory of the
// process once it sits idle.
func BenchmarkStartup(b *testing.B) {
	bin, env := buildBinary(b)

	start := func() (*exec.Cmd, string) {
		port := freePort(b)
		cmd := exec.Command(bin)
		cmd.Env = append(env, "PORT="+port)
		require.NoError(b, cmd.Start())
		return cmd, "http://127.0.0.1:" + port + "/health/readiness"
	}
	stop := func(cmd *exec.Cmd) {
		cmd.Process.Kill()
		cmd.Wait()
	}

	for b.Loop() {
		cmd, url := start()
		waitReady(b, url)
		b.StopTimer()
		stop(cmd)
		b.StartTimer()
	}

	cmd, url := start()
	defer stop(cmd)
	waitReady(b, url)
	time.Sleep(2 * time.Second) // let start-up garbage be collected: the figure is the idle footprint
	b.ReportMetric(rssMB(b, cmd.Process.Pid), "idle-RSS-MB")
}

// buildBinary builds the tags command and returns it with an environment
// that points it at a fresh database.
func buildBinary(tb testing.TB) (string, []string) {
	tb.Helper()
	bin := filepath.Join(tb.TempDir(), "tags")
	build := exec.Command("go", "build", "-trimpath", "-o", bin, "./cmd/tags")
	out, err := build.CombinedOutput()
	require.NoError(tb, err, "build:\n%s", out)
	pool := dbtest.New(tb)
	return bin, append(os.Environ(),
		"DATABASE_URL="+dbtest.URL(tb, pool),
		"AUTH_ISSUER=https://issuer.invalid",
		"AUTH_AUDIENCE=streamspace-api",
		"AUTH_JWKS_URL=https://issuer.invalid/jwks",
	)
}

// waitReady polls url until it answers 200. The generous limit only ends a
// test whose binary never gets ready; a ready one is seen within a poll.
func waitReady(tb testing.TB, url string) {
	tb.Helper()
	require.Eventually(tb, func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, time.Minute, 500*time.Microsecond, "%s not ready", url)
}

func freePort(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

func rssMB(b *testing.B, pid int) float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(b, err)
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			require.NoError(b, err)
			return float64(kb) / 1024
		}
	}
	b.Fatal("no VmRSS")
	return 0
}
