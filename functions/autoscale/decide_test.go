package function

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

// base is a policy's decision input with nothing in the way: no history,
// no cooldown, increment 1, no step limit, no windows.
func base(current, proposal int32) DecisionInput {
	return DecisionInput{
		Now: t0, Current: current, Min: 1, Max: 10,
		Proposal: Proposal{Replicas: proposal, Value: 50, Measured: true, Reason: "test"},
		Up:       Step{Increment: 1},
		Down:     Step{Increment: 1},
	}
}

func TestDecide(t *testing.T) {
	ago := func(d time.Duration) time.Time { return t0.Add(-d) }
	tests := []struct {
		name        string
		in          DecisionInput
		wantAction  Action
		wantDesired int32
		wantRec     int32
		wantReason  string
	}{
		{"proposal up is followed", base(2, 4), ScaleUp, 4, 4, "scale_up from 2 to 4"},
		{"proposal down is followed without a window", base(4, 2), ScaleDown, 2, 2, "scale_down from 4 to 2"},
		{"same count is no change", base(3, 3), NoChange, 3, 3, "no change"},
		{"clamped to max", base(8, 40), ScaleUp, 10, 10, "bounded to 10"},
		{"clamped to min", base(3, 0), ScaleDown, 1, 1, "bounded to 1"},
		{"above max is brought back even with no proposal change", func() DecisionInput {
			in := base(14, 14)
			return in
		}(), ScaleDown, 10, 10, "bounded to 10"},
		{"below min is brought up", func() DecisionInput {
			in := base(0, 0)
			in.Min = 2
			return in
		}(), ScaleUp, 2, 2, "bounded to 2"},
		{"scale-up threshold gates below it", func() DecisionInput {
			in := base(2, 4)
			in.Up.Threshold = 80
			return in
		}(), NoChange, 2, 2, "below scale_up_policy.threshold 80"},
		{"scale-up threshold passes at it", func() DecisionInput {
			in := base(2, 4)
			in.Up.Threshold = 50
			return in
		}(), ScaleUp, 4, 4, "scale_up from 2 to 4"},
		{"scale-down threshold gates above it", func() DecisionInput {
			in := base(4, 2)
			in.Down.Threshold = 30
			return in
		}(), NoChange, 4, 4, "above scale_down_policy.threshold 30"},
		{"scale-down threshold passes below it", func() DecisionInput {
			in := base(4, 2)
			in.Down.Threshold = 60
			return in
		}(), ScaleDown, 2, 2, "scale_down from 4 to 2"},
		{"down window holds the highest recent recommendation", func() DecisionInput {
			in := base(6, 2)
			in.Down.Stabilization = 5 * time.Minute
			in.History = []Recommendation{{5, ago(4 * time.Minute)}, {3, ago(2 * time.Minute)}, {9, ago(6 * time.Minute)}}
			return in
		}(), ScaleDown, 5, 2, "stabilized to 5"},
		{"down window ignores what is older than it", func() DecisionInput {
			in := base(6, 2)
			in.Down.Stabilization = 5 * time.Minute
			in.History = []Recommendation{{9, ago(6 * time.Minute)}}
			return in
		}(), ScaleDown, 2, 2, "scale_down from 6 to 2"},
		{"down window never raises the count", func() DecisionInput {
			in := base(4, 2)
			in.Down.Stabilization = 5 * time.Minute
			in.History = []Recommendation{{8, ago(time.Minute)}}
			return in
		}(), NoChange, 4, 2, "no change"},
		{"up window takes the lowest recent recommendation", func() DecisionInput {
			in := base(2, 8)
			in.Up.Stabilization = 3 * time.Minute
			in.History = []Recommendation{{5, ago(time.Minute)}, {7, ago(2 * time.Minute)}}
			return in
		}(), ScaleUp, 5, 8, "stabilized to 5"},
		{"up window with a lower recent recommendation than current holds", func() DecisionInput {
			in := base(4, 8)
			in.Up.Stabilization = 3 * time.Minute
			in.History = []Recommendation{{2, ago(time.Minute)}}
			return in
		}(), NoChange, 4, 8, "no change"},
		{"scale-up adds at least the increment", func() DecisionInput {
			in := base(2, 3)
			in.Up.Increment = 3
			return in
		}(), ScaleUp, 5, 3, "step limited: 5 instead of 3"},
		{"the increment never passes max", func() DecisionInput {
			in := base(9, 10)
			in.Up.Increment = 3
			return in
		}(), ScaleUp, 10, 10, "scale_up from 9 to 10"},
		{"max_increment bounds a scale-up", func() DecisionInput {
			in := base(2, 9)
			in.Up.MaxIncrement = 2
			return in
		}(), ScaleUp, 4, 9, "step limited: 4 instead of 9"},
		{"max_increment bounds a scale-down", func() DecisionInput {
			in := base(9, 2)
			in.Down.MaxIncrement = 3
			return in
		}(), ScaleDown, 6, 2, "step limited: 6 instead of 2"},
		{"a scale-down removes no more than recommended whatever the increment", func() DecisionInput {
			in := base(5, 4)
			in.Down.Increment = 3
			return in
		}(), ScaleDown, 4, 4, "scale_down from 5 to 4"},
		{"cooldown holds a change", func() DecisionInput {
			in := base(2, 5)
			in.Cooldown = 5 * time.Minute
			in.LastChange = ago(2 * time.Minute)
			return in
		}(), NoChange, 2, 5, "cooldown"},
		{"cooldown over lets it through", func() DecisionInput {
			in := base(2, 5)
			in.Cooldown = 5 * time.Minute
			in.LastChange = ago(6 * time.Minute)
			return in
		}(), ScaleUp, 5, 5, "scale_up from 2 to 5"},
		{"cooldown with no earlier change does not apply", func() DecisionInput {
			in := base(2, 5)
			in.Cooldown = 5 * time.Minute
			return in
		}(), ScaleUp, 5, 5, "scale_up from 2 to 5"},
		{"scale to zero when min is 0", func() DecisionInput {
			in := base(2, 0)
			in.Min = 0
			return in
		}(), ScaleDown, 0, 0, "scale_down from 2 to 0"},
		{"scale from zero", func() DecisionInput {
			in := base(0, 1)
			in.Min = 0
			return in
		}(), ScaleUp, 1, 1, "scale_up from 0 to 1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := Decide(tc.in)
			assert.Equal(t, tc.wantAction, d.Action, "action; reason %s", d.Reason)
			assert.Equal(t, tc.wantDesired, d.Desired, "desired; reason %s", d.Reason)
			assert.Equal(t, tc.wantRec, d.Recommendation, "recommendation")
			assert.Equal(t, tc.in.Current, d.Current)
			assert.Contains(t, d.Reason, tc.wantReason)
			assert.Contains(t, d.Reason, "metric: test", "the reason starts from the metric")
		})
	}
}

// TestDecideFlapping feeds an oscillating metric, one evaluation a minute
// for an hour with the decisions applied, and counts the scale-downs: the
// down window lets at most one through per window.
func TestDecideFlapping(t *testing.T) {
	tests := []struct {
		name   string
		window time.Duration
		// maxDowns is the most scale-downs the hour may see.
		maxDowns int
	}{
		{"default five-minute window", DefaultDownStabilization, 12},
		{"ten-minute window", 10 * time.Minute, 6},
		{"no window flaps every other minute", 0, 30},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			current := int32(4)
			var history []Recommendation
			var downs, ups int
			var lastDown time.Time
			for minute := 0; minute < 60; minute++ {
				now := t0.Add(time.Duration(minute) * time.Minute)
				want := int32(6)
				if minute%2 == 1 {
					want = 2
				}
				d := Decide(DecisionInput{
					Now: now, Current: current, Min: 1, Max: 10,
					Proposal: Proposal{Replicas: want, Measured: true, Reason: "oscillating"},
					Up:       Step{Increment: 1}, Down: Step{Increment: 1, Stabilization: tc.window},
					History: history,
				})
				history = append(history, Recommendation{Replicas: d.Recommendation, At: now})
				switch d.Action {
				case ScaleDown:
					downs++
					if !lastDown.IsZero() && tc.window > 0 {
						assert.GreaterOrEqual(t, now.Sub(lastDown), tc.window, "two scale-downs within one window at minute %d", minute)
					}
					lastDown = now
				case ScaleUp:
					ups++
				}
				current = d.Desired
			}
			assert.LessOrEqual(t, downs, tc.maxDowns)
			if tc.window > 0 {
				assert.Zero(t, downs, "an oscillation shorter than the window never scales down")
				assert.Equal(t, 1, ups, "one scale-up to the peak, then held")
			}
		})
	}
}

func TestDecideManual(t *testing.T) {
	tests := []struct {
		name        string
		in          ManualInput
		wantAction  Action
		wantDesired int32
		wantErr     string
	}{
		{"scale_up by the increment", ManualInput{Current: 2, Min: 1, Max: 10, Action: ScaleUp, Up: Step{Increment: 3}}, ScaleUp, 5, ""},
		{"scale_down by the increment", ManualInput{Current: 5, Min: 1, Max: 10, Action: ScaleDown, Down: Step{Increment: 2}}, ScaleDown, 3, ""},
		{"zero increment means one", ManualInput{Current: 5, Min: 1, Max: 10, Action: ScaleDown}, ScaleDown, 4, ""},
		{"a count asked for", ManualInput{Current: 2, Min: 1, Max: 10, Action: ScaleUp, Replicas: 7}, ScaleUp, 7, ""},
		{"bounded by max", ManualInput{Current: 2, Min: 1, Max: 10, Action: ScaleUp, Replicas: 50}, ScaleUp, 10, ""},
		{"bounded by min", ManualInput{Current: 2, Min: 2, Max: 10, Action: ScaleDown, Down: Step{Increment: 1}}, NoChange, 2, ""},
		{"scale_up to fewer is refused", ManualInput{Current: 5, Min: 1, Max: 10, Action: ScaleUp, Replicas: 3}, "", 0, "replicas: 3 is fewer"},
		{"scale_down to more is refused", ManualInput{Current: 5, Min: 1, Max: 10, Action: ScaleDown, Replicas: 8}, "", 0, "replicas: 8 is more"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := DecideManual(tc.in)
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.wantAction, d.Action, d.Reason)
			assert.Equal(t, tc.wantDesired, d.Desired, d.Reason)
			assert.Contains(t, d.Reason, "manual")
		})
	}
}

func TestRatioReplicas(t *testing.T) {
	tests := []struct {
		name       string
		count      int32
		ratio      float64
		want       int32
		wantWithin bool
	}{
		{"exactly on target", 4, 1.0, 4, true},
		{"9% over is within tolerance", 4, 1.09, 4, true},
		{"10% over is within tolerance", 4, 1.10, 4, true},
		{"11% over scales", 4, 1.11, 5, false},
		{"10% under is within tolerance", 4, 0.90, 4, true},
		{"11% under scales", 10, 0.89, 9, false},
		{"double", 3, 2.0, 6, false},
		{"float noise does not round up", 3, 2.0000000000001, 6, false},
		{"half rounds up", 3, 0.5, 2, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, within := ratioReplicas(tc.count, tc.ratio)
			assert.Equal(t, tc.want, got)
			assert.Equal(t, tc.wantWithin, within)
		})
	}
}
