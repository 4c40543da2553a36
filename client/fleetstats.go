package client

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/metrics"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// Fleet is one snapshot of the fleet's load: the jobs of every
// queue, the agents serving each queue by state, and each repository's
// WIP in use and runs waiting for admission. It is what the fleet gauges
// (metrics.NewFleet) report.
type Fleet struct {
	// Queues are the job queues by tier, as QueueDepths returns them.
	Queues []QueueDepth `json:"queues"`
	// Agents are the agents counted by the queue they serve, sorted by
	// queue; see AgentCount for which queues an agent counts under.
	Agents []AgentCount `json:"agents"`
	// Repos are the repositories holding a WIP lease or with a run
	// waiting for admission, sorted by token.
	Repos []RepoLoad `json:"repos"`
}

// AgentCount is the agents serving one queue, by state. An agent counts
// under every base queue it serves (wire.Agent.Queues) and under every
// label queue it serves that holds jobs or has a job consumer (a queue
// of Fleet.Queues): not under every label queue its labels could
// make, which grow as 2^labels. Each agent counts in one state.
type AgentCount struct {
	// Queue is the queue's name; a label queue is <queue>+<hash>.
	Queue string `json:"queue"`
	// Idle is the agents that run no stage and are not draining.
	Idle int `json:"idle"`
	// Busy is the agents that run at least one stage and are not
	// draining.
	Busy int `json:"busy"`
	// Draining is the agents that take no more jobs (wire.Agent.Draining),
	// busy or not.
	Draining int `json:"draining"`
}

// RepoLoad is one repository's admission state.
type RepoLoad struct {
	// Repo is the repository's name, decoded from Token; empty for local
	// runs (token "_").
	Repo string `json:"repo"`
	// Token is subjects.RepoToken(Repo), the repository's token in the
	// WIP bucket's keys and the waiting stream's subjects.
	Token string `json:"token"`
	// InUse is the WIP leases the repository holds: its runs in flight.
	InUse int `json:"in_use"`
	// Waiting is its runs waiting for admission.
	Waiting uint64 `json:"waiting"`
}

// FleetStats reads a snapshot of the fleet's load: the queue depths (one
// stream lookup and one consumer listing), the agent registry, the keys
// of the WIP leases and the subjects of the waiting stream. The parts are
// read one after the other, so they may be a moment apart.
func FleetStats(ctx context.Context, js jetstream.JetStream) (*Fleet, error) {
	queues, err := QueueDepths(ctx, js)
	if err != nil {
		return nil, err
	}
	agents, err := Agents(ctx, js)
	if err != nil {
		return nil, err
	}
	wip, err := bus.KeyValue(ctx, js, subjects.WIPBucket)
	if err != nil {
		return nil, err
	}
	leases, err := bus.Keys(ctx, wip, subjects.AllLeases)
	if err != nil {
		return nil, err
	}
	st, err := js.Stream(ctx, subjects.WaitingStream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", subjects.WaitingStream, err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(subjects.AllWaiting))
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", subjects.WaitingStream, err)
	}
	return &Fleet{
		Queues: queues,
		Agents: countAgents(agents, queues),
		Repos:  repoLoads(leases, info.State.Subjects),
	}, nil
}

// countAgents counts agents by queue and state (see AgentCount). Every
// queue of queues is present, with no agent if none serves it.
func countAgents(agents []wire.Agent, queues []QueueDepth) []AgentCount {
	by := map[string]*AgentCount{}
	at := func(q string) *AgentCount {
		if by[q] == nil {
			by[q] = &AgentCount{Queue: q}
		}
		return by[q]
	}
	for _, q := range queues {
		at(q.Queue)
	}
	for _, a := range agents {
		for _, q := range subjects.ServedQueues(a.Queues, a.Labels) {
			if by[q] == nil && !slices.Contains(a.Queues, q) {
				continue // a label queue with no jobs
			}
			c := at(q)
			switch {
			case a.Draining:
				c.Draining++
			case a.Busy > 0 || len(a.Stages) > 0:
				c.Busy++
			default:
				c.Idle++
			}
		}
	}
	out := make([]AgentCount, 0, len(by))
	for _, c := range by {
		out = append(out, *c)
	}
	slices.SortFunc(out, func(a, b AgentCount) int { return strings.Compare(a.Queue, b.Queue) })
	return out
}

// repoLoads counts the lease keys and the waiting subjects (with their
// message counts) of each repository token.
func repoLoads(leases []string, waiting map[string]uint64) []RepoLoad {
	by := map[string]*RepoLoad{}
	at := func(token string) *RepoLoad {
		if by[token] == nil {
			name, _ := subjects.RepoName(token)
			by[token] = &RepoLoad{Repo: name, Token: token}
		}
		return by[token]
	}
	for _, k := range leases {
		if _, ok := subjects.LeaseSlot(k); !ok {
			continue
		}
		if token := subjects.KeyRepoToken(k); token != "" {
			at(token).InUse++
		}
	}
	for subject, n := range waiting {
		if token := subjects.WaitingRepoToken(subject); token != "" {
			at(token).Waiting += n
		}
	}
	out := make([]RepoLoad, 0, len(by))
	for _, r := range by {
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b RepoLoad) int { return strings.Compare(a.Token, b.Token) })
	return out
}

// Metrics returns the snapshot as the fleet gauges take it
// (metrics.NewFleet). A repository is labelled with its name, or with
// its token for local runs.
func (s *Fleet) Metrics() metrics.Fleet {
	var f metrics.Fleet
	for _, q := range s.Queues {
		for _, t := range q.Tiers {
			f.Jobs = append(f.Jobs, metrics.TierJobs{Queue: q.Queue, Tier: string(t.Tier), Waiting: t.Waiting, Running: t.Running})
		}
	}
	for _, a := range s.Agents {
		f.Agents = append(f.Agents, metrics.AgentCount{Queue: a.Queue, Idle: a.Idle, Busy: a.Busy, Draining: a.Draining})
	}
	for _, r := range s.Repos {
		f.Repos = append(f.Repos, metrics.RepoLoad{Repo: cmp.Or(r.Repo, r.Token), WIPInUse: r.InUse, RunsWaiting: r.Waiting})
	}
	return f
}

// FleetCollector returns the collector of the fleet gauges (jobs, agents,
// WIP and waiting runs) read from js with FleetStats on each scrape, each
// read bounded by metrics.FleetTimeout.
func FleetCollector(js jetstream.JetStream) prometheus.Collector {
	return metrics.NewFleet(func(ctx context.Context) (metrics.Fleet, error) {
		s, err := FleetStats(ctx, js)
		if err != nil {
			return metrics.Fleet{}, err
		}
		return s.Metrics(), nil
	}, metrics.FleetTimeout)
}
