package function

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkDecide is one evaluation's cost without API calls: the cpu
// replica calculation over 20 pods, the decision with an hour of
// recommendations (one a minute) and a metadata read. The issue's
// figure is at most 50 µs.
func BenchmarkDecide(b *testing.B) {
	pods := make([]PodSample, 20)
	for i := range pods {
		pods[i] = PodSample{
			Name: fmt.Sprintf("pod-%d", i), Phase: PodRunning, Ready: true, ReadyKnown: true,
			Started: t0.Add(-time.Hour), ReadyChanged: t0.Add(-time.Hour),
			Request: 1000, HasRequest: true, Usage: int64(600 + i*10), HasUsage: true,
			UsageAt: t0.Add(-10 * time.Second), Window: 30 * time.Second,
		}
	}
	pods[3].HasUsage = false
	pods[7].Ready = false
	history := make([]Recommendation, 60)
	for i := range history {
		history[i] = Recommendation{Replicas: int32(15 + i%5), At: t0.Add(-time.Duration(i) * time.Minute)}
	}
	md := map[string]any{"template": "firefox", "timezone": "Europe/Berlin"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parseMetadata(md); err != nil {
			b.Fatal(err)
		}
		p, err := utilizationReplicas(20, pods, MetricCPU, 50, t0)
		if err != nil {
			b.Fatal(err)
		}
		d := Decide(DecisionInput{
			Now: t0, Current: 20, Min: 2, Max: 100, Proposal: p,
			Up: Step{Increment: 2, MaxIncrement: 10}, Down: Step{Increment: 1, Stabilization: DefaultDownStabilization},
			Cooldown: 5 * time.Minute, LastChange: t0.Add(-time.Hour), History: history,
		})
		if d.Action == "" {
			b.Fatal("no decision")
		}
	}
}
