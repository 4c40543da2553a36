package test

import (
	"context"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/weft-ci/weft/agent"
	"github.com/weft-ci/weft/runstore"
	"github.com/weft-ci/weft/wire"
)

// waitIdle waits until each agent holds no job: every job it took was
// acked, handed back or left alone, and every event of it published.
func waitIdle(t testing.TB, agents ...*agent.Agent) {
	t.Helper()
	for _, a := range agents {
		if !Eventually(30*time.Second, func() bool { return a.Busy() == 0 }) {
			t.Fatalf("agent %s still holds %d jobs", a.ID(), a.Busy())
		}
	}
}

// countEvents returns how many events of type typ a stage has.
func countEvents(evs []wire.Event, typ wire.EventType) int {
	n := 0
	for _, ev := range evs {
		if ev.Type == typ {
			n++
		}
	}
	return n
}

// updateRun changes a run by compare-and-set, as a dispatcher would: the
// documents of the stages change changed, then the run's, retrying when
// another writer got there first.
func updateRun(t testing.TB, s *Stack, id string, change func(*wire.Run)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rs, err := runstore.Open(ctx, s.Bus.JS)
	if err != nil {
		t.Fatal(err)
	}
	for ctx.Err() == nil {
		l, err := rs.Load(ctx, id)
		if err != nil {
			t.Fatalf("get run %s: %v", id, err)
		}
		before, doc := slices.Clone(l.Run.Stages), l.Run.Document()
		change(l.Run)
		var writes []runstore.StageWrite
		for i, st := range l.Run.Stages {
			if st != before[i] {
				writes = append(writes, runstore.StageWrite{Stage: st, Rev: l.Revs[i]})
			}
		}
		if _, err := rs.WriteStages(ctx, id, writes); err != nil {
			if runstore.IsConflict(err) {
				continue
			}
			t.Fatal(err)
		}
		if reflect.DeepEqual(doc, l.Run.Document()) {
			return
		}
		if _, err := rs.UpdateRun(ctx, l.Run, l.Rev); err == nil {
			return
		} else if !runstore.IsConflict(err) {
			t.Fatal(err)
		}
	}
	t.Fatalf("update run %s: %v", id, ctx.Err())
}
