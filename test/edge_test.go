package test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weft-ci/weft/wire"
)

// An agent joined to an edge leaf node runs a hub pipeline's stage; when
// the leaf goes down mid-stage and comes back within the job's AckWait,
// the stage runs on and its result reaches the hub: one attempt.
func TestAnEdgeAgentRunsHubStagesAcrossALeafRestart(t *testing.T) {
	t.Parallel()
	ports := FreePorts(t, 2)
	leafPort, edgePort := ports[0], ports[1]
	hub := startFleet(t, "--domain", "hub", "--leaf-listen", fmt.Sprintf("127.0.0.1:%d", leafPort))
	startWeft(t, nil, "dispatcher", "--server", hub.url)
	edgeState := t.TempDir()
	edgeArgs := []string{"server", "--state", edgeState, "--listen", fmt.Sprintf("127.0.0.1:%d", edgePort),
		"--domain", "edge", "--leaf", fmt.Sprintf("nats://127.0.0.1:%d", leafPort)}
	startEdge := func() *proc {
		p := startWeft(t, nil, edgeArgs...)
		p.waitLine(t, &p.stderr, 30*time.Second, "the edge server", func(l string) bool { return strings.Contains(l, "listening on ") })
		return p
	}
	edge := startEdge()
	edgeURL := fmt.Sprintf("nats://127.0.0.1:%d", edgePort)
	agent := startWeft(t, nil, "agent", "--join", edgeURL, "--js-domain", "hub", "--id", "edge-agent", "--executor", "process")
	if !Eventually(30*time.Second, func() bool { return slices.Contains(agentsSeen(t, hub.url), "edge-agent") }) {
		t.Fatalf("the edge agent never registered in the hub; stderr:\n%s", strings.Join(agent.stderr.all(), "\n"))
	}

	g := newGate(t)
	id := hub.s.Submit(t, fmt.Sprintf("name: edge\nenv: {GATE: %q}\nstages:\n  - key: s\n    commands: ['while [ ! -f \"$GATE\" ]; do sleep 0.02; done', echo done at the edge]\n", string(g)))
	waitFor(t, hub.s, id, "running at the edge", func(r *wire.Run) bool {
		return r.Stage("s").State == wire.StageRunning && r.Stage("s").Agent == "edge-agent"
	})
	if err := edge.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-edge.done
	startEdge()
	g.open(t)
	r, updates := hub.s.Wait(t, id)
	if st := r.Stage("s"); r.State != wire.RunSucceeded || st.Agent != "edge-agent" || st.Attempt != 1 {
		t.Fatalf("run %s, stage on %s attempt %d; want succeeded on edge-agent, attempt 1", r.State, st.Agent, st.Attempt)
	}
	if lines := stageLines(updates)["s"]; !slices.Contains(lines, "done at the edge") {
		t.Errorf("the edge stage's output did not reach the hub: %q; agent:\n%s", lines, strings.Join(agent.stderr.all(), "\n"))
	}
}
