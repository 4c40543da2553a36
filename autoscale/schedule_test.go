package autoscale

import (
	"errors"
	"strings"
	"testing"
	"time"
	_ "time/tzdata" // the zones of the tests, whatever the machine has
)

// at returns the time of day hh:mm on the day of the week of June 2025
// that wd names (June 1st 2025 is a Sunday), in loc.
func at(wd time.Weekday, hh, mm int, loc *time.Location) time.Time {
	return time.Date(2025, time.June, 1+int(wd), hh, mm, 0, 0, loc)
}

func TestParseSchedule(t *testing.T) {
	for _, c := range []struct {
		spec    string
		in, out []time.Time
		min     int
	}{
		{spec: "Mon-Fri 08:00-18:00 min=4", min: 4,
			in:  []time.Time{at(time.Monday, 8, 0, time.UTC), at(time.Wednesday, 12, 30, time.UTC), at(time.Friday, 17, 59, time.UTC)},
			out: []time.Time{at(time.Monday, 7, 59, time.UTC), at(time.Monday, 18, 0, time.UTC), at(time.Saturday, 12, 0, time.UTC), at(time.Sunday, 9, 0, time.UTC)}},
		{spec: "Sat,Sun min=2", min: 2,
			in:  []time.Time{at(time.Saturday, 0, 0, time.UTC), at(time.Sunday, 23, 59, time.UTC)},
			out: []time.Time{at(time.Monday, 0, 0, time.UTC), at(time.Friday, 23, 59, time.UTC)}},
		{spec: "  mon,wed-thu   09:30-10:00   min=1 ", min: 1,
			in:  []time.Time{at(time.Monday, 9, 30, time.UTC), at(time.Thursday, 9, 59, time.UTC)},
			out: []time.Time{at(time.Tuesday, 9, 45, time.UTC), at(time.Wednesday, 10, 0, time.UTC)}},
		{spec: "Fri-Mon min=3", min: 3,
			in:  []time.Time{at(time.Friday, 1, 0, time.UTC), at(time.Sunday, 1, 0, time.UTC), at(time.Monday, 1, 0, time.UTC)},
			out: []time.Time{at(time.Tuesday, 1, 0, time.UTC), at(time.Thursday, 1, 0, time.UTC)}},
		{spec: "Mon-Fri 22:00-06:00 min=2", min: 2, // across midnight
			in:  []time.Time{at(time.Monday, 22, 0, time.UTC), at(time.Tuesday, 5, 59, time.UTC), at(time.Saturday, 3, 0, time.UTC)},
			out: []time.Time{at(time.Monday, 3, 0, time.UTC), at(time.Saturday, 22, 0, time.UTC), at(time.Tuesday, 6, 0, time.UTC)}},
		{spec: "Sun 12:00-24:00 min=1", min: 1,
			in:  []time.Time{at(time.Sunday, 23, 59, time.UTC)},
			out: []time.Time{at(time.Monday, 0, 0, time.UTC)}},
	} {
		t.Run(c.spec, func(t *testing.T) {
			s, err := ParseSchedule([]string{c.spec}, time.UTC)
			if err != nil {
				t.Fatalf("ParseSchedule(%q) = %v, want nil", c.spec, err)
			}
			for _, tm := range c.in {
				if m, rule := s.Min(tm); m != c.min || rule != strings.Join(strings.Fields(c.spec), " ") {
					t.Errorf("Min(%s) = %d, %q; want %d, the rule %q", tm.Format("Mon 15:04"), m, rule, c.min, c.spec)
				}
			}
			for _, tm := range c.out {
				if m, _ := s.Min(tm); m != 0 {
					t.Errorf("Min(%s) = %d, want 0 (outside the rule)", tm.Format("Mon 15:04"), m)
				}
			}
		})
	}
}

func TestScheduleTakesTheHighestRuleInItsTimeZone(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin") // from time/tzdata when the machine has none
	if err != nil {
		t.Fatal(err)
	}
	s, err := ParseSchedule([]string{"Mon-Fri 08:00-18:00 min=4", "Mon 09:00-10:00 min=6", "Mon-Sun min=1"}, berlin)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		t    time.Time
		want int
	}{
		{at(time.Monday, 9, 30, berlin), 6},
		{at(time.Monday, 7, 30, time.UTC), 6}, // 09:30 in Berlin (CEST)
		{at(time.Monday, 10, 30, berlin), 4},
		{at(time.Monday, 16, 30, time.UTC), 1}, // 18:30 in Berlin
		{at(time.Sunday, 12, 0, berlin), 1},
	} {
		if got, _ := s.Min(c.t); got != c.want {
			t.Errorf("Min(%v) = %d, want %d", c.t, got, c.want)
		}
	}
	if got, _ := (Schedule{}).Min(monday10); got != 0 {
		t.Errorf("Min of no schedule = %d, want 0", got)
	}
}

func TestParseScheduleRefusesBadRules(t *testing.T) {
	for _, c := range []struct {
		spec, field, err string
	}{
		{"Mun-Fri 08:00-18:00 min=4", "days", `schedule "Mun-Fri 08:00-18:00 min=4": days: unknown day "Mun" (want Mon, Tue, Wed, Thu, Fri, Sat or Sun)`},
		{"Mon- 08:00-18:00 min=4", "days", `schedule "Mon- 08:00-18:00 min=4": days: a day is missing (want Mon, Tue, Wed, Thu, Fri, Sat or Sun; ranges Mon-Fri; lists Sat,Sun)`},
		{"Sat,,Sun min=4", "days", `schedule "Sat,,Sun min=4": days: a day is missing (want Mon, Tue, Wed, Thu, Fri, Sat or Sun; ranges Mon-Fri; lists Sat,Sun)`},
		{"Mon Tue min=4", "days", `schedule "Mon Tue min=4": days: two lists of days, "Mon" and "Tue" (want one, such as Mon-Fri or Sat,Sun)`},
		{"08:00-18:00 min=4", "days", `schedule "08:00-18:00 min=4": days: missing (want DAYS [HH:MM-HH:MM] min=N, such as Mon-Fri 08:00-18:00 min=4)`},
		{"", "days", `schedule "": days: missing (want DAYS [HH:MM-HH:MM] min=N, such as Mon-Fri 08:00-18:00 min=4)`},
		{"Mon-Fri 08:00-25:00 min=4", "time", `schedule "Mon-Fri 08:00-25:00 min=4": time: end: "25:00" is not a time of day HH:MM (00:00 to 23:59, or 24:00 for an end)`},
		{"Mon-Fri 8h-18:00 min=4", "time", `schedule "Mon-Fri 8h-18:00 min=4": time: start: "8h" is not a time of day HH:MM (00:00 to 23:59, or 24:00 for an end)`},
		{"Mon-Fri 24:00-06:00 min=4", "time", `schedule "Mon-Fri 24:00-06:00 min=4": time: start: "24:00" is not a time of day HH:MM (00:00 to 23:59, or 24:00 for an end)`},
		{"Mon-Fri 08:60-18:00 min=4", "time", `schedule "Mon-Fri 08:60-18:00 min=4": time: start: "08:60" is not a time of day HH:MM (00:00 to 23:59, or 24:00 for an end)`},
		{"Mon-Fri 8-18 min=4", "time", `schedule "Mon-Fri 8-18 min=4": time: start: "8" is not a time of day HH:MM (00:00 to 23:59, or 24:00 for an end)`},
		{"Mon-Fri 08:00 min=4", "time", `schedule "Mon-Fri 08:00 min=4": time: "08:00" is not a range HH:MM-HH:MM`},
		{"Mon-Fri 08:00-08:00 min=4", "time", `schedule "Mon-Fri 08:00-08:00 min=4": time: "08:00-08:00" starts where it ends (for all day, leave the time out)`},
		{"Mon-Fri 08:00-12:00 13:00-18:00 min=4", "time", `schedule "Mon-Fri 08:00-12:00 13:00-18:00 min=4": time: two time ranges, "08:00-12:00" and "13:00-18:00" (want one HH:MM-HH:MM)`},
		{"Mon-Fri 08:00-18:00", "min", `schedule "Mon-Fri 08:00-18:00": min: missing (want min=N)`},
		{"Mon-Fri 08:00-18:00 min=four", "min", `schedule "Mon-Fri 08:00-18:00 min=four": min: "four" is not a whole number of agents, 0 or more`},
		{"Mon-Fri 08:00-18:00 min=-1", "min", `schedule "Mon-Fri 08:00-18:00 min=-1": min: "-1" is not a whole number of agents, 0 or more`},
		{"Mon-Fri 08:00-18:00 min=", "min", `schedule "Mon-Fri 08:00-18:00 min=": min: no number after min= (want min=N)`},
		{"Mon-Fri min=1 min=2", "min", `schedule "Mon-Fri min=1 min=2": min: given twice`},
		{"Mon-Fri 08:00-18:00 max=4", "max", `schedule "Mon-Fri 08:00-18:00 max=4": max: unknown setting "max=4" (want min=N)`},
	} {
		t.Run(c.spec, func(t *testing.T) {
			_, err := ParseSchedule([]string{c.spec}, time.UTC)
			var se *ScheduleError
			if !errors.As(err, &se) || !errors.Is(err, ErrInvalidSchedule) {
				t.Fatalf("ParseSchedule(%q) = %v, want a *ScheduleError", c.spec, err)
			}
			if se.Field != c.field || err.Error() != c.err {
				t.Errorf("ParseSchedule(%q) = %v (field %s), want %v (field %s)", c.spec, err, se.Field, c.err, c.field)
			}
		})
	}
}

func TestParseScheduleReportsEveryBadRule(t *testing.T) {
	_, err := ParseSchedule([]string{"Mon-Fri 08:00-18:00 min=4", "Mun min=1", "Sat min=x"}, nil)
	want := `schedule "Mun min=1": days: unknown day "Mun" (want Mon, Tue, Wed, Thu, Fri, Sat or Sun)` + "\n" +
		`schedule "Sat min=x": min: "x" is not a whole number of agents, 0 or more`
	if err == nil || err.Error() != want {
		t.Errorf("ParseSchedule = %v, want %v", err, want)
	}
}
