package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
	leases, err := d.keys(ctx, subjects.AllLeases)
	if err != nil {
		return err
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
	ackWaits := map[string]time.Duration{}
	ackWait := func(r *wire.Run, s wire.StageRun) time.Duration {
		name := subjects.JobConsumer(s.Queue, tierOf(r))
		if w, ok := ackWaits[name]; ok {
			return w
		}
		w := subjects.DefaultAckWait
		if c, err := d.js.Consumer(ctx, subjects.JobsStream, name); err == nil {
			w = c.CachedInfo().Config.AckWait
		}
		ackWaits[name] = w
		return w
	}
	budget := maxRepairs
	for _, k := range leases {
		if budget <= 0 {
			break
		}
		e, err := d.wip.Get(ctx, k)
		if err != nil {
			continue
		}
		runID := string(e.Value())
		h, err := d.runs.header(ctx, runID)
		if err != nil || h.State.Terminal() || h.Lease != k {
			continue // the sweep frees what ended runs hold
		}
		if h.CancelReason != "" {
			if err := d.notifyCancel(runID); err != nil {
				return err
			}
		}
		// The run is looked at on this dispatcher's copy of it when the
		// copy was read or written within staleAfter (a full read of
		// every admitted run each pass costs the server in proportion to
		// the runs in flight), and read fresh when the copy shows
		// something to repair, which is then decided on the fresh
		// documents. A run nothing has written to for staleAfter, a stuck
		// one among them, is read fresh.
		v, cached, err := d.runs.load(ctx, runID)
		if err != nil {
			continue
		}
		r := v.run
		found, lost, unpublished := d.inspect(ctx, r, jobs, events, beats, ackWait)
		if cached && time.Since(v.synced) < staleAfter {
			if len(found)+len(lost)+len(unpublished) == 0 && !repairRun(r, nil, nil, d.cfg.Now()) {
				continue // nothing to repair
			}
		}
		if cached {
			if r, err = d.runs.get(ctx, runID); err != nil {
				continue
			}
			found, lost, unpublished = d.inspect(ctx, r, jobs, events, beats, ackWait)
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
			}
			if len(lost) > 0 {
				d.add(ctx, StatReconcileLost, uint64(len(lost)))
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
func (d *Dispatcher) inspect(ctx context.Context, r *wire.Run, jobs, events, beats jetstream.Stream, ackWait func(*wire.Run, wire.StageRun) time.Duration) (found []wire.Event, lost []lostJob, unpublished []string) {
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
		if _, err := jobs.GetMsg(ctx, s.JobSeq); err == nil || !errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // still there (or unknown: leave it)
		}
		if ev, at, ok := lastFinished(ctx, events, r.ID, s); ok {
			if now.Sub(at) < unpublishedAfter {
				continue // stored just now: the event handlers take it
			}
			found = append(found, ev)
			continue
		}
		if s.State == wire.StageRunning && now.Sub(lastBeat(ctx, beats, r.ID, s)) < ackWait(r, s) {
			continue // its attempt is alive
		}
		lost = append(lost, lostJob{Key: s.Key, Job: s.Job, Seq: s.JobSeq})
	}
	return found, lost, unpublished
}
