package test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/wire"
)

// SIGTERM drains an agent: it takes no new job, finishes its running
// stage, leaves the registry and exits 0; weft agent drain does the same
// to another agent.
func TestADrainedAgentFinishesItsStageAndExits(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	startWeft(t, nil, "dispatcher", "--server", f.url)
	a := f.agent(t, "agent-a", "--slots", "2")
	g := newGate(t)
	first := f.s.Submit(t, fmt.Sprintf("name: long\nenv: {GATE: %q}\nstages:\n  - key: s\n    commands: ['while [ ! -f \"$GATE\" ]; do sleep 0.02; done', echo finished]\n", string(g)))
	waitFor(t, f.s, first, "running on agent-a", func(r *wire.Run) bool { return r.Stage("s").State == wire.StageRunning })

	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if !Eventually(20*time.Second, func() bool {
		res := RunWeft(t, weftBin, t.TempDir(), nil, "agents", "--server", f.url)
		return res.Code == 0 && strings.Contains(res.Stdout, "draining")
	}) {
		t.Fatal("weft agents never showed agent-a draining")
	}
	// A job queued while it drains is not its to take: a slot is free.
	second := f.s.Submit(t, "name: short\nstages:\n  - key: s\n    commands: [echo quick]\n")
	waitFor(t, f.s, second, "queued", func(r *wire.Run) bool { return r.Stage("s").State == wire.StageQueued })
	g.open(t)
	if code := a.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("the drained agent exited %d, want 0; stderr:\n%s", code, strings.Join(a.stderr.all(), "\n"))
	}
	r, _ := f.s.Wait(t, first)
	if st := r.Stage("s"); r.State != wire.RunSucceeded || st.Agent != "agent-a" || st.Attempt != 1 {
		t.Errorf("the drained agent's run %s, stage on %s attempt %d; want succeeded on agent-a, attempt 1", r.State, st.Agent, st.Attempt)
	}
	if ids := agentsSeen(t, f.url); slices.Contains(ids, "agent-a") {
		t.Errorf("agent-a is still in the registry after it drained: %v", ids)
	}

	b := f.agent(t, "agent-b")
	r, _ = f.s.Wait(t, second)
	if st := r.Stage("s"); r.State != wire.RunSucceeded || st.Agent != "agent-b" {
		t.Errorf("the run queued during the drain %s on %s; want succeeded on agent-b", r.State, st.Agent)
	}
	res := RunWeft(t, weftBin, t.TempDir(), nil, "agent", "drain", "--server", f.url, "agent-b")
	if res.Code != 0 || !strings.Contains(res.Stdout, "agent agent-b draining") {
		t.Fatalf("weft agent drain agent-b exited %d: %s%s", res.Code, res.Stdout, res.Stderr)
	}
	if code := b.wait(t, 30*time.Second); code != 0 {
		t.Errorf("agent-b exited %d after weft agent drain, want 0", code)
	}
	if res := RunWeft(t, weftBin, t.TempDir(), nil, "agent", "drain", "--server", f.url, "agent-gone"); res.Code != 3 {
		t.Errorf("weft agent drain of no agent exited %d, want 3: %s", res.Code, res.Stderr)
	}
}

// An agent with --exit-when-idle leaves the fleet and exits 0 once it ran
// nothing for that long: after its stage, not during it.
func TestAnIdleAgentExits(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	startWeft(t, nil, "dispatcher", "--server", f.url)
	a := f.agent(t, "agent-idle", "--exit-when-idle", "1s")
	r, _ := f.s.Run(t, "name: brief\nstages:\n  - key: s\n    commands: [sleep 1.5]\n")
	if st := r.Stage("s"); r.State != wire.RunSucceeded || st.Agent != "agent-idle" {
		t.Fatalf("run %s on %s; want succeeded on agent-idle, which was busy longer than its idle limit", r.State, st.Agent)
	}
	if code := a.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("the idle agent exited %d, want 0", code)
	}
	if ids := agentsSeen(t, f.url); slices.Contains(ids, "agent-idle") {
		t.Errorf("agent-idle is still in the registry: %v", ids)
	}
}

// A drain that outlasts --drain-timeout stops the stage still running and
// hands its job back: the agent exits 0, and another agent runs the
// stage as its next attempt.
func TestADrainTimeoutHandsTheStageBack(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	startWeft(t, nil, "dispatcher", "--server", f.url)
	a := f.agent(t, "agent-d", "--drain-timeout", "1s", "--kill-grace", "200ms")
	g := newGate(t)
	id := f.s.Submit(t, fmt.Sprintf("name: stuck\nenv: {GATE: %q}\nstages:\n  - key: s\n    commands: ['while [ ! -f \"$GATE\" ]; do sleep 0.02; done', echo finished]\n", string(g)))
	waitFor(t, f.s, id, "running on agent-d", func(r *wire.Run) bool {
		return r.Stage("s").State == wire.StageRunning && r.Stage("s").Agent == "agent-d"
	})
	drained := time.Now()
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := a.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("the drained agent exited %d, want 0; stderr:\n%s", code, strings.Join(a.stderr.all(), "\n"))
	}
	if took := time.Since(drained); took < time.Second {
		t.Errorf("the agent exited %s after SIGTERM, before its 1s drain timeout", took)
	}
	if r, err := client.Get(context.Background(), f.s.Bus.JS, id); err != nil || r.State.Terminal() {
		t.Fatalf("run after the drain timeout: %v, %v; want it still going", r, err)
	}
	f.agent(t, "agent-e")
	g.open(t)
	r, _ := f.s.Wait(t, id)
	if st := r.Stage("s"); r.State != wire.RunSucceeded || st.Agent != "agent-e" {
		t.Errorf("run %s, stage on %s; want succeeded on agent-e after agent-d handed it back", r.State, st.Agent)
	}
}
