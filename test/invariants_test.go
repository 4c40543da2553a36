package test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/agent"
	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/dispatcher"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// wipHolders returns the run id each key matching filter names.
func wipHolders(t testing.TB, s *Stack, filter string) map[string]string {
	t.Helper()
	ctx := context.Background()
	wip, err := s.Bus.JS.KeyValue(ctx, subjects.WIPBucket)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := bus.Keys(ctx, wip, filter)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, k := range keys {
		if e, err := wip.Get(ctx, k); err == nil {
			out[k] = string(e.Value())
		}
	}
	return out
}

// Issue 9, defect 1: with two dispatchers both admitting on the same
// lease release, the loser released the winner's group lock and up to 4
// runs of one group ran at once. Each stage takes a directory as a lock
// (mkdir is atomic) and fails if another run of the group holds it.
func TestConcurrencyGroupIsExclusiveWithTwoDispatchers(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{Slots: 12, Dispatchers: 2, Dispatcher: dispatcher.Config{WIPLimit: 12}})
	lock := filepath.Join(t.TempDir(), "lock")
	text := fmt.Sprintf("name: deploy\nconcurrency: {group: deploy}\nenv: {LOCK: %q}\nstages:\n  - key: s\n    commands: ['mkdir \"$LOCK\"', 'sleep 0.1', 'rmdir \"$LOCK\"']\n", lock)
	var ids []string
	for range 12 {
		ids = append(ids, s.Submit(t, text, onRepo("acme/deploy")))
	}
	var runs []*wire.Run
	for _, id := range ids {
		r, _ := s.Wait(t, id)
		if r.State != wire.RunSucceeded {
			t.Errorf("run %s %s: %s", id, r.State, r.Stage("s").Message)
		}
		runs = append(runs, r)
	}
	slices.SortFunc(runs, func(a, b *wire.Run) int { return a.Admitted.Compare(b.Admitted) })
	for i := 1; i < len(runs); i++ {
		if runs[i].Admitted.Before(runs[i-1].Finished) {
			t.Errorf("run %s admitted at %v, before run %s of its group finished at %v",
				runs[i].ID, runs[i].Admitted.Format(time.StampMicro), runs[i-1].ID, runs[i-1].Finished.Format(time.StampMicro))
		}
	}
}

// Issue 9, defect 2: a dispatcher that wrote a run admitted, with its root
// stage queued, and died before publishing the job left the run holding
// its WIP slot forever: nothing was redelivered for it and the reconcile
// loop skipped stages with no job sequence. The test writes that state
// itself, then starts a dispatcher and an agent.
func TestAnAdmittedRunWhoseJobWasNeverPublishedRuns(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := StartStack(t, StackConfig{NoAgent: true, NoDispatcher: true})
	stop := s.StartDispatcher(dispatcher.Config{WIPLimit: 1, SweepInterval: time.Hour})
	wip, err := s.Bus.JS.KeyValue(ctx, subjects.WIPBucket)
	if err != nil {
		t.Fatal(err)
	}
	const repo = "acme/api"
	blocker := subjects.LeaseKey(repo, 0)
	if _, err := wip.Create(ctx, blocker, []byte("01DEADDEADDEADDEADDEADDEAD")); err != nil {
		t.Fatal(err)
	}
	id := s.Submit(t, "name: orphan\nstages:\n  - key: s\n    commands: [true]\n", onRepo(repo))
	waitFor(t, s, id, "waiting on wip", func(r *wire.Run) bool { return r.Pending != nil && r.Pending.Reason == wire.PendingWIP })
	stop() // the dispatcher dies ...
	// ... right after admitting the run, before publishing its job.
	admitted := time.Now().Add(-time.Minute)
	var seq uint64
	updateRun(t, s, id, func(r *wire.Run) {
		r.Lease, r.Admitted, r.Pending, seq = blocker, admitted, nil, r.Seq
		st := r.Stage("s")
		st.State, st.Attempt, st.Job, st.Queued = wire.StageQueued, 1, 1, admitted
	})
	if err := wip.Delete(ctx, blocker); err != nil {
		t.Fatal(err)
	}
	if _, err := wip.Create(ctx, blocker, []byte(id)); err != nil {
		t.Fatal(err)
	}
	waiting, err := s.Bus.JS.Stream(ctx, subjects.WaitingStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := waiting.GetLastMsgForSubject(ctx, subjects.Waiting(repo, seq))
	if err != nil {
		t.Fatal(err)
	}
	if err := waiting.DeleteMsg(ctx, m.Sequence); err != nil {
		t.Fatal(err)
	}

	s.StartDispatcher(dispatcher.Config{WIPLimit: 1, ReconcileInterval: 300 * time.Millisecond})
	s.AddAgent(agent.Config{})
	final, _ := s.Wait(t, id)
	if final.State != wire.RunSucceeded {
		t.Fatalf("run %s, want succeeded", final.State)
	}
	if !Eventually(10*time.Second, func() bool { return len(wipHolders(t, s, subjects.AllLeases)) == 0 }) {
		t.Errorf("leases left after the run: %v", wipHolders(t, s, subjects.AllLeases))
	}
}

// Issue 9, defect 7: lease keys had a TTL that only a live dispatcher
// renewed; with none renewing for a TTL the keys of live runs expired and
// admission went over the limit. A lease now belongs to its run: its key
// carries no TTL, and a dispatcher that comes back after any time still
// sees the slots taken.
func TestLeasesOfLiveRunsOutliveTheirDispatchers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := StartStack(t, StackConfig{NoDispatcher: true, Slots: 4})
	stop := s.StartDispatcher(dispatcher.Config{WIPLimit: 2})
	g := newGate(t)
	first := []string{s.Submit(t, g.pipeline("a", ""), onRepo("acme/api")), s.Submit(t, g.pipeline("b", ""), onRepo("acme/api"))}
	for _, id := range first {
		waitFor(t, s, id, "running", stageIs("wait", wire.StageRunning))
	}
	stop()
	wipStream, err := s.Bus.JS.Stream(ctx, "KV_"+subjects.WIPBucket)
	if err != nil {
		t.Fatal(err)
	}
	for k := range wipHolders(t, s, subjects.AllLeases) {
		m, err := wipStream.GetLastMsgForSubject(ctx, subjects.KVSubject(subjects.WIPBucket, k))
		if err != nil {
			t.Fatal(err)
		}
		if ttl := m.Header.Get(jetstream.MsgTTLHeader); ttl != "" {
			t.Errorf("lease %s of a live run expires in %s when no dispatcher renews it", k, ttl)
		}
	}
	s.StartDispatcher(dispatcher.Config{WIPLimit: 2})
	third := s.Submit(t, g.pipeline("c", ""), onRepo("acme/api"))
	r := waitFor(t, s, third, "pending on wip", func(r *wire.Run) bool {
		return r.Lease != "" || (r.Pending != nil && r.Pending.Reason == wire.PendingWIP)
	})
	if r.Lease != "" {
		t.Fatalf("a third run was admitted with two of two in flight (lease %s)", r.Lease)
	}
	g.open(t)
	for _, id := range append(first, third) {
		if final, _ := s.Wait(t, id); final.State != wire.RunSucceeded {
			t.Errorf("run %s %s", id, final.State)
		}
	}
}

// Issue 9, defect 12: a replayed stage of a run that had ended ran with
// no lease and no group lock; the run now waits for admission again and
// holds a slot while the stage runs.
func TestAReplayedRunHoldsALease(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := StartStack(t, StackConfig{Dispatcher: dispatcher.Config{WIPLimit: 1}})
	g := newGate(t)
	text := fmt.Sprintf("name: replay\nenv: {GATE: %q}\nstages:\n  - key: s\n    commands: ['[ \"$WEFT_ATTEMPT\" != 1 ] || exit 1', 'while [ ! -f \"$GATE\" ]; do sleep 0.02; done']\n", string(g))
	id := s.Submit(t, text, onRepo("acme/api"))
	if r, _ := s.Wait(t, id); r.State != wire.RunFailed {
		t.Fatalf("first run %s, want failed", r.State)
	}
	data, _ := json.Marshal(wire.Event{Type: wire.ReplayRequested, RunID: id, Stage: "s", Time: time.Now()})
	if _, err := s.Bus.JS.Publish(ctx, subjects.RunEvent(id), data); err != nil {
		t.Fatal(err)
	}
	r := waitFor(t, s, id, "replayed stage running", func(r *wire.Run) bool { return r.Stage("s").State == wire.StageRunning })
	held := wipHolders(t, s, subjects.AllLeases)
	if r.Lease == "" || held[r.Lease] != id {
		t.Errorf("replayed run names lease %q; leases held: %v", r.Lease, held)
	}
	st, err := client.GetStatus(ctx, s.Bus.JS)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Runs) != 1 || st.Runs[0].ID != id {
		t.Errorf("status lists %+v, want the replayed run", st.Runs)
	}
	g.open(t)
	if final, _ := s.Wait(t, id); final.State != wire.RunSucceeded {
		t.Errorf("replayed run %s, want succeeded", final.State)
	}
	if !Eventually(10*time.Second, func() bool { return len(wipHolders(t, s, subjects.AllLeases)) == 0 }) {
		t.Errorf("leases left: %v", wipHolders(t, s, subjects.AllLeases))
	}
}

// Issue 9, defect 14: repository names that differ only in '.', '/' or
// '_' shared one token, so they shared WIP slots and groups.
func TestRepositoriesDifferingInPunctuationHaveTheirOwnSlots(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{Slots: 3, Dispatcher: dispatcher.Config{WIPLimit: 1}})
	g := newGate(t)
	var ids []string
	for _, repo := range []string{"acme/api", "acme_api", "acme.api"} {
		ids = append(ids, s.Submit(t, g.pipeline("p", ""), onRepo(repo)))
	}
	for _, id := range ids {
		waitFor(t, s, id, "running (each repository has its own slot)", stageIs("wait", wire.StageRunning))
	}
	g.open(t)
	for _, id := range ids {
		if r, _ := s.Wait(t, id); r.State != wire.RunSucceeded {
			t.Errorf("run %s %s", id, r.State)
		}
	}
}

// A job whose finish was stored but whose ack was lost (its agent died
// right after reporting, or the server was away), redelivered before any
// dispatcher recorded the finish, is acked unrun: the stored finish
// stands. Before, the run document still said running (or queued) and the
// job ran again (chaos 2: "ran again after a stored success").
func TestARedeliveredJobWhoseFinishIsStoredIsNotRunAgain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := StartStack(t, StackConfig{NoAgent: true, NoDispatcher: true, AckWait: 2 * time.Second})
	js := s.Bus.JS
	stop := s.StartDispatcher(dispatcher.Config{})
	ran := filepath.Join(t.TempDir(), "ran")
	id := s.Submit(t, fmt.Sprintf("name: once\nenv: {RAN: %q}\nstages:\n  - key: s\n    commands: ['echo ran >> \"$RAN\"']\n", ran))
	waitFor(t, s, id, "queued with its job recorded", func(r *wire.Run) bool { return r.Stage("s").JobSeq != 0 })
	stop()
	// The first agent: takes the job, runs it, stores its finish, and
	// dies before acking.
	c, err := js.Consumer(ctx, subjects.JobsStream, subjects.JobConsumer(subjects.DefaultQueue, subjects.Normal))
	if err != nil {
		t.Fatal(err)
	}
	batch, err := c.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var job wire.Job
	for m := range batch.Messages() {
		if err := json.Unmarshal(m.Data(), &job); err != nil {
			t.Fatal(err)
		}
	}
	if job.Job != 1 {
		t.Fatalf("took job %+v, want job 1", job)
	}
	for _, ev := range []wire.Event{
		{Type: wire.Started, RunID: id, Stage: "s", Attempt: 1, Job: 1, Agent: "dead-agent", Time: time.Now()},
		{Type: wire.Finished, RunID: id, Stage: "s", Attempt: 1, Job: 1, Agent: "dead-agent", Time: time.Now()},
	} {
		data, _ := json.Marshal(ev)
		if _, err := js.Publish(ctx, subjects.StageEvent(id, "s"), data); err != nil {
			t.Fatal(err)
		}
	}
	a := s.AddAgent(agent.Config{})
	jobs, err := js.Stream(ctx, subjects.JobsStream)
	if err != nil {
		t.Fatal(err)
	}
	if !Eventually(30*time.Second, func() bool {
		info, err := jobs.Info(ctx)
		return err == nil && info.State.Msgs == 0
	}) {
		t.Fatal("the redelivered job was never acked")
	}
	waitIdle(t, a)
	if _, err := os.Stat(ran); err == nil {
		t.Error("the stage ran again after its finish was stored")
	}
	s.StartDispatcher(dispatcher.Config{})
	final, _ := s.Wait(t, id)
	if st := final.Stage("s"); final.State != wire.RunSucceeded || st.Attempt != 1 || st.Agent != "dead-agent" {
		t.Errorf("run %s, attempt %d by %q; want succeeded from the stored finish of attempt 1", final.State, st.Attempt, st.Agent)
	}
}
