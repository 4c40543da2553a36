package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/weft-ci/weft/agent"
	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/dispatcher"
	"github.com/weft-ci/weft/metrics"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

func TestReconcileRequeuesADeletedJob(t *testing.T) {
	t.Parallel()
	m := metrics.NewDispatcher(prometheus.NewRegistry())
	s := StartStack(t, StackConfig{NoAgent: true, Dispatcher: dispatcher.Config{ReconcileInterval: 300 * time.Millisecond, Metrics: m}})
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
	var repairs dto.Metric
	if err := m.ReconcileRepairs.WithLabelValues("lost_job").Write(&repairs); err != nil || repairs.GetCounter().GetValue() != 1 {
		t.Errorf("weft_reconcile_repairs_total{kind=lost_job} = %v (%v), want 1", repairs.GetCounter().GetValue(), err)
	}
}

// A stage whose job was acked and whose finished event was lost from the
// stream runs again as a new job.
func TestReconcileRunsAgainAStageWhoseFinishWasLost(t *testing.T) {
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

// A stage whose job was acked and whose stored finished event the
// dispatchers never applied (the events consumer was reset, say) is
// finished from the stored event by the reconcile loop: it does not run
// again.
func TestReconcileAppliesAStoredFinishNoDispatcherTook(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{NoDispatcher: true})
	ctx := context.Background()
	js := s.Bus.JS
	stop := s.StartDispatcher(dispatcher.Config{})
	g := newGate(t)
	id := s.Submit(t, g.pipeline("stored", ""))
	r := waitFor(t, s, id, "running with its job recorded", func(r *wire.Run) bool {
		return r.Stage("wait").State == wire.StageRunning && r.Stage("wait").JobSeq != 0
	})
	stop()
	g.open(t)
	jobs, err := js.Stream(ctx, subjects.JobsStream)
	if err != nil {
		t.Fatal(err)
	}
	if !Eventually(30*time.Second, func() bool {
		_, err := jobs.GetMsg(ctx, r.Stage("wait").JobSeq)
		return errors.Is(err, jetstream.ErrMsgNotFound)
	}) {
		t.Fatal("the agent never acked the job")
	}
	// Every event waiting for the dispatchers is taken and dropped.
	c, err := js.Consumer(ctx, subjects.EventsStream, subjects.DispatcherEvents)
	if err != nil {
		t.Fatal(err)
	}
	dropped := 0
	for {
		batch, err := c.FetchNoWait(100)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			var ev wire.Event
			if json.Unmarshal(m.Data(), &ev) == nil && ev.Type == wire.Finished && ev.RunID == id {
				dropped++
			}
			if err := m.Ack(); err != nil {
				t.Fatal(err)
			}
			n++
		}
		if n == 0 {
			break
		}
	}
	if dropped != 1 {
		t.Fatalf("dropped %d finished events of the run, want 1", dropped)
	}
	s.StartDispatcher(dispatcher.Config{ReconcileInterval: 300 * time.Millisecond})
	final, _ := s.Wait(t, id)
	if st := final.Stage("wait"); final.State != wire.RunSucceeded || st.Job != 1 || st.Attempt != 1 {
		t.Errorf("run %s, stage job %d attempt %d; want succeeded from the stored finish, job 1 attempt 1", final.State, st.Job, st.Attempt)
	}
}

// A reconcile pass looks up one by one only the jobs already delivered:
// waiting jobs cost it nothing each, so its cost does not grow with the
// queue (it used to look up every queued stage's job every pass).
func TestReconcileDoesNotLookUpWaitingJobs(t *testing.T) {
	t.Parallel()
	const stages = 40
	s := StartStack(t, StackConfig{NoAgent: true, Dispatcher: dispatcher.Config{ReconcileInterval: 100 * time.Millisecond}})
	ctx := context.Background()
	// The queue's consumers exist (an agent served it) but nothing takes
	// the jobs.
	if err := bus.EnsureJobConsumers(ctx, s.Bus.JS, "default", 0, 0); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	lookups, passes := 0, 0
	count := func(n *int) nats.MsgHandler {
		return func(*nats.Msg) { mu.Lock(); *n++; mu.Unlock() }
	}
	for subject, n := range map[string]*int{
		"$JS.API.STREAM.MSG.GET." + subjects.JobsStream:    &lookups,
		"$JS.API.DIRECT.GET." + subjects.JobsStream + ".>": &lookups,
		"$JS.API.DIRECT.GET." + subjects.JobsStream:        &lookups,
		"$JS.API.STREAM.INFO." + subjects.HeartbeatsStream: &passes, // once per pass, before the runs are inspected
	} {
		sub, err := s.Bus.Conn.Subscribe(subject, count(n))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	text := "name: waiting\nstages:\n"
	for i := range stages {
		text += fmt.Sprintf("  - key: s%d\n    commands: [true]\n", i)
	}
	id := s.Submit(t, text)
	waitFor(t, s, id, "every job recorded", func(r *wire.Run) bool {
		for _, st := range r.Stages {
			if st.JobSeq == 0 {
				return false
			}
		}
		return true
	})
	mu.Lock()
	from := passes
	mu.Unlock()
	if !Eventually(30*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return passes >= from+3 }) {
		t.Fatal("the reconcile loop made no three passes")
	}
	mu.Lock()
	defer mu.Unlock()
	if lookups != 0 {
		t.Errorf("%d job lookups over %d reconcile passes of %d waiting jobs, want 0", lookups, passes-from, stages)
	}
}
