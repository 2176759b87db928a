package function

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/errs"
)

// conflictRetries bounds how often one evaluation re-reads a target whose
// scale changed under it (a stale resourceVersion) before it records the
// conflict and leaves the target alone until the next evaluation.
const conflictRetries = 3

// Outcome is one policy's evaluation: what was decided and what was done.
type Outcome struct {
	PolicyID   int64      `json:"policy_id"`
	TargetType TargetType `json:"target_type"`
	TargetID   string     `json:"target_id"`
	// Target is the resolved object, "Deployment/name".
	Target   string   `json:"target,omitempty"`
	Decision Decision `json:"decision"`
	// Refusal, when set, is why nothing could be done.
	Refusal string `json:"refusal,omitempty"`
	DryRun  bool   `json:"dry_run"`
	// Applied says the replica count was written.
	Applied bool `json:"applied"`
	// EventID is the scaling_events row recorded, when one was.
	EventID int64   `json:"event_id,omitempty"`
	Trigger Trigger `json:"trigger"`
}

// round is what one evaluation round (a tick, a session event, one HTTP
// call) reads once for all its policies.
type round struct {
	now     time.Time
	snap    Snapshot
	history map[int64][]Recommendation
	// sessions are the namespace's active sessions, read with the history.
	sessions SessionCounts
}

// newRound reads the namespace's snapshot and the recommendation history of the
// policies. The history read is a short transaction of its own; none is
// held across the API calls that follow.
func (f *Function) newRound(ctx context.Context, ids []int64) (*round, error) {
	r := &round{now: f.now()}
	err := db.Read(ctx, f.svc.Pool, func(tx pgx.Tx) error {
		var err error
		if r.history, err = recommendations(ctx, tx, ids, r.now.Add(-MaxWindow)); err != nil {
			return err
		}
		r.sessions, err = activeSessions(ctx, tx, f.cluster.namespace)
		return err
	})
	if err != nil {
		return nil, db.Classify(err)
	}
	if r.snap, err = f.cluster.snapshot(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

// decide resolves the policy's target, measures its metric and decides,
// writing nothing. A *Refusal error is a reason not to act; other errors
// are failures (the API server or the database unavailable).
func (f *Function) decide(ctx context.Context, p Policy, r *round, t Target) (Decision, error) {
	prop, err := f.propose(ctx, p, t, r)
	if err != nil {
		return Decision{}, err
	}
	in := DecisionInput{
		Now: r.now, Current: t.Replicas, Min: p.MinReplicas, Max: p.MaxReplicas, Proposal: prop,
		Up:       p.ScaleUpPolicy.step(DefaultUpStabilization),
		Down:     p.ScaleDownPolicy.step(DefaultDownStabilization),
		Cooldown: time.Duration(p.CooldownPeriodSeconds) * time.Second,
		History:  r.history[p.ID],
	}
	if p.LastChangeAt != nil {
		in.LastChange = *p.LastChangeAt
	}
	return Decide(in), nil
}

// propose measures the policy's metric on target t and returns the replica
// count it asks for, with predictive_scaling's windows as a floor.
func (f *Function) propose(ctx context.Context, p Policy, t Target, r *round) (Proposal, error) {
	now := r.now
	md, err := parseMetadata(p.Metadata)
	if err != nil {
		return Proposal{}, refuse("the policy's %v", err)
	}
	var prop Proposal
	target := p.TargetMetricValue
	switch p.MetricType {
	case MetricCPU, MetricMemory, MetricCustom:
		if t.Replicas == 0 {
			prop = Proposal{Replicas: 0, Reason: fmt.Sprintf("no replicas: %s cannot be measured at 0 replicas", p.MetricType)}
			break
		}
		pods, err := f.cluster.podSamples(ctx, t, p.MetricType, md.MetricName)
		if err != nil {
			return Proposal{}, err
		}
		if p.MetricType == MetricCustom {
			prop = averageReplicas(t.Replicas, pods, target, now)
			break
		}
		if prop, err = utilizationReplicas(t.Replicas, pods, p.MetricType, target, now); err != nil {
			return Proposal{}, refuse("%v", err)
		}
	case MetricSessions:
		template := md.Template
		if p.TargetType == TargetTemplate {
			template = p.TargetID
		}
		prop = sessionReplicas(t.Replicas, r.sessions.count(template), target)
	case MetricSchedule:
		windows := md.Windows
		if p.PredictiveScaling.Enabled {
			pw, err := patternWindows(p.PredictiveScaling.SchedulePattern, md.Timezone)
			if err != nil {
				return Proposal{}, refuse("the policy's %v", err)
			}
			windows = append(windows, pw...)
		}
		lead := time.Duration(p.PredictiveScaling.LookAheadMinutes) * time.Minute
		want, open := scheduleReplicas(windows, now, lead)
		if !open {
			want = p.MinReplicas
			prop = Proposal{Replicas: want, Value: float64(want), Measured: true, Reason: fmt.Sprintf("no cron window open: min_replicas %d", want)}
		} else {
			prop = Proposal{Replicas: want, Value: float64(want), Measured: true, Reason: fmt.Sprintf("a cron window is open: %d replicas", want)}
		}
		return prop, nil
	default:
		return Proposal{}, refuse("metric_type %q is not one this function measures", p.MetricType)
	}
	if p.PredictiveScaling.Enabled && len(p.PredictiveScaling.SchedulePattern) > 0 {
		pw, err := patternWindows(p.PredictiveScaling.SchedulePattern, md.Timezone)
		if err != nil {
			return Proposal{}, refuse("the policy's %v", err)
		}
		lead := time.Duration(p.PredictiveScaling.LookAheadMinutes) * time.Minute
		if want, open := scheduleReplicas(pw, now, lead); open && want > prop.Replicas {
			prop.Reason += fmt.Sprintf("; predictive_scaling asks for %d from %d minutes before this hour", want, p.PredictiveScaling.LookAheadMinutes)
			prop.Replicas = want
		}
	}
	return prop, nil
}

// triggerOf is what scaling_events.trigger records for an automatic
// decision of p.
func triggerOf(p Policy, cause Trigger) Trigger {
	if cause == TriggerEvent {
		return TriggerEvent
	}
	if p.MetricType == MetricSchedule {
		return TriggerSchedule
	}
	return TriggerMetric
}

// RecordKind is what an evaluation leaves to record.
type RecordKind int

// The records.
const (
	// RecordRecommendation: no change; only the recommendation is kept
	// (and a refusal that ended is cleared).
	RecordRecommendation RecordKind = iota + 1
	// RecordChange: an applied change (or a manual trigger), with its row
	// and, when replicas changed, an autoscale.scaled event.
	RecordChange
	// RecordRefusal: a refusal, recorded when it starts or changes.
	RecordRefusal
	// RecordFailed: a failed write (conflicts), always recorded.
	RecordFailed
)

// Record is what one evaluation leaves to write. Records are written after
// the API calls, many in one unit of work (record), so a tick that changes
// a thousand targets commits a few times, not a thousand.
type Record struct {
	Kind    RecordKind
	Policy  Policy
	Outcome Outcome
	At      time.Time
}

// evaluate runs one automatic evaluation of p and returns what to record.
// With dry set it decides, calls nothing that writes and returns no
// record. Otherwise a change is written through the scale subresource,
// re-reading the target when another writer changed it in between.
func (f *Function) evaluate(ctx context.Context, p Policy, r *round, cause Trigger, dry bool) (out Outcome, rec *Record, err error) {
	out = Outcome{PolicyID: p.ID, TargetType: p.TargetType, TargetID: p.TargetID, DryRun: dry, Trigger: triggerOf(p, cause)}
	record := func(kind RecordKind) *Record {
		if dry {
			return nil
		}
		return &Record{Kind: kind, Policy: p, Outcome: out, At: r.now}
	}
	if p.ScalingMode != Horizontal {
		out.Refusal = fmt.Sprintf("scaling_mode %s is not carried out; only horizontal is", p.ScalingMode)
		return out, nil, nil
	}
	for attempt := 1; ; attempt++ {
		t, err := f.cluster.resolve(ctx, p, r.snap)
		var d Decision
		if err == nil {
			out.Target = t.Kind + "/" + t.Name
			d, err = f.decide(ctx, p, r, t)
		}
		var refusal *Refusal
		if errors.As(err, &refusal) {
			out.Refusal = refusal.Reason
			out.Decision = Decision{Action: Refused, Current: t.Replicas, Desired: t.Replicas, Reason: refusal.Reason}
			return out, record(RecordRefusal), nil
		}
		if err != nil {
			return out, nil, err
		}
		out.Decision = d
		if dry {
			return out, nil, nil
		}
		if d.Action == NoChange {
			f.svc.Log.Info("autoscale: no change", "policy", p.ID, "target", out.Target, "replicas", t.Replicas, "reason", d.Reason)
			return out, record(RecordRecommendation), nil
		}
		err = f.cluster.writeScale(ctx, t, d.Desired)
		if errors.Is(err, errConflict) && attempt < conflictRetries {
			f.svc.Log.Info("autoscale: target changed while deciding; reading it again", "policy", p.ID, "target", out.Target, "attempt", attempt)
			continue
		}
		if errors.Is(err, errConflict) {
			out.Refusal = fmt.Sprintf("%s changed under %d attempts to scale it (resourceVersion conflicts); left alone until the next evaluation", out.Target, attempt)
			out.Decision.Reason += "; " + out.Refusal
			return out, record(RecordFailed), nil
		}
		if errors.As(err, &refusal) {
			out.Refusal = refusal.Reason
			return out, record(RecordRefusal), nil
		}
		if err != nil {
			return out, nil, err
		}
		out.Applied = true
		f.svc.Log.Info("autoscale: scaled", "policy", p.ID, "target", out.Target, "from", d.Current, "to", d.Desired, "reason", d.Reason)
		return out, record(RecordChange), nil
	}
}

// recordBatch bounds the records one unit of work writes.
const recordBatch = 250

// record writes records, recordBatch at a time, each batch one unit of
// work with its events, and returns the scaling_events ids written, by
// policy. A replica count already written whose record then fails to
// commit is found in place by the next evaluation, which changes and
// records nothing; the error answers 5xx so the broker retries.
func (f *Function) record(ctx context.Context, recs []*Record) (map[int64]int64, error) {
	ids := map[int64]int64{}
	for len(recs) > 0 {
		batch := recs[:min(len(recs), recordBatch)]
		recs = recs[len(batch):]
		got := map[int64]int64{}
		err := f.svc.Commit(ctx, func(tx pgx.Tx) ([]cloudevents.Event, error) {
			clear(got)
			var evs []cloudevents.Event
			var rp []int64
			var rr []int32
			var ra []time.Time
			for _, rec := range batch {
				// A manual count is the operator's, not a recommendation:
				// it does not hold the windows (the cooldown protects it).
				if rec.Kind == RecordRecommendation || (rec.Kind == RecordChange && rec.Outcome.Trigger != TriggerManual) {
					rp, rr, ra = append(rp, rec.Policy.ID), append(rr, rec.Outcome.Decision.Recommendation), append(ra, rec.At)
				}
				id, e, err := f.recordOne(ctx, tx, rec)
				if err != nil {
					return nil, err
				}
				if id != 0 {
					got[rec.Policy.ID] = id
				}
				if e != nil {
					evs = append(evs, *e)
				}
			}
			if err := addRecommendations(ctx, tx, rp, rr, ra); err != nil {
				return nil, err
			}
			return evs, nil
		})
		if err != nil {
			return ids, db.Classify(fmt.Errorf("record %d decisions: %w", len(batch), err))
		}
		maps.Copy(ids, got)
	}
	return ids, nil
}

// recordOne writes one record in tx and returns its scaling_events id (0
// when it writes no row) and the event that reports it, if any.
func (f *Function) recordOne(ctx context.Context, tx pgx.Tx, rec *Record) (int64, *cloudevents.Event, error) {
	p, o, d := rec.Policy, rec.Outcome, rec.Outcome.Decision
	switch rec.Kind {
	case RecordRecommendation:
		if p.Conflict != "" {
			// The refusal in force has ended.
			if _, err := tx.Exec(ctx, clearConflictSQL, p.ID); err != nil {
				return 0, nil, err
			}
		}
		return 0, nil, nil
	case RecordChange:
		decision := uuid.New()
		mv := d.MetricValue
		row := ScalingEvent{
			PolicyID: p.ID, TargetType: p.TargetType, TargetID: p.TargetID, Action: d.Action,
			PreviousReplicas: d.Current, NewReplicas: d.Desired, Trigger: o.Trigger, MetricValue: &mv,
			Reason: d.Reason, Status: StatusCompleted, DecisionID: decision.String(),
		}
		if o.Trigger == TriggerManual {
			row.MetricValue = nil
		}
		id, err := insertEvent(ctx, tx, row, rec.At)
		if err != nil {
			return 0, nil, err
		}
		if d.Current == d.Desired {
			// A manual trigger already at its bound: recorded, nothing
			// scaled, no cooldown started.
			return id, nil, nil
		}
		if _, err := tx.Exec(ctx, changedSQL, p.ID, rec.At); err != nil {
			return 0, nil, err
		}
		e, err := scaledEvent(decision, p, f.cluster.namespace, o.Target, d)
		return id, &e, err
	case RecordRefusal:
		started, err := setConflict(ctx, tx, p.ID, o.Refusal, rec.At)
		if err != nil || !started {
			return 0, nil, err
		}
		f.svc.Log.Warn("autoscale: refused", "policy", p.ID, "reason", o.Refusal)
		return f.recordFailure(ctx, tx, rec)
	case RecordFailed:
		f.svc.Log.Warn("autoscale: failed", "policy", p.ID, "reason", o.Refusal)
		return f.recordFailure(ctx, tx, rec)
	}
	return 0, nil, fmt.Errorf("record of policy %d: unknown kind %d", p.ID, rec.Kind)
}

// recordFailure writes a failed row and its autoscale.failed event.
func (f *Function) recordFailure(ctx context.Context, tx pgx.Tx, rec *Record) (int64, *cloudevents.Event, error) {
	p, o := rec.Policy, rec.Outcome
	id, err := insertEvent(ctx, tx, failedRow(p, o, uuid.New(), o.Refusal), rec.At)
	if err != nil {
		return 0, nil, err
	}
	e, err := failedEvent(p, f.cluster.namespace, o, o.Refusal)
	return id, &e, err
}

func failedRow(p Policy, o Outcome, decision uuid.UUID, why string) ScalingEvent {
	d := o.Decision
	action := d.Action
	if action == NoChange || action == Refused || action == "" {
		action = Refused
	}
	return ScalingEvent{
		PolicyID: p.ID, TargetType: p.TargetType, TargetID: p.TargetID, Action: action,
		PreviousReplicas: d.Current, NewReplicas: d.Current, Trigger: o.Trigger,
		Reason: why, Status: StatusFailed, ErrorMessage: why, DecisionID: decision.String(),
	}
}

// recordOf writes one evaluation's record and sets the outcome's EventID.
func (f *Function) recordOf(ctx context.Context, out *Outcome, rec *Record) error {
	if rec == nil {
		return nil
	}
	ids, err := f.record(ctx, []*Record{rec})
	out.EventID = ids[rec.Policy.ID]
	return err
}

// Summary counts a round's outcomes, for the log.
type Summary struct {
	Evaluated, Scaled, Unchanged, Refused, Busy, Failed int
}

// runRound evaluates the enabled policies with ids (all when nil) under
// their leases, at most Concurrency at a time, and writes what they
// recommend. A policy whose lease another instance holds is skipped (Busy).
// The first failure (the API server or the database unavailable) is
// returned after every policy had its turn.
func (f *Function) runRound(ctx context.Context, ids []int64, cause Trigger) (Summary, []Outcome, error) {
	var policies []Policy
	err := db.Read(ctx, f.svc.Pool, func(tx pgx.Tx) error {
		var err error
		policies, err = queryPolicies(ctx, tx, enabledPoliciesSQL, ids)
		return err
	})
	if err != nil {
		return Summary{}, nil, db.Classify(err)
	}
	var sum Summary
	if len(policies) == 0 {
		return sum, nil, nil
	}
	want := make([]int64, len(policies))
	for i, p := range policies {
		want[i] = p.ID
	}
	owner := f.instance + "/" + uuid.NewString()
	got, err := claim(ctx, f.svc.Pool, owner, f.cfg.LeaseTTL, want)
	if err != nil {
		return sum, nil, err
	}
	defer func() {
		if err := release(context.WithoutCancel(ctx), f.svc.Pool, owner, got); err != nil {
			f.svc.Log.Warn("autoscale: releasing policy leases failed; they expire by themselves", "err", err)
		}
	}()
	mine := make(map[int64]bool, len(got))
	for _, id := range got {
		mine[id] = true
	}
	sum.Busy = len(policies) - len(got)
	r, err := f.newRound(ctx, got)
	if err != nil {
		return sum, nil, err
	}
	var (
		mu       sync.Mutex
		outcomes []Outcome
		records  []*Record
		first    error
		wg       sync.WaitGroup
		slots    = make(chan struct{}, f.cfg.Concurrency)
	)
	for _, p := range policies {
		if !mine[p.ID] {
			continue
		}
		wg.Add(1)
		slots <- struct{}{}
		go func(p Policy) {
			defer func() { <-slots; wg.Done() }()
			o, rec, err := f.evaluate(ctx, p, r, cause, false)
			mu.Lock()
			defer mu.Unlock()
			sum.Evaluated++
			switch {
			case err != nil:
				sum.Failed++
				if first == nil {
					first = err
				}
				f.svc.Log.Error("autoscale: evaluation failed", "policy", p.ID, "err", err)
				return
			case o.Refusal != "":
				sum.Refused++
			case o.Applied:
				sum.Scaled++
			default:
				sum.Unchanged++
			}
			if rec != nil {
				records = append(records, rec)
			}
			outcomes = append(outcomes, o)
		}(p)
	}
	wg.Wait()
	recorded, err := f.record(ctx, records)
	if err != nil && first == nil {
		first = err
	}
	for i := range outcomes {
		outcomes[i].EventID = recorded[outcomes[i].PolicyID]
	}
	return sum, outcomes, first
}

// busy is the answer when another instance is evaluating the policy.
func busy(id int64) error {
	return errs.E(errs.Unavailable, "policy %d is being evaluated by another instance; try again", id)
}

// logRound logs a round's summary.
func (f *Function) logRound(what string, s Summary, took time.Duration) {
	f.svc.Log.Info("autoscale: "+what, slog.Int("evaluated", s.Evaluated), slog.Int("scaled", s.Scaled),
		slog.Int("unchanged", s.Unchanged), slog.Int("refused", s.Refused), slog.Int("busy", s.Busy),
		slog.Int("failed", s.Failed), slog.Duration("took", took))
}
