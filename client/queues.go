package client

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/subjects"
)

// TierDepth is the jobs of one queue at one tier.
type TierDepth struct {
	// Tier is the tier.
	Tier subjects.Tier `json:"tier"`
	// Stored is every job stored: waiting for an agent or running.
	Stored uint64 `json:"stored"`
	// Waiting is what no agent has taken yet; Running what agents hold
	// (delivered, not yet acknowledged). Both are the tier's job
	// consumer's counts; without a consumer yet every stored job waits.
	Waiting uint64 `json:"waiting"`
	Running uint64 `json:"running"`
}

// QueueDepth is the jobs of one queue, by tier (highest first; only the
// tiers that hold jobs or have a consumer).
type QueueDepth struct {
	// Queue is the queue's name; a label queue is <queue>+<hash>.
	Queue string `json:"queue"`
	// Tiers are its tiers.
	Tiers []TierDepth `json:"tiers"`
	// Stored, Waiting and Running add up the tiers.
	Stored  uint64 `json:"stored"`
	Waiting uint64 `json:"waiting"`
	Running uint64 `json:"running"`
}

// QueueDepths returns the depth of every queue that holds jobs or has a
// job consumer, by name: one stream lookup and one consumer listing.
func QueueDepths(ctx context.Context, js jetstream.JetStream) ([]QueueDepth, error) {
	st, err := js.Stream(ctx, subjects.JobsStream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", subjects.JobsStream, err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(subjects.AllJobs))
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", subjects.JobsStream, err)
	}
	type key struct {
		queue string
		tier  subjects.Tier
	}
	depth := map[key]*TierDepth{}
	at := func(q string, t subjects.Tier) *TierDepth {
		k := key{q, t}
		if depth[k] == nil {
			depth[k] = &TierDepth{Tier: t}
		}
		return depth[k]
	}
	for subject, n := range info.State.Subjects {
		if q, t, ok := subjects.ParseJob(subject); ok {
			d := at(q, t)
			d.Stored, d.Waiting = n, n
		}
	}
	consumers := st.ListConsumers(ctx)
	for ci := range consumers.Info() {
		q, t, ok := subjects.ParseJob(ci.Config.FilterSubject)
		if !ok || ci.Name != subjects.JobConsumer(q, t) {
			continue
		}
		d := at(q, t)
		d.Waiting, d.Running = ci.NumPending, uint64(ci.NumAckPending)
	}
	if err := consumers.Err(); err != nil && !errors.Is(err, jetstream.ErrEndOfData) {
		return nil, fmt.Errorf("consumers of %s: %w", subjects.JobsStream, err)
	}
	byQueue := map[string]*QueueDepth{}
	for k, d := range depth {
		q := byQueue[k.queue]
		if q == nil {
			q = &QueueDepth{Queue: k.queue}
			byQueue[k.queue] = q
		}
		q.Tiers = append(q.Tiers, *d)
		q.Stored += d.Stored
		q.Waiting += d.Waiting
		q.Running += d.Running
	}
	var out []QueueDepth
	for _, q := range byQueue {
		slices.SortFunc(q.Tiers, func(a, b TierDepth) int {
			return slices.Index(subjects.Tiers[:], a.Tier) - slices.Index(subjects.Tiers[:], b.Tier)
		})
		out = append(out, *q)
	}
	slices.SortFunc(out, func(a, b QueueDepth) int { return strings.Compare(a.Queue, b.Queue) })
	return out, nil
}
