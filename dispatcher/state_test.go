package dispatcher

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/weft-ci/weft/pipeline"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// t0 is the clock of every test; step i of a scenario happens at at(i).
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func at(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }

const testRunID = "01JRUNTEST"

// diamond is build -> lint, test -> package.
const diamond = `name: diamond
stages:
  - key: build
    commands: [make]
  - key: lint
    commands: [make lint]
    depends_on: [build]
  - key: test
    commands: [make test]
    depends_on: [build]
  - key: package
    commands: [make package]
    depends_on: [lint, test]
`

func parse(t *testing.T, src string) *pipeline.Pipeline {
	t.Helper()
	p, err := pipeline.Parse("pipeline.yml", []byte(src))
	if err != nil {
		t.Fatalf("Parse(%q) = %v, want no error", src, err)
	}
	return p
}

// startRun returns a new run of src with its root stages queued at t0.
func startRun(t *testing.T, src string) *wire.Run {
	t.Helper()
	trig := wire.Trigger{ID: "trigger-1", Repo: "weft-ci/app", File: "pipeline.yml", Pipeline: src, Branch: "main", Commit: "abc123"}
	r := newRun(testRunID, trig, parse(t, src), 0, t0)
	admitRun(r, "lease._.0", t0)
	return r
}

// cloneRun copies the run deeply enough for apply and cancel, which never
// change the pipeline.
func cloneRun(r *wire.Run) *wire.Run {
	c := *r
	c.Stages = slices.Clone(r.Stages)
	return &c
}

func started(stage string, attempt int) wire.Event {
	return wire.Event{Type: wire.Started, RunID: testRunID, Stage: stage, Attempt: attempt, Agent: "agent-1"}
}

func heartbeat(stage string, attempt int) wire.Event {
	return wire.Event{Type: wire.Heartbeat, RunID: testRunID, Stage: stage, Attempt: attempt, Agent: "agent-1"}
}

func finished(stage string, attempt, code int, cat wire.Category) wire.Event {
	return wire.Event{Type: wire.Finished, RunID: testRunID, Stage: stage, Attempt: attempt, Agent: "agent-1", ExitCode: code, Category: cat}
}

// describe renders an event for failure messages.
func describe(ev wire.Event) string {
	s := fmt.Sprintf("%s %s#%d", ev.Type, ev.Stage, ev.Attempt)
	if ev.Type == wire.Finished {
		s += fmt.Sprintf(" exit=%d category=%q", ev.ExitCode, ev.Category)
	}
	return s
}

func verdictName(v verdict) string {
	switch v {
	case ignored:
		return "ignored"
	case applied:
		return "applied"
	case recancel:
		return "recancel"
	}
	return fmt.Sprintf("verdict(%d)", int(v))
}

func stageStates(r *wire.Run) map[string]wire.StageState {
	m := make(map[string]wire.StageState, len(r.Stages))
	for _, s := range r.Stages {
		m[s.Key] = s.State
	}
	return m
}

// applyAt applies ev as the dispatcher does: apply, then advance when the
// run changed. It returns the verdict and the keys advance queued.
func applyAt(r *wire.Run, ev wire.Event, now time.Time) (verdict, []string) {
	if ev.Time.IsZero() {
		ev.Time = now
	}
	v := apply(r, ev, now)
	if v != applied {
		return v, nil
	}
	return v, advance(r, now)
}

// step is one event (or cancel) of a scenario and the run it leaves.
type step struct {
	ev     wire.Event // applied with applyAt, at(step number)
	cancel string     // when not empty, cancel the run with this reason (then advance) instead
	want   verdict    // what apply returns
	ok     bool       // what cancel returns
	queued []string   // the keys advance queued
	stages map[string]wire.StageState
	run    wire.RunState
}

// runSteps plays steps on r; step i happens at at(i+1).
func runSteps(t *testing.T, r *wire.Run, steps []step) {
	t.Helper()
	for i, s := range steps {
		now := at(i + 1)
		var queued []string
		op := ""
		if s.cancel != "" {
			op = fmt.Sprintf("cancel(%q)", s.cancel)
			if got := cancel(r, s.cancel, now); got != s.ok {
				t.Errorf("step %d: %s = %t, want %t", i+1, op, got, s.ok)
			}
			queued = advance(r, now)
		} else {
			op = fmt.Sprintf("apply(%s)", describe(s.ev))
			var v verdict
			v, queued = applyAt(r, s.ev, now)
			if v != s.want {
				t.Errorf("step %d: %s = %s, want %s", i+1, op, verdictName(v), verdictName(s.want))
			}
		}
		if !slices.Equal(queued, s.queued) {
			t.Errorf("step %d: after %s advance queued %q, want %q", i+1, op, queued, s.queued)
		}
		if got := stageStates(r); !maps.Equal(got, s.stages) {
			t.Errorf("step %d: after %s stages = %v, want %v", i+1, op, got, s.stages)
		}
		if r.State != s.run {
			t.Errorf("step %d: after %s run state = %q, want %q", i+1, op, r.State, s.run)
		}
		if t.Failed() {
			t.FailNow()
		}
	}
}

func TestNewRun(t *testing.T) {
	const withPriority = `name: app
queue: linux
priority: high
stages:
  - key: build
    commands: [make]
  - key: test
    commands: [make test]
    queue: gpu
    depends_on: [build]
`
	const withoutPriority = `name: app
queue: linux
stages:
  - key: build
    commands: [make]
  - key: test
    commands: [make test]
    queue: gpu
    depends_on: [build]
`
	tests := []struct {
		name     string
		src      string
		priority subjects.Tier
		want     subjects.Tier
	}{
		{"pipeline priority", withPriority, "", subjects.High},
		{"trigger overrides pipeline priority", withPriority, subjects.Low, subjects.Low},
		{"default priority", withoutPriority, "", subjects.Normal},
		{"trigger overrides default priority", withoutPriority, subjects.Critical, subjects.Critical},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := parse(t, tt.src)
			trig := wire.Trigger{ID: "trigger-1", Repo: "weft-ci/app", File: "ci.yml", Pipeline: tt.src,
				Branch: "main", Commit: "abc123", Priority: tt.priority, Time: at(-1)}
			got := newRun(testRunID, trig, p, 7, t0)
			want := &wire.Run{
				ID: testRunID, TriggerID: "trigger-1", Repo: "weft-ci/app", Branch: "main", Commit: "abc123",
				File: "ci.yml", Pipeline: p, PipelineName: "app", StageCount: 2, Tier: tt.want, State: wire.RunQueued, Created: t0, Seq: 7,
				Pending: &wire.Pending{Reason: wire.PendingAdmission, Since: t0},
				Stages: []wire.StageRun{
					{Key: "build", State: wire.StagePending, Queue: "linux", ExitCode: -1},
					{Key: "test", State: wire.StagePending, Queue: "gpu", ExitCode: -1},
				},
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("newRun(priority %q) = %+v, want %+v", tt.priority, got, want)
			}
		})
	}
}

func TestAdvanceQueuesRoots(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string
	}{
		{"diamond", diamond, []string{"build"}},
		{"two roots in file order", `name: roots
stages:
  - key: zeta
    commands: [a]
  - key: after
    commands: [b]
    depends_on: [zeta, alpha]
  - key: alpha
    commands: [c]
`, []string{"zeta", "alpha"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRun(testRunID, wire.Trigger{ID: "trigger-1"}, parse(t, tt.src), 0, t0)
			r.Lease = "lease._.0"
			now := at(1)
			if got := advance(r, now); !slices.Equal(got, tt.want) {
				t.Fatalf("advance() = %q, want %q", got, tt.want)
			}
			if r.State != wire.RunQueued || !r.Started.IsZero() || !r.Finished.IsZero() {
				t.Errorf("advance() run state = %q, started %v, finished %v, want %q and zero times", r.State, r.Started, r.Finished, wire.RunQueued)
			}
			for _, s := range r.Stages {
				want := wire.StageRun{Key: s.Key, State: wire.StagePending, Queue: s.Queue, ExitCode: -1}
				if slices.Contains(tt.want, s.Key) {
					want.State, want.Attempt, want.Job, want.Queued = wire.StageQueued, 1, 1, now
				}
				if s != want {
					t.Errorf("advance() stage %s = %+v, want %+v", s.Key, s, want)
				}
			}
			if got := advance(r, at(2)); got != nil {
				t.Errorf("advance() again = %q, want nothing queued", got)
			}
		})
	}
}

func TestApplyAdvance(t *testing.T) {
	const branches = `name: branches
stages:
  - key: compile
    commands: [make]
  - key: unit
    commands: [make unit]
    depends_on: [compile]
  - key: bundle
    commands: [make bundle]
    depends_on: [unit]
  - key: docs
    commands: [make docs]
  - key: publish-docs
    commands: [make publish]
    depends_on: [docs]
  - key: release
    commands: [make release]
    depends_on: [bundle, publish-docs]
`
	const allowLint = `name: diamond
stages:
  - key: build
    commands: [make]
  - key: lint
    commands: [make lint]
    depends_on: [build]
    allow_failure: true
  - key: test
    commands: [make test]
    depends_on: [build]
  - key: package
    commands: [make package]
    depends_on: [lint, test]
`
	const single = `name: single
stages:
  - key: flaky
    commands: [./flaky.sh]
    retry: {automatic: 2}
`
	type stages = map[string]wire.StageState
	const (
		pending   = wire.StagePending
		queued    = wire.StageQueued
		running   = wire.StageRunning
		succeeded = wire.StageSucceeded
		failed    = wire.StageFailed
		skipped   = wire.StageSkipped
		cancelled = wire.StageCancelled
	)
	tests := []struct {
		name  string
		src   string
		steps []step
		check func(t *testing.T, r *wire.Run)
	}{
		{
			name: "diamond succeeds",
			src:  diamond,
			steps: []step{
				{ev: started("build", 1), want: applied,
					stages: stages{"build": running, "lint": pending, "test": pending, "package": pending}, run: wire.RunRunning},
				// Heartbeats go to the heartbeats stream; the dispatcher
				// changes nothing for one.
				{ev: heartbeat("build", 1), want: ignored,
					stages: stages{"build": running, "lint": pending, "test": pending, "package": pending}, run: wire.RunRunning},
				{ev: finished("build", 1, 0, wire.CategoryNone), want: applied, queued: []string{"lint", "test"},
					stages: stages{"build": succeeded, "lint": queued, "test": queued, "package": pending}, run: wire.RunRunning},
				{ev: started("lint", 1), want: applied,
					stages: stages{"build": succeeded, "lint": running, "test": queued, "package": pending}, run: wire.RunRunning},
				{ev: started("test", 1), want: applied,
					stages: stages{"build": succeeded, "lint": running, "test": running, "package": pending}, run: wire.RunRunning},
				{ev: finished("lint", 1, 0, wire.CategoryNone), want: applied,
					stages: stages{"build": succeeded, "lint": succeeded, "test": running, "package": pending}, run: wire.RunRunning},
				{ev: finished("test", 1, 0, wire.CategoryNone), want: applied, queued: []string{"package"},
					stages: stages{"build": succeeded, "lint": succeeded, "test": succeeded, "package": queued}, run: wire.RunRunning},
				{ev: started("package", 1), want: applied,
					stages: stages{"build": succeeded, "lint": succeeded, "test": succeeded, "package": running}, run: wire.RunRunning},
				{ev: finished("package", 1, 0, wire.CategoryNone), want: applied,
					stages: stages{"build": succeeded, "lint": succeeded, "test": succeeded, "package": succeeded}, run: wire.RunSucceeded},
			},
			check: func(t *testing.T, r *wire.Run) {
				if !r.Started.Equal(at(1)) || !r.Finished.Equal(at(9)) {
					t.Errorf("run started %v, finished %v, want %v and %v", r.Started, r.Finished, at(1), at(9))
				}
				b := r.Stage("build")
				if !b.Queued.Equal(t0) || !b.Started.Equal(at(1)) || !b.Finished.Equal(at(3)) {
					t.Errorf("build queued %v, started %v, finished %v, want %v, %v, %v",
						b.Queued, b.Started, b.Finished, t0, at(1), at(3))
				}
				if b.Attempt != 1 || b.ExitCode != 0 || b.Agent != "agent-1" {
					t.Errorf("build attempt %d, exit %d, agent %q, want 1, 0, agent-1", b.Attempt, b.ExitCode, b.Agent)
				}
				if p := r.Stage("package"); p.Attempt != 1 || !p.Queued.Equal(at(7)) {
					t.Errorf("package attempt %d, queued %v, want 1 and %v", p.Attempt, p.Queued, at(7))
				}
			},
		},
		{
			name: "failure skips transitive dependents only",
			src:  branches,
			steps: []step{
				{ev: started("compile", 1), want: applied,
					stages: stages{"compile": running, "unit": pending, "bundle": pending, "docs": queued, "publish-docs": pending, "release": pending},
					run:    wire.RunRunning},
				{ev: finished("compile", 1, 1, wire.CategoryCommand), want: applied,
					stages: stages{"compile": failed, "unit": skipped, "bundle": skipped, "docs": queued, "publish-docs": pending, "release": skipped},
					run:    wire.RunRunning},
				{ev: finished("docs", 1, 0, wire.CategoryNone), want: applied, queued: []string{"publish-docs"},
					stages: stages{"compile": failed, "unit": skipped, "bundle": skipped, "docs": succeeded, "publish-docs": queued, "release": skipped},
					run:    wire.RunRunning},
				{ev: started("publish-docs", 1), want: applied,
					stages: stages{"compile": failed, "unit": skipped, "bundle": skipped, "docs": succeeded, "publish-docs": running, "release": skipped},
					run:    wire.RunRunning},
				{ev: finished("publish-docs", 1, 0, wire.CategoryNone), want: applied,
					stages: stages{"compile": failed, "unit": skipped, "bundle": skipped, "docs": succeeded, "publish-docs": succeeded, "release": skipped},
					run:    wire.RunFailed},
			},
			check: func(t *testing.T, r *wire.Run) {
				if c := r.Stage("compile"); c.ExitCode != 1 || c.Category != wire.CategoryCommand || !c.Finished.Equal(at(2)) {
					t.Errorf("compile exit %d, category %q, finished %v, want 1, command, %v", c.ExitCode, c.Category, c.Finished, at(2))
				}
				for _, key := range []string{"unit", "bundle", "release"} {
					s := r.Stage(key)
					if s.Message != "a dependency did not succeed" || !s.Finished.Equal(at(2)) || s.Attempt != 0 {
						t.Errorf("%s message %q, finished %v, attempt %d, want a skip message, %v, 0", key, s.Message, s.Finished, s.Attempt, at(2))
					}
				}
				if !r.Finished.Equal(at(5)) {
					t.Errorf("run finished %v, want %v", r.Finished, at(5))
				}
			},
		},
		{
			name: "allow_failure stage failing lets dependents run",
			src:  allowLint,
			steps: []step{
				// Finished without Started (the Started event was lost) still counts.
				{ev: finished("build", 1, 0, wire.CategoryNone), want: applied, queued: []string{"lint", "test"},
					stages: stages{"build": succeeded, "lint": queued, "test": queued, "package": pending}, run: wire.RunRunning},
				{ev: finished("lint", 1, 1, wire.CategoryCommand), want: applied,
					stages: stages{"build": succeeded, "lint": failed, "test": queued, "package": pending}, run: wire.RunRunning},
				{ev: finished("test", 1, 0, wire.CategoryNone), want: applied, queued: []string{"package"},
					stages: stages{"build": succeeded, "lint": failed, "test": succeeded, "package": queued}, run: wire.RunRunning},
				{ev: finished("package", 1, 0, wire.CategoryNone), want: applied,
					stages: stages{"build": succeeded, "lint": failed, "test": succeeded, "package": succeeded}, run: wire.RunSucceeded},
			},
			check: func(t *testing.T, r *wire.Run) {
				if !r.Started.Equal(at(1)) || !r.Finished.Equal(at(4)) {
					t.Errorf("run started %v, finished %v, want %v and %v", r.Started, r.Finished, at(1), at(4))
				}
			},
		},
		{
			name: "cancel with a running stage",
			src:  diamond,
			steps: []step{
				{ev: started("build", 1), want: applied,
					stages: stages{"build": running, "lint": pending, "test": pending, "package": pending}, run: wire.RunRunning},
				{ev: finished("build", 1, 0, wire.CategoryNone), want: applied, queued: []string{"lint", "test"},
					stages: stages{"build": succeeded, "lint": queued, "test": queued, "package": pending}, run: wire.RunRunning},
				{ev: started("lint", 1), want: applied,
					stages: stages{"build": succeeded, "lint": running, "test": queued, "package": pending}, run: wire.RunRunning},
				{cancel: "superseded", ok: true,
					stages: stages{"build": succeeded, "lint": running, "test": cancelled, "package": cancelled}, run: wire.RunRunning},
				// An agent started the cancelled test job anyway: tell it again.
				{ev: started("test", 1), want: recancel,
					stages: stages{"build": succeeded, "lint": running, "test": cancelled, "package": cancelled}, run: wire.RunRunning},
				{ev: heartbeat("test", 1), want: ignored,
					stages: stages{"build": succeeded, "lint": running, "test": cancelled, "package": cancelled}, run: wire.RunRunning},
				{ev: heartbeat("lint", 1), want: ignored,
					stages: stages{"build": succeeded, "lint": running, "test": cancelled, "package": cancelled}, run: wire.RunRunning},
				{ev: finished("test", 1, -1, wire.CategoryCancelled), want: ignored,
					stages: stages{"build": succeeded, "lint": running, "test": cancelled, "package": cancelled}, run: wire.RunRunning},
				{ev: finished("lint", 1, -1, wire.CategoryCancelled), want: applied,
					stages: stages{"build": succeeded, "lint": cancelled, "test": cancelled, "package": cancelled}, run: wire.RunCancelled},
				{cancel: "again", ok: false,
					stages: stages{"build": succeeded, "lint": cancelled, "test": cancelled, "package": cancelled}, run: wire.RunCancelled},
			},
			check: func(t *testing.T, r *wire.Run) {
				if r.CancelReason != "superseded" || !r.Finished.Equal(at(9)) {
					t.Errorf("run cancel reason %q, finished %v, want superseded and %v", r.CancelReason, r.Finished, at(9))
				}
				for _, key := range []string{"test", "package"} {
					if s := r.Stage(key); s.Message != "run cancelled: superseded" || !s.Finished.Equal(at(4)) {
						t.Errorf("%s message %q, finished %v, want %q and %v", key, s.Message, s.Finished, "run cancelled: superseded", at(4))
					}
				}
				if l := r.Stage("lint"); l.Category != wire.CategoryCancelled || !l.Finished.Equal(at(9)) {
					t.Errorf("lint category %q, finished %v, want cancelled and %v", l.Category, l.Finished, at(9))
				}
			},
		},
		{
			name: "stages succeeding while cancelling queue nothing",
			src:  diamond,
			steps: []step{
				{ev: finished("build", 1, 0, wire.CategoryNone), want: applied, queued: []string{"lint", "test"},
					stages: stages{"build": succeeded, "lint": queued, "test": queued, "package": pending}, run: wire.RunRunning},
				{ev: started("lint", 1), want: applied,
					stages: stages{"build": succeeded, "lint": running, "test": queued, "package": pending}, run: wire.RunRunning},
				{ev: started("test", 1), want: applied,
					stages: stages{"build": succeeded, "lint": running, "test": running, "package": pending}, run: wire.RunRunning},
				{cancel: "user", ok: true,
					stages: stages{"build": succeeded, "lint": running, "test": running, "package": cancelled}, run: wire.RunRunning},
				{ev: finished("lint", 1, 0, wire.CategoryNone), want: applied,
					stages: stages{"build": succeeded, "lint": succeeded, "test": running, "package": cancelled}, run: wire.RunRunning},
				{ev: finished("test", 1, 0, wire.CategoryNone), want: applied,
					stages: stages{"build": succeeded, "lint": succeeded, "test": succeeded, "package": cancelled}, run: wire.RunCancelled},
			},
		},
		{
			name: "cancel of a run with nothing running ends it at once",
			src:  diamond,
			steps: []step{
				{cancel: "user", ok: true,
					stages: stages{"build": cancelled, "lint": cancelled, "test": cancelled, "package": cancelled}, run: wire.RunCancelled},
				{ev: started("build", 1), want: recancel,
					stages: stages{"build": cancelled, "lint": cancelled, "test": cancelled, "package": cancelled}, run: wire.RunCancelled},
				{cancel: "again", ok: false,
					stages: stages{"build": cancelled, "lint": cancelled, "test": cancelled, "package": cancelled}, run: wire.RunCancelled},
			},
			check: func(t *testing.T, r *wire.Run) {
				if !r.Finished.Equal(at(1)) || !r.Started.IsZero() {
					t.Errorf("run started %v, finished %v, want zero and %v", r.Started, r.Finished, at(1))
				}
			},
		},
		{
			name: "command failure while cancelling is not retried",
			src:  single,
			steps: []step{
				{ev: started("flaky", 1), want: applied, stages: stages{"flaky": running}, run: wire.RunRunning},
				{cancel: "user", ok: true, stages: stages{"flaky": running}, run: wire.RunRunning},
				{ev: finished("flaky", 1, 1, wire.CategoryCommand), want: applied, stages: stages{"flaky": failed}, run: wire.RunCancelled},
			},
			check: func(t *testing.T, r *wire.Run) {
				if a := r.Stage("flaky").Attempt; a != 1 {
					t.Errorf("flaky attempt %d, want 1", a)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := startRun(t, tt.src)
			runSteps(t, r, tt.steps)
			if tt.check != nil {
				tt.check(t, r)
			}
		})
	}
}

func TestApplyIgnored(t *testing.T) {
	const src = `name: fence
stages:
  - key: build
    commands: [make]
  - key: lint
    commands: [make lint]
    depends_on: [build]
  - key: test
    commands: [make test]
    depends_on: [build]
  - key: package
    commands: [make package]
    depends_on: [lint, test]
  - key: flaky
    commands: [./flaky.sh]
    retry: {automatic: 1}
  - key: broken
    commands: [exit 2]
`
	// setup leaves build succeeded, lint running (attempt 1), test queued
	// (attempt 1), package pending, flaky queued for attempt 2 and broken
	// failed.
	setup := func(t *testing.T) *wire.Run {
		t.Helper()
		r := startRun(t, src)
		for i, ev := range []wire.Event{
			finished("build", 1, 0, wire.CategoryNone),
			started("lint", 1),
			started("flaky", 1),
			finished("flaky", 1, 1, wire.CategoryCommand),
			finished("broken", 1, 2, wire.CategoryCommand),
		} {
			if v, _ := applyAt(r, ev, at(i+1)); v != applied {
				t.Fatalf("setup: apply(%s) = %s, want applied", describe(ev), verdictName(v))
			}
		}
		want := map[string]wire.StageState{
			"build": wire.StageSucceeded, "lint": wire.StageRunning, "test": wire.StageQueued,
			"package": wire.StagePending, "flaky": wire.StageQueued, "broken": wire.StageFailed,
		}
		if got := stageStates(r); !maps.Equal(got, want) {
			t.Fatalf("setup: stages = %v, want %v", got, want)
		}
		if a := r.Stage("flaky").Attempt; a != 2 {
			t.Fatalf("setup: flaky attempt = %d, want 2", a)
		}
		return r
	}
	tests := []struct {
		name string
		ev   wire.Event
	}{
		{"finished from an older attempt", finished("flaky", 1, 0, wire.CategoryNone)},
		{"started from an older attempt", started("flaky", 1)},
		{"heartbeat from an older attempt", heartbeat("flaky", 1)},
		{"finished from a later attempt", finished("lint", 2, 0, wire.CategoryNone)},
		{"finished from a later attempt", finished("test", 2, 0, wire.CategoryNone)},
		{"finished of an unknown stage", finished("deploy", 1, 0, wire.CategoryNone)},
		{"started of an unknown stage", started("deploy", 1)},
		{"finished on a succeeded stage", finished("build", 1, 1, wire.CategoryCommand)},
		{"started on a succeeded stage", started("build", 1)},
		{"finished on a failed stage", finished("broken", 1, 0, wire.CategoryNone)},
		{"finished on a pending stage", finished("package", 0, 0, wire.CategoryNone)},
		{"started on a pending stage", started("package", 0)},
		{"started twice", started("lint", 1)},
		{"heartbeat on a queued stage", heartbeat("test", 1)},
		{"not a stage event", wire.Event{Type: wire.CancelRequested, RunID: testRunID, Stage: "lint", Attempt: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := setup(t)
			before := cloneRun(r)
			ev := tt.ev
			ev.Time = at(50)
			if v := apply(r, ev, at(50)); v != ignored {
				t.Errorf("apply(%s) = %s, want ignored", describe(ev), verdictName(v))
			}
			if !reflect.DeepEqual(r, before) {
				t.Errorf("apply(%s) changed the run:\n got %+v\nwant %+v", describe(ev), r, before)
			}
		})
	}
}

func TestApplyRetry(t *testing.T) {
	type result struct {
		code    int
		cat     wire.Category
		state   wire.StageState // flaky's state after the attempt finished
		attempt int             // flaky's attempt after the attempt finished
	}
	tests := []struct {
		name    string
		retry   string // flaky's retry block; empty for none
		results []result
	}{
		{
			name:  "listed exit status retried until attempts run out",
			retry: "{automatic: 2, exit_status: [75]}",
			results: []result{
				{75, wire.CategoryCommand, wire.StageQueued, 2},
				{75, wire.CategoryCommand, wire.StageQueued, 3},
				{75, wire.CategoryCommand, wire.StageFailed, 3},
			},
		},
		{
			name:  "retried attempt succeeds",
			retry: "{automatic: 2, exit_status: [75]}",
			results: []result{
				{75, wire.CategoryCommand, wire.StageQueued, 2},
				{0, wire.CategoryNone, wire.StageSucceeded, 2},
			},
		},
		{
			name:    "unlisted exit status not retried",
			retry:   "{automatic: 2, exit_status: [75]}",
			results: []result{{1, wire.CategoryCommand, wire.StageFailed, 1}},
		},
		{
			name:  "listed then unlisted exit status",
			retry: "{automatic: 2, exit_status: [75]}",
			results: []result{
				{75, wire.CategoryCommand, wire.StageQueued, 2},
				{1, wire.CategoryCommand, wire.StageFailed, 2},
			},
		},
		{
			name:    "timeout retried by retry.automatic",
			retry:   "{automatic: 2}",
			results: []result{{-1, wire.CategoryTimeout, wire.StageQueued, 2}},
		},
		{
			name:    "timeout not retried even with a listed exit status",
			retry:   "{automatic: 2, exit_status: [75]}",
			results: []result{{75, wire.CategoryTimeout, wire.StageFailed, 1}},
		},
		{
			name:    "infra failure retried by retry.automatic",
			retry:   "{automatic: 2}",
			results: []result{{-1, wire.CategoryInfra, wire.StageQueued, 2}},
		},
		{
			name:  "any command failure retried without exit_status",
			retry: "{automatic: 2}",
			results: []result{
				{1, wire.CategoryCommand, wire.StageQueued, 2},
				{2, wire.CategoryCommand, wire.StageQueued, 3},
				{3, wire.CategoryCommand, wire.StageFailed, 3},
			},
		},
		{
			name:    "no retry",
			results: []result{{1, wire.CategoryCommand, wire.StageFailed, 1}},
		},
		{
			name:    "automatic zero",
			retry:   "{automatic: 0}",
			results: []result{{1, wire.CategoryCommand, wire.StageFailed, 1}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			retry := ""
			if tt.retry != "" {
				retry = "\n    retry: " + tt.retry
			}
			src := fmt.Sprintf(`name: retry
stages:
  - key: flaky
    commands: [./flaky.sh]%s
  - key: after
    commands: [echo done]
    depends_on: [flaky]
`, retry)
			r := startRun(t, src)
			clock := 0
			for _, res := range tt.results {
				s := r.Stage("flaky")
				attempt := s.Attempt
				clock++
				if v, _ := applyAt(r, started("flaky", attempt), at(clock)); v != applied {
					t.Fatalf("apply(%s) = %s, want applied", describe(started("flaky", attempt)), verdictName(v))
				}
				clock++
				ev := finished("flaky", attempt, res.code, res.cat)
				ev.Message = "boom"
				v, queued := applyAt(r, ev, at(clock))
				if v != applied {
					t.Fatalf("apply(%s) = %s, want applied", describe(ev), verdictName(v))
				}
				if s.State != res.state || s.Attempt != res.attempt {
					t.Fatalf("apply(%s) state = %q attempt %d, want %q attempt %d", describe(ev), s.State, s.Attempt, res.state, res.attempt)
				}
				if s.State != wire.StageQueued {
					continue
				}
				want := wire.StageRun{Key: "flaky", State: wire.StageQueued, Attempt: res.attempt, Job: res.attempt, Queue: s.Queue, ExitCode: -1, Queued: at(clock),
					NotBefore: at(clock).Add(retryDelay(r.ID, "flaky", res.attempt))}
				if *s != want {
					t.Errorf("apply(%s) stage = %+v, want %+v", describe(ev), *s, want)
				}
				if len(queued) != 0 || r.State != wire.RunRunning {
					t.Errorf("apply(%s) advance queued %q, run state %q, want nothing and %q", describe(ev), queued, r.State, wire.RunRunning)
				}
			}
			// A late event of a replaced attempt is fenced off.
			if last := r.Stage("flaky").Attempt; last > 1 {
				ev := finished("flaky", last-1, 0, wire.CategoryNone)
				if v, _ := applyAt(r, ev, at(clock+1)); v != ignored {
					t.Errorf("apply(%s) = %s, want ignored", describe(ev), verdictName(v))
				}
			}
			wantRun, wantAfter := wire.RunFailed, wire.StageSkipped
			switch r.Stage("flaky").State {
			case wire.StageSucceeded:
				wantRun, wantAfter = wire.RunRunning, wire.StageQueued
			case wire.StageQueued: // retrying
				wantRun, wantAfter = wire.RunRunning, wire.StagePending
			}
			if r.State != wantRun || r.Stage("after").State != wantAfter {
				t.Errorf("run state %q, after %q, want %q and %q", r.State, r.Stage("after").State, wantRun, wantAfter)
			}
		})
	}
}

func TestRetryable(t *testing.T) {
	listed := pipeline.Retry{Automatic: 2, ExitStatus: []int{75}}
	anyStatus := pipeline.Retry{Automatic: 2}
	tests := []struct {
		retry   pipeline.Retry
		attempt int
		cat     wire.Category
		code    int
		want    bool
	}{
		{listed, 1, wire.CategoryCommand, 75, true},
		{listed, 2, wire.CategoryCommand, 75, true},
		{listed, 3, wire.CategoryCommand, 75, false},
		{listed, 1, wire.CategoryCommand, 1, false},
		{listed, 1, wire.CategoryTimeout, 75, false},
		{anyStatus, 1, wire.CategoryCommand, 1, true},
		{anyStatus, 2, wire.CategoryCommand, 137, true},
		{anyStatus, 3, wire.CategoryCommand, 1, false},
		// retry.automatic without exit_status retries any failure.
		{anyStatus, 1, wire.CategoryTimeout, -1, true},
		{anyStatus, 1, wire.CategoryCancelled, -1, false},
		{anyStatus, 1, wire.CategoryInfra, -1, true},
		{anyStatus, 1, wire.CategoryOOM, 137, true},
		{pipeline.Retry{}, 1, wire.CategoryCommand, 1, false},
	}
	for _, tt := range tests {
		name := fmt.Sprintf("%+v/attempt%d/%s/%d", tt.retry, tt.attempt, tt.cat, tt.code)
		t.Run(name, func(t *testing.T) {
			st := &pipeline.Stage{Key: "s", Retry: tt.retry}
			s := &wire.StageRun{Key: "s", Attempt: tt.attempt, Job: tt.attempt}
			ev := finished("s", tt.attempt, tt.code, tt.cat)
			if got := retryable(st, s, ev); got != tt.want {
				t.Errorf("retryable(%+v, attempt %d, %s) = %t, want %t", tt.retry, tt.attempt, describe(ev), got, tt.want)
			}
		})
	}
}

func TestCancelFinishedRun(t *testing.T) {
	const src = `name: one
stages:
  - key: build
    commands: [make]
`
	tests := []struct {
		name string
		ev   wire.Event
		want wire.RunState
	}{
		{"succeeded", finished("build", 1, 0, wire.CategoryNone), wire.RunSucceeded},
		{"failed", finished("build", 1, 1, wire.CategoryCommand), wire.RunFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := startRun(t, src)
			applyAt(r, tt.ev, at(1))
			if r.State != tt.want {
				t.Fatalf("apply(%s) run state = %q, want %q", describe(tt.ev), r.State, tt.want)
			}
			before := cloneRun(r)
			if cancel(r, "user", at(2)) {
				t.Errorf("cancel(%q) on a %s run = true, want false", "user", r.State)
			}
			if !reflect.DeepEqual(r, before) {
				t.Errorf("cancel(%q) changed a %s run:\n got %+v\nwant %+v", "user", r.State, r, before)
			}
			if got := advance(r, at(3)); got != nil || !reflect.DeepEqual(r, before) {
				t.Errorf("advance() on a %s run queued %q or changed it", r.State, got)
			}
		})
	}
}

func TestOutcome(t *testing.T) {
	const src = `name: all
stages:
  - key: pending
    commands: [a]
  - key: queued
    commands: [a]
  - key: running
    commands: [a]
  - key: succeeded
    commands: [a]
  - key: failed
    commands: [a]
  - key: allowed
    commands: [a]
    allow_failure: true
  - key: skipped
    commands: [a]
  - key: cancelled
    commands: [a]
`
	r := newRun(testRunID, wire.Trigger{ID: "trigger-1"}, parse(t, src), 0, t0)
	for i, state := range []wire.StageState{
		wire.StagePending, wire.StageQueued, wire.StageRunning, wire.StageSucceeded,
		wire.StageFailed, wire.StageFailed, wire.StageSkipped, wire.StageCancelled,
	} {
		r.Stages[i].State = state
	}
	want := map[string]bool{"succeeded": true, "failed": false, "allowed": true, "skipped": false, "cancelled": false}
	got := map[string]bool{}
	for i, s := range r.Stages {
		if ended, ok := outcome(r, i); ended {
			got[s.Key] = ok
		}
	}
	if !maps.Equal(got, want) {
		t.Errorf("outcome of %v = %v, want %v", stageStates(r), got, want)
	}
}

func TestReadyAndBlocked(t *testing.T) {
	p := parse(t, `name: diamond
stages:
  - {key: build, commands: make}
  - {key: lint, commands: make lint, depends_on: build}
  - {key: test, commands: make test, depends_on: build}
  - {key: package, commands: make dist, depends_on: [lint, test]}
`)
	tests := []struct {
		name         string
		done         map[string]bool // ended stages: succeeded (true) or failed
		ready, block []string
	}{
		{"nothing done", nil, []string{"build"}, nil},
		{"build ok", map[string]bool{"build": true}, []string{"lint", "test"}, nil},
		{"build failed", map[string]bool{"build": false}, nil, []string{"lint", "test"}},
		{"lint ok", map[string]bool{"build": true, "lint": true}, []string{"test"}, nil},
		{"lint and test ok", map[string]bool{"build": true, "lint": true, "test": true}, []string{"package"}, nil},
		{"test failed", map[string]bool{"build": true, "lint": true, "test": false}, nil, []string{"package"}},
		{"lint skipped, test pending", map[string]bool{"build": false, "lint": false}, nil, []string{"test", "package"}},
		{"all done", map[string]bool{"build": true, "lint": true, "test": true, "package": true}, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRun(testRunID, wire.Trigger{ID: "trigger-1"}, p, 0, t0)
			for i := range r.Stages {
				if ok, ended := tt.done[r.Stages[i].Key]; ended {
					r.Stages[i].State = map[bool]wire.StageState{true: wire.StageSucceeded, false: wire.StageFailed}[ok]
				}
			}
			var ready, block []string
			for i, s := range r.Stages {
				if s.State != wire.StagePending {
					continue
				}
				if readyAt(r, i) {
					ready = append(ready, s.Key)
				}
				if blockedAt(r, i) {
					block = append(block, s.Key)
				}
			}
			if !slices.Equal(ready, tt.ready) || !slices.Equal(block, tt.block) {
				t.Errorf("ready %v, blocked %v; want %v and %v", ready, block, tt.ready, tt.block)
			}
		})
	}
}

const envPipeline = `name: envs
queue: linux
priority: high
env: {FOO: pipeline, BAR: pipeline}
stages:
  - key: build
    commands: [make]
    queue: gpu
    env: {FOO: stage, BAZ: stage}
  - key: docs
    commands: [make docs]
    retry: {automatic: 1}
  - key: package
    commands: [make package]
    depends_on: [build]
`

func TestQueuedJobs(t *testing.T) {
	tests := []struct {
		name    string
		setup   []wire.Event // applied before queuedJobs
		key     string
		attempt int
		env     map[string]string
	}{
		{
			name: "stage env overrides pipeline env", key: "build", attempt: 1,
			env: map[string]string{
				"FOO": "stage", "BAR": "pipeline", "BAZ": "stage",
				"WEFT_RUN_ID": testRunID, "WEFT_PIPELINE": "envs", "WEFT_STAGE": "build", "WEFT_ATTEMPT": "1",
				"WEFT_BRANCH": "main", "WEFT_COMMIT": "abc123", "WEFT_QUEUE": "gpu",
			},
		},
		{
			name: "pipeline env and queue inherited", key: "docs", attempt: 1,
			env: map[string]string{
				"FOO": "pipeline", "BAR": "pipeline",
				"WEFT_RUN_ID": testRunID, "WEFT_PIPELINE": "envs", "WEFT_STAGE": "docs", "WEFT_ATTEMPT": "1",
				"WEFT_BRANCH": "main", "WEFT_COMMIT": "abc123", "WEFT_QUEUE": "linux",
			},
		},
		{
			name: "retried attempt", key: "docs", attempt: 2,
			setup: []wire.Event{finished("docs", 1, 1, wire.CategoryCommand)},
			env: map[string]string{
				"FOO": "pipeline", "BAR": "pipeline",
				"WEFT_RUN_ID": testRunID, "WEFT_PIPELINE": "envs", "WEFT_STAGE": "docs", "WEFT_ATTEMPT": "2",
				"WEFT_BRANCH": "main", "WEFT_COMMIT": "abc123", "WEFT_QUEUE": "linux",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := startRun(t, envPipeline)
			for i, ev := range tt.setup {
				if v, _ := applyAt(r, ev, at(i+1)); v != applied {
					t.Fatalf("apply(%s) = %s, want applied", describe(ev), verdictName(v))
				}
			}
			got := queuedJobs(r, []string{tt.key})
			want := []wire.Job{{
				RunID: testRunID, Pipeline: "envs", Repo: r.Repo, Attempt: tt.attempt, Job: tt.attempt, Tier: subjects.High,
				Stage: *r.Pipeline.Stage(tt.key), Env: tt.env, NotBefore: r.Stage(tt.key).NotBefore,
			}}
			if tt.attempt > 1 && !r.Stage(tt.key).NotBefore.After(r.Stage(tt.key).Queued) {
				t.Errorf("a retry has no backoff: not before %v, queued %v", r.Stage(tt.key).NotBefore, r.Stage(tt.key).Queued)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("queuedJobs(%q) = %+v, want %+v", tt.key, got, want)
			}
		})
	}
}

func TestQueuedKeys(t *testing.T) {
	tests := []struct {
		name string
		do   func(r *wire.Run)
		want []string
	}{
		{"roots", func(*wire.Run) {}, []string{"build", "docs"}},
		{"after build succeeds", func(r *wire.Run) {
			applyAt(r, finished("build", 1, 0, wire.CategoryNone), at(1))
		}, []string{"docs", "package"}},
		{"running is not queued", func(r *wire.Run) {
			applyAt(r, started("docs", 1), at(1))
		}, []string{"build"}},
		{"retry requeues", func(r *wire.Run) {
			applyAt(r, started("docs", 1), at(1))
			applyAt(r, finished("docs", 1, 1, wire.CategoryCommand), at(2))
		}, []string{"build", "docs"}},
		{"after cancel", func(r *wire.Run) { cancel(r, "user", at(1)) }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := startRun(t, envPipeline)
			tt.do(r)
			if got := queuedKeys(r); !slices.Equal(got, tt.want) {
				t.Errorf("queuedKeys(%v) = %q, want %q", stageStates(r), got, tt.want)
			}
		})
	}
}

// cancel leaves no stage pending, so advance's own guard is only seen on a
// document that is being cancelled and still has a pending stage.
func TestAdvanceWhileCancelling(t *testing.T) {
	r := newRun(testRunID, wire.Trigger{ID: "trigger-1"}, parse(t, diamond), 0, t0)
	r.Lease, r.CancelReason = "lease._.0", "user"
	if got := advance(r, at(1)); got != nil {
		t.Errorf("advance() of a cancelling run = %q, want nothing queued", got)
	}
	if s := r.Stage("build"); s.State != wire.StagePending || s.Attempt != 0 {
		t.Errorf("advance() of a cancelling run: build %q attempt %d, want pending attempt 0", s.State, s.Attempt)
	}
	if r.State != wire.RunQueued {
		t.Errorf("advance() of a cancelling run: run state = %q, want %q", r.State, wire.RunQueued)
	}
}

func TestNewRunAppliesTheTriggerQueueAndGroup(t *testing.T) {
	p := parse(t, `name: app
queue: linux
concurrency: {group: 'deploy-${WEFT_BRANCH}'}
stages:
  - key: build
    commands: [make]
  - key: test
    queue: gpu
    commands: [make test]
`)
	r := newRun(testRunID, wire.Trigger{ID: "t", Branch: "main", Queue: "pr"}, p, 1, t0)
	if got := []string{r.Stage("build").Queue, r.Stage("test").Queue, r.Pipeline.Stage("build").Queue}; !reflect.DeepEqual(got, []string{"pr", "gpu", "pr"}) {
		t.Errorf("queues = %q, want the trigger's queue for stages on the pipeline's queue only", got)
	}
	if r.Group != "deploy-main" {
		t.Errorf("group = %q, want deploy-main", r.Group)
	}
}

func TestAdmitRunAndSetPending(t *testing.T) {
	r := newRun(testRunID, wire.Trigger{ID: "t"}, parse(t, diamond), 1, t0)
	if !setPending(r, wire.PendingWIP, "3 of 3", at(1)) || setPending(r, wire.PendingWIP, "3 of 3", at(2)) {
		t.Errorf("setPending: want a change the first time only")
	}
	if r.Pending.Since != at(1) {
		t.Errorf("pending since %v, want %v", r.Pending.Since, at(1))
	}
	if !admitRun(r, "lease.x.0", at(3)) || admitRun(r, "lease.x.1", at(4)) {
		t.Fatalf("admitRun: want true once, then false")
	}
	if r.Lease != "lease.x.0" || r.Pending != nil || r.Stage("build").State != wire.StageQueued {
		t.Errorf("after admitRun: lease %q pending %v build %s", r.Lease, r.Pending, r.Stage("build").State)
	}
	if setPending(r, wire.PendingWIP, "x", at(5)) {
		t.Errorf("setPending on an admitted run changed it")
	}
}

func TestRedeliveredJobTakesTheStageOver(t *testing.T) {
	r := newRun(testRunID, wire.Trigger{ID: "t"}, parse(t, diamond), 1, t0)
	r.Lease = "lease._.0"
	advance(r, t0)
	if v := apply(r, wire.Event{Type: wire.Started, RunID: testRunID, Stage: "build", Attempt: 1, Agent: "a", Time: at(1)}, at(1)); v != applied {
		t.Fatalf("start attempt 1 = %v", v)
	}
	// Agent a died; the job is redelivered to b as attempt 2.
	if v := apply(r, wire.Event{Type: wire.Started, RunID: testRunID, Stage: "build", Attempt: 2, Agent: "b", Time: at(40)}, at(40)); v != applied {
		t.Fatalf("start attempt 2 = %v", v)
	}
	s := r.Stage("build")
	if s.Attempt != 2 || s.Job != 1 || s.Agent != "b" || s.State != wire.StageRunning || s.Started != at(40) {
		t.Fatalf("after the takeover: %+v", *s)
	}
	// The zombie attempt 1 reports late: fenced off.
	if v := apply(r, wire.Event{Type: wire.Finished, RunID: testRunID, Stage: "build", Attempt: 1, ExitCode: 1, Category: wire.CategoryCommand, Time: at(41)}, at(41)); v != ignored {
		t.Errorf("finish of the replaced attempt = %v, want ignored", v)
	}
	if v := apply(r, wire.Event{Type: wire.Finished, RunID: testRunID, Stage: "build", Attempt: 2, Time: at(42)}, at(42)); v != applied || s.State != wire.StageSucceeded {
		t.Errorf("finish of attempt 2 = %v, stage %s; want applied, succeeded", v, s.State)
	}
}

func TestRetryDelay(t *testing.T) {
	for job, base := range map[int]time.Duration{2: time.Second, 3: 2 * time.Second, 4: 4 * time.Second, 20: time.Minute} {
		d := retryDelay(testRunID, "s", job)
		if d < base*8/10 || d > base*12/10 {
			t.Errorf("retryDelay(job %d) = %v, want %v +-20%%", job, d, base)
		}
		if again := retryDelay(testRunID, "s", job); again != d {
			t.Errorf("retryDelay(job %d) = %v then %v, want the same", job, d, again)
		}
	}
}

func TestCancelStage(t *testing.T) {
	t.Run("running: it ends cancelled when its agent reports, dependents skipped, never retried", func(t *testing.T) {
		r := startRun(t, "name: r\nstages:\n  - key: a\n    retry: {automatic: 2}\n    commands: [x]\n  - key: b\n    depends_on: [a]\n    commands: [x]\n  - key: c\n    commands: [x]\n")
		applyAt(r, started("a", 1), at(1))
		applyAt(r, started("c", 1), at(1))
		if !cancelStage(r, "a", "user", at(2)) {
			t.Fatal("cancelStage(a) = false on a running stage")
		}
		if s := r.Stage("a"); s.State != wire.StageRunning || !s.Cancelling {
			t.Fatalf("a after cancelStage: %s cancelling=%v, want running and cancelling", s.State, s.Cancelling)
		}
		if cancelStage(r, "a", "user", at(2)) {
			t.Error("cancelStage(a) twice = true")
		}
		// The agent's stop fails the command: it is no retry.
		applyAt(r, finished("a", 1, 143, wire.CategoryCommand), at(3))
		if s := r.Stage("a"); s.State != wire.StageFailed || s.Job != 1 {
			t.Errorf("a after a failed finish while cancelling: %s job %d, want failed, not retried", s.State, s.Job)
		}
		applyAt(r, finished("c", 1, 0, wire.CategoryNone), at(4))
		if r.Stage("b").State != wire.StageSkipped {
			t.Errorf("b %s, want skipped", r.Stage("b").State)
		}
		if r.State != wire.RunFailed {
			t.Errorf("run %s, want failed (a stage failed)", r.State)
		}
	})
	t.Run("running, reported cancelled: the run ends cancelled", func(t *testing.T) {
		r := startRun(t, "name: r\nstages:\n  - key: a\n    commands: [x]\n  - key: c\n    commands: [x]\n")
		applyAt(r, started("a", 1), at(1))
		cancelStage(r, "a", "user", at(2))
		applyAt(r, finished("a", 1, -1, wire.CategoryCancelled), at(3))
		applyAt(r, started("c", 1), at(3))
		applyAt(r, finished("c", 1, 0, wire.CategoryNone), at(4))
		if r.Stage("a").State != wire.StageCancelled || r.State != wire.RunCancelled {
			t.Errorf("a %s, run %s; want both cancelled", r.Stage("a").State, r.State)
		}
	})
	t.Run("pending: cancelled at once, the others go on", func(t *testing.T) {
		r := startRun(t, diamond)
		if !cancelStage(r, "package", "user", at(1)) {
			t.Fatal("cancelStage(package) = false on a pending stage")
		}
		if s := r.Stage("package"); s.State != wire.StageCancelled || s.Message != "cancelled: user" {
			t.Errorf("package %s %q, want cancelled at once", s.State, s.Message)
		}
		if r.State.Terminal() || r.Stage("build").State != wire.StageQueued {
			t.Errorf("run %s, build %s: want the run going on", r.State, r.Stage("build").State)
		}
		if cancelStage(r, "nosuch", "user", at(1)) {
			t.Error("cancelStage of an unknown stage = true")
		}
	})
	t.Run("a run that ended", func(t *testing.T) {
		r := startRun(t, "name: r\nstages:\n  - key: a\n    commands: [x]\n")
		applyAt(r, finished("a", 1, 0, wire.CategoryNone), at(1))
		if cancelStage(r, "a", "user", at(2)) || r.State != wire.RunSucceeded {
			t.Errorf("cancelStage on a %s run changed it", r.State)
		}
	})
}

// A trigger's variables win over the pipeline's env and a stage's, and
// reach every stage's job environment; names weft keeps are refused.
func TestTriggerVariablesWinOverEnv(t *testing.T) {
	src := "name: v\nenv: {A: pipeline, B: pipeline}\nstages:\n  - key: s\n    env: {B: stage, C: stage}\n    commands: [true]\n"
	trig := wire.Trigger{ID: "t", File: "p.yml", Pipeline: src, Variables: map[string]string{"B": "run", "C": "run", "D": "run"}}
	r := newRun(testRunID, trig, parse(t, src), 0, t0)
	st := r.Pipeline.Stage("s")
	env := wire.JobEnv(r.Pipeline, st, r.ID, "", "", 1)
	for k, want := range map[string]string{"A": "pipeline", "B": "run", "C": "run", "D": "run"} {
		if env[k] != want {
			t.Errorf("env %s = %q, want %q", k, env[k], want)
		}
	}
	for _, vars := range []map[string]string{{"WEFT_RUN_ID": "x"}, {"1BAD": "x"}, {"A-B": "x"}} {
		if err := validateVariables(vars); err == nil {
			t.Errorf("validateVariables(%v) = nil, want an error", vars)
		}
	}
	if err := validateVariables(map[string]string{"GOOD_1": "x"}); err != nil {
		t.Errorf("validateVariables(GOOD_1) = %v", err)
	}
}

// A retried run keeps what succeeded and runs again what failed, what was
// cancelled and what they skipped; admitted again, it queues from there.
// A run that has not ended, or that succeeded, is not retried.
func TestRetryRun(t *testing.T) {
	t.Run("failed", func(t *testing.T) {
		r := startRun(t, diamond)
		applyAt(r, finished("build", 1, 0, wire.CategoryNone), at(1))
		applyAt(r, finished("lint", 1, 0, wire.CategoryNone), at(2))
		applyAt(r, finished("test", 1, 2, wire.CategoryCommand), at(3))
		if r.State != wire.RunFailed || r.Stage("package").State != wire.StageSkipped {
			t.Fatalf("before the retry: run %s, stages %v", r.State, stageStates(r))
		}
		if !retryRun(r, at(4)) {
			t.Fatal("retryRun on a failed run = false")
		}
		want := map[string]wire.StageState{"build": wire.StageSucceeded, "lint": wire.StageSucceeded, "test": wire.StagePending, "package": wire.StagePending}
		if got := stageStates(r); !reflect.DeepEqual(got, want) {
			t.Fatalf("after the retry: stages %v, want %v", got, want)
		}
		if r.State != wire.RunQueued || r.Lease != "" || r.Pending == nil || r.Pending.Reason != wire.PendingAdmission || !r.Finished.IsZero() {
			t.Fatalf("after the retry: run %s lease %q pending %+v finished %v, want queued for admission", r.State, r.Lease, r.Pending, r.Finished)
		}
		if s := r.Stage("test"); s.ExitCode != -1 || s.Category != wire.CategoryNone || s.Epoch != r.Replays || r.Replays != 1 {
			t.Fatalf("the retried stage: %+v (replays %d)", s, r.Replays)
		}
		if !admitRun(r, "lease._.0", at(5)) {
			t.Fatal("the retried run could not be admitted")
		}
		if got := queuedKeys(r); !reflect.DeepEqual(got, []string{"test"}) {
			t.Fatalf("admitted again, queued %v, want [test]", got)
		}
		if s := r.Stage("test"); s.Attempt != 2 || s.Job != 2 {
			t.Fatalf("the retried stage's attempt %d job %d, want a new one (2)", s.Attempt, s.Job)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		r := startRun(t, diamond)
		if !cancel(r, "shed load", at(1)) || r.State != wire.RunCancelled {
			t.Fatalf("cancel: run %s", r.State)
		}
		if !retryRun(r, at(2)) {
			t.Fatal("retryRun on a cancelled run = false")
		}
		if r.CancelReason != "" || r.State != wire.RunQueued {
			t.Fatalf("after the retry: run %s, cancel reason %q", r.State, r.CancelReason)
		}
		if !admitRun(r, "lease._.0", at(3)) {
			t.Fatal("the retried run could not be admitted")
		}
		if got := queuedKeys(r); !reflect.DeepEqual(got, []string{"build"}) {
			t.Fatalf("admitted again, queued %v, want [build]", got)
		}
	})
	for _, tt := range []struct {
		name string
		evs  []wire.Event
	}{
		{"running", nil},
		{"succeeded", []wire.Event{finished("build", 1, 0, wire.CategoryNone), finished("lint", 1, 0, wire.CategoryNone), finished("test", 1, 0, wire.CategoryNone), finished("package", 1, 0, wire.CategoryNone)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := startRun(t, diamond)
			for i, ev := range tt.evs {
				applyAt(r, ev, at(i+1))
			}
			before := cloneRun(r)
			if retryRun(r, at(9)) || !reflect.DeepEqual(r, before) {
				t.Fatalf("retryRun on a %s run changed it", r.State)
			}
		})
	}
}

// Moving a run to another tier queues its queued stages again as new jobs
// (whose old jobs it returns) and leaves a running stage alone.
func TestReprioritize(t *testing.T) {
	const src = "name: two\nstages:\n  - key: a\n    commands: [make]\n  - key: b\n    commands: [make]\n"
	r := startRun(t, src)
	r.Stage("a").JobSeq, r.Stage("b").JobSeq = 7, 8
	applyAt(r, started("a", 1), at(1))
	replaced, changed := reprioritize(r, subjects.Critical, at(2))
	if !changed || !reflect.DeepEqual(replaced, []uint64{8}) {
		t.Fatalf("reprioritize = %v, %v; want [8] replaced", replaced, changed)
	}
	if r.Tier != subjects.Critical {
		t.Fatalf("tier %q, want critical", r.Tier)
	}
	if a := r.Stage("a"); a.State != wire.StageRunning || a.Job != 1 {
		t.Fatalf("the running stage changed: %+v", a)
	}
	if b := r.Stage("b"); b.State != wire.StageQueued || b.Job != 2 || b.JobSeq != 0 {
		t.Fatalf("the queued stage: %+v, want queued again as job 2, unpublished", b)
	}
	if _, changed := reprioritize(r, subjects.Critical, at(3)); changed {
		t.Fatal("moving a run to the tier it is at changed it")
	}
	cancel(r, "done", at(4))
	applyAt(r, finished("a", 1, 0, wire.CategoryNone), at(5))
	if _, changed := reprioritize(r, subjects.Low, at(6)); changed || r.Tier != subjects.Critical {
		t.Fatalf("moving a %s run changed it (tier %q)", r.State, r.Tier)
	}
}
