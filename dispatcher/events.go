package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/metrics"
	"github.com/weft-ci/weft/repos"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// eventHandling is how consumeWith treats lifecycle events: the events
// of different runs are handled by several workers at once, each run's in
// order.
func (d *Dispatcher) eventHandling() handling {
	return handling{
		handle:    d.handleEvent,
		partition: subjectToken(2), // weft.events.<run>[.<stage>]
		workers:   workers,
	}
}

// delivered returns the delivery number of msg (1 when unknown).
func delivered(msg jetstream.Msg) uint64 {
	if meta, err := msg.Metadata(); err == nil {
		return meta.NumDelivered
	}
	return 1
}

// decodeEvent decodes a lifecycle event; a malformed one is logged and
// reported not ok, to be acked and dropped.
func (d *Dispatcher) decodeEvent(msg jetstream.Msg) (wire.Event, bool) {
	var ev wire.Event
	if err := json.Unmarshal(msg.Data(), &ev); err != nil || ev.RunID == "" {
		d.log.Error().Err(err).Str("subject", msg.Subject()).Msg("dropping malformed event")
		return ev, false
	}
	if meta, err := msg.Metadata(); err == nil {
		ev.Seq = meta.Sequence.Stream
	}
	return ev, true
}

// handleEvent applies a lifecycle event to its run.
func (d *Dispatcher) handleEvent(ctx context.Context, msg jetstream.Msg) error {
	ev, ok := d.decodeEvent(msg)
	if !ok {
		return nil
	}
	return d.applyEvent(ctx, msg, ev)
}

// applyEvent applies ev, the event in msg, to its run.
func (d *Dispatcher) applyEvent(ctx context.Context, msg jetstream.Msg, ev wire.Event) error {
	var err error
	switch ev.Type {
	case wire.CancelRequested:
		if ev.Stage != "" {
			err = d.cancelStage(ctx, ev)
		} else {
			err = d.cancel(ctx, ev)
		}
	case wire.Started, wire.Heartbeat, wire.Finished:
		err = d.stageEvents(ctx, []wire.Event{ev})
	case wire.ReplayRequested:
		err = d.replay(ctx, ev)
	case wire.RetryRequested:
		err = d.retry(ctx, ev)
	case wire.PriorityRequested:
		err = d.reprioritize(ctx, ev)
	default:
		return nil
	}
	if err != nil {
		return err
	}
	// A redelivered event may have been applied by a dispatcher that died
	// before it published what the change called for: finish that work.
	if delivered(msg) > 1 {
		return d.repair(ctx, ev.RunID)
	}
	return nil
}

// repair redoes what a run's documents call for, in case the dispatcher
// that changed them died half-way: it advances the run on fresh
// documents (a stage it ended whose dependents it did not queue, a run
// whose stages all ended), publishes the jobs of its queued stages not
// recorded as published (their message ids make this a no-op when they
// were published within the stream's duplicate window), resends the
// cancel notice of a run being cancelled and, for an ended run, releases
// its lease and lock.
func (d *Dispatcher) repair(ctx context.Context, runID string) error {
	d.runs.forget(runID) // repair works from the stored documents
	after, w, err := d.runs.update(ctx, runID, nil, func(r *wire.Run) bool {
		return len(advance(r, d.cfg.Now())) > 0
	})
	if err != nil {
		return err
	}
	if after != nil {
		if err := d.afterUpdate(ctx, after, w); err != nil {
			return err
		}
	}
	r, _, err := d.runs.load(ctx, runID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if r.run.State.Terminal() {
		return d.release(ctx, r.run)
	}
	if r.run.CancelReason != "" {
		if err := d.notifyCancel(r.run); err != nil {
			return err
		}
	}
	return d.publishJobs(ctx, r.run, unpublishedKeys(r.run))
}

// stageEvents applies evs, stage events of one run in the order they
// were published, to the run in one update.
func (d *Dispatcher) stageEvents(ctx context.Context, evs []wire.Event) error {
	runID := evs[0].RunID
	scope := make([]string, 0, len(evs))
	for _, ev := range evs {
		if !slices.Contains(scope, ev.Stage) {
			scope = append(scope, ev.Stage)
		}
	}
	var resend []string        // stages whose cancel notice goes again
	var observed []observation // what the starts and finishes applied did
	after, w, err := d.runs.update(ctx, runID, scope, func(r *wire.Run) bool {
		resend, observed = resend[:0], observed[:0]
		changed, more := false, false
		now := d.cfg.Now()
		for _, ev := range evs {
			v := apply(r, ev, now)
			changed = changed || v == applied
			if v == recancel && !slices.Contains(resend, ev.Stage) {
				resend = append(resend, ev.Stage)
			}
			if v == applied {
				if o, ok := observe(r, ev); ok {
					observed = append(observed, o)
				}
			}
			// A start makes nothing ready; anything else (or a start
			// redone on fresh documents) may.
			more = more || ev.Type != wire.Started || v != applied
		}
		if more {
			advance(r, now)
		}
		return changed
	})
	if err != nil {
		return err
	}
	if after != nil {
		for _, o := range observed {
			o.count(d.cfg.Metrics)
		}
	}
	if len(resend) > 0 {
		if err := d.notifyCancelStages(runID, resend...); err != nil {
			return err
		}
	}
	if after == nil {
		for _, ev := range evs {
			if ev.Type == wire.Finished {
				d.log.Info().Str("run_id", ev.RunID).Str("stage", ev.Stage).Int("attempt", ev.Attempt).Msg("stale finish ignored")
			}
		}
		return nil
	}
	return d.afterUpdate(ctx, after, w)
}

func (d *Dispatcher) cancel(ctx context.Context, ev wire.Event) error {
	reason := ev.Message
	if reason == "" {
		reason = "cancel requested"
	}
	after, w, err := d.runs.update(ctx, ev.RunID, nil, func(r *wire.Run) bool {
		return cancel(r, reason, d.cfg.Now())
	})
	if err != nil || after == nil {
		return err
	}
	d.log.Info().Str("run_id", ev.RunID).Str("reason", reason).Msg("run cancelling")
	if err := d.notifyCancel(after); err != nil {
		return err
	}
	return d.afterUpdate(ctx, after, w)
}

// cancelStage cancels one stage of a run (ev.Stage): a running one's agent
// is told to stop it.
func (d *Dispatcher) cancelStage(ctx context.Context, ev wire.Event) error {
	reason := ev.Message
	if reason == "" {
		reason = "cancel requested"
	}
	running := false
	after, w, err := d.runs.update(ctx, ev.RunID, nil, func(r *wire.Run) bool {
		s := r.Stage(ev.Stage)
		running = s != nil && s.State == wire.StageRunning
		return cancelStage(r, ev.Stage, reason, d.cfg.Now())
	})
	if err != nil || after == nil {
		return err
	}
	d.log.Info().Str("run_id", ev.RunID).Str("stage", ev.Stage).Str("reason", reason).Msg("stage cancelling")
	if running {
		if err := d.notifyCancelStages(ev.RunID, ev.Stage); err != nil {
			return err
		}
	}
	return d.afterUpdate(ctx, after, w)
}

// afterUpdate publishes what an update of a run wrote calls for: the jobs
// of the stages it queued, and the run's end.
func (d *Dispatcher) afterUpdate(ctx context.Context, after *wire.Run, w wrote) error {
	if err := d.publishJobs(ctx, after, w.queued); err != nil {
		return err
	}
	if w.ended {
		d.log.Info().Str("run_id", after.ID).Str("state", string(after.State)).Msg("run finished")
		d.cfg.Metrics.RunDuration.WithLabelValues(string(after.State)).Observe(metrics.Seconds(after.Finished.Sub(after.Created)))
		data, _ := json.Marshal(wire.Event{Type: wire.RunFinished, RunID: after.ID, Time: after.Finished, Message: string(after.State)})
		if _, err := d.js.Publish(ctx, subjects.RunEvent(after.ID), data); err != nil {
			return fmt.Errorf("publish run %s finished: %w", after.ID, err)
		}
		return d.release(ctx, after)
	}
	return nil
}

// notifyCancel tells the agents to stop every running stage of a run
// being cancelled, and not to start its jobs queued so far (core NATS,
// subjects.Cancel): the notice carries the run's Replays, so a job of a
// retry after it (a later epoch) still runs.
func (d *Dispatcher) notifyCancel(r *wire.Run) error {
	return d.publishCancel(r.ID, wire.CancelNotice{Epoch: r.Replays})
}

// notifyCancelStages tells the agents to stop the named running stages
// of a run.
func (d *Dispatcher) notifyCancelStages(runID string, stages ...string) error {
	return d.publishCancel(runID, wire.CancelNotice{Stages: stages})
}

func (d *Dispatcher) publishCancel(runID string, n wire.CancelNotice) error {
	body, err := json.Marshal(n)
	if err != nil {
		return err
	}
	if err := d.nc.Publish(subjects.Cancel(runID), body); err != nil {
		return fmt.Errorf("cancel notice %s: %w", runID, err)
	}
	return nil
}

// publishTimeout bounds the wait for the acknowledgements of a batch of
// jobs.
const publishTimeout = 10 * time.Second

// publishJobs publishes the job of each stage key with its attempt's
// message id, so publishing twice stores it once, and records where each
// job is stored in its stage's document.
func (d *Dispatcher) publishJobs(ctx context.Context, r *wire.Run, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	seqs := map[string]uint64{}
	jobs := queuedJobs(r, keys)
	if err := d.addRepoSecrets(ctx, r, jobs); err != nil {
		return err
	}
	// Published at once, then every acknowledgement awaited: a run's root
	// stages cost one round trip, not one each.
	futures := make([]jetstream.PubAckFuture, len(jobs))
	for i, job := range jobs {
		data, err := json.Marshal(job)
		if err != nil {
			return fmt.Errorf("encode job %s: %w", job.Stage.Key, err)
		}
		subj := subjects.Job(job.Stage.JobQueue(), tierOf(r))
		id := subjects.JobMsgID(r.ID, job.Stage.Key, job.Attempt)
		if futures[i], err = d.js.PublishAsync(subj, data, jetstream.WithMsgID(id)); err != nil {
			return fmt.Errorf("publish stage %s: %w", id, err)
		}
	}
	timeout := time.NewTimer(publishTimeout)
	defer timeout.Stop()
	for i, f := range futures {
		job := jobs[i]
		select {
		case ack := <-f.Ok():
			seqs[job.Stage.Key] = ack.Sequence
		case err := <-f.Err():
			return fmt.Errorf("publish stage %s: %w", subjects.JobMsgID(r.ID, job.Stage.Key, job.Attempt), err)
		case <-timeout.C:
			return fmt.Errorf("publish stage %s: no acknowledgement within %s", subjects.JobMsgID(r.ID, job.Stage.Key, job.Attempt), publishTimeout)
		case <-ctx.Done():
			return ctx.Err()
		}
		d.log.Debug().Str("run_id", r.ID).Str("stage", job.Stage.Key).Int("attempt", job.Attempt).
			Str("queue", job.Stage.Queue).Str("tier", string(r.Tier)).Msg("stage queued")
	}
	// Record where the jobs are, for the reconcile loop.
	_, _, err := d.runs.update(ctx, r.ID, keys, func(r *wire.Run) bool {
		changed := false
		for _, job := range jobs {
			s := r.Stage(job.Stage.Key)
			if s != nil && s.Job == job.Attempt && s.JobSeq != seqs[s.Key] && (s.State == wire.StageQueued || s.State == wire.StageRunning) {
				s.JobSeq = seqs[s.Key]
				changed = true
			}
		}
		return changed
	})
	return err
}

// addRepoSecrets gives the jobs of a run from a repository (a webhook's)
// what its settings keep out of run documents: the token that fetches a
// private repository, and the secrets of trusted runs (never a fork's
// pull request). Runs of no repository read nothing.
func (d *Dispatcher) addRepoSecrets(ctx context.Context, r *wire.Run, jobs []wire.Job) error {
	if r.CloneURL == "" || r.Repo == "" {
		return nil
	}
	repo, err := d.repos.Get(ctx, r.Repo)
	if errors.Is(err, repos.ErrNotFound) {
		return nil // removed since: the fetch is anonymous, no secrets
	}
	if err != nil {
		return err
	}
	for i := range jobs {
		jobs[i].Token = repo.Token
		if r.Untrusted {
			continue
		}
		for k, v := range repo.Secrets {
			if jobs[i].Env == nil {
				jobs[i].Env = map[string]string{}
			}
			jobs[i].Env[k] = v
		}
	}
	return nil
}

// observation is what a start or finish applied to a stage did, for the
// metrics.
type observation struct {
	ev            wire.Event
	queue, tier   string
	state         wire.StageState
	queued, start time.Time
	finished      time.Time
	// job is the stage's job number: a start of a later attempt of it is
	// a redelivery.
	job int
}

// observe reads what applying ev did to its stage in r.
func observe(r *wire.Run, ev wire.Event) (observation, bool) {
	s, st := r.Stage(ev.Stage), r.Pipeline.Stage(ev.Stage)
	if s == nil || st == nil || (ev.Type != wire.Started && ev.Type != wire.Finished) {
		return observation{}, false
	}
	return observation{ev: ev, queue: st.Queue, tier: string(r.Tier), state: s.State, queued: s.Queued, start: s.Started, finished: s.Finished, job: s.Job}, true
}

// count adds an observation to the metrics: a start's queue time, a
// finish's failure and, when the stage ended, its duration.
func (o observation) count(m *metrics.Dispatcher) {
	switch o.ev.Type {
	case wire.Started:
		m.StageQueue.WithLabelValues(o.queue, o.tier).Observe(metrics.Seconds(o.ev.Time.Sub(o.queued)))
		if o.ev.Attempt > o.job {
			m.Redeliveries.WithLabelValues(o.queue).Inc()
		}
	case wire.Finished:
		if o.ev.Category != wire.CategoryNone || o.ev.ExitCode != 0 {
			m.StageFailures.WithLabelValues(o.queue, string(o.ev.Category)).Inc()
		}
		if o.state.Terminal() && !o.start.IsZero() {
			m.StageDuration.WithLabelValues(o.queue, string(o.state)).Observe(metrics.Seconds(o.finished.Sub(o.start)))
		}
	}
}
