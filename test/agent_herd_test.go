package test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/weft-ci/weft/agent"
	"github.com/weft-ci/weft/bench"
	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// herdFigures is what one fleet size cost: pull requests on the job
// consumers per run, and the dispatch latency (stage queued to stage
// started) of its runs.
type herdFigures struct {
	pullsPerRun float64
	p50, p99    time.Duration
}

func (f herdFigures) String() string {
	return fmt.Sprintf("%.1f pull requests per run, dispatch p50 %v p99 %v", f.pullsPerRun, f.p50, f.p99)
}

// measureHerd starts a stack with agents idle agents of one slot each,
// runs runs one-stage runs one at a time and counts the pull requests
// ($JS.API.CONSUMER.MSG.NEXT on the jobs stream) sent meanwhile, as the
// server sees them.
func measureHerd(t *testing.T, agents, runs int) herdFigures {
	t.Helper()
	s := StartStack(t, StackConfig{NoAgent: true, Listen: true})
	defer s.Stop()
	var fleet []*agent.Agent
	for range agents {
		fleet = append(fleet, s.AddAgent(agent.Config{Slots: 1}))
	}
	// An agent registers once its subscriptions are in place.
	if !Eventually(time.Minute, func() bool {
		st, err := client.GetStatus(context.Background(), s.Bus.JS)
		return err == nil && len(st.Agents) == agents
	}) {
		t.Fatalf("%d agents never all registered", agents)
	}
	// The counter has its own connection, so it counts what reaches the
	// server and perturbs the agents' connection not at all.
	nc, err := nats.Connect(s.Bus.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var pulls atomic.Int64
	if _, err := nc.Subscribe("$JS.API.CONSUMER.MSG.NEXT."+subjects.JobsStream+".>", func(*nats.Msg) { pulls.Add(1) }); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	const text = "name: herd\nstages:\n  - key: s\n    commands: [true]\n"
	// One run to warm up: the agents' first scans are not the figure.
	if r, _ := s.Run(t, text); r.State != wire.RunSucceeded {
		t.Fatalf("warm-up run %s", r.State)
	}
	waitIdle(t, fleet...)
	start := pulls.Load()
	var lat []time.Duration
	for range runs {
		r, _ := s.Run(t, text)
		if r.State != wire.RunSucceeded {
			t.Fatalf("run %s %s", r.ID, r.State)
		}
		st := r.Stage("s")
		lat = append(lat, st.Started.Sub(st.Queued))
		waitIdle(t, fleet...)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return herdFigures{
		pullsPerRun: float64(pulls.Load()-start) / float64(runs),
		p50:         bench.Percentile(lat, 0.5),
		p99:         bench.Percentile(lat, 0.99),
	}
}

// Idle agents do not herd: a job wakes one idle agent, not all of them, and
// the periodic rescan is shared by the fleet, so the pull requests a run
// costs do not grow with the number of idle agents. (When every idle agent
// fetched on every wake-up and rescanned every second, this measured 2 pull
// requests per run with one agent, 22 to 42 with twenty and 400 to 520
// with two hundred; now about 5 at each size: the job's fetch and the
// sweep of four tiers when its slot frees.)
//
// The bound is twice the single agent's figure, which leaves room for what
// does depend on fleet size: the shared rescan, whose turn comes at a
// random point in the second half of the rescan interval after the last
// one an agent heard of, so many agents rescan a little more often than
// one, and two agents whose turns fall within a notice's flight both
// rescan.
func TestIdleAgentsDoNotHerd(t *testing.T) {
	t.Parallel()
	const runs = 20
	fleets := []int{1, 20, 200}
	if testing.Short() {
		fleets = fleets[:2]
	}
	var one herdFigures
	for _, n := range fleets {
		f := measureHerd(t, n, runs)
		t.Logf("%d idle agents: %v", n, f)
		if n == 1 {
			one = f
			continue
		}
		if f.pullsPerRun > 2*one.pullsPerRun {
			t.Errorf("%d idle agents: %.1f pull requests per run, more than twice one agent's %.1f", n, f.pullsPerRun, one.pullsPerRun)
		}
	}
}
