package test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// stageEvents returns the lifecycle events of one stage of a run, in order.
func stageEvents(t *testing.T, js jetstream.JetStream, runID, stage string) []wire.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	evs, err := client.StageEvents(ctx, js, runID, stage)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

func TestHeartbeatsKeepALongStageOnOneAttempt(t *testing.T) {
	t.Parallel()
	// AckWait 1s: without heartbeats the job would be redelivered.
	s := StartStack(t, StackConfig{AckWait: time.Second})
	r, _ := s.Run(t, "name: hb\nstages:\n  - key: long\n    commands: [sleep 2.5]\n")
	if r.State != wire.RunSucceeded {
		t.Fatalf("run state = %s, want succeeded", r.State)
	}
	var started int
	for _, ev := range stageEvents(t, s.Bus.JS, r.ID, "long") {
		if ev.Type == wire.Started {
			started++
		}
	}
	// The heartbeats stream keeps the last heartbeat of a stage; its last
	// sequence counts them all (one stage ran on this server).
	hb, err := s.Bus.JS.Stream(t.Context(), subjects.HeartbeatsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := hb.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	beats := info.State.LastSeq
	if info.State.Msgs != 1 {
		t.Errorf("heartbeats stream holds %d messages, want the last one only", info.State.Msgs)
	}
	if started != 1 || r.Stage("long").Attempt != 1 {
		t.Errorf("started %d times, attempt %d; want once, attempt 1", started, r.Stage("long").Attempt)
	}
	// Every AckWait/3 over 2.5s: at least 5 in theory; demand 4.
	if beats < 4 {
		t.Errorf("heartbeat events = %d, want >= 4", beats)
	}
	c, err := s.Bus.JS.Consumer(t.Context(), subjects.JobsStream, subjects.JobConsumer(subjects.DefaultQueue, subjects.Normal))
	if err != nil {
		t.Fatal(err)
	}
	if info, _ := c.Info(t.Context()); info.NumRedelivered != 0 {
		t.Errorf("consumer redelivered %d jobs, want 0", info.NumRedelivered)
	}
}

func TestLogsStreamWhileTheStageRuns(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{})
	gate := filepath.Join(t.TempDir(), "gate")
	id := s.Submit(t, "name: logs\nenv: {GATE: "+gate+"}\nstages:\n  - key: talk\n    commands:\n      - echo first line\n      - while [ ! -f \"$GATE\" ]; do sleep 0.02; done\n      - echo after gate\n")
	r, lines := s.FollowOpening(t, id, "first line", func() string { return gate })
	if r.State != wire.RunSucceeded || strings.Join(lines, "|") != "first line|after gate" {
		t.Errorf("run %s with lines %q, want succeeded with [first line after gate]", r.State, lines)
	}
}

func TestDispatcherRefusesAnInvalidTriggerAndCreatesNoRun(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{NoAgent: true})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := client.Submit(ctx, s.Bus.JS, wire.Trigger{ID: "bad-1", File: "bad.yml", Pipeline: "name: x\nstages:\n  - key: a\n    commands: [true]\n    depends_on: [a]\n"})
	if !errors.Is(err, client.ErrRefused) || !strings.Contains(err.Error(), "bad.yml:5:") {
		t.Fatalf("Submit(self-dependency) = %v, want ErrRefused naming bad.yml:5", err)
	}
	runs, err := s.Bus.JS.KeyValue(ctx, subjects.RunsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if keys, err := runs.ListKeys(ctx); err == nil {
		n := 0
		for range keys.Keys() {
			n++
		}
		if n != 0 {
			t.Errorf("runs bucket holds %d runs after a refused trigger, want 0", n)
		}
	}
}

func TestRetryOnListedExitStatus(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{})
	r, _ := s.Run(t, `name: retry
stages:
  - key: flaky
    retry: {automatic: 2, exit_status: [75]}
    commands: ['[ "$WEFT_ATTEMPT" = 3 ] || exit 75']
  - key: broken
    retry: {automatic: 2, exit_status: [75]}
    commands: [exit 1]
`)
	if st := r.Stage("flaky"); st.State != wire.StageSucceeded || st.Attempt != 3 {
		t.Errorf("flaky = %s on attempt %d, want succeeded on attempt 3", st.State, st.Attempt)
	}
	if st := r.Stage("broken"); st.State != wire.StageFailed || st.Attempt != 1 {
		t.Errorf("broken = %s on attempt %d, want failed on attempt 1", st.State, st.Attempt)
	}
}

func TestASupersededAttemptStopsAndReportsNothing(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{AckWait: time.Second})
	id := s.Submit(t, "name: zombie\nstages:\n  - key: s\n    commands: [sleep 60]\n")
	waitFor(t, s, id, "running", stageIs("s", wire.StageRunning))
	// Another agent took the job over (as after a partition): the stage's
	// document now names attempt 2.
	updateRun(t, s, id, func(r *wire.Run) { r.Stage("s").Attempt = 2 })
	if !Eventually(5*time.Second, func() bool { return len(ProcessesWithEnv("WEFT_RUN_ID="+id)) == 0 }) {
		t.Fatal("the superseded attempt's processes still run")
	}
	// The processes are gone before the attempt is over: look for its
	// report once the agent has let go of the job. The agent may take the
	// job up again later (its heartbeats stopped, so it is redelivered, as
	// a takeover of attempt 2): with one slot, Busy() == 0 at any point
	// means attempt 1 is over.
	waitIdle(t, s.Agent)
	for _, ev := range stageEvents(t, s.Bus.JS, id, "s") {
		if ev.Type == wire.Finished && ev.Attempt == 1 {
			t.Errorf("the superseded attempt reported a finish: %+v", ev)
		}
	}
}
