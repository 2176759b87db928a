package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestPercentile(t *testing.T) {
	ms := func(ns ...int) []time.Duration {
		out := make([]time.Duration, len(ns))
		for i, n := range ns {
			out[i] = time.Duration(n) * time.Millisecond
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = i + 1
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"none", nil, 50, 0},
		{"one", ms(7), 99, 7 * time.Millisecond},
		{"median of an odd count", ms(1, 2, 3), 50, 2 * time.Millisecond},
		{"p50 of 1..100", ms(hundred...), 50, 50 * time.Millisecond},
		{"p99 of 1..100", ms(hundred...), 99, 99 * time.Millisecond},
		{"p100 is the slowest", ms(hundred...), 100, 100 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, percentile(tc.sorted, tc.p))
		})
	}
}

func TestTheBar(t *testing.T) {
	answered := []sample{{op: tagBatch, status: 200}, {op: shareRead, status: 503, code: "unavailable"}}
	tests := []struct {
		name   string
		result result
		missed []string
	}{
		{"direct within its instances' pools", result{mode: direct, instances: 9, poolMax: 4, peak: 36, samples: answered}, nil},
		{"through PgBouncer within its pool", result{mode: pgbouncer, instances: 18, poolMax: 4, poolSize: 20, peak: 20, samples: answered}, nil},
		{"a 503 alone is reported, not a miss", result{mode: direct, instances: 1, poolMax: 4, peak: 1,
			samples: answered, states: map[string]int{"57014": 1}}, nil},
		{"too many connections", result{mode: direct, instances: 12, poolMax: 4, peak: 38, samples: answered,
			states: map[string]int{"53300": 2}}, []string{`direct: 2 "too many connections" (53300)`}},
		{"PgBouncer's pool exceeded", result{mode: pgbouncer, instances: 18, poolMax: 4, poolSize: 20, peak: 21, samples: answered},
			[]string{"pgbouncer: peak 21 server connections, over 20"}},
		{"nothing answered", result{mode: direct, instances: 1, poolMax: 4, samples: []sample{{op: tagBatch, err: "refused"}}},
			[]string{"direct: no request was answered"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.missed, tc.result.missed())
		})
	}
}

func TestFailuresByKind(t *testing.T) {
	r := result{samples: []sample{
		{op: tagBatch, status: 200},
		{op: tagBatch, status: 503, code: "unavailable"},
		{op: tagBatch, status: 503, code: "unavailable"},
		{op: versionList, status: 404, code: "not_found"},
		{op: shareRead, err: "connection refused"},
	}}
	assert.Equal(t, map[string]int{
		"tag batch: 503 unavailable":    2,
		"version list: 404 not_found":   1,
		"no answer: connection refused": 1,
	}, r.failures())
}

func TestTheRefusalBar(t *testing.T) {
	good := refusal{fillers: 38, rest: 503, retryAfter: "1", event: 503, logged: 2, restAfter: 200}
	tests := []struct {
		name   string
		change func(*refusal)
		missed string
	}{
		{"met", func(*refusal) {}, ""},
		{"a 500", func(f *refusal) { f.rest = 500 }, "REST answered 500"},
		{"no Retry-After", func(f *refusal) { f.retryAfter = "" }, `Retry-After ""`},
		{"a final event refusal", func(f *refusal) { f.event = 400 }, "the event path answered 400"},
		{"nothing logged", func(f *refusal) { f.logged = 0 }, "logged no SQLSTATE 53300"},
		{"no recovery", func(f *refusal) { f.restAfter = 503 }, "after max_connections: REST answered 503"},
		{"refused otherwise", func(f *refusal) { f.fillerFailed = "password authentication failed" }, "something else than 53300"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := good
			tc.change(&f)
			missed := f.missed()
			if tc.missed == "" {
				assert.Empty(t, missed)
				return
			}
			if assert.Len(t, missed, 1) {
				assert.Contains(t, missed[0], tc.missed)
			}
		})
	}
}
