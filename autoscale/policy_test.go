package autoscale

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// monday10 is a Monday, 10:00 UTC.
var monday10 = time.Date(2025, time.June, 2, 10, 0, 0, 0, time.UTC)

// seed is the policy of the seed scenario: up at a depth of 2, at most 6,
// down after 5 minutes at zero.
func seed() Policy {
	return Policy{Min: DefaultMin, Max: DefaultMax, Threshold: DefaultThreshold, Cooldown: DefaultCooldown, Settle: DefaultSettle}
}

func mustSchedule(t *testing.T, specs ...string) Schedule {
	t.Helper()
	s, err := ParseSchedule(specs, time.UTC)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestDecide(t *testing.T) {
	now := monday10
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	withMin := func(p Policy, n int) Policy { p.Min = n; return p }
	officeHours := seed()
	officeHours.Schedule = mustSchedule(t, "Mon-Fri 08:00-18:00 min=4")
	for _, c := range []struct {
		name       string
		policy     Policy
		state      State
		obs        Observation
		at         time.Time
		action     Action
		target     int
		min        int
		reasonHas  string
		idleSince  time.Time // the state's IdleSince after
		changedNow bool      // the state records a change at now
	}{
		{name: "up at the threshold", policy: seed(), obs: Observation{Waiting: 2, Agents: 1},
			action: Up, target: 2, reasonHas: "2 jobs waiting, at or above the threshold of 2", changedNow: true},
		{name: "up by one only, however deep", policy: seed(), obs: Observation{Waiting: 50, Running: 1, Agents: 1},
			action: Up, target: 2, changedNow: true},
		{name: "hold below the threshold", policy: seed(), obs: Observation{Waiting: 1, Running: 1, Agents: 1},
			action: Hold, target: 1, reasonHas: "1 jobs waiting (threshold 2), 1 running"},
		{name: "hold at max", policy: seed(), obs: Observation{Waiting: 9, Running: 6, Agents: 6},
			action: HoldAtMax, target: 6, reasonHas: "the maximum of 6"},
		{name: "hold above max (static agents)", policy: seed(), obs: Observation{Waiting: 9, Agents: 8},
			action: HoldAtMax, target: 8},
		{name: "from zero below the threshold", policy: seed(), obs: Observation{Waiting: 1},
			action: Up, target: 1, reasonHas: "1 jobs waiting and no agent", changedNow: true},
		{name: "no agent and no job", policy: seed(), obs: Observation{},
			action: Hold, target: 0, reasonHas: "idle at the minimum of 0", idleSince: now},
		{name: "the idle clock starts", policy: seed(), obs: Observation{Agents: 3, Removable: 3},
			action: Hold, target: 3, reasonHas: "idle for 0s of the cooldown of 5m0s", idleSince: now},
		{name: "no scale-down before the cooldown", policy: seed(), state: State{IdleSince: ago(5*time.Minute - time.Second)},
			obs: Observation{Agents: 3, Removable: 3}, action: Hold, target: 3, idleSince: ago(5*time.Minute - time.Second)},
		{name: "down after the cooldown", policy: seed(), state: State{IdleSince: ago(5 * time.Minute)},
			obs: Observation{Agents: 3, Removable: 3}, action: Down, target: 2, min: 0,
			reasonHas: "idle for 5m0s, at least the cooldown of 5m0s, with 3 agents above the minimum of 0", idleSince: ago(5 * time.Minute), changedNow: true},
		{name: "down with a hook that decides", policy: seed(), state: State{IdleSince: ago(time.Hour)},
			obs: Observation{Agents: 1, Removable: -1}, action: Down, target: 0, idleSince: ago(time.Hour), changedNow: true},
		{name: "no scale-down of agents not ours", policy: seed(), state: State{IdleSince: ago(time.Hour)},
			obs: Observation{Agents: 2, Removable: 0}, action: Hold, target: 2, reasonHas: "none of the 2 agents above the minimum of 0 is this process's", idleSince: ago(time.Hour)},
		{name: "no scale-down while running", policy: seed(), state: State{IdleSince: ago(time.Hour)},
			obs: Observation{Running: 1, Agents: 2, Removable: 2}, action: Hold, target: 2},
		{name: "no scale-down at min", policy: withMin(seed(), 2), state: State{IdleSince: ago(time.Hour)},
			obs: Observation{Agents: 2, Removable: 2}, action: Hold, target: 2, min: 2, reasonHas: "idle at the minimum of 2", idleSince: ago(time.Hour)},
		{name: "below min: up to it at once", policy: withMin(seed(), 3), obs: Observation{Agents: 0},
			action: Up, target: 3, min: 3, reasonHas: "0 agents, below the minimum of 3", idleSince: now, changedNow: true},
		{name: "a scale-up resets the idle clock", policy: withMin(seed(), 2), state: State{IdleSince: ago(time.Hour)},
			obs: Observation{Agents: 1, Removable: 1}, action: Up, target: 2, min: 2, idleSince: now, changedNow: true},
		{name: "the schedule raises the floor in its hours", policy: officeHours, state: State{IdleSince: ago(time.Hour)},
			obs: Observation{Agents: 1, Removable: 1}, action: Up, target: 4, min: 4,
			reasonHas: `below the minimum of 4 of schedule "Mon-Fri 08:00-18:00 min=4"`, idleSince: now, changedNow: true},
		{name: "the schedule holds the floor in its hours", policy: officeHours, state: State{IdleSince: ago(time.Hour)},
			obs: Observation{Agents: 4, Removable: 4}, action: Hold, target: 4, min: 4, idleSince: ago(time.Hour)},
		{name: "not after its hours", policy: officeHours, at: now.Add(8 * time.Hour), state: State{IdleSince: ago(time.Hour)},
			obs: Observation{Agents: 4, Removable: 4}, action: Down, target: 3, min: 0, idleSince: ago(time.Hour), changedNow: true},
		{name: "not on its days off", policy: officeHours, at: now.Add(5 * 24 * time.Hour), state: State{IdleSince: ago(time.Hour)},
			obs: Observation{Agents: 1, Removable: 1}, action: Down, target: 0, min: 0, idleSince: ago(time.Hour), changedNow: true},
		{name: "settling until the registry shows the change", policy: seed(), state: State{Changed: ago(time.Second), From: 1, Target: 2},
			obs: Observation{Waiting: 5, Agents: 1}, action: Settling, target: 1, reasonHas: "for the registry to show 2 agents (it shows 1)"},
		{name: "settled when the registry shows it", policy: seed(), state: State{Changed: ago(time.Second), From: 1, Target: 2},
			obs: Observation{Waiting: 5, Agents: 2}, action: Up, target: 3, changedNow: true},
		{name: "settled when a scale-down shows", policy: seed(), state: State{IdleSince: ago(time.Hour), Changed: ago(time.Second), From: 3, Target: 2},
			obs: Observation{Agents: 2, Removable: 2}, action: Down, target: 1, idleSince: ago(time.Hour), changedNow: true},
		{name: "settle has a limit", policy: seed(), state: State{Changed: ago(DefaultSettle), From: 1, Target: 2},
			obs: Observation{Waiting: 5, Agents: 1}, action: Up, target: 2, changedNow: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			at := c.at
			if at.IsZero() {
				at = now
			}
			c.obs.Queue = "main"
			st, d := Decide(c.policy, c.state, c.obs, at)
			if d.Action != c.action || d.Target != c.target || d.Min != c.min || d.Queue != "main" {
				t.Errorf("Decide = %s to %d (min %d) on %q, want %s to %d (min %d); reason %q", d.Action, d.Target, d.Min, d.Queue, c.action, c.target, c.min, d.Reason)
			}
			if !strings.Contains(d.Reason, c.reasonHas) {
				t.Errorf("reason %q, want it to say %q", d.Reason, c.reasonHas)
			}
			if !st.IdleSince.Equal(c.idleSince) {
				t.Errorf("IdleSince %v, want %v", st.IdleSince, c.idleSince)
			}
			if c.changedNow != st.Changed.Equal(at) || (c.changedNow && (st.From != c.obs.Agents || st.Target != c.target)) {
				t.Errorf("state %+v after %s, want a change recorded: %v", st, d.Action, c.changedNow)
			}
			if !c.changedNow && d.Action != Settling && !st.Changed.IsZero() {
				t.Errorf("state %+v: a settled change left recorded", st)
			}
		})
	}
}

// The seed scenario, decided every 5 s over a fleet whose agents register
// at once: 20 jobs waiting bring the queue up one agent per decision to
// 6 and hold it there; once the queue drains it keeps its agents for the
// cooldown, then goes down one per decision to 0.
func TestDecideUpToMaxAndDownAfterTheCooldown(t *testing.T) {
	p := seed()
	var s State
	now, agents, waiting := monday10, 0, uint64(20)
	var actions []string
	step := func() Decision {
		var d Decision
		running := uint64(0)
		if waiting > 0 {
			running = uint64(agents) // every agent busy
		}
		s, d = Decide(p, s, Observation{Queue: "main", Waiting: waiting, Running: running, Agents: agents, Removable: agents}, now)
		if d.Changes() {
			agents = d.Target
		}
		actions = append(actions, string(d.Action))
		now = now.Add(DefaultInterval)
		return d
	}
	for range 10 {
		if d := step(); d.Target > p.Max {
			t.Fatalf("target %d above max %d", d.Target, p.Max)
		}
	}
	if agents != 6 {
		t.Fatalf("%d agents after 10 decisions at a depth of 20, want 6: %v", agents, actions)
	}
	if got, want := strings.Join(actions, " "), "up up up up up up hold-at-max hold-at-max hold-at-max hold-at-max"; got != want {
		t.Errorf("actions %s, want %s", got, want)
	}
	waiting = 0
	agentsAtIdle := agents
	s, _ = Decide(p, s, Observation{Queue: "main", Agents: agents, Removable: agents}, now) // the idle clock starts
	idle := now
	for now.Sub(idle) < p.Cooldown {
		if d := step(); d.Action != Hold {
			t.Fatalf("%s %v after the queue went idle, within the cooldown: %s", d.Action, now.Sub(idle), d.Reason)
		}
	}
	if agents != agentsAtIdle {
		t.Fatalf("%d agents at the end of the cooldown, want %d", agents, agentsAtIdle)
	}
	actions = nil
	for range 8 {
		step()
	}
	if got, want := strings.Join(actions, " "), "down down down down down down hold hold"; agents != 0 || got != want {
		t.Errorf("%d agents after the cooldown, actions %s; want 0 agents, %s", agents, got, want)
	}
}

func TestPolicyValidate(t *testing.T) {
	ok := seed()
	ok.Schedule = mustSchedule(t, "Mon-Fri 08:00-18:00 min=4")
	if err := ok.Validate(); err != nil {
		t.Errorf("Validate(%+v) = %v, want nil", ok, err)
	}
	bad := Policy{Min: 3, Max: 2, Threshold: 0, Cooldown: -time.Second, Settle: -time.Second, Schedule: mustSchedule(t, "Sat,Sun min=5")}
	err := bad.Validate()
	if !errors.Is(err, ErrInvalidPolicy) {
		t.Fatalf("Validate = %v, want ErrInvalidPolicy", err)
	}
	for _, want := range []string{"min 3: above max 2", "threshold 0: want at least 1", "cooldown -1s: want 0 or more", "settle -1s: want 0 or more", `schedule "Sat,Sun min=5": min=5: above max 2`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v, want it to say %q", err, want)
		}
	}
	if err := (Policy{Threshold: 1}).Validate(); err == nil || !strings.Contains(err.Error(), "max 0: want at least 1") {
		t.Errorf("Validate of max 0 = %v, want max 0: want at least 1", err)
	}
}
