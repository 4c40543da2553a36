package autoscale

import (
	"errors"
	"fmt"
	"time"
)

// Defaults of a Policy and of a Scaler's Config, for the flags of weft
// autoscale.
const (
	// DefaultMin is the agents a queue keeps when idle.
	DefaultMin = 0
	// DefaultMax is the most agents a queue gets.
	DefaultMax = 6
	// DefaultThreshold is the jobs waiting at which a queue gets one more
	// agent.
	DefaultThreshold = 2
	// DefaultCooldown is how long a queue stays idle before it loses an
	// agent.
	DefaultCooldown = 5 * time.Minute
	// DefaultSettle is the most time a change waits for the registry to
	// show it before the next one.
	DefaultSettle = 30 * time.Second
	// DefaultInterval is how often the Scaler reads the queues.
	DefaultInterval = 5 * time.Second
	// DefaultHookTimeout is how long a hook may run before it is killed.
	DefaultHookTimeout = time.Minute
)

// ErrInvalidPolicy is wrapped by every error of Policy.Validate.
var ErrInvalidPolicy = errors.New("autoscale: invalid policy")

// Policy is what Decide scales a queue by.
type Policy struct {
	// Min is the agents a queue keeps however idle it is; the schedule
	// may raise it for a while.
	Min int
	// Max is the most agents a queue gets, at least 1 and at least Min.
	Max int
	// Threshold is the jobs waiting at which a queue with agents gets one
	// more; at least 1.
	Threshold int
	// Cooldown is how long a queue must have had nothing waiting and
	// nothing running before it loses an agent.
	Cooldown time.Duration
	// Settle is the most time Decide waits after a change for the
	// registry to show it before it changes the queue again.
	Settle time.Duration
	// Schedule raises Min while its rules are in force.
	Schedule Schedule
}

// Validate reports every problem of p at once, each wrapping
// ErrInvalidPolicy.
func (p Policy) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidPolicy}, args...)...))
	}
	if p.Max < 1 {
		bad("max %d: want at least 1", p.Max)
	}
	if p.Min < 0 {
		bad("min %d: want 0 or more", p.Min)
	} else if p.Min > p.Max && p.Max >= 1 {
		bad("min %d: above max %d", p.Min, p.Max)
	}
	if p.Threshold < 1 {
		bad("threshold %d: want at least 1", p.Threshold)
	}
	if p.Cooldown < 0 {
		bad("cooldown %v: want 0 or more", p.Cooldown)
	}
	if p.Settle < 0 {
		bad("settle %v: want 0 or more", p.Settle)
	}
	for _, r := range p.Schedule.Rules() {
		if r.Min > p.Max && p.Max >= 1 {
			bad("schedule %q: min=%d: above max %d", r.Spec, r.Min, p.Max)
		}
	}
	return errors.Join(errs...)
}

// Action is what a Decision does.
type Action string

// The actions of a Decision; they label weft_autoscale_decisions_total.
const (
	// Up adds agents: Target is above Agents.
	Up Action = "up"
	// Down removes one agent: Target is Agents - 1.
	Down Action = "down"
	// Hold leaves the queue as it is.
	Hold Action = "hold"
	// HoldAtMax leaves a queue that wants more agents at Policy.Max.
	HoldAtMax Action = "hold-at-max"
	// Settling waits for the registry to show the last change.
	Settling Action = "settling"
)

// Observation is what the Scaler saw of one queue.
type Observation struct {
	// Queue is the queue's name.
	Queue string
	// Waiting is its jobs no agent has taken yet; Running those agents
	// hold.
	Waiting, Running uint64
	// Agents is the agents the registry shows serving it, draining ones
	// left out.
	Agents int
	// Removable is how many of them the actuator can remove; -1 when it
	// cannot tell (a down hook decides which).
	Removable int
}

// State is what Decide remembers of a queue between two decisions. The
// zero State is a queue never decided on.
type State struct {
	// IdleSince is when the queue was first seen with nothing waiting
	// and nothing running, since it last had work or was scaled up; zero
	// while it has work.
	IdleSince time.Time
	// Changed is when the last change was made, zero once the registry
	// showed it (or Settle passed); From and Target are its agents
	// before and the agents it asked for.
	Changed      time.Time
	From, Target int
}

// Decision is what Decide chose for a queue, with what it chose from.
type Decision struct {
	// Queue is the queue's name.
	Queue string
	// Action is what to do.
	Action Action
	// Waiting, Running and Agents are the observation decided on.
	Waiting, Running uint64
	Agents           int
	// Target is the agents the queue should have: Agents unless Action
	// is Up or Down.
	Target int
	// Min is the minimum in force: Policy.Min, or a schedule rule's.
	Min int
	// Reason says why, in words.
	Reason string
}

// Changes reports whether d asks the actuator for something.
func (d Decision) Changes() bool { return d.Action == Up || d.Action == Down }

// Decide is the autoscaling rule: from the policy, what it remembers of
// the queue, what it sees now and the time, it returns what to remember
// and what to do. It is pure: the Scaler applies its decisions.
//
// In order, the first that holds decides:
//
//  1. After a change, until the registry shows it or p.Settle passed:
//     settling (a starting agent is not yet registered).
//  2. Fewer agents than the minimum in force (p.Min, raised by a
//     schedule rule): up to the minimum at once.
//  3. Jobs waiting and no agent: up to one, whatever the threshold (a
//     queue is never left with work and nobody to do it).
//  4. At least p.Threshold jobs waiting: up by one agent, or hold at
//     p.Max. One agent per decision keeps each step explainable and
//     lets each new agent take jobs before the next is asked for.
//  5. Nothing waiting and nothing running for p.Cooldown, above the
//     minimum: down by one agent, when the actuator can remove one.
//     The idle clock is not reset by a scale-down, so an idle queue
//     loses one agent per decision down to its minimum.
//  6. Otherwise hold.
//
// A scale-up resets the idle clock, so a queue scaled up waits a whole
// cooldown before it is scaled down: no flapping.
func Decide(p Policy, s State, o Observation, now time.Time) (State, Decision) {
	floor, why := p.Min, ""
	if m, rule := p.Schedule.Min(now); m > floor {
		floor, why = m, fmt.Sprintf(" of schedule %q", rule)
	}
	floor = min(floor, max(p.Max, 0))
	d := Decision{Queue: o.Queue, Action: Hold, Waiting: o.Waiting, Running: o.Running, Agents: o.Agents, Target: o.Agents, Min: floor}

	idle := o.Waiting == 0 && o.Running == 0
	switch {
	case !idle:
		s.IdleSince = time.Time{}
	case s.IdleSince.IsZero():
		s.IdleSince = now
	}

	if !s.Changed.IsZero() {
		up := s.Target > s.From
		shown := (up && o.Agents >= s.Target) || (!up && o.Agents <= s.Target)
		if !shown && now.Sub(s.Changed) < p.Settle {
			d.Action = Settling
			d.Reason = fmt.Sprintf("waiting up to %v for the registry to show %d agents (it shows %d)", (p.Settle - now.Sub(s.Changed)).Round(time.Millisecond), s.Target, o.Agents)
			return s, d
		}
		s.Changed = time.Time{}
	}

	switch {
	case o.Agents < floor:
		d.Action, d.Target = Up, floor
		d.Reason = fmt.Sprintf("%d agents, below the minimum of %d%s", o.Agents, floor, why)
	case o.Agents == 0 && o.Waiting > 0:
		d.Action, d.Target = Up, 1
		d.Reason = fmt.Sprintf("%d jobs waiting and no agent", o.Waiting)
	case o.Waiting >= uint64(max(p.Threshold, 1)) && o.Agents >= p.Max:
		d.Action = HoldAtMax
		d.Reason = fmt.Sprintf("%d jobs waiting, at or above the threshold of %d, with %d agents, the maximum of %d", o.Waiting, p.Threshold, o.Agents, p.Max)
	case o.Waiting >= uint64(max(p.Threshold, 1)):
		d.Action, d.Target = Up, o.Agents+1
		d.Reason = fmt.Sprintf("%d jobs waiting, at or above the threshold of %d", o.Waiting, p.Threshold)
	case idle && o.Agents > floor:
		quiet := now.Sub(s.IdleSince)
		switch {
		case quiet < p.Cooldown:
			d.Reason = fmt.Sprintf("idle for %v of the cooldown of %v", quiet.Round(time.Millisecond), p.Cooldown)
		case o.Removable == 0:
			d.Reason = fmt.Sprintf("idle for %v, but none of the %d agents above the minimum of %d is this process's to remove", quiet.Round(time.Millisecond), o.Agents-floor, floor)
		default:
			d.Action, d.Target = Down, o.Agents-1
			d.Reason = fmt.Sprintf("idle for %v, at least the cooldown of %v, with %d agents above the minimum of %d", quiet.Round(time.Millisecond), p.Cooldown, o.Agents-floor, floor)
		}
	case idle:
		d.Reason = fmt.Sprintf("idle at the minimum of %d%s", floor, why)
	default:
		d.Reason = fmt.Sprintf("%d jobs waiting (threshold %d), %d running", o.Waiting, p.Threshold, o.Running)
	}

	if d.Changes() {
		s.Changed, s.From, s.Target = now, o.Agents, d.Target
	}
	if d.Action == Up && idle {
		s.IdleSince = now
	}
	return s, d
}
