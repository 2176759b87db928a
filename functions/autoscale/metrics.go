package function

import (
	"fmt"
	"math"
	"time"
)

// MetricType is a policy's metric_type.
type MetricType string

// The metric types StreamSpace's UI offers, and sessions.
const (
	MetricCPU      MetricType = "cpu"
	MetricMemory   MetricType = "memory"
	MetricSessions MetricType = "sessions"
	MetricCustom   MetricType = "custom"
	MetricSchedule MetricType = "schedule"
)

// metricTypes are the accepted values, in the order error messages list them.
var metricTypes = []MetricType{MetricCPU, MetricMemory, MetricSessions, MetricCustom, MetricSchedule}

// allowsZero reports whether a policy of this metric may have min_replicas
// 0: only one whose value exists without a running replica (sessions in the
// database, a schedule's clock) can ever scale up from zero again.
func (m MetricType) allowsZero() bool { return m == MetricSessions || m == MetricSchedule }

// PodPhase is the subset of a pod's status.phase the grouping reads.
type PodPhase string

// Pod phases.
const (
	PodPending PodPhase = "Pending"
	PodRunning PodPhase = "Running"
	PodFailed  PodPhase = "Failed"
)

// PodSample is one pod of the target as the replica calculation sees it:
// its state from the API server and its usage from metrics.k8s.io.
type PodSample struct {
	Name     string
	Phase    PodPhase
	Deleting bool
	// Ready is the pod's Ready condition; ReadyKnown is false when the pod
	// has no such condition or no start time.
	Ready, ReadyKnown bool
	// Started is status.startTime; ReadyChanged is the Ready condition's
	// lastTransitionTime.
	Started, ReadyChanged time.Time
	// Request is the sum of the containers' requests for the resource
	// (millicores, bytes); HasRequest is false when a container has none.
	Request    int64
	HasRequest bool
	// Usage is the pod's usage from metrics.k8s.io (millicores, bytes), or
	// the custom metric's value; HasUsage is false when the metrics API has
	// no sample for it. UsageAt and Window are the sample's timestamp and
	// window.
	Usage    int64
	HasUsage bool
	UsageAt  time.Time
	Window   time.Duration
}

// The HPA controller's defaults for judging a CPU sample of a starting pod
// (kube-controller-manager --horizontal-pod-autoscaler-cpu-initialization-period
// and --horizontal-pod-autoscaler-initial-readiness-delay).
const (
	cpuInitializationPeriod       = 5 * time.Minute
	delayOfInitialReadinessStatus = 30 * time.Second
)

// podGroups is the HPA's grouping of pods (replica_calculator.go, groupPods).
type podGroups struct {
	ready                     int
	unready, missing, ignored []string
	// samples are the ready pods' values, by name.
	samples map[string]int64
}

// groupPods sorts pods as the HPA does: deleted and failed pods are
// ignored; pending pods are unready; pods the metrics API has no sample for
// are missing; for cpu, a pod whose sample may include its start-up (within
// the initialization period and not ready, or sampled before it became
// ready, or never ready yet) is unready. Everything else is ready and its
// sample counts.
func groupPods(pods []PodSample, metric MetricType, now time.Time) podGroups {
	g := podGroups{samples: make(map[string]int64, len(pods))}
	for _, p := range pods {
		if p.Deleting || p.Phase == PodFailed {
			g.ignored = append(g.ignored, p.Name)
			continue
		}
		if p.Phase == PodPending {
			g.unready = append(g.unready, p.Name)
			continue
		}
		if !p.HasUsage {
			g.missing = append(g.missing, p.Name)
			continue
		}
		if metric == MetricCPU {
			var unready bool
			switch {
			case !p.ReadyKnown:
				unready = true
			case p.Started.Add(cpuInitializationPeriod).After(now):
				unready = !p.Ready || p.UsageAt.Before(p.ReadyChanged.Add(p.Window))
			default:
				unready = !p.Ready && p.Started.Add(delayOfInitialReadinessStatus).After(p.ReadyChanged)
			}
			if unready {
				g.unready = append(g.unready, p.Name)
				continue
			}
		}
		g.ready++
		g.samples[p.Name] = p.Usage
	}
	return g
}

// utilizationReplicas is the HPA's resource calculation
// (replica_calculator.go, GetResourceReplicas) for cpu and memory: target is
// the utilisation in percent of the pods' requests. The proposal's value is
// the measured utilisation of the ready pods. Missing pods count as using
// max(100%, target) on a scale-down and 0 on a scale-up; unready pods as 0
// on a scale-up; and a proposal that the fill-ins would turn around, or
// that ends within the tolerance, keeps the current count.
func utilizationReplicas(current int32, pods []PodSample, metric MetricType, target float64, now time.Time) (Proposal, error) {
	if len(pods) == 0 {
		return Proposal{Replicas: current, Reason: "no pods match the target's selector; nothing to measure"}, nil
	}
	requests := make(map[string]int64, len(pods))
	for _, p := range pods {
		if p.Deleting || p.Phase == PodFailed {
			continue
		}
		if !p.HasRequest || p.Request <= 0 {
			return Proposal{}, fmt.Errorf("pod %s has no %s request in a container; utilisation cannot be computed", p.Name, metric)
		}
		requests[p.Name] = p.Request
	}
	g := groupPods(pods, metric, now)
	if len(g.samples) == 0 {
		return Proposal{Replicas: current, Reason: fmt.Sprintf("no metrics for ready pods (%d unready, %d without metrics); no change", len(g.unready), len(g.missing))}, nil
	}
	ratio, util := usageRatio(g.samples, requests, target)
	p := Proposal{Value: util, Measured: true}
	scaleUpWithUnready := len(g.unready) > 0 && ratio > 1
	if !scaleUpWithUnready && len(g.missing) == 0 {
		var within bool
		p.Replicas, within = ratioReplicas(int32(g.ready), ratio)
		if within {
			p.Replicas = current
			p.Reason = fmt.Sprintf("%s utilisation %s%% of target %s%% is within the %d%% tolerance", metric, num(util), num(target), int(Tolerance*100))
			return p, nil
		}
		p.Reason = fmt.Sprintf("%s utilisation %s%% against target %s%% over %d ready pods: ceil(%d × %.3f) = %d", metric, num(util), num(target), g.ready, g.ready, ratio, p.Replicas)
		return p, nil
	}
	all := make(map[string]int64, len(g.samples)+len(g.missing)+len(g.unready))
	for k, v := range g.samples {
		all[k] = v
	}
	switch {
	case ratio < 1:
		fill := math.Max(100, target)
		for _, name := range g.missing {
			all[name] = int64(float64(requests[name]) * fill / 100)
		}
	case ratio > 1:
		for _, name := range g.missing {
			all[name] = 0
		}
	}
	if scaleUpWithUnready {
		for _, name := range g.unready {
			all[name] = 0
		}
	}
	newRatio, _ := usageRatio(all, requests, target)
	note := fmt.Sprintf("%s utilisation %s%% against target %s%% (%d ready, %d unready, %d without metrics)", metric, num(util), num(target), g.ready, len(g.unready), len(g.missing))
	if (newRatio >= 1-Tolerance && newRatio <= 1+Tolerance) || (ratio < 1 && newRatio > 1) || (ratio > 1 && newRatio < 1) {
		p.Replicas = current
		p.Reason = note + fmt.Sprintf("; counting the pods without samples the ratio is %.3f: within tolerance or reversed, no change", newRatio)
		return p, nil
	}
	n := ceilReplicas(newRatio * float64(len(all)))
	if (newRatio < 1 && n > current) || (newRatio > 1 && n < current) {
		p.Replicas = current
		p.Reason = note + "; the pods without samples would turn the direction around, no change"
		return p, nil
	}
	p.Replicas = n
	p.Reason = note + fmt.Sprintf(": ceil(%d × %.3f) = %d", len(all), newRatio, n)
	return p, nil
}

// usageRatio is the pods' total usage over their total requests, in
// percent (util), and that over the target (ratio), over the pods in
// samples (metricsclient.GetResourceUtilizationRatio).
func usageRatio(samples, requests map[string]int64, target float64) (ratio, util float64) {
	var used, req int64
	for name, v := range samples {
		if r, ok := requests[name]; ok {
			used += v
			req += r
		}
	}
	if req == 0 {
		return 0, 0
	}
	util = float64(used) * 100 / float64(req)
	return util / target, util
}

// averageReplicas is the HPA's plain-metric calculation
// (calcPlainMetricReplicas) for a custom pods metric: target is the
// per-pod average. Missing pods count as the target on a scale-down and 0
// on a scale-up, unready pods as 0 on a scale-up.
func averageReplicas(current int32, pods []PodSample, target float64, now time.Time) Proposal {
	if len(pods) == 0 {
		return Proposal{Replicas: current, Reason: "no pods match the target's selector; nothing to measure"}
	}
	g := groupPods(pods, MetricCustom, now)
	if len(g.samples) == 0 {
		return Proposal{Replicas: current, Reason: fmt.Sprintf("no custom metric samples for ready pods (%d unready, %d without samples); no change", len(g.unready), len(g.missing))}
	}
	avg := func(m map[string]int64) float64 {
		var sum float64
		for _, v := range m {
			sum += float64(v) / 1000
		}
		return sum / float64(len(m))
	}
	value := avg(g.samples)
	ratio := value / target
	p := Proposal{Value: value, Measured: true}
	scaleUpWithUnready := len(g.unready) > 0 && ratio > 1
	if !scaleUpWithUnready && len(g.missing) == 0 {
		var within bool
		p.Replicas, within = ratioReplicas(int32(g.ready), ratio)
		if within {
			p.Replicas = current
			p.Reason = fmt.Sprintf("average %s of target %s is within the %d%% tolerance", num(value), num(target), int(Tolerance*100))
			return p
		}
		p.Reason = fmt.Sprintf("average %s against target %s over %d ready pods: ceil(%d × %.3f) = %d", num(value), num(target), g.ready, g.ready, ratio, p.Replicas)
		return p
	}
	all := make(map[string]int64, len(g.samples)+len(g.missing)+len(g.unready))
	for k, v := range g.samples {
		all[k] = v
	}
	for _, name := range g.missing {
		switch {
		case ratio < 1:
			all[name] = int64(target * 1000)
		case ratio > 1:
			all[name] = 0
		}
	}
	if scaleUpWithUnready {
		for _, name := range g.unready {
			all[name] = 0
		}
	}
	newRatio := avg(all) / target
	if (newRatio >= 1-Tolerance && newRatio <= 1+Tolerance) || (ratio < 1 && newRatio > 1) || (ratio > 1 && newRatio < 1) {
		p.Replicas = current
		p.Reason = fmt.Sprintf("average %s against target %s; counting the pods without samples the ratio is %.3f: no change", num(value), num(target), newRatio)
		return p
	}
	n := ceilReplicas(newRatio * float64(len(all)))
	if (newRatio < 1 && n > current) || (newRatio > 1 && n < current) {
		p.Replicas = current
		p.Reason = fmt.Sprintf("average %s against target %s; the pods without samples would turn the direction around, no change", num(value), num(target))
		return p
	}
	p.Replicas = n
	p.Reason = fmt.Sprintf("average %s against target %s (%d ready, %d unready, %d without samples): ceil(%d × %.3f) = %d", num(value), num(target), g.ready, len(g.unready), len(g.missing), len(all), newRatio, n)
	return p
}

// sessionReplicas proposes a count from active sessions: target is
// sessions per replica. It is computed from the total, not from a ratio to
// the current count, so a target at zero replicas scales to one as soon as
// a session exists (KEDA's activation) and back to zero when none is left;
// with replicas, the tolerance applies as for any ratio.
func sessionReplicas(current int32, sessions int, target float64) Proposal {
	perReplica := float64(sessions)
	if current > 0 {
		perReplica = float64(sessions) / float64(current)
	}
	p := Proposal{Value: perReplica, Measured: true}
	if current == 0 {
		p.Replicas = ceilReplicas(float64(sessions) / target)
		if sessions > 0 && p.Replicas < 1 {
			p.Replicas = 1
		}
		p.Reason = fmt.Sprintf("%d active sessions at 0 replicas, target %s per replica: %d", sessions, num(target), p.Replicas)
		return p
	}
	ratio := perReplica / target
	var within bool
	p.Replicas, within = ratioReplicas(current, ratio)
	if within {
		p.Reason = fmt.Sprintf("%d active sessions on %d replicas (%s per replica) is within %d%% of target %s", sessions, current, num(perReplica), int(Tolerance*100), num(target))
		return p
	}
	p.Reason = fmt.Sprintf("%d active sessions on %d replicas (%s per replica) against target %s: ceil(%d × %.3f) = %d", sessions, current, num(perReplica), num(target), current, ratio, p.Replicas)
	return p
}
