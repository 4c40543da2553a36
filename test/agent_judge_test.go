package test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// publishCopy publishes a copy of the first job of a run's stage under a
// message id of its own, as the dispatcher's repair does once the jobs
// stream's 2-minute Nats-Msg-Id window has passed, and returns its
// stream sequence.
func publishCopy(t testing.TB, s *Stack, r *wire.Run, key string) uint64 {
	t.Helper()
	st := r.Pipeline.Stage(key)
	job := wire.Job{
		RunID: r.ID, Pipeline: r.Pipeline.Name, Attempt: 1, Job: 1, Tier: subjects.Normal, Stage: *st,
		Env: wire.JobEnv(r.Pipeline, st, r.ID, r.Branch, r.Commit, 1),
	}
	data, err := json.Marshal(job)
	if err != nil {
		t.Fatal(err)
	}
	ack, err := s.Bus.JS.Publish(context.Background(), subjects.Job(st.Queue, subjects.Normal), data, jetstream.WithMsgID("copy-"+ulidString()))
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

// jobGone reports whether the jobs stream no longer holds the message at
// seq: it was acked or terminated.
func jobGone(t testing.TB, s *Stack, seq uint64) bool {
	t.Helper()
	stream, err := s.Bus.JS.Stream(context.Background(), subjects.JobsStream)
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.GetMsg(context.Background(), seq)
	return errors.Is(err, jetstream.ErrMsgNotFound)
}

func TestACopyOfAJobWhoseStageEndedIsDroppedUnrun(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{})
	r, _ := s.Run(t, "name: copy\nstages:\n  - key: s\n    commands: [true]\n")
	if r.State != wire.RunSucceeded {
		t.Fatalf("run %s, want succeeded", r.State)
	}
	seq := publishCopy(t, s, r, "s")
	if !Eventually(10*time.Second, func() bool { return jobGone(t, s, seq) }) {
		t.Fatal("the copy of the job was never consumed")
	}
	waitIdle(t, s.Agent)
	evs := stageEvents(t, s.Bus.JS, r.ID, "s")
	if n := countEvents(evs, wire.Started); n != 1 {
		t.Errorf("stage started %d times, want once: the copy must not run", n)
	}
	for _, ev := range evs {
		if ev.Job != 1 {
			t.Errorf("%s event of attempt %d carries job %d, want 1", ev.Type, ev.Attempt, ev.Job)
		}
	}
}

func TestACopyOfARunningJobIsDroppedUnrun(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{Slots: 2})
	g := newGate(t)
	id := s.Submit(t, "name: copy\nenv: {GATE: "+string(g)+"}\nstages:\n  - key: s\n    commands: ['while [ ! -f \"$GATE\" ]; do sleep 0.02; done']\n")
	r := waitFor(t, s, id, "running", stageIs("s", wire.StageRunning))
	seq := publishCopy(t, s, r, "s")
	// The agent has a free slot: it takes the copy and must drop it.
	if !Eventually(10*time.Second, func() bool { return jobGone(t, s, seq) }) {
		t.Fatal("the copy of the running job was never dropped")
	}
	g.open(t)
	if r, _ = s.Wait(t, id); r.State != wire.RunSucceeded {
		t.Fatalf("run %s, want succeeded", r.State)
	}
	waitIdle(t, s.Agent)
	evs := stageEvents(t, s.Bus.JS, id, "s")
	if n := countEvents(evs, wire.Started); n != 1 || r.Stage("s").Attempt != 1 {
		t.Errorf("stage started %d times, attempt %d; want once, attempt 1", n, r.Stage("s").Attempt)
	}
	for _, ev := range evs {
		if ev.Job != 1 {
			t.Errorf("%s event of attempt %d carries job %d, want 1", ev.Type, ev.Attempt, ev.Job)
		}
	}
}
