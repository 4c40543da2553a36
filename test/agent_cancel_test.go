package test

import (
	"testing"
	"time"

	"github.com/weft-ci/weft/wire"
)

func TestACancelInTheDocumentsStopsTheStageWithoutANotice(t *testing.T) {
	t.Parallel()
	const ackWait = time.Second
	s := StartStack(t, StackConfig{AckWait: ackWait})
	id := s.Submit(t, "name: durable-cancel\nstages:\n  - key: s\n    commands: [sleep 60]\n")
	waitFor(t, s, id, "running", stageIs("s", wire.StageRunning))
	// A cancel whose notice (weft.cancel.<run>) the agent missed: only the
	// documents say it, as a dispatcher writes them (the run's reason, and
	// the running stage marked cancelling).
	updateRun(t, s, id, func(r *wire.Run) {
		r.CancelReason = "cancelled while the agent was not listening"
		r.Stage("s").Cancelling = true
	})
	cancelled := time.Now()
	r := waitFor(t, s, id, "cancelled", func(r *wire.Run) bool { return r.State.Terminal() })
	st := r.Stage("s")
	if r.State != wire.RunCancelled || st.State != wire.StageCancelled || st.Category != wire.CategoryCancelled {
		t.Fatalf("run %s, stage %s (%q); want both cancelled", r.State, st.State, st.Category)
	}
	// A few heartbeats (AckWait/3 each) and the kill grace.
	if took := st.Finished.Sub(cancelled); took > 3*ackWait+2*time.Second {
		t.Errorf("the stage stopped %v after the cancel, want within a few heartbeats", took)
	}
	waitIdle(t, s.Agent)
	evs := stageEvents(t, s.Bus.JS, id, "s")
	if n := countEvents(evs, wire.Finished); n != 1 || evs[len(evs)-1].Category != wire.CategoryCancelled {
		t.Errorf("stage events %+v, want one finished event, cancelled", evs)
	}
}
