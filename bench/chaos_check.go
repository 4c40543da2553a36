package bench

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/weft-ci/weft/wire"
)

// observations is everything the chaos saw, gathered by plumbing that
// decides nothing; check turns it into figures. None of it comes from
// the dispatchers' or agents' own accounts but the events and the run
// documents they wrote.
type observations struct {
	// Runs are the planned runs, in trigger order, with what the client
	// did to them.
	Runs []*chaosRun
	// Docs are the run documents read after the settle time, by id.
	Docs map[string]*wire.Run
	// Pending are the pending reasons each run's document showed while
	// the chaos ran (from a watch of the runs bucket), by id.
	Pending map[string]map[string]bool
	// Events are every event of WEFT_EVENTS but heartbeats, in stream
	// order; Heartbeats counts those.
	Events     []wire.Event
	Heartbeats int
	// Execs are the stage executions measured on the host: the stage
	// records of host stages and the samples of container processes.
	Execs []execution
	// Kills are the SIGKILLs the chaos sent; Exits the processes that
	// ended by themselves.
	Kills []kill
	Exits []exit
	// ServerDown and ServerUp bound the server restart (zero if none):
	// when it was killed, and when this process's connection answered
	// again.
	ServerDown, ServerUp time.Time
	// Stopped is when the chaos stopped; End when the runs' documents
	// were read (Stopped plus at most the settle time).
	Stopped, End time.Time
	// Leases are the lease and group-lock keys left in weft_wip after the
	// grace period; Waits the waiting runs left.
	Leases, Waits []string
	// Workspaces are the entries left in the agents' work directories.
	Workspaces []string
	// Containers are the containers of the chaos's runs left in
	// containerd.
	Containers []string
	// Panics are the processes whose logs report a panic or a race.
	Panics []string
	// Limits are the scenario's limits.
	WIP         int
	AckWait     time.Duration
	MaxRecovery time.Duration
	// ContainersOn says the plain runs had a container stage.
	ContainersOn bool
	// Dispatchers is how many dispatcher members ran.
	Dispatchers int
}

// execution is one stage attempt executing on the host, from Start to
// End.
type execution struct {
	Run, Stage string
	Attempt    int
	// Agent is the incarnation that ran it ("" when not known: a
	// container's agent comes from the events); PID is a host stage's
	// shell, or a container's PID namespace.
	Agent string
	PID   int
	// Container marks a container stage's execution, sampled from the
	// host's processes, rather than a host stage's records.
	Container bool
	// Start and End bound the execution: a host stage's first and last
	// record, the first and last sample that saw a container's process.
	Start, End time.Time
	// Ended says a host stage wrote its end record (it was not killed).
	Ended bool
}

// LostRun is a run that did not end as it must.
type LostRun struct {
	// ID is the run id; empty when the trigger was never accepted.
	ID string `json:"id,omitempty"`
	// Kind is what the run was for (plain, group, superseded, latest,
	// cancel, cancel_early).
	Kind string `json:"kind"`
	// Repo is its repository.
	Repo string `json:"repo"`
	// Want is the outcome it must have; Got its state ("missing" without
	// a document, "not accepted" when its trigger never got a run id).
	Want string `json:"want"`
	Got  string `json:"got"`
	// Stages says where each stage was, for a run that is not terminal.
	Stages string `json:"stages,omitempty"`
}

// Overlap is one stage that two attempts executed at once.
type Overlap struct {
	// Run and Stage name the stage.
	Run   string `json:"run"`
	Stage string `json:"stage"`
	// Attempts and Agents are the two executions'.
	Attempts [2]int    `json:"attempts"`
	Agents   [2]string `json:"agents"`
	// At is when the second one started, while the first still ran.
	At time.Time `json:"at"`
	// For is how long they ran together.
	For time.Duration `json:"for_ns"`
	// Cause guesses why: "orphan" (the first one's agent was killed
	// before: a process or container outlived it), "partition" (it
	// began during the server restart or within 2 AckWaits after it) or
	// "fencing" (neither: two live agents both held the job).
	Cause string `json:"cause"`
}

// check computes the chaos figures and the problems from o.
func check(o *observations) *ChaosResult {
	res := &ChaosResult{
		Runs: len(o.Runs), WIPLimit: o.WIP, Containers: o.ContainersOn,
		Kinds: map[string]int{}, RecoveryLimit: o.MaxRecovery,
		DispatcherKills: make([]int, o.Dispatchers),
	}
	var problems []string
	problem := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	// Faults.
	for _, k := range o.Kills {
		switch k.Kind {
		case memberAgent:
			res.AgentKills++
		case memberDispatcher:
			var i int
			if _, err := fmt.Sscanf(k.Member, "dispatcher%d", &i); err == nil && i >= 1 && i <= len(res.DispatcherKills) {
				res.DispatcherKills[i-1]++
			}
		case memberServer:
			res.ServerRestarts++
		}
	}
	if !o.ServerDown.IsZero() && !o.ServerUp.IsZero() {
		res.ServerDown = o.ServerUp.Sub(o.ServerDown)
	}
	res.UnexpectedExits = len(o.Exits)

	// Outcomes.
	repos := map[string]bool{}
	for _, r := range o.Runs {
		res.Kinds[string(r.Kind)]++
		repos[r.Repo] = true
		if r.ID == "" {
			res.NotAccepted++
			res.LostRuns = append(res.LostRuns, LostRun{Kind: string(r.Kind), Repo: r.Repo, Want: string(r.Kind.want()), Got: "not accepted"})
			continue
		}
		res.Accepted++
		d := o.Docs[r.ID]
		got := "missing"
		if d != nil {
			got = string(d.State)
		}
		if d != nil && !d.State.Terminal() {
			res.Stuck++
		}
		if d == nil || d.State != r.Kind.want() {
			lr := LostRun{ID: r.ID, Kind: string(r.Kind), Repo: r.Repo, Want: string(r.Kind.want()), Got: got}
			if d != nil && !d.State.Terminal() {
				lr.Stages = stageStates(d)
			}
			res.LostRuns = append(res.LostRuns, lr)
		}
		if d == nil || d.State != wire.RunCancelled {
			continue
		}
		ran := !d.Admitted.IsZero() && slices.ContainsFunc(d.Stages, func(s wire.StageRun) bool { return !s.Started.IsZero() })
		switch r.Kind {
		case kindCancel, kindCancelEarly:
			if r.CancelledRunning || ran {
				res.CancelledRunning++
			} else if d.Admitted.IsZero() {
				res.CancelledWaiting++
			}
		case kindSuperseded:
			if ran {
				res.SupersededRunning++
			} else if d.Admitted.IsZero() {
				res.SupersededWaiting++
			}
		}
	}
	res.Repos = len(repos)
	res.Lost = len(res.LostRuns) - res.NotAccepted
	slices.SortFunc(res.LostRuns, func(a, b LostRun) int { return cmp.Compare(a.ID, b.ID) })

	// Admission: in flight by the run documents, waiting by the
	// documents and by what the watch saw.
	var inFlight []span
	byID := map[string]*chaosRun{}
	for _, r := range o.Runs {
		if r.ID == "" {
			continue
		}
		byID[r.ID] = r
		d := o.Docs[r.ID]
		if d == nil || d.Admitted.IsZero() {
			continue
		}
		end := d.Finished
		if !d.State.Terminal() || end.IsZero() {
			end = o.End
		}
		inFlight = append(inFlight, span{run: r, start: d.Admitted, end: end})
		if took := end.Sub(d.Admitted); took > res.SlowestRunFor {
			res.SlowestRun, res.SlowestRunFor = fmt.Sprintf("%s (%s, %s)", r.ID, r.Kind, d.State), took
		}
	}
	res.MaxInFlight, res.MaxInFlightByRepo = maxBy(inFlight, func(s span) string { return s.run.Repo })
	res.MaxGroupInFlight, res.MaxInFlightByGroup = maxBy(inFlight, func(s span) string { return s.run.groupKey() })
	for _, s := range inFlight {
		r := s.run
		d := o.Docs[r.ID]
		busy, group := 0, false
		for _, t := range inFlight {
			if t.run == r || t.run.Repo != r.Repo || !t.start.Before(d.Created) || !t.end.After(d.Created) {
				continue
			}
			busy++
			group = group || (r.Group != "" && t.run.groupKey() == r.groupKey())
		}
		if busy >= o.WIP || o.Pending[r.ID][wire.PendingWIP] {
			res.AdmittedFromWaiting++
		}
		if group || o.Pending[r.ID][wire.PendingGroup] {
			res.GroupWaited++
		}
	}

	// Executions measured on the host.
	execs := slices.Clone(o.Execs)
	agentOf := map[attemptKey]string{}
	for _, ev := range o.Events {
		if ev.Type == wire.Started {
			agentOf[attemptKey{ev.RunID, ev.Stage, ev.Attempt}] = ev.Agent
		}
	}
	runSpans := map[string]*span{}
	stages := map[stageKey][]execution{}
	for i := range execs {
		e := &execs[i]
		if e.Agent == "" {
			e.Agent = agentOf[attemptKey{e.Run, e.Stage, e.Attempt}]
		}
		r := byID[e.Run]
		if r == nil {
			continue
		}
		if e.Container {
			res.ContainerStages++
		} else {
			res.HostStages++
		}
		stages[stageKey{e.Run, e.Stage}] = append(stages[stageKey{e.Run, e.Stage}], *e)
		if s := runSpans[e.Run]; s == nil {
			runSpans[e.Run] = &span{run: r, start: e.Start, end: e.End}
		} else {
			s.start, s.end = minTime(s.start, e.Start), maxTime(s.end, e.End)
		}
	}
	var executing []span
	for _, s := range runSpans {
		executing = append(executing, *s)
	}
	res.MaxExecuting, _ = maxBy(executing, func(s span) string { return s.run.Repo })
	res.MaxGroupExecuting, _ = maxBy(executing, func(s span) string { return s.run.groupKey() })
	killedAt := map[string]time.Time{}
	for _, k := range o.Kills {
		if k.Kind == memberAgent {
			killedAt[k.ID] = k.At
		}
	}
	for key, es := range stages {
		slices.SortFunc(es, func(a, b execution) int { return a.Start.Compare(b.Start) })
		for i := range es {
			for j := i + 1; j < len(es); j++ {
				a, b := es[i], es[j]
				if !overlaps(a, b) {
					continue
				}
				ov := Overlap{Run: key.run, Stage: key.stage, Attempts: [2]int{a.Attempt, b.Attempt},
					Agents: [2]string{a.Agent, b.Agent}, At: b.Start, For: minTime(a.End, b.End).Sub(b.Start)}
				switch k, ok := killedAt[a.Agent]; {
				case ok && k.Before(b.Start):
					ov.Cause = "orphan"
				case !o.ServerDown.IsZero() && !b.Start.Before(o.ServerDown) && (o.ServerUp.IsZero() || b.Start.Before(o.ServerUp.Add(2*o.AckWait))):
					ov.Cause = "partition"
				default:
					ov.Cause = "fencing"
				}
				res.RunTwiceStages = append(res.RunTwiceStages, ov)
			}
		}
	}
	slices.SortFunc(res.RunTwiceStages, func(a, b Overlap) int { return a.At.Compare(b.At) })
	seen := map[stageKey]bool{}
	for _, ov := range res.RunTwiceStages {
		if !seen[stageKey{ov.Run, ov.Stage}] {
			seen[stageKey{ov.Run, ov.Stage}] = true
			res.RunTwice++
		}
	}

	// Events: finishes and takeovers.
	res.Events = len(o.Events) + o.Heartbeats
	// A stage finished twice when an attempt started after another
	// attempt's success was stored: the fleet knew the stage was done.
	// An attempt whose success was stored only after the next attempt
	// started (it finished while cut off from the server, or its agent
	// died between the end of its work and its finished event) ran again
	// by at-least-once delivery: counted apart.
	type success struct {
		who string
		at  int // index in o.Events
	}
	succeeded := map[stageKey][]success{}
	finishedBy := map[attemptKey]bool{}
	starts := map[stageKey][]wire.Event{}
	startAt := map[stageKey][]int{}
	for i, ev := range o.Events {
		if byID[ev.RunID] == nil || ev.Stage == "" {
			continue
		}
		k := stageKey{ev.RunID, ev.Stage}
		switch ev.Type {
		case wire.Finished:
			finishedBy[attemptKey{ev.RunID, ev.Stage, ev.Attempt}] = true
			who := fmt.Sprintf("%d@%s", ev.Attempt, ev.Agent)
			if ev.ExitCode == 0 && ev.Category == wire.CategoryNone && !slices.ContainsFunc(succeeded[k], func(s success) bool { return s.who == who }) {
				succeeded[k] = append(succeeded[k], success{who, i})
			}
		case wire.Started:
			starts[k] = append(starts[k], ev)
			startAt[k] = append(startAt[k], i)
		}
	}
	for k, ss := range succeeded {
		if len(ss) < 2 {
			continue
		}
		var who []string
		for _, s := range ss {
			who = append(who, s.who)
		}
		detail := fmt.Sprintf("%s/%s (attempts %s)", k.run, k.stage, strings.Join(who, ", "))
		if slices.ContainsFunc(startAt[k], func(i int) bool { return i > ss[0].at }) {
			res.FinishedTwice++
			res.FinishedTwiceStages = append(res.FinishedTwiceStages, detail)
		} else {
			res.RanAgainAfterLateFinish = append(res.RanAgainAfterLateFinish, detail)
		}
	}
	slices.Sort(res.RanAgainAfterLateFinish)
	slices.Sort(res.FinishedTwiceStages)
	var recoveries []time.Duration
	for _, k := range o.Kills {
		if k.Kind != memberAgent {
			continue
		}
		for sk, evs := range starts {
			if d, ok := recovery(evs, finishedBy, k); ok {
				recoveries = append(recoveries, d)
				if d > res.RecoveryMax {
					res.RecoveryMax = d
					res.RecoveryWorst = fmt.Sprintf("%s/%s, %s killed at %s", sk.run, sk.stage, k.ID, k.At.Format("15:04:05.000"))
				}
			}
		}
	}
	res.Takeovers = len(recoveries)
	res.RecoveryP50, res.RecoveryMax = Percentile(recoveries, 0.5), Percentile(recoveries, 1)

	// What is left.
	res.LeasesLeft, res.LeaseKeys = len(o.Leases), o.Leases
	res.WaitsLeft = len(o.Waits)
	res.WorkspacesLeft, res.WorkspaceEntries = len(o.Workspaces), o.Workspaces
	res.ContainersLeft = len(o.Containers)
	res.Panics = o.Panics

	// Invariants.
	if res.NotAccepted > 0 {
		problem("%d triggers never got a run id", res.NotAccepted)
	}
	if res.Lost > 0 {
		problem("%d runs lost (%d stuck): %s", res.Lost, res.Stuck, describeLost(res.LostRuns))
	}
	if res.FinishedTwice > 0 {
		problem("%d stages ran again and succeeded after a stored success: %s", res.FinishedTwice, firstFew(res.FinishedTwiceStages))
	}
	if res.RunTwice > 0 {
		causes := map[string]int{}
		for _, ov := range res.RunTwiceStages {
			causes[ov.Cause]++
		}
		problem("%d stages executed by two attempts at once (overlaps by cause: %v; first at %s: %s/%s attempts %v on %v)", res.RunTwice, causes,
			res.RunTwiceStages[0].At.Format("15:04:05.000"), res.RunTwiceStages[0].Run, res.RunTwiceStages[0].Stage, res.RunTwiceStages[0].Attempts, res.RunTwiceStages[0].Agents)
	}
	if res.MaxInFlight > o.WIP {
		problem("%d runs of one repository in flight at once by the run documents, WIP limit %d (%v)", res.MaxInFlight, o.WIP, res.MaxInFlightByRepo)
	}
	if res.MaxExecuting > o.WIP {
		problem("%d runs of one repository executing at once by the stage records, WIP limit %d", res.MaxExecuting, o.WIP)
	}
	if res.MaxGroupInFlight > 1 {
		problem("%d runs of one concurrency group in flight at once by the run documents (%v)", res.MaxGroupInFlight, over(res.MaxInFlightByGroup, 1))
	}
	if res.MaxGroupExecuting > 1 {
		problem("%d runs of one concurrency group executing at once by the stage records", res.MaxGroupExecuting)
	}
	if res.LeasesLeft > 0 {
		problem("%d leases and group locks left in weft_wip: %s", res.LeasesLeft, firstFew(res.LeaseKeys))
	}
	if res.WorkspacesLeft > 0 {
		problem("%d workspaces left on agents: %s", res.WorkspacesLeft, firstFew(res.WorkspaceEntries))
	}
	if res.ContainersLeft > 0 {
		problem("%d containers left in containerd: %s", res.ContainersLeft, firstFew(o.Containers))
	}
	if len(res.Panics) > 0 {
		problem("%d processes panicked or raced: %s", len(res.Panics), firstFew(res.Panics))
	}
	if o.MaxRecovery > 0 && res.RecoveryMax > o.MaxRecovery {
		problem("a stage of a killed agent restarted %s after the kill, limit %s", res.RecoveryMax.Round(time.Millisecond), o.MaxRecovery)
	}

	// Coverage: a figure of 0 proves nothing unless the fault happened.
	need := func(ok bool, what string) {
		if !ok {
			problem("vacuous: %s", what)
		}
	}
	need(res.Accepted > 0, "no run was accepted")
	need(res.AgentKills > 0, "no agent was killed")
	for i, n := range res.DispatcherKills {
		need(n > 0, fmt.Sprintf("dispatcher%d was never killed", i+1))
	}
	need(res.ServerRestarts == 1, fmt.Sprintf("the server was restarted %d times, want once", res.ServerRestarts))
	need(res.Takeovers > 0, "no stage of a killed agent ran again")
	need(res.AdmittedFromWaiting*2 >= res.Accepted-res.Kinds[string(kindCancelEarly)], fmt.Sprintf("only %d of %d runs were admitted from the waiting list, want most", res.AdmittedFromWaiting, res.Accepted))
	need(res.MaxInFlight >= o.WIP, fmt.Sprintf("no repository ever reached its WIP limit (%d)", o.WIP))
	need(res.GroupWaited > 0, "no run ever waited for its concurrency group")
	need(res.CancelledRunning > 0, "no run was cancelled by the client while a stage ran")
	need(res.CancelledWaiting > 0, "no run was cancelled by the client while it waited for admission")
	need(res.SupersededRunning > 0, "no cancel_in_progress run was superseded while a stage ran")
	need(res.HostStages > 0, "no host stage recorded its execution")
	need(!o.ContainersOn || res.ContainerStages > 0, "no container stage was seen in containerd")
	slices.Sort(problems)
	res.Problems = problems
	res.OK = len(problems) == 0
	return res
}

// stageKey names a stage of a run; attemptKey one attempt of it.
type (
	stageKey struct {
		run, stage string
	}
	attemptKey struct {
		run, stage string
		attempt    int
	}
)

// span is when a run was in flight (or executing).
type span struct {
	run        *chaosRun
	start, end time.Time
}

// maxBy returns the most spans that overlap at one instant among those
// of one group, over all groups, and that maximum per group. Spans
// touching end to start do not overlap; spans of group "" are ignored.
func maxBy(spans []span, group func(span) string) (int, map[string]int) {
	type edge struct {
		at    time.Time
		delta int
	}
	edges := map[string][]edge{}
	for _, s := range spans {
		g := group(s)
		if g == "" {
			continue
		}
		edges[g] = append(edges[g], edge{s.start, 1}, edge{s.end, -1})
	}
	best, by := 0, map[string]int{}
	for g, es := range edges {
		slices.SortFunc(es, func(a, b edge) int {
			if c := a.at.Compare(b.at); c != 0 {
				return c
			}
			return cmp.Compare(a.delta, b.delta) // ends first
		})
		n, m := 0, 0
		for _, e := range es {
			n += e.delta
			m = max(m, n)
		}
		by[g] = m
		best = max(best, m)
	}
	return best, by
}

// overlaps reports whether two executions of one stage ran at the same
// time. Host records are ticks: they overlap when each started before the
// other's last record. Container samples are instants: two attempts seen
// in one sample overlap.
func overlaps(a, b execution) bool {
	if a.Attempt == b.Attempt && a.Agent == b.Agent && (a.PID == b.PID || a.Container != b.Container) {
		// One execution seen twice: by its records and by a process
		// sample (a PID namespace is not a shell's PID).
		return false
	}
	if a.Container || b.Container {
		return !b.Start.After(a.End) && !a.Start.After(b.End)
	}
	return b.Start.Before(a.End) && a.Start.Before(b.End)
}

// recovery returns the time from kill k to the next start of a stage
// that k's agent was running then (started, not finished, and not taken
// over before the kill); ok is false when evs (one stage's started
// events, in order) hold no such stage or it never started again.
func recovery(evs []wire.Event, finished map[attemptKey]bool, k kill) (time.Duration, bool) {
	running := -1
	for i, ev := range evs {
		if !ev.Time.Before(k.At) {
			break
		}
		if ev.Agent == k.ID {
			running = i
		} else if running >= 0 {
			running = -1 // another attempt took it over before the kill
		}
	}
	if running < 0 || finished[attemptKey{evs[running].RunID, evs[running].Stage, evs[running].Attempt}] {
		return 0, false
	}
	for _, ev := range evs[running+1:] {
		if ev.Time.After(k.At) {
			return ev.Time.Sub(k.At), true
		}
	}
	return 0, false
}

func stageStates(d *wire.Run) string {
	parts := make([]string, 0, len(d.Stages))
	for _, s := range d.Stages {
		p := s.Key + "=" + string(s.State)
		if s.Agent != "" {
			p += "@" + s.Agent
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, " ")
}

func describeLost(lost []LostRun) string {
	var parts []string
	for _, l := range lost {
		if l.ID == "" {
			continue
		}
		p := fmt.Sprintf("%s %s %s (%s, want %s)", l.ID, l.Kind, l.Repo, l.Got, l.Want)
		if l.Stages != "" {
			p += " [" + l.Stages + "]"
		}
		parts = append(parts, p)
	}
	return firstFew(parts)
}

// firstFew joins the first five of items and says how many more there are.
func firstFew(items []string) string {
	if len(items) <= 5 {
		return strings.Join(items, "; ")
	}
	return strings.Join(items[:5], "; ") + fmt.Sprintf("; and %d more", len(items)-5)
}

// over returns the entries of m above limit.
func over(m map[string]int, limit int) map[string]int {
	out := map[string]int{}
	for k, v := range m {
		if v > limit {
			out[k] = v
		}
	}
	return out
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
