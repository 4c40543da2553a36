package runstore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/weft-ci/weft/pipeline"
	"github.com/weft-ci/weft/runstore"
	"github.com/weft-ci/weft/test"
	"github.com/weft-ci/weft/wire"
)

func TestARunIsItsDocumentItsStagesAndItsSpec(t *testing.T) {
	b := test.Bus(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := runstore.Open(ctx, b.JS)
	if err != nil {
		t.Fatal(err)
	}
	p, err := pipeline.Parse("p.yml", []byte("name: p\nstages:\n  - {key: a, commands: [true]}\n  - {key: b, commands: [true], depends_on: [a]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	hash, err := s.StoreSpec(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := s.StoreSpec(ctx, p); again != hash {
		t.Errorf("the same pipeline stored as %s and %s: want one content hash", hash, again)
	}
	r := &wire.Run{ID: "01JRUN", PipelineName: p.Name, Spec: hash, StageCount: 2, State: wire.RunQueued, Pipeline: p,
		Stages: []wire.StageRun{wire.PendingStage("a", "default"), wire.PendingStage("b", "default")}}
	rev, err := s.CreateRun(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateRun(ctx, r); err == nil {
		t.Error("a second CreateRun of the run succeeded")
	}
	h, _, err := s.Header(ctx, r.ID)
	if err != nil || h.Stages != nil || h.Pipeline != nil || h.Spec != hash {
		t.Fatalf("Header = %+v, %v: want the document alone, naming the spec", h, err)
	}

	// A stage's document is written create-only, then by compare-and-set.
	a := wire.PendingStage("a", "default")
	a.State, a.Attempt, a.Job = wire.StageQueued, 1, 1
	revs, err := s.WriteStages(ctx, r.ID, []runstore.StageWrite{{Stage: a}})
	if err != nil || revs[0] == 0 {
		t.Fatalf("WriteStages(create a) = %v, %v", revs, err)
	}
	a.State = wire.StageRunning
	b2 := wire.PendingStage("b", "default")
	b2.State = wire.StageSkipped
	revs2, err := s.WriteStages(ctx, r.ID, []runstore.StageWrite{{Stage: a, Rev: revs[0]}, {Stage: b2, Rev: 0}})
	if err != nil || revs2[0] == 0 || revs2[1] == 0 {
		t.Fatalf("WriteStages(a over its revision, create b) = %v, %v", revs2, err)
	}
	a.State = wire.StageFailed
	if _, err := s.WriteStages(ctx, r.ID, []runstore.StageWrite{{Stage: a, Rev: revs[0]}}); !runstore.IsConflict(err) {
		t.Errorf("WriteStages over a stale revision = %v, want a conflict", err)
	}
	if _, err := s.UpdateRun(ctx, r, rev+100); !runstore.IsConflict(err) {
		t.Errorf("UpdateRun over a stale revision = %v, want a conflict", err)
	}

	l, err := s.Load(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Run.Stage("a"); got.State != wire.StageRunning || l.Revs[0] != revs2[0] {
		t.Errorf("loaded a = %s at %d, want running at %d", got.State, l.Revs[0], revs2[0])
	}
	if got := l.Run.Stage("b"); got.State != wire.StageSkipped || l.Run.Pipeline.Stage("b") == nil {
		t.Errorf("loaded b = %+v with its spec, want skipped", got)
	}
	if _, err := s.Load(ctx, "01NOSUCHRUN"); !errors.Is(err, runstore.ErrNoRun) {
		t.Errorf("Load of no run = %v, want ErrNoRun", err)
	}
	// A stage with no document is pending.
	if st, rev, err := s.Stage(ctx, "01NOSUCHRUN", "a"); st != nil || rev != 0 || err != nil {
		t.Errorf("Stage of nothing = %v, %d, %v", st, rev, err)
	}
}

// A spec read that a cluster leaves unanswered while it has lost its
// quorum is asked again, and returns once the cluster is back, inside
// the caller's deadline: the read itself never waits out that deadline
// on one dropped request.
func TestASpecReadOutlastsAClusterWithoutQuorum(t *testing.T) {
	c := test.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	writer, err := runstore.Open(ctx, c.Member(0).JS)
	if err != nil {
		t.Fatal(err)
	}
	p, err := pipeline.Parse("p.yml", []byte("name: p\nstages:\n  - {key: a, commands: [true]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	hash, err := writer.StoreSpec(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	// A fresh store has no spec cached: its read goes to the cluster.
	reader, err := runstore.Open(ctx, c.Member(0).JS)
	if err != nil {
		t.Fatal(err)
	}
	c.Stop(1)
	c.Stop(2)

	read, opened := make(chan error, 1), make(chan error, 1)
	started := time.Now()
	go func() {
		rctx, cancel := context.WithTimeout(ctx, 45*time.Second)
		defer cancel()
		got, err := reader.Spec(rctx, hash)
		if err == nil && got.Name != "p" {
			err = errors.New("read pipeline " + got.Name + ", want p")
		}
		read <- err
	}()
	// Opening the store meanwhile opens its buckets, which asks too.
	go func() {
		octx, cancel := context.WithTimeout(ctx, 45*time.Second)
		defer cancel()
		_, err := runstore.Open(octx, c.Member(0).JS)
		opened <- err
	}()
	// Both have been asked of a member alone. Neither may fail while the
	// quorum is gone, though one may still be answered by a stream
	// leader that has not stepped down yet. Then the quorum comes back.
	noQuorum := time.After(3 * time.Second)
wait:
	for read != nil || opened != nil {
		var err error
		select {
		case err = <-read:
			read = nil
		case err = <-opened:
			opened = nil
		case <-noQuorum:
			break wait
		}
		if err != nil {
			t.Fatalf("failed while the cluster had no quorum: %v", err)
		}
	}
	c.Start(1)
	c.Start(2)
	if read != nil {
		if err := <-read; err != nil {
			t.Fatalf("read the spec after the quorum came back (%s after it was asked): %v", time.Since(started).Round(time.Second), err)
		}
	}
	if opened != nil {
		if err := <-opened; err != nil {
			t.Fatalf("open the store after the quorum came back (%s after it was asked): %v", time.Since(started).Round(time.Second), err)
		}
	}
}
