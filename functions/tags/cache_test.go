package function

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// cacheRig is a popularCache on a clock the test moves, with a loader that
// counts its calls.
type cacheRig struct {
	t     *testing.T
	c     *popularCache
	now   time.Time
	loads int
	fail  bool
	// during runs inside the next load.
	during func()
}

func newCacheRig(t *testing.T) *cacheRig {
	r := &cacheRig{t: t, now: time.Unix(1000, 0)}
	r.c = newPopularCache(time.Minute)
	r.c.now = func() time.Time { return r.now }
	return r
}

func (r *cacheRig) load(context.Context, *string, int) ([]TagCount, error) {
	r.loads++
	if d := r.during; d != nil {
		r.during = nil
		d()
	}
	if r.fail {
		return nil, errors.New("database down")
	}
	return []TagCount{{Tag: "t", Count: int64(r.loads)}}, nil
}

func (r *cacheRig) get(category *string, limit int) error {
	_, err := r.c.get(context.Background(), category, limit, r.load)
	return err
}

func (r *cacheRig) mustGet(category *string, limit int) {
	require.NoError(r.t, r.get(category, limit))
}

func TestPopularCache(t *testing.T) {
	hot, empty := "hot", ""
	tests := []struct {
		name        string
		act         func(r *cacheRig)
		wantLoads   int
		wantEntries int
	}{
		{
			name:        "a fresh entry is served from memory",
			act:         func(r *cacheRig) { r.mustGet(&hot, 10); r.mustGet(&hot, 10) },
			wantLoads:   1,
			wantEntries: 1,
		},
		{
			name: "an expired entry is loaded again",
			act: func(r *cacheRig) {
				r.mustGet(&hot, 10)
				r.now = r.now.Add(2 * time.Minute)
				r.mustGet(&hot, 10)
			},
			wantLoads:   2,
			wantEntries: 1,
		},
		{
			name: "category, no category, the empty category and limit are separate keys",
			act: func(r *cacheRig) {
				r.mustGet(&hot, 10)
				r.mustGet(nil, 10)
				r.mustGet(&empty, 10)
				r.mustGet(&hot, 11)
			},
			wantLoads:   4,
			wantEntries: 4,
		},
		{
			name: "clear drops every entry",
			act: func(r *cacheRig) {
				r.mustGet(&hot, 10)
				r.mustGet(nil, 10)
				r.c.clear()
				r.mustGet(&hot, 10)
			},
			wantLoads:   3,
			wantEntries: 1,
		},
		{
			name: "a load that began before clear does not refill the cache",
			act: func(r *cacheRig) {
				r.during = r.c.clear
				r.mustGet(&hot, 10)
				r.mustGet(&hot, 10)
			},
			wantLoads:   2,
			wantEntries: 1,
		},
		{
			name: "a failed load is not cached",
			act: func(r *cacheRig) {
				r.fail = true
				assert.Error(r.t, r.get(&hot, 10))
				r.fail = false
				r.mustGet(&hot, 10)
			},
			wantLoads:   2,
			wantEntries: 1,
		},
		{
			name: "client-chosen categories cannot grow it without bound",
			act: func(r *cacheRig) {
				for i := range 3 * maxCacheEntries {
					category := fmt.Sprintf("c%d", i)
					r.mustGet(&category, 10)
					require.LessOrEqual(r.t, len(r.c.entries), maxCacheEntries, "after %d categories", i+1)
				}
			},
			wantLoads:   3 * maxCacheEntries,
			wantEntries: maxCacheEntries,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newCacheRig(t)
			tc.act(r)
			assert.Equal(t, tc.wantLoads, r.loads, "loads")
			assert.Len(t, r.c.entries, tc.wantEntries, "entries")
		})
	}
}
