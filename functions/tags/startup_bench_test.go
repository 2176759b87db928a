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
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
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
	if out, err := build.CombinedOutput(); err != nil {
		tb.Fatalf("build: %v\n%s", err, out)
	}
	pool := dbtest.New(tb)
	return bin, append(os.Environ(),
		"DATABASE_URL="+dbtest.URL(tb, pool),
		"AUTH_ISSUER=https://issuer.invalid",
		"AUTH_AUDIENCE=streamspace-api",
		"AUTH_JWKS_URL=https://issuer.invalid/jwks",
	)
}

func waitReady(b testing.TB, url string) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(500 * time.Microsecond)
	}
	b.Fatal("not ready after 10s")
}

func freePort(b testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

func rssMB(b *testing.B, pid int) float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			if err != nil {
				b.Fatal(err)
			}
			return float64(kb) / 1024
		}
	}
	b.Fatal("no VmRSS")
	return 0
}
