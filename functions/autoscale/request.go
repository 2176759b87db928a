package function

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/validate"
)

// TargetType is a policy's target_type (docs/autoscale.md, Targets).
type TargetType string

// The target types.
const (
	TargetDeployment  TargetType = "deployment"
	TargetStatefulSet TargetType = "statefulset"
	// TargetTemplate is the one Deployment or StatefulSet labelled
	// streamspace.io/template-pool=<target_id>: a template's warm pool.
	TargetTemplate TargetType = "template"
)

// ScalingMode is a policy's scaling_mode.
type ScalingMode string

// The scaling modes. Only Horizontal is carried out.
const (
	Horizontal ScalingMode = "horizontal"
	Vertical   ScalingMode = "vertical"
	Both       ScalingMode = "both"
)

// Limits and defaults of a policy's fields.
const (
	MaxNameLength        = 255
	MaxDescriptionLength = 2000
	MaxStabilization     = 3600 // seconds, as the HPA's behavior allows
	MaxCooldown          = 86400
	DefaultCooldown      = 300 // StreamSpace's column default
	MaxLookAhead         = 1440
	MaxWindows           = 50
	MaxMetadataBytes     = 16 << 10
	MaxReasonLength      = 1000
	DefaultHistoryLimit  = 50
	MaxHistoryLimit      = 500
)

// ScalePolicy is scale_up_policy or scale_down_policy, as StreamSpace
// stores them. StabilizationSeconds is a pointer so that an absent value
// takes the direction's default rather than 0.
type ScalePolicy struct {
	Threshold            float64 `json:"threshold"`
	Increment            int32   `json:"increment"`
	MaxIncrement         int32   `json:"max_increment"`
	StabilizationSeconds *int    `json:"stabilization_seconds"`
}

// PredictiveScaling is predictive_scaling: an hour → replicas map
// (schedule_pattern) honoured as one-hour windows, opened
// look_ahead_minutes early.
type PredictiveScaling struct {
	Enabled          bool             `json:"enabled"`
	SchedulePattern  map[string]int32 `json:"schedule_pattern,omitempty"`
	LookAheadMinutes int              `json:"look_ahead_minutes"`
}

// WindowSpec is one cron window in metadata.schedule, as KEDA's cron scaler
// has them.
type WindowSpec struct {
	Cron     string `json:"cron"`
	Timezone string `json:"timezone"`
	Duration string `json:"duration"`
	Replicas int32  `json:"replicas"`
}

// PolicyRequest is the body of POST and PUT …/policies[/{id}]: every
// writable field of a policy. The read-only fields a client may send back
// from a GET (id, created_by, created_at, updated_at, conflict) are
// accepted and ignored.
type PolicyRequest struct {
	Name                  string            `json:"name"`
	Description           string            `json:"description"`
	TargetType            TargetType        `json:"target_type"`
	TargetID              string            `json:"target_id"`
	Enabled               *bool             `json:"enabled"`
	ScalingMode           ScalingMode       `json:"scaling_mode"`
	MinReplicas           *int32            `json:"min_replicas"`
	MaxReplicas           *int32            `json:"max_replicas"`
	MetricType            MetricType        `json:"metric_type"`
	TargetMetricValue     *float64          `json:"target_metric_value"`
	ScaleUpPolicy         *ScalePolicy      `json:"scale_up_policy"`
	ScaleDownPolicy       *ScalePolicy      `json:"scale_down_policy"`
	PredictiveScaling     PredictiveScaling `json:"predictive_scaling"`
	CooldownPeriodSeconds *int              `json:"cooldown_period_seconds"`
	Metadata              map[string]any    `json:"metadata"`

	ID        json.RawMessage `json:"id,omitempty"`
	CreatedBy json.RawMessage `json:"created_by,omitempty"`
	CreatedAt json.RawMessage `json:"created_at,omitempty"`
	UpdatedAt json.RawMessage `json:"updated_at,omitempty"`
	Conflict  json.RawMessage `json:"conflict,omitempty"`
}

// PolicyInput is a validated PolicyRequest, with every default filled in;
// it is what the store writes.
type PolicyInput struct {
	Name, Description     string
	TargetType            TargetType
	TargetID              string
	Enabled               bool
	ScalingMode           ScalingMode
	MinReplicas           int32
	MaxReplicas           int32
	MetricType            MetricType
	TargetMetricValue     *float64
	ScaleUpPolicy         ScalePolicy
	ScaleDownPolicy       ScalePolicy
	PredictiveScaling     PredictiveScaling
	CooldownPeriodSeconds int
	Metadata              map[string]any
}

// Validate checks every field and returns the policy to store; the error
// names the field. cap is the largest max_replicas allowed
// (AUTOSCALE_MAX_REPLICAS). A scaling_mode other than horizontal is
// errs.Unprocessable: well-formed, but not something this function does.
func (r PolicyRequest) Validate(cap int32) (PolicyInput, error) {
	in := PolicyInput{
		Name: strings.TrimSpace(r.Name), Description: r.Description,
		TargetType: r.TargetType, TargetID: r.TargetID,
		Enabled: true, ScalingMode: r.ScalingMode, MetricType: r.MetricType,
		TargetMetricValue: r.TargetMetricValue,
		MinReplicas:       1, MaxReplicas: 10, CooldownPeriodSeconds: DefaultCooldown,
		Metadata: r.Metadata,
	}
	bad := func(format string, args ...any) (PolicyInput, error) {
		return PolicyInput{}, errs.E(errs.Invalid, format, args...)
	}
	if err := validate.Text("name", in.Name, MaxNameLength); err != nil {
		return PolicyInput{}, err
	}
	if utf8.RuneCountInString(in.Description) > MaxDescriptionLength || (in.Description != "" && validate.Text("description", in.Description, 4*MaxDescriptionLength) != nil) {
		return bad("description: at most %d characters, without control characters", MaxDescriptionLength)
	}
	switch in.TargetType {
	case TargetDeployment, TargetStatefulSet:
		if msgs := validation.IsDNS1123Subdomain(in.TargetID); len(msgs) > 0 {
			return bad("target_id %q: not a Kubernetes object name: %s", validate.Quote(in.TargetID), strings.Join(msgs, "; "))
		}
	case TargetTemplate:
		if in.TargetID == "" {
			return bad("target_id: required")
		}
		if msgs := validation.IsValidLabelValue(in.TargetID); len(msgs) > 0 {
			return bad("target_id %q: a template target is matched by the label streamspace.io/template-pool, so it must be a label value: %s", validate.Quote(in.TargetID), strings.Join(msgs, "; "))
		}
	case "":
		return bad("target_type: required, one of deployment, statefulset, template")
	default:
		return bad("target_type %q: want deployment, statefulset or template", validate.Quote(string(in.TargetType)))
	}
	if r.Enabled != nil {
		in.Enabled = *r.Enabled
	}
	switch in.ScalingMode {
	case "":
		in.ScalingMode = Horizontal
	case Horizontal:
	case Vertical, Both:
		return PolicyInput{}, errs.E(errs.Unprocessable, "scaling_mode %q: only horizontal scaling is carried out; vertical and both are refused rather than stored and ignored", in.ScalingMode)
	default:
		return bad("scaling_mode %q: want horizontal", validate.Quote(string(in.ScalingMode)))
	}
	switch in.MetricType {
	case "":
		in.MetricType = MetricCPU
	case MetricCPU, MetricMemory, MetricSessions, MetricCustom, MetricSchedule:
	default:
		return bad("metric_type %q: want one of cpu, memory, sessions, custom, schedule", validate.Quote(string(in.MetricType)))
	}
	if r.MinReplicas != nil {
		in.MinReplicas = *r.MinReplicas
	}
	if r.MaxReplicas != nil {
		in.MaxReplicas = *r.MaxReplicas
	}
	switch {
	case in.MinReplicas < 0:
		return bad("min_replicas %d: want 0 or more", in.MinReplicas)
	case in.MinReplicas == 0 && !in.MetricType.allowsZero():
		return bad("min_replicas 0: allowed only with metric_type sessions or schedule; a %s metric cannot be measured with no replica running, so the target could never scale up again", in.MetricType)
	case in.MaxReplicas < in.MinReplicas:
		return bad("max_replicas %d: below min_replicas %d", in.MaxReplicas, in.MinReplicas)
	case in.MaxReplicas < 1:
		return bad("max_replicas %d: want at least 1", in.MaxReplicas)
	case in.MaxReplicas > cap:
		return bad("max_replicas %d: above the configured cap of %d (AUTOSCALE_MAX_REPLICAS)", in.MaxReplicas, cap)
	}
	if v := in.TargetMetricValue; v != nil {
		if math.IsNaN(*v) || math.IsInf(*v, 0) || *v <= 0 || *v > 99999999 {
			return bad("target_metric_value %s: want a positive number", num(*v))
		}
	} else if in.MetricType != MetricSchedule {
		return bad("target_metric_value: required for metric_type %s, a positive number", in.MetricType)
	}
	var err error
	if in.ScaleUpPolicy, err = checkStep("scale_up_policy", r.ScaleUpPolicy, DefaultUpStabilization); err != nil {
		return PolicyInput{}, err
	}
	if in.ScaleDownPolicy, err = checkStep("scale_down_policy", r.ScaleDownPolicy, DefaultDownStabilization); err != nil {
		return PolicyInput{}, err
	}
	if r.CooldownPeriodSeconds != nil {
		in.CooldownPeriodSeconds = *r.CooldownPeriodSeconds
	}
	if in.CooldownPeriodSeconds < 0 || in.CooldownPeriodSeconds > MaxCooldown {
		return bad("cooldown_period_seconds %d: want 0 to %d", in.CooldownPeriodSeconds, MaxCooldown)
	}
	in.PredictiveScaling = r.PredictiveScaling
	ps := in.PredictiveScaling
	if ps.LookAheadMinutes < 0 || ps.LookAheadMinutes > MaxLookAhead {
		return bad("predictive_scaling.look_ahead_minutes %d: want 0 to %d", ps.LookAheadMinutes, MaxLookAhead)
	}
	for h, n := range ps.SchedulePattern {
		if n < 0 || n > cap {
			return bad("predictive_scaling.schedule_pattern[%s] %d: want 0 to %d", validate.Quote(h), n, cap)
		}
	}
	if ps.Enabled && len(ps.SchedulePattern) == 0 && in.MetricType != MetricSchedule {
		return bad("predictive_scaling.schedule_pattern: required when predictive_scaling is enabled (an hour → replicas map)")
	}
	if in.Metadata == nil {
		in.Metadata = map[string]any{}
	}
	if raw, err := json.Marshal(in.Metadata); err != nil || len(raw) > MaxMetadataBytes {
		return bad("metadata: at most %d bytes of JSON", MaxMetadataBytes)
	}
	spec, err := parseMetadata(in.Metadata)
	if err != nil {
		return PolicyInput{}, errs.E(errs.Invalid, "%s", err.Error())
	}
	if _, err := patternWindows(ps.SchedulePattern, spec.Timezone); err != nil {
		return PolicyInput{}, errs.E(errs.Invalid, "%s", err.Error())
	}
	switch in.MetricType {
	case MetricCustom:
		if spec.MetricName == "" {
			return bad("metadata.metric_name: required for metric_type custom, the custom.metrics.k8s.io pods metric to read")
		}
	case MetricSchedule:
		if len(spec.Windows) == 0 && !(ps.Enabled && len(ps.SchedulePattern) > 0) {
			return bad("metadata.schedule: required for metric_type schedule, a list of {cron, timezone, duration, replicas}")
		}
	}
	for i, w := range spec.Windows {
		if w.Replicas > cap {
			return bad("metadata.schedule[%d].replicas %d: above the configured cap of %d", i, w.Replicas, cap)
		}
	}
	return in, nil
}

// checkStep validates a scale policy and fills its defaults: increment 1,
// the direction's stabilization window.
func checkStep(field string, p *ScalePolicy, defStab time.Duration) (ScalePolicy, error) {
	out := ScalePolicy{Increment: 1}
	if p != nil {
		out = *p
	}
	switch {
	case math.IsNaN(out.Threshold) || math.IsInf(out.Threshold, 0) || out.Threshold < 0:
		return out, errs.E(errs.Invalid, "%s.threshold %s: want 0 (no gate) or a positive number", field, num(out.Threshold))
	case out.Increment < 0:
		return out, errs.E(errs.Invalid, "%s.increment %d: want 1 or more", field, out.Increment)
	case out.MaxIncrement < 0:
		return out, errs.E(errs.Invalid, "%s.max_increment %d: want 0 (no limit) or more", field, out.MaxIncrement)
	}
	if out.Increment == 0 {
		out.Increment = 1
	}
	if out.MaxIncrement > 0 && out.MaxIncrement < out.Increment {
		return out, errs.E(errs.Invalid, "%s.max_increment %d: below increment %d", field, out.MaxIncrement, out.Increment)
	}
	if out.StabilizationSeconds == nil {
		s := int(defStab / time.Second)
		out.StabilizationSeconds = &s
	}
	if s := *out.StabilizationSeconds; s < 0 || s > MaxStabilization {
		return out, errs.E(errs.Invalid, "%s.stabilization_seconds %d: want 0 to %d", field, s, MaxStabilization)
	}
	return out, nil
}

// step is a stored scale policy as the decision uses it. A policy
// StreamSpace stored without stabilization_seconds gets the direction's
// default.
func (p ScalePolicy) step(defStab time.Duration) Step {
	s := Step{Threshold: p.Threshold, Increment: max(p.Increment, 1), MaxIncrement: max(p.MaxIncrement, 0), Stabilization: defStab}
	if p.StabilizationSeconds != nil {
		s.Stabilization = time.Duration(*p.StabilizationSeconds) * time.Second
	}
	return s
}

// MetadataSpec is what the function reads from a policy's metadata; other
// keys are the UI's and are kept as they are.
type MetadataSpec struct {
	// MetricName is the custom.metrics.k8s.io pods metric (metric_type custom).
	MetricName string
	// Timezone is the zone of predictive_scaling.schedule_pattern (default UTC).
	Timezone string
	// Template narrows a sessions metric of a deployment or statefulset
	// target to one template's sessions; without it every active session of
	// the namespace counts.
	Template string
	// Windows are metadata.schedule's cron windows.
	Windows []Window
}

// parseMetadata reads and checks the keys of metadata the function uses.
func parseMetadata(md map[string]any) (MetadataSpec, error) {
	var out MetadataSpec
	str := func(key string) (string, error) {
		v, ok := md[key]
		if !ok || v == nil {
			return "", nil
		}
		s, ok := v.(string)
		if !ok {
			return "", fmt.Errorf("metadata.%s: want a string", key)
		}
		return s, nil
	}
	var err error
	if out.MetricName, err = str("metric_name"); err != nil {
		return out, err
	}
	if out.MetricName != "" {
		if msgs := validation.IsDNS1123Subdomain(strings.ToLower(out.MetricName)); len(msgs) > 0 || strings.ContainsAny(out.MetricName, "/?#%") {
			return out, fmt.Errorf("metadata.metric_name %q: not a metric name", validate.Quote(out.MetricName))
		}
	}
	if out.Timezone, err = str("timezone"); err != nil {
		return out, err
	}
	if out.Timezone != "" {
		if _, err := loadLocation(out.Timezone); err != nil {
			return out, fmt.Errorf("metadata.timezone %q: not a known IANA timezone", validate.Quote(out.Timezone))
		}
	}
	if out.Template, err = str("template"); err != nil {
		return out, err
	}
	if out.Template != "" {
		if err := validate.ID("metadata.template", out.Template); err != nil {
			return out, fmt.Errorf("metadata.template: 1-255 characters without control characters")
		}
	}
	raw, ok := md["schedule"]
	if !ok || raw == nil {
		return out, nil
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return out, fmt.Errorf("metadata.schedule: want a list of {cron, timezone, duration, replicas}")
	}
	var specs []WindowSpec
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&specs); err != nil {
		return out, fmt.Errorf("metadata.schedule: want a list of {cron, timezone, duration, replicas}: %v", err)
	}
	if len(specs) > MaxWindows {
		return out, fmt.Errorf("metadata.schedule: %d windows, at most %d", len(specs), MaxWindows)
	}
	for i, s := range specs {
		field := fmt.Sprintf("metadata.schedule[%d]", i)
		d, err := time.ParseDuration(s.Duration)
		if err != nil {
			return out, fmt.Errorf("%s.duration %q: want a duration such as 30m or 2h", field, validate.Quote(s.Duration))
		}
		w, err := newWindow(field, s.Cron, s.Timezone, d, s.Replicas)
		if err != nil {
			return out, err
		}
		out.Windows = append(out.Windows, w)
	}
	return out, nil
}

// policyID reads the {id} path value: a positive integer, as
// autoscaling_policies.id is a serial.
func policyID(r *http.Request) (int64, error) {
	return parseID("id", r.PathValue("id"))
}

func parseID(field, s string) (int64, error) {
	n, err := strconv.ParseInt(s, 10, 32)
	if err != nil || n < 1 || strconv.FormatInt(n, 10) != s {
		return 0, errs.E(errs.Invalid, "%s %q: want a policy id, a positive integer", field, validate.Quote(s))
	}
	return n, nil
}

// TriggerRequest is the body of POST …/policies/{id}/trigger.
type TriggerRequest struct {
	Action   Action `json:"action"`
	Replicas *int32 `json:"replicas"`
	Reason   string `json:"reason"`
}

// TriggerInput is a validated TriggerRequest.
type TriggerInput struct {
	Action   Action
	Replicas int32 // 0: the policy's increment
	Reason   string
}

// Validate checks the action, the replica count and the reason.
func (r TriggerRequest) Validate(cap int32) (TriggerInput, error) {
	in := TriggerInput{Action: r.Action, Reason: strings.TrimSpace(r.Reason)}
	switch r.Action {
	case ScaleUp, ScaleDown:
	case "":
		return in, errs.E(errs.Invalid, "action: required, scale_up or scale_down")
	default:
		return in, errs.E(errs.Invalid, "action %q: want scale_up or scale_down", validate.Quote(string(r.Action)))
	}
	if r.Replicas != nil {
		if *r.Replicas < 0 || *r.Replicas > cap {
			return in, errs.E(errs.Invalid, "replicas %d: want 0 to %d", *r.Replicas, cap)
		}
		in.Replicas = *r.Replicas
	}
	if in.Reason != "" {
		if err := validate.Text("reason", in.Reason, MaxReasonLength); err != nil {
			return in, err
		}
	}
	return in, nil
}

// HistoryQuery is a validated GET …/history query.
type HistoryQuery struct {
	PolicyID int64 // 0: every policy
	Limit    int
}

func parseHistoryQuery(r *http.Request) (HistoryQuery, error) {
	q := r.URL.Query()
	var hq HistoryQuery
	var err error
	if hq.Limit, err = validate.Limit(q, DefaultHistoryLimit, MaxHistoryLimit); err != nil {
		return hq, err
	}
	if q.Has("policy_id") && q.Get("policy_id") != "" {
		if hq.PolicyID, err = parseID("policy_id", q.Get("policy_id")); err != nil {
			return hq, err
		}
	}
	return hq, nil
}

// parseDryRun reads ?dryRun= on evaluate; absent means a real evaluation.
func parseDryRun(r *http.Request) (bool, error) {
	q := r.URL.Query()
	if !q.Has("dryRun") {
		return false, nil
	}
	v, err := strconv.ParseBool(q.Get("dryRun"))
	if err != nil {
		return false, errs.E(errs.Invalid, "dryRun %q: want true or false", validate.Quote(q.Get("dryRun")))
	}
	return v, nil
}
