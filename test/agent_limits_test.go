package test

import (
	"context"
	"testing"
	"time"

	"github.com/weft-ci/weft/agent"
	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

func TestEachJobHeartbeatsAtTheAckWaitOfItsOwnConsumer(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{NoAgent: true})
	// The agent's first consumer (slow, critical) has AckWait 30s; a job
	// of the fast queue, AckWait 2s, heartbeated at the slow queue's
	// interval (10s) would be redelivered to the agent's free slot.
	ackWaits := map[string]time.Duration{"slow": 30 * time.Second, "fast": 2 * time.Second}
	for q, ackWait := range ackWaits {
		for _, tier := range subjects.Tiers {
			c := subjects.JobConsumerFor(q, tier)
			c.AckWait = ackWait
			if _, err := s.Bus.JS.CreateOrUpdateConsumer(context.Background(), subjects.JobsStream, bus.JobConsumerConfig(c)); err != nil {
				t.Fatal(err)
			}
		}
	}
	a := s.AddAgent(agent.Config{Queues: []string{"slow", "fast"}, Slots: 2})
	r, _ := s.Run(t, "name: fast\nqueue: fast\nstages:\n  - key: s\n    commands: [sleep 5]\n")
	waitIdle(t, a)
	st := r.Stage("s")
	if r.State != wire.RunSucceeded {
		t.Fatalf("run %s, want succeeded", r.State)
	}
	if n := countEvents(stageEvents(t, s.Bus.JS, r.ID, "s"), wire.Started); n != 1 || st.Attempt != 1 {
		t.Errorf("stage started %d times, attempt %d; want once, attempt 1", n, st.Attempt)
	}
}
