package function

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// Tolerance is the band around the target inside which a metric changes
// nothing: a usage ratio within [1-Tolerance, 1+Tolerance] keeps the current
// replica count, as the HPA's default --horizontal-pod-autoscaler-tolerance
// does (k8s.io/kubernetes pkg/controller/podautoscaler, Tolerances.isWithin).
const Tolerance = 0.1

// Default stabilization windows, the HPA's defaults (autoscaling/v2
// HPAScalingRules): a scale-down follows the highest recommendation of the
// last five minutes, a scale-up happens at once.
const (
	DefaultDownStabilization = 300 * time.Second
	DefaultUpStabilization   = 0
)

// Action is what a decision does to the target.
type Action string

// The actions; scale_up and scale_down are StreamSpace's values of
// scaling_events.action.
const (
	ScaleUp   Action = "scale_up"
	ScaleDown Action = "scale_down"
	NoChange  Action = "none"
	// Refused is a decision that could not be carried out: the target is
	// missing, not opted in, owned by another scaler, or in conflict.
	Refused Action = "refused"
)

// actionOf is the action that moves from to to.
func actionOf(from, to int32) Action {
	switch {
	case to > from:
		return ScaleUp
	case to < from:
		return ScaleDown
	}
	return NoChange
}

// Step is a scale_up_policy or scale_down_policy as the decision uses it.
type Step struct {
	// Threshold, when positive, gates the direction: no step in it until the
	// metric value crosses the threshold (at or above it for a scale-up, at
	// or below it for a scale-down).
	Threshold float64
	// Increment is the smallest step of an automatic scale-up (a warm pool
	// grows by at least this much) and the step of a manual trigger that
	// names no replica count. At least 1.
	Increment int32
	// MaxIncrement, when positive, is the largest step one decision takes,
	// like an HPA scaling policy of type Pods.
	MaxIncrement int32
	// Stabilization is the window of past recommendations the decision
	// looks at (see Decide).
	Stabilization time.Duration
}

// Recommendation is one evaluation's bounded recommendation, kept in
// PostgreSQL (autoscale_recommendations) for the stabilization windows.
type Recommendation struct {
	Replicas int32
	At       time.Time
}

// Proposal is what a metric asks for: the replica count that brings it to
// its target (the HPA's replica calculation, tolerance applied), the value
// the threshold gates compare and a sentence saying how it was reached.
type Proposal struct {
	Replicas int32
	// Value is the metric's current value in the unit of
	// target_metric_value: percent of requests for cpu and memory, sessions
	// per replica, the custom metric's per-pod average, replicas for
	// schedule.
	Value float64
	// Measured is false when the metric could not be read in a way that
	// allows a change (no pods to measure); Replicas then equals the
	// current count.
	Measured bool
	Reason   string
}

// DecisionInput is everything Decide looks at. It holds no client: the
// decision is a pure function of it, so it is tested directly and costs
// microseconds (BenchmarkDecide).
type DecisionInput struct {
	Now      time.Time
	Current  int32
	Min, Max int32
	Proposal Proposal
	Up, Down Step
	// Cooldown is cooldown_period_seconds: no automatic change until this
	// long after the last one (LastChange).
	Cooldown   time.Duration
	LastChange time.Time
	// History is the policy's earlier recommendations, any order; those
	// older than the longer window are ignored.
	History []Recommendation
}

// Decision is the outcome of one evaluation.
type Decision struct {
	Action  Action `json:"action"`
	Current int32  `json:"current_replicas"`
	Desired int32  `json:"desired_replicas"`
	// Recommendation is the metric's proposal after the threshold gates and
	// the min/max bounds, before stabilization: what the history keeps.
	Recommendation int32   `json:"recommendation"`
	MetricValue    float64 `json:"metric_value"`
	Reason         string  `json:"reason"`
	// Steps explains the decision stage by stage, for the dry run.
	Steps []string `json:"steps"`
}

// Decide makes one automatic decision, in the HPA's order
// (k8s.io/kubernetes pkg/controller/podautoscaler/horizontal.go,
// normalizeDesiredReplicasWithBehaviors): the metric's proposal, gated by
// the thresholds and bounded by min and max, becomes this evaluation's
// recommendation; the stabilization windows turn the recommendations into a
// stabilized count (stabilizeRecommendationWithBehaviors: a scale-up to the
// lowest recommendation of the up window, a scale-down to the highest of the
// down window); the step limits then bound the change
// (convertDesiredReplicasWithBehaviorRate), and finally the cooldown holds
// any change made too soon after the last.
func Decide(in DecisionInput) Decision {
	d := Decision{Current: in.Current, MetricValue: in.Proposal.Value}
	note := func(format string, args ...any) { d.Steps = append(d.Steps, fmt.Sprintf(format, args...)) }
	note("metric: %s", in.Proposal.Reason)

	rec := in.Proposal.Replicas
	switch {
	case rec > in.Current && in.Up.Threshold > 0 && in.Proposal.Value < in.Up.Threshold:
		note("scale-up gated: value %s below scale_up_policy.threshold %s", num(in.Proposal.Value), num(in.Up.Threshold))
		rec = in.Current
	case rec < in.Current && in.Down.Threshold > 0 && in.Proposal.Value > in.Down.Threshold:
		note("scale-down gated: value %s above scale_down_policy.threshold %s", num(in.Proposal.Value), num(in.Down.Threshold))
		rec = in.Current
	}
	if b := clamp(rec, in.Min, in.Max); b != rec {
		note("recommendation %d bounded to %d by [min_replicas %d, max_replicas %d]", rec, b, in.Min, in.Max)
		rec = b
	}
	d.Recommendation = rec

	stable := stabilize(in, rec)
	if stable != rec {
		note("stabilized to %d (up window %s, down window %s)", stable, in.Up.Stabilization, in.Down.Stabilization)
	}
	desired := limitStep(in, stable)
	if desired != stable {
		note("step limited: %d instead of %d", desired, stable)
	}
	// A count outside [min, max], whatever put it there, is brought back in
	// even against the windows, as the HPA does.
	if b := clamp(desired, in.Min, in.Max); b != desired {
		note("bounded to %d by [min_replicas %d, max_replicas %d]", b, in.Min, in.Max)
		desired = b
	}

	if desired != in.Current && in.Cooldown > 0 && !in.LastChange.IsZero() {
		if until := in.LastChange.Add(in.Cooldown); in.Now.Before(until) {
			note("cooldown: last change at %s, no change before %s", in.LastChange.UTC().Format(time.RFC3339), until.UTC().Format(time.RFC3339))
			d.Action, d.Desired = NoChange, in.Current
			d.Reason = strings.Join(d.Steps, "; ")
			return d
		}
	}
	d.Desired = desired
	d.Action = actionOf(in.Current, desired)
	if d.Action == NoChange {
		note("no change: %d replicas", in.Current)
	} else {
		note("%s from %d to %d", d.Action, in.Current, desired)
	}
	d.Reason = strings.Join(d.Steps, "; ")
	return d
}

// stabilize applies the windows to the recommendations: the up window's
// lowest recommendation is the most a scale-up may reach, the down window's
// highest the least a scale-down may reach (the HPA's
// stabilizeRecommendationWithBehaviors). rec, this evaluation's, is part of
// both windows.
func stabilize(in DecisionInput, rec int32) int32 {
	up, down := rec, rec
	upCut, downCut := in.Now.Add(-in.Up.Stabilization), in.Now.Add(-in.Down.Stabilization)
	for _, h := range in.History {
		if h.At.After(upCut) && h.Replicas < up {
			up = h.Replicas
		}
		if h.At.After(downCut) && h.Replicas > down {
			down = h.Replicas
		}
	}
	out := in.Current
	if out < up {
		out = up
	}
	if out > down {
		out = down
	}
	return out
}

// limitStep bounds the change from Current to want by the direction's
// increment and max_increment. A scale-up adds at least Increment (never
// past Max); a scale-down removes only what the recommendation says, since
// removing more would be undone by the next evaluation.
func limitStep(in DecisionInput, want int32) int32 {
	switch {
	case want > in.Current:
		step := want - in.Current
		if step < in.Up.Increment {
			step = min(in.Up.Increment, max(in.Max-in.Current, step))
		}
		if in.Up.MaxIncrement > 0 && step > in.Up.MaxIncrement {
			step = in.Up.MaxIncrement
		}
		return in.Current + step
	case want < in.Current:
		step := in.Current - want
		if in.Down.MaxIncrement > 0 && step > in.Down.MaxIncrement {
			step = in.Down.MaxIncrement
		}
		return in.Current - step
	}
	return want
}

// ManualInput is a manual trigger: POST …/policies/{id}/trigger.
type ManualInput struct {
	Current  int32
	Min, Max int32
	Action   Action
	// Replicas, when positive, is the count asked for; otherwise the
	// direction's Increment is the step.
	Replicas int32
	Up, Down Step
	Reason   string
}

// DecideManual makes a manual decision. It bypasses the stabilization
// windows, the thresholds and the cooldown (an operator asked for it) but
// never min_replicas or max_replicas. A count that contradicts the action
// (a scale_up to fewer replicas than now) is an error naming replicas.
func DecideManual(in ManualInput) (Decision, error) {
	d := Decision{Current: in.Current}
	want := in.Replicas
	if want <= 0 {
		switch in.Action {
		case ScaleUp:
			want = in.Current + max(in.Up.Increment, 1)
		default:
			want = in.Current - max(in.Down.Increment, 1)
		}
	}
	if in.Action == ScaleUp && want < in.Current {
		return d, fmt.Errorf("replicas: %d is fewer than the current %d; a scale_up cannot lower the count", want, in.Current)
	}
	if in.Action == ScaleDown && want > in.Current {
		return d, fmt.Errorf("replicas: %d is more than the current %d; a scale_down cannot raise the count", want, in.Current)
	}
	d.Steps = append(d.Steps, fmt.Sprintf("manual %s to %d", in.Action, want))
	d.Recommendation = want
	if b := clamp(want, in.Min, in.Max); b != want {
		d.Steps = append(d.Steps, fmt.Sprintf("bounded to %d by [min_replicas %d, max_replicas %d]", b, in.Min, in.Max))
		want = b
	}
	d.Desired = want
	d.Action = actionOf(in.Current, want)
	if d.Action == NoChange {
		d.Steps = append(d.Steps, fmt.Sprintf("no change: already %d replicas", in.Current))
	}
	if in.Reason != "" {
		d.Steps = append(d.Steps, "operator: "+in.Reason)
	}
	d.Reason = strings.Join(d.Steps, "; ")
	return d, nil
}

// ratioReplicas is the HPA's basic formula: ceil(count × ratio), or count
// when the ratio is within the tolerance band.
func ratioReplicas(count int32, ratio float64) (int32, bool) {
	if ratio >= 1-Tolerance && ratio <= 1+Tolerance {
		return count, true
	}
	return ceilReplicas(ratio * float64(count)), false
}

// ceilReplicas rounds a replica count up, guarding against float noise
// (3.0000000000000004 is 3) and overflow.
func ceilReplicas(x float64) int32 {
	const eps = 1e-9
	if x <= 0 || math.IsNaN(x) {
		return 0
	}
	if x > math.MaxInt32 {
		return math.MaxInt32
	}
	return int32(math.Ceil(x - eps))
}

func clamp(n, lo, hi int32) int32 {
	if n < lo {
		return lo
	}
	if n > hi {
		return hi
	}
	return n
}

// num formats a metric value without trailing zeros.
func num(f float64) string { return fmt.Sprintf("%.4g", f) }
