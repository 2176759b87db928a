package function

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// pod is a ready, running pod started long ago, requesting 1000m and using
// usage millicores.
func pod(name string, usage int64) PodSample {
	return PodSample{
		Name: name, Phase: PodRunning, Ready: true, ReadyKnown: true,
		Started: t0.Add(-time.Hour), ReadyChanged: t0.Add(-time.Hour),
		Request: 1000, HasRequest: true,
		Usage: usage, HasUsage: true, UsageAt: t0.Add(-10 * time.Second), Window: 30 * time.Second,
	}
}

func with(p PodSample, change func(*PodSample)) PodSample {
	change(&p)
	return p
}

func TestUtilizationReplicas(t *testing.T) {
	unready := func(p *PodSample) {
		p.Ready = false
		p.ReadyChanged = t0.Add(-time.Minute)
		p.Started = t0.Add(-2 * time.Minute)
	}
	noMetrics := func(p *PodSample) { p.HasUsage = false }
	tests := []struct {
		name     string
		current  int32
		pods     []PodSample
		metric   MetricType
		target   float64
		want     int32
		wantUtil float64
		reason   string
	}{
		{"on target", 2, []PodSample{pod("a", 500), pod("b", 500)}, MetricCPU, 50, 2, 50, "within the 10% tolerance"},
		{"within tolerance above", 2, []PodSample{pod("a", 540), pod("b", 540)}, MetricCPU, 50, 2, 54, "within"},
		{"within tolerance below", 2, []PodSample{pod("a", 460), pod("b", 460)}, MetricCPU, 50, 2, 46, "within"},
		{"double the target doubles", 2, []PodSample{pod("a", 1000), pod("b", 1000)}, MetricCPU, 50, 4, 100, "ceil(2 × 2.000) = 4"},
		{"a quarter of the target quarters, rounded up", 4, []PodSample{pod("a", 125), pod("b", 125), pod("c", 125), pod("d", 125)}, MetricCPU, 50, 1, 12.5, "ceil(4 × 0.250) = 1"},
		{"deleted and failed pods are ignored", 2, []PodSample{
			pod("a", 1000), pod("b", 1000),
			with(pod("gone", 0), func(p *PodSample) { p.Deleting = true }),
			with(pod("dead", 0), func(p *PodSample) { p.Phase = PodFailed }),
		}, MetricCPU, 50, 4, 100, "ceil(2 × 2.000) = 4"},
		{"unready pods count as 0 on a scale-up", 3, []PodSample{pod("a", 1000), pod("b", 1000), with(pod("c", 900), unready)}, MetricCPU, 50, 4, 100, "1 unready"},
		{"unready pods can cancel a scale-up", 3, []PodSample{pod("a", 600), with(pod("b", 0), unready), with(pod("c", 0), unready)}, MetricCPU, 50, 3, 60, "no change"},
		{"pending pods are unready", 2, []PodSample{pod("a", 1000), with(pod("p", 0), func(p *PodSample) { p.Phase = PodPending; p.HasUsage = false })}, MetricCPU, 50, 2, 100, "1 unready"},
		{"a pod without metrics counts as its request on a scale-down", 3, []PodSample{pod("a", 100), pod("b", 100), with(pod("c", 0), noMetrics)}, MetricCPU, 50, 3, 10, "1 without metrics"},
		{"a pod without metrics counts as 0 on a scale-up", 3, []PodSample{pod("a", 1000), pod("b", 1000), with(pod("c", 0), noMetrics)}, MetricCPU, 50, 4, 100, "ceil(3 × 1.333) = 4"},
		{"memory counts an unready pod's sample", 2, []PodSample{pod("a", 1000), with(pod("b", 1000), unready)}, MetricMemory, 50, 4, 100, "ceil(2 × 2.000) = 4"},
		{"a cpu sample taken before the pod became ready is unready", 2, []PodSample{pod("a", 1000), with(pod("b", 1000), func(p *PodSample) {
			p.Started = t0.Add(-time.Minute)
			p.ReadyChanged = t0.Add(-20 * time.Second)
			p.UsageAt = t0.Add(-15 * time.Second)
		})}, MetricCPU, 50, 2, 100, "1 ready, 1 unready"},
		{"no pods keeps the count", 2, nil, MetricCPU, 50, 2, 0, "no pods"},
		{"no sample from any ready pod keeps the count", 2, []PodSample{with(pod("a", 0), noMetrics)}, MetricCPU, 50, 2, 0, "no metrics for ready pods"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := utilizationReplicas(tc.current, tc.pods, tc.metric, tc.target, t0)
			require.NoError(t, err)
			assert.Equal(t, tc.want, p.Replicas, p.Reason)
			assert.InDelta(t, tc.wantUtil, p.Value, 0.01, p.Reason)
			assert.Contains(t, p.Reason, tc.reason)
		})
	}
	t.Run("a pod without a request is an error naming it", func(t *testing.T) {
		_, err := utilizationReplicas(1, []PodSample{with(pod("a", 1), func(p *PodSample) { p.HasRequest = false })}, MetricCPU, 50, t0)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "pod a has no cpu request")
	})
}

func TestAverageReplicas(t *testing.T) {
	// Custom values are milli-units: 10000 is 10.
	tests := []struct {
		name    string
		current int32
		pods    []PodSample
		target  float64
		want    int32
	}{
		{"on target", 2, []PodSample{pod("a", 10000), pod("b", 10000)}, 10, 2},
		{"double", 2, []PodSample{pod("a", 20000), pod("b", 20000)}, 10, 4},
		{"half", 4, []PodSample{pod("a", 5000), pod("b", 5000), pod("c", 5000), pod("d", 5000)}, 10, 2},
		{"missing counts as the target on a scale-down", 3, []PodSample{pod("a", 1000), pod("b", 1000), with(pod("c", 0), func(p *PodSample) { p.HasUsage = false })}, 10, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := averageReplicas(tc.current, tc.pods, tc.target, t0)
			assert.Equal(t, tc.want, p.Replicas, p.Reason)
		})
	}
}

func TestSessionReplicas(t *testing.T) {
	tests := []struct {
		name     string
		current  int32
		sessions int
		target   float64
		want     int32
	}{
		{"zero replicas, a session: activation to one", 0, 1, 10, 1},
		{"zero replicas, no session: stays at zero", 0, 0, 10, 0},
		{"zero replicas, many sessions", 0, 25, 10, 3},
		{"no session left: to zero", 2, 0, 10, 0},
		{"within tolerance", 2, 21, 10, 2},
		{"over", 2, 30, 10, 3},
		{"under", 4, 10, 10, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := sessionReplicas(tc.current, tc.sessions, tc.target)
			assert.Equal(t, tc.want, p.Replicas, p.Reason)
			assert.True(t, p.Measured)
		})
	}
}
