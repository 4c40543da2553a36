package test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/agent"
	"github.com/weft-ci/weft/dispatcher"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

func TestReconcileRequeuesADeletedJob(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{NoAgent: true, Dispatcher: dispatcher.Config{ReconcileInterval: 300 * time.Millisecond}})
	ctx := context.Background()
	id := s.Submit(t, "name: lost\nstages:\n  - key: s\n    commands: [true]\n")
	r := waitFor(t, s, id, "queued with its job recorded", func(r *wire.Run) bool { return r.Stage("s").JobSeq != 0 })
	jobs, err := s.Bus.JS.Stream(ctx, subjects.JobsStream)
	if err != nil {
		t.Fatal(err)
	}
	if err := jobs.DeleteMsg(ctx, r.Stage("s").JobSeq); err != nil {
		t.Fatalf("delete the job: %v", err)
	}
	s.AddAgent(agent.Config{})
	final, _ := s.Wait(t, id)
	if st := final.Stage("s"); final.State != wire.RunSucceeded || st.Job != 2 {
		t.Errorf("run %s, stage job %d; want succeeded on a second job", final.State, st.Job)
	}
}

func TestReconcileRepairsADroppedFinishedEvent(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{Dispatcher: dispatcher.Config{ReconcileInterval: 300 * time.Millisecond}})
	ctx := context.Background()
	js := s.Bus.JS
	// The dispatcher hears nothing while the stage runs.
	if !Eventually(10*time.Second, func() bool {
		_, err := js.Consumer(ctx, subjects.EventsStream, subjects.DispatcherEvents)
		return err == nil
	}) {
		t.Fatal("the dispatcher never created its events consumer")
	}
	if _, err := js.PauseConsumer(ctx, subjects.EventsStream, subjects.DispatcherEvents, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	g := newGate(t)
	id := s.Submit(t, g.pipeline("dropped", ""))
	waitFor(t, s, id, "queued with its job recorded", func(r *wire.Run) bool { return r.Stage("wait").JobSeq != 0 })
	g.open(t)
	// The agent finishes and acks the job; then its events are lost.
	events, err := js.Stream(ctx, subjects.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	subject := subjects.StageEvent(id, "wait")
	if !Eventually(30*time.Second, func() bool {
		m, err := events.GetLastMsgForSubject(ctx, subject)
		var ev wire.Event
		return err == nil && json.Unmarshal(m.Data, &ev) == nil && ev.Type == wire.Finished
	}) {
		t.Fatal("the stage never finished")
	}
	if err := events.Purge(ctx, jetstream.WithPurgeSubject(subject)); err != nil {
		t.Fatal(err)
	}
	if _, err := js.ResumeConsumer(ctx, subjects.EventsStream, subjects.DispatcherEvents); err != nil {
		t.Fatal(err)
	}
	final, _ := s.Wait(t, id)
	if st := final.Stage("wait"); final.State != wire.RunSucceeded || st.Job != 2 {
		t.Errorf("run %s, stage job %d; want succeeded, run again as a second job", final.State, st.Job)
	}
}
