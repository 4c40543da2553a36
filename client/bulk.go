package client

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/pipeline"
	"github.com/weft-ci/weft/runstore"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// Retry asks the dispatchers to run an ended run again from the stages
// that did not succeed (its failed and cancelled stages and those they
// skipped); what succeeded is kept. The run waits for admission again.
// A run that has not ended, or that succeeded, is left as it is.
func Retry(ctx context.Context, js jetstream.JetStream, runID string) error {
	if err := ask(ctx, js, wire.Event{Type: wire.RetryRequested, RunID: runID}); err != nil {
		return fmt.Errorf("retry run %s: %w", runID, err)
	}
	return nil
}

// SetPriority asks the dispatchers to move a run that has not ended to
// tier: its stages queued and not yet started are queued again there,
// and the ones it queues later go there too.
func SetPriority(ctx context.Context, js jetstream.JetStream, runID string, tier subjects.Tier) error {
	if err := ask(ctx, js, wire.Event{Type: wire.PriorityRequested, RunID: runID, Message: string(tier)}); err != nil {
		return fmt.Errorf("move run %s to tier %s: %w", runID, tier, err)
	}
	return nil
}

// ask publishes ev, a request about one run, on the run's event subject,
// where the dispatchers apply it in order with the run's other events.
func ask(ctx context.Context, js jetstream.JetStream, ev wire.Event) error {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	data, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	_, err = js.Publish(ctx, subjects.RunEvent(ev.RunID), data)
	return err
}

// RunFilter selects runs for a bulk action; its zero fields select
// everything.
type RunFilter struct {
	// Repo, Branch and Queue match exactly; a run is on a queue when one
	// of its pipeline's stages is.
	Repo, Branch, Queue string
	// Tier is the tier the run's stages are queued at.
	Tier subjects.Tier
	// States are the run states selected (any of them).
	States []wire.RunState
	// OlderThan selects runs created longer ago than this.
	OlderThan time.Duration
}

// Fields returns the filter's set fields by name, as the audit records
// them and the CLI's flags name them.
func (f RunFilter) Fields() map[string]string {
	m := map[string]string{}
	for k, v := range map[string]string{"repo": f.Repo, "branch": f.Branch, "queue": f.Queue, "tier": string(f.Tier)} {
		if v != "" {
			m[k] = v
		}
	}
	if len(f.States) > 0 {
		states := make([]string, len(f.States))
		for i, s := range f.States {
			states[i] = string(s)
		}
		m["state"] = strings.Join(states, ",")
	}
	if f.OlderThan > 0 {
		m["older_than"] = f.OlderThan.String()
	}
	return m
}

// SelectRuns returns the runs f selects at now, oldest first, each its
// document alone (no stages). It reads every run document once
// (bus.Values), and the pipeline of each distinct spec once when f names
// a queue.
func SelectRuns(ctx context.Context, js jetstream.JetStream, f RunFilter, now time.Time) ([]*wire.Run, error) {
	var rs *runstore.Store // for the pipelines, when f names a queue
	if f.Queue != "" {
		var err error
		if rs, err = runstore.Open(ctx, js); err != nil {
			return nil, err
		}
	}
	var out []*wire.Run
	err := bus.Values(ctx, js, subjects.RunsBucket, func(_ string, value []byte) error {
		r, err := runstore.DecodeRun(value)
		if err != nil {
			return nil // not a run document
		}
		if (f.Repo != "" && r.Repo != f.Repo) || (f.Branch != "" && r.Branch != f.Branch) ||
			(f.Tier != "" && cmp.Or(r.Tier, subjects.Normal) != f.Tier) ||
			(len(f.States) > 0 && !slices.Contains(f.States, r.State)) ||
			(f.OlderThan > 0 && now.Sub(r.Created) < f.OlderThan) {
			return nil
		}
		if f.Queue != "" {
			p, err := rs.Spec(ctx, r.Spec)
			if err != nil {
				return fmt.Errorf("run %s: %w", r.ID, err)
			}
			if !slices.ContainsFunc(p.Stages, func(s pipeline.Stage) bool { return s.Queue == f.Queue }) {
				return nil
			}
		}
		out = append(out, r)
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b *wire.Run) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// BulkAction is what a bulk operation does to each run it selects.
type BulkAction string

const (
	// BulkCancel cancels runs that have not ended.
	BulkCancel BulkAction = "cancel"
	// BulkRequeue runs again, as Retry does, runs that ended failed or
	// cancelled.
	BulkRequeue BulkAction = "requeue"
)

// eligible returns the run states action applies to, the default
// selection when a filter names none; false for no action.
func eligible(action BulkAction) ([]wire.RunState, bool) {
	switch action {
	case BulkCancel:
		return []wire.RunState{wire.RunQueued, wire.RunRunning}, true
	case BulkRequeue:
		return []wire.RunState{wire.RunFailed, wire.RunCancelled}, true
	}
	return nil, false
}

// ErrBulk marks a bulk operation asked for something it cannot do (an
// unknown action, a state it does not apply to, a bad rate).
var ErrBulk = errors.New("bulk operation")

// The pace a bulk operation takes unless told otherwise (weft bulk's
// flags, POST /api/bulk/{action}).
const (
	// DefaultBulkRate is the runs acted on a second.
	DefaultBulkRate = 20
	// DefaultBulkBatch is the requests published at once.
	DefaultBulkBatch = 10
)

// BulkOptions say how a bulk operation proceeds.
type BulkOptions struct {
	// Rate bounds the runs acted on per second (> 0).
	Rate float64
	// Batch is how many requests are published at once before the
	// acknowledgements are awaited (default DefaultBulkBatch, at most
	// Rate).
	Batch int
	// DryRun selects and counts the runs and changes nothing.
	DryRun bool
	// Reason is recorded with a cancel.
	Reason string
	// Progress, when set, is called after each batch with the runs done
	// so far and the runs selected.
	Progress func(done, total int)
}

// BulkResult is what a bulk operation selected and did.
type BulkResult struct {
	// Action is what was done.
	Action BulkAction `json:"action"`
	// Filter is the selection, as RunFilter.Fields gives it.
	Filter map[string]string `json:"filter"`
	// Runs are the ids of the runs selected, oldest first.
	Runs []string `json:"runs"`
	// Done is how many of them were asked for (0 on a dry run).
	Done int `json:"done"`
	// DryRun says that nothing was changed.
	DryRun bool `json:"dry_run,omitempty"`
	// Elapsed is how long the requests took.
	Elapsed time.Duration `json:"elapsed_ns"`
}

// Bulk does action to every run f selects, oldest first, at no more than
// opts.Rate runs a second, in batches of opts.Batch: it publishes a
// batch's requests (cancels or retries, applied by the dispatchers as one
// weft cancel or weft retry would be), awaits their acknowledgements, and
// waits until the rate allows the next batch, so a thousand retried runs
// enter the queues at the set pace rather than at once. A filter with no
// states selects the states the action applies to; one naming others is
// refused. On a dry run it selects and changes nothing.
func Bulk(ctx context.Context, js jetstream.JetStream, action BulkAction, f RunFilter, opts BulkOptions) (*BulkResult, error) {
	states, ok := eligible(action)
	if !ok {
		return nil, fmt.Errorf("%w: no action %q (want cancel or requeue)", ErrBulk, action)
	}
	if opts.Rate <= 0 {
		return nil, fmt.Errorf("%w: rate %v: want more than 0 runs a second", ErrBulk, opts.Rate)
	}
	for _, s := range f.States {
		if !slices.Contains(states, s) {
			return nil, fmt.Errorf("%w: %s applies to %s runs, not %s", ErrBulk, action, joinStates(states), s)
		}
	}
	if len(f.States) == 0 {
		f.States = states
	}
	batch := opts.Batch
	if batch <= 0 {
		batch = DefaultBulkBatch
	}
	batch = max(1, min(batch, int(opts.Rate)))
	runs, err := SelectRuns(ctx, js, f, time.Now())
	if err != nil {
		return nil, err
	}
	res := &BulkResult{Action: action, Filter: f.Fields(), Runs: make([]string, len(runs)), DryRun: opts.DryRun}
	for i, r := range runs {
		res.Runs[i] = r.ID
	}
	if opts.DryRun {
		return res, nil
	}
	start := time.Now()
	for len(runs) > res.Done {
		// The batch starting at run n may go at start + n/rate.
		if wait := time.Until(start.Add(time.Duration(float64(res.Done) / opts.Rate * float64(time.Second)))); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return res, fmt.Errorf("bulk %s stopped after %d of %d runs: %w", action, res.Done, len(runs), ctx.Err())
			case <-t.C:
			}
		}
		next := runs[res.Done:min(res.Done+batch, len(runs))]
		if err := askAll(ctx, js, action, next, opts.Reason); err != nil {
			return res, fmt.Errorf("bulk %s stopped after %d of %d runs: %w", action, res.Done, len(runs), err)
		}
		res.Done += len(next)
		if opts.Progress != nil {
			opts.Progress(res.Done, len(runs))
		}
	}
	res.Elapsed = time.Since(start)
	return res, nil
}

// BulkAudit is the audit entry of what a bulk operation did (Actor and
// Via are its caller's to set).
func BulkAudit(res *BulkResult, opts BulkOptions) wire.AuditEntry {
	detail := fmt.Sprintf("%d of %d runs at %v a second", res.Done, len(res.Runs), opts.Rate)
	if res.Action == BulkCancel && opts.Reason != "" {
		detail += ": " + opts.Reason
	}
	return wire.AuditEntry{Action: "runs." + string(res.Action), Filter: res.Filter, Count: res.Done, Detail: detail}
}

// askTimeout bounds the wait for the acknowledgements of a batch.
const askTimeout = 10 * time.Second

// askAll publishes action's request for each of runs at once, then awaits
// every acknowledgement.
func askAll(ctx context.Context, js jetstream.JetStream, action BulkAction, runs []*wire.Run, reason string) error {
	futures := make([]jetstream.PubAckFuture, len(runs))
	for i, r := range runs {
		ev := wire.Event{Type: wire.RetryRequested, RunID: r.ID, Time: time.Now()}
		if action == BulkCancel {
			ev.Type, ev.Message = wire.CancelRequested, reason
		}
		data, err := json.Marshal(ev)
		if err != nil {
			return err
		}
		if futures[i], err = js.PublishAsync(subjects.RunEvent(r.ID), data); err != nil {
			return fmt.Errorf("%s run %s: %w", action, r.ID, err)
		}
	}
	timeout := time.NewTimer(askTimeout)
	defer timeout.Stop()
	for i, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("%s run %s: %w", action, runs[i].ID, err)
		case <-timeout.C:
			return fmt.Errorf("%s run %s: no acknowledgement within %s", action, runs[i].ID, askTimeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// joinStates renders states as "a or b".
func joinStates(states []wire.RunState) string {
	s := make([]string, len(states))
	for i, st := range states {
		s[i] = strconv.Quote(string(st))
	}
	return strings.Join(s, " or ")
}
