package test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/weft-ci/weft/bench"
	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// Admission reads the first waiting runs of a repository only (issue 10):
// with hundreds of runs waiting (weft bench flood has ten thousand), the
// WIP limit and the arrival order hold
// as they do with twenty, the runs far back in line say why they wait,
// and another repository's trigger is admitted at once.
func TestAdmissionKeepsOrderAndLimitsWithHundredsWaiting(t *testing.T) {
	t.Parallel()
	const waiting, limit = 500, 3
	s := StartStack(t, StackConfig{Slots: limit + 1})
	g := newGate(t)
	var ids []string
	for range limit {
		ids = append(ids, s.Submit(t, g.pipeline("gated", ""), onRepo("acme/api")))
	}
	for _, id := range ids {
		waitFor(t, s, id, "running", stageIs("wait", wire.StageRunning))
	}
	for range waiting {
		ids = append(ids, s.Submit(t, "name: queued\nstages:\n  - key: s\n    commands: [true]\n", onRepo("acme/api")))
	}
	ctx := context.Background()
	st, err := s.Bus.JS.Stream(ctx, subjects.WaitingStream)
	if err != nil {
		t.Fatal(err)
	}
	// Submit returns once the run's document exists; its place in line
	// is written right after.
	var msgs uint64
	if !Eventually(10*time.Second, func() bool {
		info, err := st.Info(ctx)
		msgs = info.State.Msgs
		return err == nil && msgs == waiting
	}) {
		t.Fatalf("%s holds %d runs, want the %d waiting", subjects.WaitingStream, msgs, waiting)
	}
	last := waitFor(t, s, ids[len(ids)-1], "waiting for the WIP limit", func(r *wire.Run) bool {
		return r.Pending != nil && r.Pending.Reason == wire.PendingWIP
	})
	if last.Lease != "" {
		t.Errorf("the last run holds %s, want it waiting", last.Lease)
	}
	// Another repository is admitted and runs while a thousand wait.
	other, _ := s.Run(t, "name: other\nstages:\n  - key: s\n    commands: [true]\n", onRepo("acme/web"))
	if other.State != wire.RunSucceeded {
		t.Errorf("the other repository's run %s, want succeeded", other.State)
	}

	g.open(t)
	if !Eventually(5*time.Minute, func() bool { return runDoc(t, s, ids[len(ids)-1]).State.Terminal() }) {
		t.Fatalf("the last run is %s after 5 minutes", runDoc(t, s, ids[len(ids)-1]).State)
	}
	var runs []*wire.Run
	for _, id := range ids {
		r := waitFor(t, s, id, "ended", func(r *wire.Run) bool { return r.State.Terminal() })
		if r.State != wire.RunSucceeded {
			t.Errorf("run %s %s", id, r.State)
		}
		runs = append(runs, r)
	}
	if most := bench.MaxInFlight(runs); most != limit {
		t.Errorf("at most %d runs in flight, want exactly %d", most, limit)
	}
	slices.SortFunc(runs, func(a, b *wire.Run) int { return int(a.Seq) - int(b.Seq) })
	for i := 1; i < len(runs); i++ {
		if runs[i].Admitted.Before(runs[i-1].Admitted) {
			t.Fatalf("run with trigger seq %d admitted before seq %d", runs[i].Seq, runs[i-1].Seq)
		}
	}
	if !Eventually(10*time.Second, func() bool {
		info, err := st.Info(ctx)
		return err == nil && info.State.Msgs == 0
	}) {
		t.Errorf("%s still holds waiting runs after every run ended", subjects.WaitingStream)
	}
	status, err := client.GetStatus(ctx, s.Bus.JS)
	if err != nil || len(status.Runs) != 0 {
		t.Errorf("status lists %d live runs (%v), want none", len(status.Runs), err)
	}
}
