package function_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/testbin"
)

// BenchmarkTick1000 is a tick over 1,000 enabled policies, each with its
// own opted-in Deployment, against the real API server with 5 ms added to
// every call (the proxy in front of it), delivered to the function's own
// binary. The figures: at most 2 s per tick and a peak RSS of at
// most 64 MiB during it; the peak is that process's, from a reset of the
// kernel's high-water mark just before each tick.
func BenchmarkTick1000(b *testing.B) {
	const policies = 1000
	k := newKube(b)
	h, _ := startWith(b, k, nil, nil)
	ctx := context.Background()

	var wg sync.WaitGroup
	errs := make(chan error, policies)
	slots := make(chan struct{}, 16)
	for i := 0; i < policies; i++ {
		wg.Add(1)
		slots <- struct{}{}
		go func(i int) {
			defer func() { <-slots; wg.Done() }()
			name := fmt.Sprintf("bench-%d", i)
			replicas := int32(1)
			sel := map[string]string{"app": name}
			_, err := k.cluster.Client.AppsV1().Deployments(k.ns).Create(ctx, &appsv1.Deployment{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: k.ns, Labels: optedIn()},
				Spec: appsv1.DeploymentSpec{Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: sel},
					Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: sel},
						Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "main", Image: "registry.example.com/pool:1"}}}}},
			}, metav1.CreateOptions{})
			errs <- err
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(b, err)
	}
	// Ten of the hundred templates have 20 sessions (two replicas' worth),
	// so the first tick scales a tenth of the targets and leaves the rest.
	exec(b, h, `insert into users (id, username, email) values ('bench', 'bench', 'bench@example.com')`)
	exec(b, h, `insert into sessions (id, user_id, template_name, state, namespace)
		select 'bench-s-' || g, 'bench', 'tpl-' || (g % 10), 'running', $1 from generate_series(1, 200) g`, k.ns)
	exec(b, h, `insert into autoscaling_policies (name, target_type, target_id, min_replicas, max_replicas, metric_type,
			target_metric_value, scale_up_policy, scale_down_policy, cooldown_period, metadata)
		select 'bench-' || g, 'deployment', 'bench-' || g, 1, 5, 'sessions', 10,
			'{"increment": 1, "stabilization_seconds": 0}', '{"increment": 1, "stabilization_seconds": 300}', 0,
			jsonb_build_object('template', 'tpl-' || (g % 100))
		from generate_series(0, $1::int - 1) g`, policies)

	// The function under measure runs as its own process, the binary
	// make build ships, with the harness's environment: its peak RSS is its
	// own, not the test binary's.
	bin := filepath.Join(b.TempDir(), "autoscale")
	build := osexec.Command("go", "build", "-o", bin, "./cmd/autoscale")
	out, err := build.CombinedOutput()
	require.NoError(b, err, "%s", out)
	port, err := testbin.FreePort()
	require.NoError(b, err)
	var env []string
	for k, v := range h.Env {
		env = append(env, k+"="+v)
	}
	env = append(env, "PORT="+strconv.Itoa(port), "AUTOSCALE_CONCURRENCY=32")
	var logs bytes.Buffer
	fn := osexec.Command(bin)
	fn.Env = append(os.Environ(), env...)
	fn.Stdout, fn.Stderr = &logs, &logs
	fn.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(b, fn.Start())
	defer func() {
		_ = fn.Process.Kill()
		_ = fn.Wait()
	}()
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	require.Eventually(b, func() bool {
		resp, err := http.Get(url + "/health/readiness")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, wait, 20*time.Millisecond, "the function did not become ready")
	pid := fn.Process.Pid

	k.proxy.latency.Store(int64(5 * time.Millisecond))
	var peak float64
	b.ResetTimer()
	for b.Loop() {
		resetPeakRSS(b, pid)
		start := time.Now()
		e, err := events.New("test", events.Ping, events.PingData{Job: "autoscale.evaluate"})
		require.NoError(b, err)
		e.SetSource(events.AutoscaleTickSource)
		if status, _ := fntest.Deliver(b, url, e, false); status != http.StatusAccepted {
			b.Fatalf("tick: status %d\n%s", status, logs.String())
		}
		b.Logf("tick took %s", time.Since(start))
		peak = max(peak, peakRSSMiB(b, pid))
	}
	b.StopTimer()
	k.proxy.latency.Store(0)
	b.ReportMetric(peak, "peak-RSS-MiB")
	b.ReportMetric(float64(policies), "policies")
	var scaled int
	require.NoError(b, h.Pool.QueryRow(ctx, `select count(*) from scaling_events where status = 'completed'`).Scan(&scaled))
	if scaled == 0 {
		b.Fatal("the tick scaled nothing")
	}
}

// resetPeakRSS resets the kernel's record of process pid's peak resident
// set (VmHWM) to its current size (proc(5), clear_refs value 5).
func resetPeakRSS(tb testing.TB, pid int) {
	tb.Helper()
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		tb.Skipf("cannot reset the peak RSS here: %v", err)
	}
}

// peakRSSMiB reads VmHWM from /proc/<pid>/status.
func peakRSSMiB(tb testing.TB, pid int) float64 {
	tb.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(tb, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			require.NoError(tb, err)
			return kb / 1024
		}
	}
	tb.Fatal("no VmHWM in the process's status")
	return 0
}
