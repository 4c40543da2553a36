package client

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/runstore"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// Status is a snapshot of the work in flight: the runs waiting for
// admission and the admitted ones, each with its waiting and running
// stages and why they wait; the agents; the admission counters.
type Status struct {
	// Runs are the live runs, oldest first.
	Runs []RunStatus `json:"runs"`
	// Agents are the registered agents.
	Agents []wire.Agent `json:"agents"`
	// Counters are the admission counters (backpressure refusals and
	// waits per queue).
	Counters map[string]uint64 `json:"counters,omitempty"`
	// Paused maps each paused queue to the reason it was paused for.
	Paused map[string]string `json:"paused,omitempty"`
}

// RunStatus is one live run.
type RunStatus struct {
	// ID is the run id.
	ID string `json:"id"`
	// Repo, Pipeline and Branch say what the run builds.
	Repo     string `json:"repo,omitempty"`
	Pipeline string `json:"pipeline"`
	Branch   string `json:"branch,omitempty"`
	// State is queued (waiting for admission, or admitted with no stage
	// started yet) or running.
	State wire.RunState `json:"state"`
	// Tier is the tier the run's stages are queued at.
	Tier subjects.Tier `json:"tier"`
	// Reason and Detail say why a run waits for admission; empty once
	// admitted.
	Reason string `json:"reason,omitempty"`
	Detail string `json:"detail,omitempty"`
	// Waited is how long the run has existed (waiting) or waited before
	// admission.
	Waited time.Duration `json:"waited"`
	// Stages are the run's queued and running stages.
	Stages []StageStatus `json:"stages,omitempty"`
}

// StageStatus is a queued or running stage.
type StageStatus struct {
	// Key is the stage key; State is queued or running.
	Key   string          `json:"key"`
	State wire.StageState `json:"state"`
	// Queue and Tier are where its job waits or waited.
	Queue string        `json:"queue"`
	Tier  subjects.Tier `json:"tier"`
	// Attempt is the current attempt; Agent runs it, once running.
	Attempt int    `json:"attempt"`
	Agent   string `json:"agent,omitempty"`
	// Reason says why a queued stage has not started: no_agent (no agent
	// serves its queue), agents_busy (all of them are busy) or dispatching
	// (an agent with a free slot is about to take it).
	Reason string `json:"reason,omitempty"`
	Detail string `json:"detail,omitempty"`
	// Waited is how long a queued stage has waited, or how long a running
	// one waited before it started.
	Waited time.Duration `json:"waited"`
}

// Reasons a queued stage has not started.
const (
	StagePaused      = "paused"
	StageNoAgent     = "no_agent"
	StageAgentsBusy  = "agents_busy"
	StageDispatching = "dispatching"
)

// GetStatus reads the status from the bus.
func GetStatus(ctx context.Context, js jetstream.JetStream) (*Status, error) {
	wip, err := bus.KeyValue(ctx, js, subjects.WIPBucket)
	if err != nil {
		return nil, err
	}
	agents, err := Agents(ctx, js)
	if err != nil {
		return nil, err
	}
	st := &Status{Agents: agents, Counters: map[string]uint64{}, Paused: map[string]string{}}
	pauses, err := bus.Keys(ctx, wip, subjects.AllPauses)
	if err != nil {
		return nil, err
	}
	for _, k := range pauses {
		if e, err := wip.Get(ctx, k); err == nil {
			st.Paused[subjects.PausedQueue(k)] = string(e.Value())
		}
	}
	rs, err := runstore.Open(ctx, js)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	seen := map[string]bool{}
	waiting, err := waitingRuns(ctx, js)
	if err != nil {
		return nil, err
	}
	for _, id := range waiting {
		// A waiting run has no stage to show: its document is enough.
		if seen[id] {
			continue
		}
		seen[id] = true
		if r, _, err := rs.Header(ctx, id); err == nil && !r.State.Terminal() {
			st.Runs = append(st.Runs, runStatus(r, agents, st.Paused, now))
		}
	}
	for _, kind := range []string{subjects.AllLeases, subjects.AllStats} {
		keys, err := bus.Keys(ctx, wip, kind)
		if err != nil {
			return nil, err
		}
		for _, k := range keys {
			e, err := wip.Get(ctx, k)
			if err != nil {
				continue
			}
			if kind == subjects.AllStats {
				var n uint64
				if json.Unmarshal(e.Value(), &n) == nil {
					st.Counters[subjects.StatsName(k)] = n
				}
				continue
			}
			id := string(e.Value())
			if seen[id] {
				continue
			}
			seen[id] = true
			r, err := rs.Get(ctx, id)
			if err != nil || r.State.Terminal() {
				continue
			}
			st.Runs = append(st.Runs, runStatus(r, agents, st.Paused, now))
		}
	}
	slices.SortFunc(st.Runs, func(a, b RunStatus) int { return strings.Compare(a.ID, b.ID) })
	return st, nil
}

// waitingRuns returns the ids of the runs waiting for admission, in the
// order they were queued, read from WEFT_WAITING (bus.ReadPending).
func waitingRuns(ctx context.Context, js jetstream.JetStream) ([]string, error) {
	var ids []string
	err := bus.ReadPending(ctx, js, subjects.WaitingStream, jetstream.OrderedConsumerConfig{}, func(m jetstream.Msg) error {
		ids = append(ids, string(m.Data()))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("waiting runs: %w", err)
	}
	return ids, nil
}

func runStatus(r *wire.Run, agents []wire.Agent, paused map[string]string, now time.Time) RunStatus {
	rs := RunStatus{ID: r.ID, Repo: r.Repo, Pipeline: r.PipelineName, Branch: r.Branch, State: r.State, Tier: r.Tier}
	if r.Pending != nil {
		rs.Reason, rs.Detail, rs.Waited = r.Pending.Reason, r.Pending.Detail, now.Sub(r.Created)
	} else if !r.Admitted.IsZero() {
		rs.Waited = r.Admitted.Sub(r.Created)
	}
	for _, s := range r.Stages {
		switch s.State {
		case wire.StageQueued:
			ss := StageStatus{Key: s.Key, State: s.State, Queue: s.Queue, Tier: r.Tier, Attempt: s.Attempt, Waited: now.Sub(s.Queued)}
			var labels map[string]string
			if r.Pipeline != nil {
				if st := r.Pipeline.Stage(s.Key); st != nil {
					labels = st.Agents
				}
			}
			ss.Reason, ss.Detail = stageReason(s.Queue, labels, agents, paused)
			rs.Stages = append(rs.Stages, ss)
		case wire.StageRunning:
			rs.Stages = append(rs.Stages, StageStatus{Key: s.Key, State: s.State, Queue: s.Queue, Tier: r.Tier,
				Attempt: s.Attempt, Agent: s.Agent, Waited: s.Started.Sub(s.Queued)})
		}
	}
	return rs
}

// stageReason says why a queued stage on queue (a label queue when the
// stage asks for agent labels) has not started.
func stageReason(queue string, labels map[string]string, agents []wire.Agent, paused map[string]string) (string, string) {
	base := subjects.BaseQueue(queue)
	if why, ok := paused[base]; ok {
		if why == "" {
			why = "no reason given"
		}
		return StagePaused, fmt.Sprintf("queue %s is paused: %s", base, why)
	}
	name := queue // as the messages say it
	if len(labels) > 0 {
		var pairs []string
		for _, k := range slices.Sorted(maps.Keys(labels)) {
			pairs = append(pairs, k+"="+labels[k])
		}
		name = base + " with labels " + strings.Join(pairs, ",")
	}
	serving, busy := 0, 0
	for _, a := range agents {
		if slices.Contains(subjects.ServedQueues(a.Queues, a.Labels), queue) {
			serving++
			if a.Busy >= a.Slots {
				busy++
			}
		}
	}
	switch {
	case serving == 0 && len(labels) > 0:
		return StageNoAgent, fmt.Sprintf("no agent has these labels: none serves queue %s", name)
	case serving == 0:
		return StageNoAgent, fmt.Sprintf("no agent serves queue %s", name)
	case busy == serving:
		return StageAgentsBusy, fmt.Sprintf("all %d agents serving queue %s are busy", serving, name)
	}
	return StageDispatching, fmt.Sprintf("%d of %d agents serving queue %s have a free slot", serving-busy, serving, name)
}

// Agents returns the agents in the registry (KV subjects.AgentsBucket),
// sorted by id: those that renewed their entry within subjects.AgentTTL.
func Agents(ctx context.Context, js jetstream.JetStream) ([]wire.Agent, error) {
	kv, err := bus.KeyValue(ctx, js, subjects.AgentsBucket)
	if err != nil {
		return nil, err
	}
	keys, err := bus.Keys(ctx, kv, ">")
	if err != nil {
		return nil, err
	}
	var agents []wire.Agent
	for _, k := range keys {
		e, err := kv.Get(ctx, k)
		if err != nil {
			continue
		}
		var a wire.Agent
		if json.Unmarshal(e.Value(), &a) == nil {
			agents = append(agents, a)
		}
	}
	slices.SortFunc(agents, func(a, b wire.Agent) int { return strings.Compare(a.ID, b.ID) })
	return agents, nil
}
