package service_test

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/service"
)

// TestJobSlots takes slots up to the limit: one more is refused as
// Unavailable (503 with Retry-After on the event path); a job's end frees
// its slot, once however often release is called.
func TestJobSlots(t *testing.T) {
	tests := []struct {
		name  string
		limit int
		want  int // slots granted before the first refusal
	}{
		{name: "one", limit: 1, want: 1},
		{name: "two", limit: 2, want: 2},
		{name: "zero means one", limit: 0, want: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			slots := service.NewJobSlots(tc.limit)
			assert.Equal(t, tc.want, slots.Limit())

			var release []func()
			for range tc.want {
				r, err := slots.TryStart()
				require.NoError(t, err)
				release = append(release, r)
			}
			_, err := slots.TryStart()
			require.Error(t, err, "every slot is taken")
			assert.Equal(t, errs.Unavailable, errs.KindOf(err))
			assert.Equal(t, http.StatusServiceUnavailable, errs.EventStatus(err), "the broker retries it")

			release[0]()
			release[0]() // a second call frees nothing more
			r, err := slots.TryStart()
			require.NoError(t, err, "the ended job's slot is free again")
			_, err = slots.TryStart()
			assert.Error(t, err, "release freed one slot, not two")
			r()
		})
	}
}
