package function

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestWindowsAcrossDST(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	require.NoError(t, err)
	newYork, err := time.LoadLocation("America/New_York")
	require.NoError(t, err)
	// Office hours in Berlin: 09:00 for 8 hours, Monday to Friday. Berlin
	// leaves summer time on Sunday 2026-10-25, so 09:00 is 07:00 UTC on
	// Friday the 23rd and 08:00 UTC on Monday the 26th.
	office, err := newWindow("w", "0 9 * * 1-5", "Europe/Berlin", 8*time.Hour, 5)
	require.NoError(t, err)
	// A nightly window at 01:30 New York time, which on 2026-03-08 (spring
	// forward at 02:00) still exists, and on 2026-11-01 (fall back at 02:00)
	// happens twice; the window opens on the first.
	nightly, err := newWindow("w", "30 1 * * *", "America/New_York", time.Hour, 3)
	require.NoError(t, err)
	tests := []struct {
		name   string
		w      Window
		at     time.Time
		lead   time.Duration
		wantOn bool
	}{
		{"summer time: open at 09:00 Berlin (07:00 UTC)", office, time.Date(2026, 10, 23, 9, 0, 0, 0, berlin), 0, true},
		{"summer time: closed at 08:59 Berlin", office, time.Date(2026, 10, 23, 8, 59, 0, 0, berlin), 0, false},
		{"summer time: 07:30 UTC is open", office, time.Date(2026, 10, 23, 7, 30, 0, 0, time.UTC), 0, true},
		{"winter time: 07:30 UTC is 08:30 Berlin, closed", office, time.Date(2026, 10, 26, 7, 30, 0, 0, time.UTC), 0, false},
		{"winter time: open at 09:00 Berlin (08:00 UTC)", office, time.Date(2026, 10, 26, 8, 0, 0, 0, time.UTC), 0, true},
		{"winter time: closes at 17:00 Berlin", office, time.Date(2026, 10, 26, 17, 0, 0, 0, berlin), 0, false},
		{"winter time: open at 16:59 Berlin", office, time.Date(2026, 10, 26, 16, 59, 0, 0, berlin), 0, true},
		{"the weekend of the change is closed", office, time.Date(2026, 10, 25, 10, 0, 0, 0, berlin), 0, false},
		{"look-ahead opens it 15 minutes early", office, time.Date(2026, 10, 26, 8, 45, 0, 0, berlin), 15 * time.Minute, true},
		{"look-ahead does not open it 16 minutes early", office, time.Date(2026, 10, 26, 8, 44, 0, 0, berlin), 15 * time.Minute, false},
		{"spring forward: 01:30 exists and opens", nightly, time.Date(2026, 3, 8, 6, 45, 0, 0, time.UTC), 0, true},
		{"spring forward: an hour later, closed", nightly, time.Date(2026, 3, 8, 3, 31, 0, 0, newYork), 0, false},
		{"fall back: open at the first 01:45", nightly, time.Date(2026, 11, 1, 5, 45, 0, 0, time.UTC), 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.wantOn, tc.w.openAt(tc.at, tc.lead))
		})
	}
}

func TestScheduleReplicasTakesTheLargestOpenWindow(t *testing.T) {
	a, err := newWindow("a", "0 8 * * *", "UTC", 4*time.Hour, 3)
	require.NoError(t, err)
	b, err := newWindow("b", "0 10 * * *", "UTC", time.Hour, 7)
	require.NoError(t, err)
	tests := []struct {
		name     string
		at       time.Time
		want     int32
		wantOpen bool
	}{
		{"before both", time.Date(2026, 1, 5, 7, 0, 0, 0, time.UTC), 0, false},
		{"first only", time.Date(2026, 1, 5, 9, 0, 0, 0, time.UTC), 3, true},
		{"both: the larger", time.Date(2026, 1, 5, 10, 30, 0, 0, time.UTC), 7, true},
		{"after both", time.Date(2026, 1, 5, 12, 0, 0, 0, time.UTC), 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, open := scheduleReplicas([]Window{a, b}, tc.at, 0)
			assert.Equal(t, tc.want, got)
			assert.Equal(t, tc.wantOpen, open)
		})
	}
}

func TestPatternWindows(t *testing.T) {
	ws, err := patternWindows(map[string]int32{"9": 4, "17": 2}, "Europe/Berlin")
	require.NoError(t, err)
	require.Len(t, ws, 2)
	at := func(h, m int) time.Time {
		loc, _ := time.LoadLocation("Europe/Berlin")
		return time.Date(2026, 7, 1, h, m, 0, 0, loc)
	}
	tests := []struct {
		name     string
		at       time.Time
		lead     time.Duration
		want     int32
		wantOpen bool
	}{
		{"hour 9 is four", at(9, 10), 0, 4, true},
		{"hour 10 has no entry", at(10, 0), 0, 0, false},
		{"hour 17 is two", at(17, 59), 0, 2, true},
		{"look-ahead reaches hour 9 from 08:50", at(8, 50), 10 * time.Minute, 4, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, open := scheduleReplicas(ws, tc.at, tc.lead)
			assert.Equal(t, tc.want, got)
			assert.Equal(t, tc.wantOpen, open)
		})
	}
	for _, bad := range []map[string]int32{{"24": 1}, {"09": 1}, {"x": 1}, {"-1": 1}} {
		_, err := patternWindows(bad, "UTC")
		assert.Error(t, err, "%v", bad)
	}
}
