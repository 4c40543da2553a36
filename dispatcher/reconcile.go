package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// Counters of the reconcile loop (stats.<name> in the WIP bucket, shown by
// weft status).
const (
	// StatReconcileFinished counts the finished events the reconcile loop
	// applied because no event handler had.
	StatReconcileFinished = "reconcile_finished"
	// StatReconcileLost counts the stages it queued again because their
	// job was gone.
	StatReconcileLost = "reconcile_lost"
)

// maxRepairs bounds the stages one reconcile pass queues again, so that
// repairing many runs at once never floods the queues; the rest wait for
// the next pass.
const maxRepairs = 100

// unpublishedAfter is how long a stage may be queued with no recorded job
// message before the reconcile loop publishes its job: longer than the
// few milliseconds between writing a run document and publishing what it
// calls for, and than a handler's redelivery.
const unpublishedAfter = 2 * handlerAckWait

// staleAfter is how long the reconcile loop trusts a cached run that
// nothing read or wrote: past it, the run is read fresh.
const staleAfter = 2 * time.Minute

// reconcile scans the admitted runs (every live lease) and repairs what
// events missed:
//
//   - a queued stage whose job was never recorded as published (a
//     dispatcher died, or a publish failed, between writing the run and
//     publishing its jobs) gets its job published;
//   - a queued or running stage whose job message is gone (deleted, or
//     acked with its finished event lost) is finished from the stored
//     event when there is one (stored more than unpublishedAfter ago:
//     a younger one is the event handlers'); else, unless its attempt
//     heartbeated within
//     its consumer's AckWait (a takeover whose job a superseded attempt
//     acked), it is queued again (or cancelled, in a run being cancelled);
//   - a run being cancelled gets its cancel notice again, for agents that
//     missed it;
//   - a run whose stages all ended is finished.
func (d *Dispatcher) reconcile(ctx context.Context) error {
	// The admitted runs, from the lease view when it can be used: a lease
	// it has not seen yet is looked at next pass.
	leases, ok := d.leases.all()
	if !ok {
		var err error
		if leases, err = d.entries(ctx, subjects.AllLeases); err != nil {
			return err
		}
	}
	jobs, err := d.js.Stream(ctx, subjects.JobsStream)
	if err != nil {
		return fmt.Errorf("jobs stream: %w", err)
	}
	events, err := d.js.Stream(ctx, subjects.EventsStream)
	if err != nil {
		return fmt.Errorf("events stream: %w", err)
	}
	beats, err := d.js.Stream(ctx, subjects.HeartbeatsStream)
	if err != nil {
		return fmt.Errorf("heartbeats stream: %w", err)
	}
	idx := newJobIndex(d.js, jobs)
	budget := maxRepairs
	for _, k := range slices.Sorted(maps.Keys(leases)) {
		if budget <= 0 {
			break
		}
		runID := leases[k]
		// The run is looked at on this dispatcher's copy of it, and read
		// fresh only when the copy shows something to repair, which is
		// then decided on the fresh documents: a full read of every
		// admitted run each pass would cost the server in proportion to
		// the runs in flight. A copy is a sound detector: a run moves on
		// only by a stage ending, which takes its job out of the stream,
		// so a copy whose queued and running stages all still have their
		// jobs has missed nothing to repair. A copy nothing has read or
		// written for staleAfter has its run document checked (a cancel
		// or an end applied by another dispatcher), one read; a copy from
		// before the run's admission is read again.
		v, cached, err := d.runs.load(ctx, runID)
		if err != nil {
			continue
		}
		r := v.run
		stale := r.Lease != k // a copy from before the run's admission
		if cached && !stale && time.Since(v.synced) >= staleAfter {
			_, rev, err := d.runs.rs.Header(ctx, runID)
			if err != nil {
				continue
			}
			stale = rev != v.rev
		}
		if cached && stale {
			if r, err = d.runs.get(ctx, runID); err != nil {
				continue
			}
			cached = false
		}
		if r.State.Terminal() || r.Lease != k {
			continue // the sweep frees what ended runs hold
		}
		if r.CancelReason != "" {
			if err := d.notifyCancel(r); err != nil {
				return err
			}
		}
		found, lost, unpublished := d.inspect(ctx, r, idx, events, beats)
		if cached {
			if len(found)+len(lost)+len(unpublished) == 0 && !repairRun(r, nil, nil, d.cfg.Now()) {
				continue // nothing to repair
			}
			if r, err = d.runs.get(ctx, runID); err != nil {
				continue
			}
			found, lost, unpublished = d.inspect(ctx, r, idx, events, beats)
		}
		if r.State.Terminal() || r.Lease != k {
			continue // the sweep frees what ended runs hold
		}
		if len(lost) > budget {
			lost = lost[:budget]
		}
		budget -= len(lost)
		if len(unpublished) > 0 {
			d.log.Warn().Str("run_id", runID).Strs("stages", unpublished).Msg("publishing jobs a dispatcher wrote but never published")
			if err := d.publishJobs(ctx, r, unpublished); err != nil {
				return err
			}
		}
		d.runs.forget(runID) // the repair decides on the documents just read
		after, w, err := d.runs.update(ctx, runID, nil, func(r *wire.Run) bool { return repairRun(r, found, lost, d.cfg.Now()) })
		if err != nil {
			return err
		}
		if after != nil {
			d.log.Warn().Str("run_id", runID).Int("lost", len(lost)).Int("finished", len(found)).Msg("run repaired by the reconcile loop")
			if len(found) > 0 {
				d.add(ctx, StatReconcileFinished, uint64(len(found)))
				d.cfg.Metrics.ReconcileRepairs.WithLabelValues("missed_finish").Add(float64(len(found)))
			}
			if len(lost) > 0 {
				d.add(ctx, StatReconcileLost, uint64(len(lost)))
				d.cfg.Metrics.ReconcileRepairs.WithLabelValues("lost_job").Add(float64(len(lost)))
			}
			if err := d.afterUpdate(ctx, after, w); err != nil {
				return err
			}
		}
	}
	return nil
}

// lastFinished returns the stored finished event of the stage's current
// job and attempt (or of a takeover attempt of that job), if the stage's
// last event is one, and when the server stored it.
func lastFinished(ctx context.Context, events jetstream.Stream, runID string, s wire.StageRun) (wire.Event, time.Time, bool) {
	m, err := events.GetLastMsgForSubject(ctx, subjects.StageEvent(runID, s.Key))
	if err != nil {
		return wire.Event{}, time.Time{}, false
	}
	var ev wire.Event
	if json.Unmarshal(m.Data, &ev) != nil || ev.Type != wire.Finished || ev.Attempt < s.Attempt || (ev.Job != 0 && ev.Job != s.Job) {
		return wire.Event{}, time.Time{}, false
	}
	ev.Seq = m.Sequence
	return ev, m.Time, true
}

// lastBeat returns when the stage's attempt last said it was alive: its
// last heartbeat of that attempt, or its start.
func lastBeat(ctx context.Context, beats jetstream.Stream, runID string, s wire.StageRun) time.Time {
	m, err := beats.GetLastMsgForSubject(ctx, subjects.Heartbeat(runID, s.Key))
	if err != nil {
		return s.Started
	}
	var ev wire.Event
	if json.Unmarshal(m.Data, &ev) != nil || ev.Attempt != s.Attempt || ev.Time.Before(s.Started) {
		return s.Started
	}
	return ev.Time
}

// inspect returns what the reconcile loop repairs in run r: the stored
// finishes of stages whose job is gone (found), the stages whose job is
// gone with no finish and no live attempt (lost), and the queued stages
// whose job was never recorded as published (unpublished).
func (d *Dispatcher) inspect(ctx context.Context, r *wire.Run, idx *jobIndex, events, beats jetstream.Stream) (found []wire.Event, lost []lostJob, unpublished []string) {
	now := d.cfg.Now()
	for _, s := range r.Stages {
		if s.State != wire.StageQueued && s.State != wire.StageRunning {
			continue
		}
		if s.JobSeq == 0 {
			if s.State == wire.StageQueued && now.Sub(s.Queued) >= unpublishedAfter {
				unpublished = append(unpublished, s.Key)
			}
			continue
		}
		if !idx.gone(ctx, r, s) {
			continue // still there (or unknown: leave it)
		}
		if ev, at, ok := lastFinished(ctx, events, r.ID, s); ok {
			if now.Sub(at) < unpublishedAfter {
				continue // stored just now: the event handlers take it
			}
			found = append(found, ev)
			continue
		}
		if s.State == wire.StageRunning && now.Sub(lastBeat(ctx, beats, r.ID, s)) < idx.ackWait(ctx, r, s) {
			continue // its attempt is alive
		}
		lost = append(lost, lostJob{Key: s.Key, Job: s.Job, Seq: s.JobSeq})
	}
	return found, lost, unpublished
}

// jobIndex answers, for one reconcile pass, whether a stage's job message
// is gone from the jobs stream, at a cost that does not grow with the
// jobs waiting. A consumer delivers its jobs in stream order, so a job
// past its tier consumer's last delivered sequence was not delivered yet:
// it is still stored while the consumer has jobs pending, and gone when
// the consumer has none (stored before the pass began, it would be
// pending). A purge or an expiry moves the stream's first sequence past
// a job. Only the jobs delivered already (running, or being redelivered:
// about as many as the fleet has slots) are looked up one by one. A job
// deleted by hand before its delivery is therefore seen once its
// consumer delivers past it or drains.
type jobIndex struct {
	js   jetstream.JetStream
	jobs jetstream.Stream
	// first and last are the stream's first and last sequences when the
	// pass began: every job below first is gone.
	first, last uint64
	// consumers holds what the pass read of each job consumer, by name.
	consumers map[string]consumerState
}

// consumerState is what a reconcile pass read of a job consumer.
type consumerState struct {
	// known is false when the consumer could not be read, or does not
	// exist (no agent serves its queue yet).
	known bool
	// delivered is the stream sequence of the last job it delivered;
	// pending counts its jobs not delivered yet.
	delivered, pending uint64
	ackWait            time.Duration
}

func newJobIndex(js jetstream.JetStream, jobs jetstream.Stream) *jobIndex {
	st := jobs.CachedInfo().State
	return &jobIndex{js: js, jobs: jobs, first: st.FirstSeq, last: st.LastSeq, consumers: map[string]consumerState{}}
}

// consumer returns the state of the consumer that delivers the job of
// stage s of run r, read once per pass.
func (x *jobIndex) consumer(ctx context.Context, r *wire.Run, s wire.StageRun) consumerState {
	name := subjects.JobConsumer(s.Queue, tierOf(r))
	if c, ok := x.consumers[name]; ok {
		return c
	}
	c := consumerState{ackWait: subjects.DefaultAckWait}
	if jc, err := x.js.Consumer(ctx, subjects.JobsStream, name); err == nil {
		info := jc.CachedInfo()
		c = consumerState{known: true, delivered: info.Delivered.Stream, pending: info.NumPending, ackWait: info.Config.AckWait}
	}
	x.consumers[name] = c
	return c
}

// ackWait returns the AckWait of the consumer of stage s's job.
func (x *jobIndex) ackWait(ctx context.Context, r *wire.Run, s wire.StageRun) time.Duration {
	return x.consumer(ctx, r, s).ackWait
}

// gone reports whether the job message of stage s (at s.JobSeq) is known
// to be gone; unknown is not gone.
func (x *jobIndex) gone(ctx context.Context, r *wire.Run, s wire.StageRun) bool {
	if s.JobSeq < x.first {
		return true
	}
	c := x.consumer(ctx, r, s)
	switch {
	case !c.known:
		return false
	case s.JobSeq > c.delivered:
		return c.pending == 0 && s.JobSeq <= x.last
	}
	_, err := x.jobs.GetMsg(ctx, s.JobSeq)
	return errors.Is(err, jetstream.ErrMsgNotFound)
}
