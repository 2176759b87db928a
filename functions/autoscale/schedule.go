package function

import (
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"
	// Timezones are embedded, so a window's timezone resolves the same on a
	// minimal image with no /usr/share/zoneinfo.
	_ "time/tzdata"

	"github.com/robfig/cron/v3"
)

// cronParser reads the five-field cron syntax PingSources and KEDA's cron
// scaler use.
var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// locations caches time.LoadLocation, which parses the zone's data on every
// call; each evaluation of a policy with windows needs its zones.
var locations sync.Map // name → *time.Location

// loadLocation is time.LoadLocation, cached.
func loadLocation(name string) (*time.Location, error) {
	if l, ok := locations.Load(name); ok {
		return l.(*time.Location), nil
	}
	l, err := time.LoadLocation(name)
	if err != nil {
		return nil, err
	}
	locations.Store(name, l)
	return l, nil
}

// maxWindowStarts bounds how many starts of one window an evaluation walks
// (a window opening every minute and lasting a day has 1,440).
const maxWindowStarts = 10000

// Window is one cron window, as KEDA's cron scaler has them: from each
// time Cron fires, in Location, for Duration, the target wants Replicas.
type Window struct {
	Spec     string
	Location *time.Location
	Duration time.Duration
	Replicas int32
	schedule cron.Schedule
}

// newWindow parses a window; field names the request field in errors.
func newWindow(field, spec, timezone string, duration time.Duration, replicas int32) (Window, error) {
	if timezone == "" {
		timezone = "UTC"
	}
	loc, err := loadLocation(timezone)
	if err != nil {
		return Window{}, fmt.Errorf("%s.timezone %q: not a known IANA timezone", field, timezone)
	}
	if len(spec) > 100 {
		return Window{}, fmt.Errorf("%s.cron: at most 100 characters", field)
	}
	s, err := cronParser.Parse(spec)
	if err != nil {
		return Window{}, fmt.Errorf("%s.cron %q: %v", field, spec, err)
	}
	if duration <= 0 || duration > 7*24*time.Hour {
		return Window{}, fmt.Errorf("%s.duration %s: want more than 0 and at most 168h", field, duration)
	}
	if replicas < 0 {
		return Window{}, fmt.Errorf("%s.replicas %d: want 0 or more", field, replicas)
	}
	return Window{Spec: spec, Location: loc, Duration: duration, Replicas: replicas, schedule: s}, nil
}

// openAt reports whether the window is open at now, opening lead early
// (predictive_scaling.look_ahead_minutes): the last start no later than
// now+lead opened it, and it lasts Duration from that start. Starts are
// computed in the window's timezone, so "0 9 * * 1-5" in Europe/Berlin
// opens at 09:00 Berlin time on both sides of a DST change.
func (w Window) openAt(now time.Time, lead time.Duration) bool {
	horizon := now.Add(lead)
	var last time.Time
	t := now.Add(-w.Duration - time.Second).In(w.Location)
	for i := 0; i < maxWindowStarts; i++ {
		next := w.schedule.Next(t)
		if next.IsZero() || next.After(horizon) {
			break
		}
		last, t = next, next
	}
	return !last.IsZero() && now.Before(last.Add(w.Duration))
}

// patternWindows turns StreamSpace's predictive_scaling.schedule_pattern, a
// map from hour ("0"-"23") to replicas, into windows of one hour each
// starting on that hour every day in timezone.
func patternWindows(pattern map[string]int32, timezone string) ([]Window, error) {
	hours := make([]string, 0, len(pattern))
	for h := range pattern {
		hours = append(hours, h)
	}
	sort.Strings(hours)
	out := make([]Window, 0, len(hours))
	for _, h := range hours {
		n, err := strconv.Atoi(h)
		if err != nil || n < 0 || n > 23 || strconv.Itoa(n) != h {
			return nil, fmt.Errorf("predictive_scaling.schedule_pattern key %q: want an hour from 0 to 23", h)
		}
		w, err := newWindow("predictive_scaling.schedule_pattern["+h+"]", fmt.Sprintf("0 %d * * *", n), timezone, time.Hour, pattern[h])
		if err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	return out, nil
}

// scheduleReplicas is what the open windows ask for at now: the largest
// Replicas of the windows open then (opening lead early), and whether any
// is open.
func scheduleReplicas(windows []Window, now time.Time, lead time.Duration) (int32, bool) {
	var want int32
	open := false
	for _, w := range windows {
		if w.openAt(now, lead) {
			if !open || w.Replicas > want {
				want = w.Replicas
			}
			open = true
		}
	}
	return want, open
}
