package test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/wire"
)

// A stage that asks for agent labels runs only on an agent that has them
// all; one no agent has waits with the reason saying so.
func TestLabelsRouteAStageToTheAgentThatHasThem(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	startWeft(t, nil, "dispatcher", "--server", f.url)
	f.agent(t, "agent-cpu", "--label", "os=linux")
	f.agent(t, "agent-gpu", "--label", "os=linux", "--label", "gpu=true")
	id := f.s.Submit(t, `name: labelled
stages:
  - key: train
    agents: {gpu: "true"}
    commands: [echo trained]
  - key: lint
    agents: {os: linux}
    commands: [echo linted]
  - key: port
    agents: {os: windows}
    commands: [echo never]
`)
	waitFor(t, f.s, id, "past train and lint", func(r *wire.Run) bool {
		return r.Stage("train").State.Terminal() && r.Stage("lint").State.Terminal()
	})
	r, err := client.Get(context.Background(), f.s.Bus.JS, id)
	if err != nil {
		t.Fatal(err)
	}
	if st := r.Stage("train"); st.State != wire.StageSucceeded || st.Agent != "agent-gpu" {
		t.Errorf("train %s on %s; want succeeded on agent-gpu, the one agent with gpu=true", st.State, st.Agent)
	}
	if st := r.Stage("lint"); st.State != wire.StageSucceeded {
		t.Errorf("lint %s", st.State)
	}
	var why string
	if !Eventually(20*time.Second, func() bool {
		st, err := client.GetStatus(context.Background(), f.s.Bus.JS)
		if err != nil {
			return false
		}
		for _, rs := range st.Runs {
			for _, ss := range rs.Stages {
				if rs.ID == id && ss.Key == "port" {
					why = ss.Reason + ": " + ss.Detail
					return ss.Reason == client.StageNoAgent
				}
			}
		}
		return false
	}) {
		r, _ := client.Get(context.Background(), f.s.Bus.JS, id)
		t.Fatalf("port waits with %q, want no agent; run %s, port %+v", why, r.State, r.Stage("port"))
	}
	if !strings.Contains(why, "no agent has these labels") || !strings.Contains(why, "os=windows") {
		t.Errorf("port waits with %q, want it to say no agent has os=windows", why)
	}
	if r.Stage("port").State == wire.StageSucceeded || r.Stage("port").Agent != "" {
		t.Errorf("port %s on %q; no agent has os=windows", r.Stage("port").State, r.Stage("port").Agent)
	}
}
