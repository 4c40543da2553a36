package test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

func TestASupersededAttemptThatFinishesLeavesTheTakeoversJobAlone(t *testing.T) {
	t.Parallel()
	// AckWait 30s: the agent heartbeats, and checks that it still holds
	// its job, every 10s; everything below happens well within that.
	s := StartStack(t, StackConfig{AckWait: 30 * time.Second})
	ctx := context.Background()
	g := newGate(t)
	id := s.Submit(t, "name: fence\nenv: {GATE: "+string(g)+"}\nstages:\n  - key: s\n    commands: ['while [ ! -f \"$GATE\" ]; do sleep 0.02; done']\n")
	r := waitFor(t, s, id, "running with its job recorded", func(r *wire.Run) bool {
		return r.Stage("s").State == wire.StageRunning && r.Stage("s").JobSeq != 0
	})
	seq := r.Stage("s").JobSeq
	// Within half its AckWait of taking a delivery an agent knows no other
	// delivery can exist and acks without reading; a partition long
	// enough to get the job redelivered is longer than that. Let the
	// stage run past it (and before its second heartbeat, at 20 s).
	taken := r.Stage("s").Started
	if !Eventually(30*time.Second, func() bool { return time.Since(taken) > 16*time.Second }) {
		t.Fatal("clock")
	}

	// The server gives the job to a takeover while the first attempt
	// still runs, as when its heartbeats are lost in a partition: lowering
	// the consumer's AckWait under the agent, which heartbeats at the
	// interval it read at start, makes the server redeliver the job now.
	// The test is the takeover: it takes the redelivery and holds it.
	cfg := subjects.JobConsumerFor(subjects.DefaultQueue, subjects.Normal)
	setAckWait := func(d time.Duration) {
		cfg.AckWait = d
		if _, err := s.Bus.JS.CreateOrUpdateConsumer(ctx, subjects.JobsStream, bus.JobConsumerConfig(cfg)); err != nil {
			t.Fatal(err)
		}
	}
	setAckWait(500 * time.Millisecond)
	c, err := bus.JobConsumer(ctx, s.Bus.JS, subjects.DefaultQueue, subjects.Normal)
	if err != nil {
		t.Fatal(err)
	}
	batch, err := c.Fetch(1, jetstream.FetchMaxWait(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var takeover jetstream.Msg
	for m := range batch.Messages() {
		takeover = m
	}
	if takeover == nil {
		t.Fatalf("the job was not redelivered: %v", batch.Error())
	}
	setAckWait(30 * time.Second) // the takeover's delivery stays its own
	if meta, err := takeover.Metadata(); err != nil || meta.Sequence.Stream != seq || meta.NumDelivered != 2 {
		t.Fatalf("redelivery metadata %+v, %v; want delivery 2 of the job at sequence %d", meta, err, seq)
	}
	// The takeover started: the run document names attempt 2 on it.
	updateRun(t, s, id, func(r *wire.Run) { r.Stage("s").Attempt, r.Stage("s").Agent = 2, "takeover" })

	// The superseded attempt's stage ends now, before its next heartbeat.
	g.open(t)
	if !Eventually(10*time.Second, func() bool { return len(ProcessesWithEnv("WEFT_RUN_ID="+id)) == 0 }) {
		t.Fatal("the first attempt's stage still runs")
	}
	waitIdle(t, s.Agent)
	if jobGone(t, s, seq) {
		t.Fatal("the superseded attempt acked the job the takeover holds")
	}
	for _, ev := range stageEvents(t, s.Bus.JS, id, "s") {
		if ev.Type == wire.Finished {
			t.Errorf("the superseded attempt reported a finish: %+v", ev)
		}
	}
	// The job is still the takeover's to ack.
	if err := takeover.DoubleAck(ctx); err != nil {
		t.Errorf("the takeover's ack: %v", err)
	}
	if !jobGone(t, s, seq) {
		t.Error("the takeover's ack did not remove the job")
	}
}

func TestAnAttemptStartedTwiceStopsWhereTheOtherAgentWon(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{AckWait: time.Second})
	id := s.Submit(t, "name: twice\nstages:\n  - key: s\n    commands: [sleep 60]\n")
	waitFor(t, s, id, "running", stageIs("s", wire.StageRunning))
	// Two deliveries ran attempt 1 and the other agent's started event
	// came first: the run document names it.
	updateRun(t, s, id, func(r *wire.Run) { r.Stage("s").Agent = "elsewhere" })
	if !Eventually(5*time.Second, func() bool { return len(ProcessesWithEnv("WEFT_RUN_ID="+id)) == 0 }) {
		t.Fatal("the duplicate attempt's processes still run")
	}
	waitIdle(t, s.Agent)
	for _, ev := range stageEvents(t, s.Bus.JS, id, "s") {
		if ev.Type == wire.Finished {
			t.Errorf("the duplicate attempt reported a finish: %+v", ev)
		}
	}
}
