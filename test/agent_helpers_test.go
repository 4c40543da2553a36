package test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/weft-ci/weft/agent"
	"github.com/weft-ci/weft/subjects"
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

// updateRun changes a run document by compare-and-set, as a dispatcher
// would, retrying when another writer got there first.
func updateRun(t testing.TB, s *Stack, id string, change func(*wire.Run)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	runs, err := s.Bus.JS.KeyValue(ctx, subjects.RunsBucket)
	if err != nil {
		t.Fatal(err)
	}
	for ctx.Err() == nil {
		e, err := runs.Get(ctx, id)
		if err != nil {
			t.Fatalf("get run %s: %v", id, err)
		}
		var r wire.Run
		if err := json.Unmarshal(e.Value(), &r); err != nil {
			t.Fatal(err)
		}
		change(&r)
		data, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := runs.Update(ctx, id, data, e.Revision()); err == nil {
			return
		}
	}
	t.Fatalf("update run %s: %v", id, ctx.Err())
}
