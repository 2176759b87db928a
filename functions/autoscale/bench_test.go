package function_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// BenchmarkTick1000 is a tick over 1,000 enabled policies, each with its
// own opted-in Deployment, against the real API server with 5 ms added to
// every call (the proxy in front of it). The figures: at most 2 s
// per tick and a peak RSS of at most 64 MiB during it. The peak reported
// is the whole test process's (the function, the harness, the proxy and the
// metrics server), measured from a reset of the kernel's high-water mark
// just before each tick, so it bounds the function's from above.
func BenchmarkTick1000(b *testing.B) {
	const policies = 1000
	k := newKube(b)
	h, _ := startWith(b, k, nil, map[string]string{"AUTOSCALE_CONCURRENCY": "32"})
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

	k.proxy.latency.Store(int64(5 * time.Millisecond))
	var peak, heap float64
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		// What the setup left behind goes back to the kernel first, so the
		// high-water mark starts from the process's live memory.
		runtime.GC()
		debug.FreeOSMemory()
		resetPeakRSS(b)
		b.StartTimer()
		start := time.Now()
		stop := sampleHeap()
		if status := tick(b, h); status != http.StatusAccepted {
			b.Fatalf("tick: status %d", status)
		}
		heap = max(heap, stop())
		b.Logf("tick took %s", time.Since(start))
		peak = max(peak, peakRSSMiB(b))
	}
	b.StopTimer()
	k.proxy.latency.Store(0)
	b.ReportMetric(peak, "peak-RSS-MiB")
	b.ReportMetric(heap, "peak-heap-MiB")
	b.ReportMetric(float64(policies), "policies")
	var scaled int
	require.NoError(b, h.Pool.QueryRow(ctx, `select count(*) from scaling_events where status = 'completed'`).Scan(&scaled))
	if scaled == 0 {
		b.Fatal("the tick scaled nothing")
	}
}

// resetPeakRSS resets the kernel's record of this process's peak resident
// set (VmHWM) to its current size (proc(5), clear_refs value 5).
func resetPeakRSS(tb testing.TB) {
	tb.Helper()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		tb.Skipf("cannot reset the peak RSS here: %v", err)
	}
}

// peakRSSMiB reads VmHWM from /proc/self/status.
func peakRSSMiB(tb testing.TB) float64 {
	tb.Helper()
	f, err := os.Open("/proc/self/status")
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
	tb.Fatal("no VmHWM in /proc/self/status")
	return 0
}

// sampleHeap samples the Go heap's live objects every 10 ms (through
// runtime/metrics, which does not stop the world) until the returned stop
// is called, which returns the largest sample in MiB: the function's own
// memory during the tick, without the test binary's code and the harness's
// servers.
func sampleHeap() (stop func() float64) {
	done := make(chan struct{})
	result := make(chan float64)
	go func() {
		var peak uint64
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(s)
			peak = max(peak, s[0].Value.Uint64())
			select {
			case <-done:
				result <- float64(peak) / (1 << 20)
				return
			case <-t.C:
			}
		}
	}()
	return func() float64 { close(done); return <-result }
}
