package function

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/runtime"
)

// mayManage is the permission rule of every autoscale route: policies
// scale shared infrastructure, so only admins and operators, as in
// StreamSpace's own handlers, may read or change them.
func mayManage(role authn.Role) bool { return role == authn.Admin || role == authn.Operator }

func requireManager(who authn.Identity) error {
	if !mayManage(who.Role) {
		return errs.E(errs.Forbidden, "only admins and operators may manage autoscaling policies")
	}
	return nil
}

// managedPolicyID is the {id} a policy route names, once the caller may
// manage policies.
func managedPolicyID(r *http.Request, who authn.Identity) (int64, error) {
	if err := requireManager(who); err != nil {
		return 0, err
	}
	return policyID(r)
}

// ListResult is the answer of GET …/policies.
type ListResult struct {
	Policies []Policy `json:"policies"`
}

// CreateResult is the answer of POST …/policies, StreamSpace's shape.
type CreateResult struct {
	ID      int64  `json:"id"`
	Message string `json:"message"`
	Policy  Policy `json:"policy"`
}

// MessageResult is the answer of PUT and DELETE.
type MessageResult struct {
	Message string  `json:"message"`
	Policy  *Policy `json:"policy,omitempty"`
}

// TriggerResult is the answer of POST …/trigger, StreamSpace's shape.
type TriggerResult struct {
	EventID          int64  `json:"event_id"`
	Action           Action `json:"action"`
	PreviousReplicas int32  `json:"previous_replicas"`
	NewReplicas      int32  `json:"new_replicas"`
	Message          string `json:"message"`
}

// EvaluateResult is the answer of POST …/evaluate: the decision and how it
// was reached, and whether anything was written.
type EvaluateResult struct {
	Outcome
	Message string `json:"message"`
}

// HistoryResult is the answer of GET …/history.
type HistoryResult struct {
	Events []ScalingEvent `json:"events"`
	Count  int            `json:"count"`
}

func (f *Function) listPolicies(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	if err := requireManager(who); err != nil {
		return err
	}
	var out []Policy
	err := db.Read(r.Context(), f.svc.Pool, func(tx pgx.Tx) error {
		var err error
		out, err = listPolicies(r.Context(), tx)
		return err
	})
	if err != nil {
		return db.Classify(err)
	}
	runtime.WriteJSON(w, http.StatusOK, ListResult{Policies: out})
	return nil
}

func (f *Function) getPolicy(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	id, err := managedPolicyID(r, who)
	if err != nil {
		return err
	}
	var p Policy
	err = db.Read(r.Context(), f.svc.Pool, func(tx pgx.Tx) error {
		var err error
		p, err = getPolicy(r.Context(), tx, id)
		return err
	})
	if err != nil {
		return db.Classify(err)
	}
	runtime.WriteJSON(w, http.StatusOK, p)
	return nil
}

func (f *Function) createPolicy(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	if err := requireManager(who); err != nil {
		return err
	}
	var req PolicyRequest
	if err := runtime.DecodeJSON(r, &req); err != nil {
		return err
	}
	in, err := req.Validate(f.cfg.MaxReplicas)
	if err != nil {
		return err
	}
	var p Policy
	err = f.svc.Commit(r.Context(), func(tx pgx.Tx) ([]cloudevents.Event, error) {
		var err error
		p, err = createPolicy(r.Context(), tx, in, who.Subject)
		return nil, err
	})
	if err != nil {
		return db.Classify(fmt.Errorf("create policy %q: %w", in.Name, err))
	}
	runtime.WriteJSON(w, http.StatusCreated, CreateResult{ID: p.ID, Message: "Auto-scaling policy created", Policy: p})
	return nil
}

func (f *Function) updatePolicy(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	id, err := managedPolicyID(r, who)
	if err != nil {
		return err
	}
	var req PolicyRequest
	if err := runtime.DecodeJSON(r, &req); err != nil {
		return err
	}
	in, err := req.Validate(f.cfg.MaxReplicas)
	if err != nil {
		return err
	}
	var p Policy
	err = f.svc.Commit(r.Context(), func(tx pgx.Tx) ([]cloudevents.Event, error) {
		var err error
		p, err = updatePolicy(r.Context(), tx, id, in)
		return nil, err
	})
	if err != nil {
		return db.Classify(fmt.Errorf("update policy %d: %w", id, err))
	}
	runtime.WriteJSON(w, http.StatusOK, MessageResult{Message: "Auto-scaling policy updated", Policy: &p})
	return nil
}

func (f *Function) deletePolicy(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	id, err := managedPolicyID(r, who)
	if err != nil {
		return err
	}
	err = f.svc.Commit(r.Context(), func(tx pgx.Tx) ([]cloudevents.Event, error) {
		return nil, deletePolicy(r.Context(), tx, id)
	})
	if err != nil {
		return db.Classify(fmt.Errorf("delete policy %d: %w", id, err))
	}
	runtime.WriteJSON(w, http.StatusOK, MessageResult{Message: "Auto-scaling policy deleted"})
	return nil
}

func (f *Function) history(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	if err := requireManager(who); err != nil {
		return err
	}
	q, err := parseHistoryQuery(r)
	if err != nil {
		return err
	}
	var out []ScalingEvent
	err = db.Read(r.Context(), f.svc.Pool, func(tx pgx.Tx) error {
		var err error
		out, err = history(r.Context(), tx, q)
		return err
	})
	if err != nil {
		return db.Classify(err)
	}
	runtime.WriteJSON(w, http.StatusOK, HistoryResult{Events: out, Count: len(out)})
	return nil
}

// requireCluster is the answer of the evaluating routes while autoscaling
// is off.
func (f *Function) requireCluster() error {
	if f.cluster == nil {
		return errs.E(errs.Unavailable, "autoscale is off: %s", f.off)
	}
	return nil
}

// withPolicy loads policy id and runs fn under its lease, so it never runs
// alongside a tick's or an event's evaluation of the same policy. No
// transaction is open while fn runs.
func (f *Function) withPolicy(ctx context.Context, id int64, fn func(p Policy) error) error {
	var p Policy
	err := db.Read(ctx, f.svc.Pool, func(tx pgx.Tx) error {
		var err error
		p, err = getPolicy(ctx, tx, id)
		return err
	})
	if err != nil {
		return db.Classify(err)
	}
	owner := f.instance + "/http/" + fmt.Sprint(time.Now().UnixNano())
	got, err := claim(ctx, f.svc.Pool, owner, f.cfg.LeaseTTL, []int64{id})
	if err != nil {
		return err
	}
	if len(got) == 0 {
		return busy(id)
	}
	defer func() {
		if err := release(context.WithoutCancel(ctx), f.svc.Pool, owner, got); err != nil {
			f.svc.Log.Warn("autoscale: releasing a policy lease failed; it expires by itself", "policy", id, "err", err)
		}
	}()
	return fn(p)
}

func (f *Function) evaluatePolicy(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	id, err := managedPolicyID(r, who)
	if err != nil {
		return err
	}
	dry, err := parseDryRun(r)
	if err != nil {
		return err
	}
	if err := f.requireCluster(); err != nil {
		return err
	}
	ctx := r.Context()
	var out Outcome
	evaluate := func(p Policy) error {
		if p.ScalingMode != Horizontal {
			return errs.E(errs.Unprocessable, "scaling_mode %q: only horizontal scaling is carried out", p.ScalingMode)
		}
		rd, err := f.newRound(ctx, []int64{p.ID})
		if err != nil {
			return err
		}
		var rec *Record
		out, rec, err = f.evaluate(ctx, p, rd, TriggerMetric, dry)
		if err != nil {
			return err
		}
		return f.recordOf(ctx, &out, rec)
	}
	if dry {
		// A dry run writes nothing, not even a lease.
		var p Policy
		err = db.Read(ctx, f.svc.Pool, func(tx pgx.Tx) error {
			var err error
			p, err = getPolicy(ctx, tx, id)
			return err
		})
		if err != nil {
			return db.Classify(err)
		}
		err = evaluate(p)
	} else {
		err = f.withPolicy(ctx, id, evaluate)
	}
	if err != nil {
		return err
	}
	msg := out.Decision.Reason
	switch {
	case dry:
		msg = "dry run, nothing written: " + msg
	case out.Refusal != "":
		msg = "refused: " + out.Refusal
	}
	runtime.WriteJSON(w, http.StatusOK, EvaluateResult{Outcome: out, Message: msg})
	return nil
}

func (f *Function) triggerPolicy(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	id, err := managedPolicyID(r, who)
	if err != nil {
		return err
	}
	var req TriggerRequest
	if err := runtime.DecodeJSON(r, &req); err != nil {
		return err
	}
	in, err := req.Validate(f.cfg.MaxReplicas)
	if err != nil {
		return err
	}
	if err := f.requireCluster(); err != nil {
		return err
	}
	ctx := r.Context()
	var res TriggerResult
	err = f.withPolicy(ctx, id, func(p Policy) error {
		if !p.Enabled {
			return errs.E(errs.Conflict, "policy %d is disabled; enable it to trigger it", id)
		}
		if p.ScalingMode != Horizontal {
			return errs.E(errs.Unprocessable, "scaling_mode %q: only horizontal scaling is carried out", p.ScalingMode)
		}
		var err error
		res, err = f.manual(ctx, p, in)
		return err
	})
	if err != nil {
		return err
	}
	runtime.WriteJSON(w, http.StatusOK, res)
	return nil
}

// manual carries out a manual trigger: the target is resolved and checked
// like any other evaluation, the count is bounded by min and max, written
// through the scale subresource with the resourceVersion read, and
// recorded with trigger manual. A refusal answers 409 with its reason and
// is recorded like an automatic one.
func (f *Function) manual(ctx context.Context, p Policy, in TriggerInput) (TriggerResult, error) {
	now := f.now()
	snap, err := f.cluster.snapshot(ctx)
	if err != nil {
		return TriggerResult{}, err
	}
	out := Outcome{PolicyID: p.ID, TargetType: p.TargetType, TargetID: p.TargetID, Trigger: TriggerManual}
	for attempt := 1; ; attempt++ {
		t, err := f.cluster.resolve(ctx, p, snap)
		var refusal *Refusal
		if errors.As(err, &refusal) {
			out.Refusal = refusal.Reason
			out.Decision = Decision{Action: Refused, Reason: refusal.Reason}
			if err := f.recordOf(ctx, &out, &Record{Kind: RecordRefusal, Policy: p, Outcome: out, At: now}); err != nil {
				return TriggerResult{}, err
			}
			return TriggerResult{}, errs.E(errs.Conflict, "policy %d cannot scale its target: %s", p.ID, refusal.Reason)
		}
		if err != nil {
			return TriggerResult{}, err
		}
		out.Target = t.Kind + "/" + t.Name
		d, err := DecideManual(ManualInput{
			Current: t.Replicas, Min: p.MinReplicas, Max: p.MaxReplicas, Action: in.Action, Replicas: in.Replicas,
			Up: p.ScaleUpPolicy.step(DefaultUpStabilization), Down: p.ScaleDownPolicy.step(DefaultDownStabilization), Reason: in.Reason,
		})
		if err != nil {
			return TriggerResult{}, errs.E(errs.Invalid, "%s", err.Error())
		}
		out.Decision = d
		if d.Action != NoChange {
			err = f.cluster.writeScale(ctx, t, d.Desired)
			if errors.Is(err, errConflict) && attempt < conflictRetries {
				continue
			}
			if errors.Is(err, errConflict) {
				why := fmt.Sprintf("%s changed under %d attempts to scale it (resourceVersion conflicts)", out.Target, attempt)
				out.Refusal = why
				if err := f.recordOf(ctx, &out, &Record{Kind: RecordFailed, Policy: p, Outcome: out, At: now}); err != nil {
					return TriggerResult{}, err
				}
				return TriggerResult{}, errs.E(errs.Conflict, "%s; try again", why)
			}
			if err != nil {
				return TriggerResult{}, err
			}
		} else {
			// Nothing to write; the row still records that it was asked.
			out.Decision.Action = in.Action
		}
		if err := f.recordOf(ctx, &out, &Record{Kind: RecordChange, Policy: p, Outcome: out, At: now}); err != nil {
			return TriggerResult{}, err
		}
		return TriggerResult{
			EventID: out.EventID, Action: in.Action, PreviousReplicas: d.Current, NewReplicas: d.Desired,
			Message: fmt.Sprintf("Scaling %s from %d to %d replicas", in.Action, d.Current, d.Desired),
		}, nil
	}
}

// tick is the autoscale PingSource's handler: every enabled policy is
// evaluated. An API server or database that is unavailable answers 5xx so
// the broker retries; refusals are recorded and answer 2xx.
func (f *Function) tick(ctx context.Context, _ cloudevents.Event) (err error) {
	if f.cluster == nil {
		runtime.AddLogAttrs(ctx, slog.String("autoscale", "off: "+f.off))
		return nil
	}
	// A tick is the function's long job: /metrics shows ticks running and
	// failed (docs/runtime.md).
	job := f.svc.Job("tick")
	job.Start()
	defer func() { job.Done(err) }()
	start := time.Now()
	if err := f.svc.Commit(ctx, func(tx pgx.Tx) ([]cloudevents.Event, error) {
		return nil, prune(ctx, tx, f.now())
	}); err != nil {
		return db.Classify(err)
	}
	sum, _, err := f.runRound(ctx, nil, TriggerMetric)
	f.logRound("tick", sum, time.Since(start))
	runtime.AddLogAttrs(ctx, slog.Int("evaluated", sum.Evaluated), slog.Int("scaled", sum.Scaled), slog.Int("refused", sum.Refused))
	return err
}

// onSession handles session.created and session.terminated: the sessions
// policies of the session's template or namespace are evaluated at once.
func (f *Function) onSession(ctx context.Context, e cloudevents.Event) error {
	var d events.SessionCreatedData
	if err := e.DataAs(&d); err != nil {
		return errs.Wrap(errs.Invalid, err, "data of %s: not a session event", e.Type())
	}
	return f.sessionChanged(ctx, e, d.TemplateID, d.Namespace)
}

// SessionResource is what onSessionResource reads of a Session object sent
// by the ApiServerSource.
type SessionResource struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Spec struct {
		Template string `json:"template"`
	} `json:"spec"`
}

// The resource the ApiServerSource watches (deploy/functions/autoscale).
const (
	sessionAPIVersion = "stream.space/v1alpha1"
	sessionKind       = "Session"
)

// onSessionResource handles the ApiServerSource's add and delete events of
// StreamSpace's Session resources like session.created and
// session.terminated. Another kind of object is acknowledged and ignored.
func (f *Function) onSessionResource(ctx context.Context, e cloudevents.Event) error {
	var s SessionResource
	if err := e.DataAs(&s); err != nil {
		return errs.Wrap(errs.Invalid, err, "data of %s: not a Kubernetes object", e.Type())
	}
	if s.APIVersion != sessionAPIVersion || s.Kind != sessionKind {
		runtime.AddLogAttrs(ctx, slog.String("ignored", s.APIVersion+" "+s.Kind))
		return nil
	}
	if s.Spec.Template == "" {
		return errs.E(errs.Invalid, "data of %s: Session %s has no spec.template", e.Type(), s.Metadata.Name)
	}
	return f.sessionChanged(ctx, e, s.Spec.Template, s.Metadata.Namespace)
}

// sessionChanged evaluates the sessions policies a session of template in
// namespace concerns. A redelivered event is recognised by its processed
// record and has no second effect; one redelivered before that record was
// written evaluates again, which changes nothing that the first did not,
// since an evaluation moves toward the same count and never writes an
// unchanged one.
func (f *Function) sessionChanged(ctx context.Context, e cloudevents.Event, template, namespace string) error {
	if namespace == "" {
		namespace = f.cfg.Namespace
	}
	runtime.AddLogAttrs(ctx, slog.String("template", template), slog.String("namespace", namespace))
	if f.cluster == nil {
		runtime.AddLogAttrs(ctx, slog.String("autoscale", "off: "+f.off))
		return nil
	}
	var seen bool
	var ids []int64
	err := db.Read(ctx, f.svc.Pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, processedSQL, e.Source(), e.ID(), Name).Scan(&seen); err != nil || seen {
			return err
		}
		rows, err := tx.Query(ctx, sessionPoliciesSQL, template, namespace, f.cfg.Namespace)
		if err != nil {
			return err
		}
		ids, err = pgx.CollectRows(rows, pgx.RowTo[int64])
		return err
	})
	if err != nil {
		return db.Classify(err)
	}
	if seen {
		runtime.MarkDuplicate(ctx)
		return nil
	}
	if len(ids) > 0 {
		start := time.Now()
		sum, _, err := f.runRound(ctx, ids, TriggerEvent)
		f.logRound("session event", sum, time.Since(start))
		if err != nil {
			return err
		}
		if sum.Busy > 0 {
			// Another instance is evaluating one of them and may have
			// counted the sessions before this one: let the broker deliver
			// again rather than miss it.
			return errs.E(errs.Unavailable, "%d of the session's policies are being evaluated elsewhere; try again", sum.Busy)
		}
	}
	runtime.AddLogAttrs(ctx, slog.Int("policies", len(ids)))
	_, err = f.svc.Once(ctx, e, func(tx pgx.Tx) ([]cloudevents.Event, error) { return nil, nil })
	return err
}
