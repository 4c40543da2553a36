package test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-ci/weft/agent"
	"github.com/weft-ci/weft/bench"
	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/dispatcher"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// runDoc reads a run document.
func runDoc(t testing.TB, s *Stack, id string) *wire.Run {
	t.Helper()
	r, err := s.Runs(t).Get(context.Background(), id)
	if err != nil {
		t.Fatalf("get run %s: %v", id, err)
	}
	return r
}

// waitFor polls the run document until cond holds, failing after 30s.
func waitFor(t testing.TB, s *Stack, id, what string, cond func(*wire.Run) bool) *wire.Run {
	t.Helper()
	var r *wire.Run
	if !Eventually(30*time.Second, func() bool {
		var err error
		r, err = s.Runs(t).Get(context.Background(), id)
		return err == nil && cond(r)
	}) {
		t.Fatalf("run %s never %s: %+v", id, what, r)
	}
	return r
}

func stageIs(key string, state wire.StageState) func(*wire.Run) bool {
	return func(r *wire.Run) bool { return r.Stage(key) != nil && r.Stage(key).State == state }
}

// gate is a file a stage waits for.
type gate string

func newGate(t testing.TB) gate { return gate(filepath.Join(t.TempDir(), "gate")) }

func (g gate) open(t testing.TB) {
	if err := os.WriteFile(string(g), nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

// gated returns a one-stage pipeline that waits for the gate.
func (g gate) pipeline(name string, extra string) string {
	return fmt.Sprintf("name: %s\n%senv: {GATE: %q}\nstages:\n  - key: wait\n    commands: ['while [ ! -f \"$GATE\" ]; do sleep 0.02; done']\n", name, extra, string(g))
}

func onRepo(repo string) func(*wire.Trigger) { return func(t *wire.Trigger) { t.Repo = repo } }

func withPriority(p subjects.Tier) func(*wire.Trigger) {
	return func(t *wire.Trigger) { t.Priority = p }
}

func TestCriticalStageRunsNextOnABusyQueue(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{Dispatcher: dispatcher.Config{WIPLimit: 100}})
	g := newGate(t)
	blocker := s.Submit(t, g.pipeline("blocker", ""))
	waitFor(t, s, blocker, "started", stageIs("wait", wire.StageRunning))
	var low []string
	for range 50 {
		low = append(low, s.Submit(t, "name: low\nstages:\n  - key: s\n    commands: [true]\n", withPriority(subjects.Low)))
	}
	for _, id := range low {
		waitFor(t, s, id, "queued", stageIs("s", wire.StageQueued))
	}
	critical := s.Submit(t, "name: hotfix\nstages:\n  - key: s\n    commands: [true]\n", withPriority(subjects.Critical))
	waitFor(t, s, critical, "queued", stageIs("s", wire.StageQueued))
	g.open(t)
	c := waitFor(t, s, critical, "finished", stageIs("s", wire.StageSucceeded)).Stage("s")
	for _, id := range low {
		l, _ := s.Wait(t, id)
		if ls := l.Stage("s"); ls.Started.Before(c.Started) {
			t.Errorf("low stage of run %s started at %v, before the critical one at %v", id, ls.Started, c.Started)
		}
	}
}

// A burst on one queue does not touch another queue: a main stage
// submitted behind 500 queued cross-repo stages, which their agent is
// working through, runs and finishes while most of them still wait. Were
// the main stage behind the burst anywhere (one subject, one FIFO in the
// dispatcher), the burst would have drained first.
func TestQueuesIsolate(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{NoAgent: true, Dispatcher: dispatcher.Config{WIPLimit: 100}})
	s.AddAgent(agent.Config{Queues: []string{"main"}})
	var burst []string
	for i := range 5 {
		var sb strings.Builder
		fmt.Fprintf(&sb, "name: burst-%d\nqueue: cross-repo\nstages:\n", i)
		for j := range 100 {
			fmt.Fprintf(&sb, "  - key: s%d\n    commands: [sleep 0.02]\n", j)
		}
		burst = append(burst, s.Submit(t, sb.String()))
	}
	for _, id := range burst {
		waitFor(t, s, id, "fully queued", func(r *wire.Run) bool { return len(queuedKeysOf(r)) == 100 })
	}
	// The burst's agent starts on it; then the main stage is triggered.
	s.AddAgent(agent.Config{Queues: []string{"cross-repo"}})
	waitFor(t, s, burst[0], "the burst under way", func(r *wire.Run) bool { return len(queuedKeysOf(r)) < 100 })
	main := s.Submit(t, "name: main\nqueue: main\nstages:\n  - key: s\n    commands: [true]\n")
	m, _ := s.Wait(t, main)
	if m.State != wire.RunSucceeded {
		t.Fatalf("main run %s", m.State)
	}
	backlog := 0
	for _, id := range burst {
		backlog += len(queuedKeysOf(runDoc(t, s, id)))
	}
	if backlog < 250 {
		t.Errorf("when the main stage finished, %d of 500 cross-repo stages were still queued; the main stage waited behind the burst", backlog)
	}
}

func queuedKeysOf(r *wire.Run) []string {
	var keys []string
	for _, st := range r.Stages {
		if st.State == wire.StageQueued {
			keys = append(keys, st.Key)
		}
	}
	return keys
}

// submitConcurrently submits n triggers at once and returns the run ids
// and refusals.
func submitConcurrently(t *testing.T, s *Stack, n int, text string, repo string) (ids []string, refused []*client.RefusedError) {
	t.Helper()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			id, err := client.Submit(ctx, s.Bus.JS, wire.Trigger{File: "p.yml", Pipeline: text, Repo: repo, ID: ulidString()})
			mu.Lock()
			defer mu.Unlock()
			var re *client.RefusedError
			switch {
			case err == nil:
				ids = append(ids, id)
			case errors.As(err, &re):
				refused = append(refused, re)
			default:
				t.Errorf("submit: %v", err)
			}
		})
	}
	wg.Wait()
	return ids, refused
}

func TestWIPLimitQueuesInArrivalOrder(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{Slots: 4})
	ids, refused := submitConcurrently(t, s, 20, "name: wip\nstages:\n  - key: s\n    commands: [sleep 0.1]\n", "acme/api")
	if len(ids) != 20 || len(refused) != 0 {
		t.Fatalf("%d runs, %d refused; want 20 runs", len(ids), len(refused))
	}
	var runs []*wire.Run
	for _, id := range ids {
		r, _ := s.Wait(t, id)
		if r.State != wire.RunSucceeded {
			t.Errorf("run %s %s", id, r.State)
		}
		runs = append(runs, r)
	}
	// In flight from admission to the end: never more than 3 at once.
	most := bench.MaxInFlight(runs)
	if most != 3 {
		t.Errorf("at most %d runs in flight, want exactly 3", most)
	}
	// Admitted in arrival (trigger stream) order.
	slices.SortFunc(runs, func(a, b *wire.Run) int { return int(a.Seq) - int(b.Seq) })
	for i := 1; i < len(runs); i++ {
		if runs[i].Admitted.Before(runs[i-1].Admitted) {
			t.Errorf("run with trigger seq %d admitted before seq %d", runs[i].Seq, runs[i-1].Seq)
		}
	}
}

func TestWIPLimitRefusesWithRetryAfter(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{Slots: 3, Dispatcher: dispatcher.Config{WIPPolicy: dispatcher.PolicyRefuse, RetryAfter: 7 * time.Second}})
	g := newGate(t)
	ids, refused := submitConcurrently(t, s, 20, g.pipeline("wip", ""), "acme/api")
	if len(ids) != 3 || len(refused) != 17 {
		t.Fatalf("%d runs and %d refusals, want 3 and 17", len(ids), len(refused))
	}
	for _, re := range refused {
		if re.Reason != wire.RefusedWIP || re.RetryAfter != 7*time.Second || !strings.Contains(re.Message, "3 of 3 runs of acme/api") {
			t.Errorf("refusal %+v, want reason wip with retry-after 7s naming 3 of 3 runs", re)
		}
	}
	g.open(t)
	for _, id := range ids {
		if r, _ := s.Wait(t, id); r.State != wire.RunSucceeded {
			t.Errorf("run %s %s", id, r.State)
		}
	}
}

// A lease whose run is gone (a dispatcher died before releasing it) is
// freed by the sweep, and the next waiting run is admitted.
func TestALeaseWithNoLiveRunIsSwept(t *testing.T) {
	t.Parallel()
	const sweep = 2 * time.Second
	s := StartStack(t, StackConfig{Dispatcher: dispatcher.Config{WIPLimit: 1, SweepInterval: sweep}})
	wip, err := s.Bus.JS.KeyValue(context.Background(), subjects.WIPBucket)
	if err != nil {
		t.Fatal(err)
	}
	// The only slot, held by a run nobody will ever finish.
	if _, err := wip.Create(context.Background(), subjects.LeaseKey("acme/api", 0), []byte("01DEADDEADDEADDEADDEADDEAD")); err != nil {
		t.Fatal(err)
	}
	id := s.Submit(t, "name: next\nstages:\n  - key: s\n    commands: [true]\n", onRepo("acme/api"))
	r := waitFor(t, s, id, "pending on wip", func(r *wire.Run) bool { return r.Pending != nil && r.Pending.Reason == wire.PendingWIP })
	if !strings.Contains(r.Pending.Detail, "1 of 1 runs of acme/api") {
		t.Errorf("pending detail %q", r.Pending.Detail)
	}
	st, err := client.GetStatus(context.Background(), s.Bus.JS)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Runs) != 1 || st.Runs[0].Reason != wire.PendingWIP {
		t.Errorf("status = %+v, want the run pending on wip", st.Runs)
	}
	final, _ := s.Wait(t, id)
	if waited := final.Admitted.Sub(final.Created); final.State != wire.RunSucceeded || waited > sweep+2*time.Second {
		t.Errorf("run %s admitted %v after creation; want succeeded within %v", final.State, waited, sweep+2*time.Second)
	}
}

func TestConcurrencyGroupRunsOneAtATimeInOrder(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{Slots: 3})
	text := "name: deploy\nconcurrency: {group: 'deploy-${WEFT_BRANCH}'}\nstages:\n  - key: s\n    commands: [sleep 0.2]\n"
	var ids []string
	for range 3 {
		ids = append(ids, s.Submit(t, text, onRepo("acme/api"), func(tr *wire.Trigger) { tr.Branch = "main" }))
	}
	second := waitFor(t, s, ids[1], "pending on its group", func(r *wire.Run) bool {
		return r.Pending != nil && r.Pending.Reason == wire.PendingGroup || r.State.Terminal()
	})
	if second.State.Terminal() {
		t.Fatalf("second run finished without waiting for its group")
	}
	var prev *wire.Run
	for _, id := range ids {
		r, _ := s.Wait(t, id)
		if r.State != wire.RunSucceeded {
			t.Fatalf("run %s %s", id, r.State)
		}
		if prev != nil && r.Admitted.Before(prev.Finished) {
			t.Errorf("run %s admitted at %v before the previous one of its group finished at %v", id, r.Admitted, prev.Finished)
		}
		prev = r
	}
}

func TestConcurrencyGroupCancelInProgress(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{Slots: 2})
	g := newGate(t)
	group := "concurrency: {group: deploy, cancel_in_progress: true}\n"
	first := s.Submit(t, g.pipeline("deploy", group), onRepo("acme/api"))
	waitFor(t, s, first, "started", stageIs("wait", wire.StageRunning))
	second := s.Submit(t, "name: deploy\n"+group+"stages:\n  - key: s\n    commands: [true]\n", onRepo("acme/api"))
	r1, _ := s.Wait(t, first)
	if r1.State != wire.RunCancelled || r1.Stage("wait").State != wire.StageCancelled || !strings.Contains(r1.CancelReason, second) {
		t.Errorf("first run %s, stage %s, reason %q; want cancelled, superseded by %s", r1.State, r1.Stage("wait").State, r1.CancelReason, second)
	}
	r2, _ := s.Wait(t, second)
	if r2.State != wire.RunSucceeded || r2.Admitted.Before(r1.Finished) {
		t.Errorf("second run %s admitted %v (first finished %v); want succeeded after the first ended", r2.State, r2.Admitted, r1.Finished)
	}
}

func TestBackpressureWaitsAndCounts(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{NoAgent: true, Dispatcher: dispatcher.Config{WIPLimit: 100, MaxPending: 2, RecheckInterval: 200 * time.Millisecond}})
	var ids []string
	for range 3 {
		ids = append(ids, s.Submit(t, "name: bp\nstages:\n  - key: s\n    commands: [true]\n"))
	}
	r := waitFor(t, s, ids[2], "pending on backpressure", func(r *wire.Run) bool {
		return r.Pending != nil && r.Pending.Reason == wire.PendingBackpressure
	})
	if !strings.Contains(r.Pending.Detail, "queue default holds 2 pending jobs") {
		t.Errorf("pending detail %q", r.Pending.Detail)
	}
	st, err := client.GetStatus(context.Background(), s.Bus.JS)
	if err != nil {
		t.Fatal(err)
	}
	if st.Counters["backpressure_waited.default"] == 0 {
		t.Errorf("counters %v, want backpressure_waited.default counted", st.Counters)
	}
	var queued *client.StageStatus
	for _, rs := range st.Runs {
		if rs.ID == ids[0] && len(rs.Stages) == 1 {
			queued = &rs.Stages[0]
		}
	}
	if queued == nil || queued.Reason != client.StageNoAgent {
		t.Errorf("status of the first run's stage = %+v, want reason no_agent", queued)
	}
	// An agent drains the queue; the third run is admitted and runs.
	s.AddAgent(agent.Config{})
	for _, id := range ids {
		if r, _ := s.Wait(t, id); r.State != wire.RunSucceeded {
			t.Errorf("run %s %s", id, r.State)
		}
	}
}

func TestStatusSaysWhyStagesWait(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{})
	ctx := context.Background()
	g := newGate(t)
	blocker := s.Submit(t, g.pipeline("blocker", "concurrency: {group: deploy}\n"), onRepo("acme/api"))
	waitFor(t, s, blocker, "started", stageIs("wait", wire.StageRunning))
	grouped := s.Submit(t, "name: deploy\nconcurrency: {group: deploy}\nstages:\n  - key: s\n    commands: [true]\n", onRepo("acme/api"))
	waitFor(t, s, grouped, "pending on its group", func(r *wire.Run) bool { return r.Pending != nil && r.Pending.Reason == wire.PendingGroup })
	other := s.Submit(t, "name: other\nstages:\n  - key: s\n    commands: [true]\n", onRepo("acme/web"))
	waitFor(t, s, other, "queued", stageIs("s", wire.StageQueued))

	reasons := func() map[string]string {
		st, err := client.GetStatus(ctx, s.Bus.JS)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, r := range st.Runs {
			out[r.ID] = r.Reason
			for _, ss := range r.Stages {
				out[r.ID+"/"+ss.Key] = ss.Reason
			}
		}
		return out
	}
	if !Eventually(10*time.Second, func() bool { return reasons()[other+"/s"] == client.StageAgentsBusy }) {
		t.Errorf("status reasons %v, want the other run's stage waiting on busy agents", reasons())
	}
	if got := reasons()[grouped]; got != wire.PendingGroup {
		t.Errorf("grouped run reason %q, want %q", got, wire.PendingGroup)
	}
	if err := client.PauseQueue(ctx, s.Bus.JS, subjects.DefaultQueue, "maintenance"); err != nil {
		t.Fatal(err)
	}
	if got := reasons()[other+"/s"]; got != client.StagePaused {
		t.Errorf("stage reason on a paused queue %q, want paused", got)
	}
	g.open(t)
	if r, _ := s.Wait(t, blocker); r.State != wire.RunSucceeded {
		t.Fatalf("blocker %s", r.State)
	}
	// The agent is idle now, and the queue paused: the stage stays queued
	// while the agent has rescanned (its registry entry says not busy).
	if !Eventually(10*time.Second, func() bool {
		st, _ := client.GetStatus(ctx, s.Bus.JS)
		return st != nil && len(st.Agents) == 1 && st.Agents[0].Busy == 0
	}) {
		t.Fatal("the agent never went idle")
	}
	if st := runDoc(t, s, other).Stage("s"); st.State != wire.StageQueued {
		t.Errorf("stage on a paused queue is %s, want queued", st.State)
	}
	if err := client.ResumeQueue(ctx, s.Bus.JS, subjects.DefaultQueue); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{other, grouped} {
		if r, _ := s.Wait(t, id); r.State != wire.RunSucceeded {
			t.Errorf("run %s %s after resume", id, r.State)
		}
	}
}
