package autoscale

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ErrInvalidSchedule is what every *ScheduleError is (errors.Is).
var ErrInvalidSchedule = errors.New("autoscale: invalid schedule")

// ScheduleError is a schedule rule that does not parse: its text, the
// field at fault (days, time or min) and what is wrong with it.
type ScheduleError struct {
	// Spec is the rule as written.
	Spec string
	// Field is days, time or min (or the unknown key=value it found).
	Field string
	// Problem says what is wrong.
	Problem string
}

// Error returns `schedule "SPEC": FIELD: PROBLEM`.
func (e *ScheduleError) Error() string {
	return fmt.Sprintf("schedule %q: %s: %s", e.Spec, e.Field, e.Problem)
}

// Is reports whether target is ErrInvalidSchedule.
func (e *ScheduleError) Is(target error) bool { return target == ErrInvalidSchedule }

// Rule is one schedule rule: on Days, from Start to End, the queues keep
// at least Min agents.
type Rule struct {
	// Spec is the rule as written, its spaces squeezed.
	Spec string
	// Days are the days it starts on, by time.Weekday.
	Days [7]bool
	// Start and End are minutes since midnight, End up to 24*60. An End
	// at or before Start crosses midnight: the rule holds from Start on
	// one of Days to End on the day after.
	Start, End int
	// Min is the minimum it sets.
	Min int
}

// Schedule is a list of rules read in one time zone. The zero Schedule
// has no rule.
type Schedule struct {
	rules []Rule
	loc   *time.Location
}

// Rules returns the schedule's rules in the order they were given.
func (s Schedule) Rules() []Rule { return s.rules }

// Min returns the highest minimum of the rules in force at t, and the
// rule that sets it; 0 and "" when none is.
func (s Schedule) Min(t time.Time) (int, string) {
	if len(s.rules) == 0 {
		return 0, ""
	}
	if s.loc != nil {
		t = t.In(s.loc)
	}
	best, spec := 0, ""
	for _, r := range s.rules {
		if r.Min > best && r.InForce(t) {
			best, spec = r.Min, r.Spec
		}
	}
	return best, spec
}

// InForce reports whether r holds at t, read in t's own location.
func (r Rule) InForce(t time.Time) bool {
	minute := t.Hour()*60 + t.Minute()
	today, yesterday := t.Weekday(), (t.Weekday()+6)%7
	if r.Start < r.End {
		return r.Days[today] && minute >= r.Start && minute < r.End
	}
	// Across midnight: the evening of a listed day, or the morning after.
	return (r.Days[today] && minute >= r.Start) || (r.Days[yesterday] && minute < r.End)
}

// dayNames are the days as rules name them, three letters each, by
// time.Weekday.
const dayNames = "SunMonTueWedThuFriSat"

// ParseSchedule parses schedule rules, each `DAYS [HH:MM-HH:MM] min=N`:
// DAYS a comma-separated list of days (Mon, ..., Sun, in any case) and
// ranges of days (Mon-Fri; Fri-Mon wraps over the weekend), the hours
// from start to end (end 24:00 is midnight; an end at or before the start
// crosses midnight; without hours the rule holds all day) and N the
// minimum of agents it sets. Times are read in loc (time.Local when nil).
// It reports every rule that does not parse, each a *ScheduleError.
func ParseSchedule(specs []string, loc *time.Location) (Schedule, error) {
	if loc == nil {
		loc = time.Local
	}
	s := Schedule{loc: loc}
	var errs []error
	for _, spec := range specs {
		r, err := parseRule(spec)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.rules = append(s.rules, r)
	}
	if len(errs) > 0 {
		return Schedule{}, errors.Join(errs...)
	}
	return s, nil
}

func parseRule(spec string) (Rule, error) {
	r := Rule{Spec: strings.Join(strings.Fields(spec), " "), Start: 0, End: 24 * 60}
	bad := func(field, format string, args ...any) error {
		return &ScheduleError{Spec: spec, Field: field, Problem: fmt.Sprintf(format, args...)}
	}
	var days, hours, minimum string
	for _, f := range strings.Fields(spec) {
		switch {
		case strings.Contains(f, "="):
			k, v, _ := strings.Cut(f, "=")
			if k != "min" {
				return Rule{}, bad(k, "unknown setting %q (want min=N)", f)
			}
			if minimum != "" {
				return Rule{}, bad("min", "given twice")
			}
			if minimum = v; v == "" {
				return Rule{}, bad("min", "no number after min= (want min=N)")
			}
		case strings.Contains(f, ":") || (f[0] >= '0' && f[0] <= '9'):
			if hours != "" {
				return Rule{}, bad("time", "two time ranges, %q and %q (want one HH:MM-HH:MM)", hours, f)
			}
			hours = f
		default:
			if days != "" {
				return Rule{}, bad("days", "two lists of days, %q and %q (want one, such as Mon-Fri or Sat,Sun)", days, f)
			}
			days = f
		}
	}
	if days == "" {
		return Rule{}, bad("days", "missing (want DAYS [HH:MM-HH:MM] min=N, such as Mon-Fri 08:00-18:00 min=4)")
	}
	var err error
	if r.Days, err = parseDays(days); err != nil {
		return Rule{}, bad("days", "%v", err)
	}
	if hours != "" {
		if r.Start, r.End, err = parseHours(hours); err != nil {
			return Rule{}, bad("time", "%v", err)
		}
	}
	if minimum == "" {
		return Rule{}, bad("min", "missing (want min=N)")
	}
	if r.Min, err = strconv.Atoi(minimum); err != nil || !digits(minimum) {
		return Rule{}, bad("min", "%q is not a whole number of agents, 0 or more", minimum)
	}
	return r, nil
}

// parseDays parses Mon-Fri, Sat,Sun, Mon,Wed-Fri and the like.
func parseDays(s string) ([7]bool, error) {
	var days [7]bool
	for item := range strings.SplitSeq(s, ",") {
		from, to, isRange := strings.Cut(item, "-")
		a, err := parseDay(from)
		if err != nil {
			return days, err
		}
		b := a
		if isRange {
			if b, err = parseDay(to); err != nil {
				return days, err
			}
		}
		for d := a; ; d = (d + 1) % 7 {
			days[d] = true
			if d == b {
				break
			}
		}
	}
	return days, nil
}

func parseDay(s string) (time.Weekday, error) {
	for d := time.Sunday; d <= time.Saturday; d++ {
		if strings.EqualFold(s, dayNames[3*d:3*d+3]) {
			return d, nil
		}
	}
	if s == "" {
		return 0, errors.New("a day is missing (want Mon, Tue, Wed, Thu, Fri, Sat or Sun; ranges Mon-Fri; lists Sat,Sun)")
	}
	return 0, fmt.Errorf("unknown day %q (want Mon, Tue, Wed, Thu, Fri, Sat or Sun)", s)
}

// parseHours parses HH:MM-HH:MM into minutes since midnight. A field
// with a colon or starting with a digit is taken for one.
func parseHours(s string) (start, end int, err error) {
	from, to, ok := strings.Cut(s, "-")
	if !ok {
		return 0, 0, fmt.Errorf("%q is not a range HH:MM-HH:MM", s)
	}
	if start, err = parseClock(from, false); err != nil {
		return 0, 0, fmt.Errorf("start: %w", err)
	}
	if end, err = parseClock(to, true); err != nil {
		return 0, 0, fmt.Errorf("end: %w", err)
	}
	if start == end {
		return 0, 0, fmt.Errorf("%q starts where it ends (for all day, leave the time out)", s)
	}
	return start, end, nil
}

// parseClock parses HH:MM, 00:00 to 23:59, and 24:00 when end.
func parseClock(s string, end bool) (int, error) {
	h, m, ok := strings.Cut(s, ":")
	hh, errH := strconv.Atoi(h)
	mm, errM := strconv.Atoi(m)
	if !ok || errH != nil || errM != nil || !digits(h) || !digits(m) || len(h) > 2 || len(m) != 2 || mm > 59 ||
		hh > 24 || (hh == 24 && (mm != 0 || !end)) {
		return 0, fmt.Errorf("%q is not a time of day HH:MM (00:00 to 23:59, or 24:00 for an end)", s)
	}
	return hh*60 + mm, nil
}

// digits reports whether s is one or more ASCII digits.
func digits(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}
