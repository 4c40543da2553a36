package test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weft-ci/weft/dispatcher"
	"github.com/weft-ci/weft/wire"
)

// fanIn returns a pipeline of n root stages and one stage depending on
// all of them.
func fanIn(n int) string {
	var b strings.Builder
	b.WriteString("name: fan-in\nstages:\n")
	var keys []string
	for i := range n {
		fmt.Fprintf(&b, "  - {key: r%d, commands: [true]}\n", i)
		keys = append(keys, fmt.Sprintf("r%d", i))
	}
	fmt.Fprintf(&b, "  - {key: last, commands: [true], depends_on: [%s]}\n", strings.Join(keys, ", "))
	return b.String()
}

// With one document per stage, two dispatchers ending a run's stages at
// the same moment each write their stage and read the others' fresh
// (issue 10): the dependent of every root is queued once, runs once, and
// the run ends, every time, with no reconcile pass to rescue a run both
// dispatchers left behind (a stale view of the other's stages).
func TestTwoDispatchersEndAFanInOnce(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{Slots: 8, Dispatchers: 2, Dispatcher: dispatcher.Config{WIPLimit: 10, ReconcileInterval: time.Hour}})
	const runs, roots = 8, 24
	text := fanIn(roots)
	var ids []string
	for range runs {
		ids = append(ids, s.Submit(t, text))
	}
	for _, id := range ids {
		r, _ := s.Wait(t, id)
		if r.State != wire.RunSucceeded {
			t.Errorf("run %s %s, want succeeded", id, r.State)
			continue
		}
		evs := stageEvents(t, s.Bus.JS, id, "last")
		if n := countEvents(evs, wire.Started); n != 1 || r.Stage("last").Attempt != 1 || r.Stage("last").Job != 1 {
			t.Errorf("run %s: the fan-in stage started %d times, attempt %d, job %d; want once, 1, 1", id, n, r.Stage("last").Attempt, r.Stage("last").Job)
		}
		for _, st := range r.Stages {
			if st.State != wire.StageSucceeded || st.Attempt != 1 {
				t.Errorf("run %s: stage %s %s attempt %d", id, st.Key, st.State, st.Attempt)
			}
		}
	}
}
