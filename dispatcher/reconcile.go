package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// maxRepairs bounds the stages one reconcile pass queues again, so that
// repairing many runs at once never floods the queues; the rest wait for
// the next pass.
const maxRepairs = 100

// reconcile scans the admitted runs and repairs what events missed: a
// queued or running stage whose job message is gone (deleted, or acked
// with its finished event lost) is finished from the stored event when
// there is one, else queued again; a ready stage never queued is queued;
// a run whose stages all ended is finished.
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
		r, _, err := d.runs.get(ctx, runID)
		if err != nil || r.State.Terminal() {
			continue
		}
		var found []wire.Event
		var lost []string
		for _, s := range r.Stages {
			if (s.State != wire.StageQueued && s.State != wire.StageRunning) || s.JobSeq == 0 {
				continue
			}
			if _, err := jobs.GetMsg(ctx, s.JobSeq); err == nil || !errors.Is(err, jetstream.ErrMsgNotFound) {
				continue // still there (or unknown: leave it)
			}
			if ev, ok := lastFinished(ctx, events, runID, s); ok {
				found = append(found, ev)
				continue
			}
			if budget > 0 {
				lost = append(lost, s.Key)
				budget--
			}
		}
		before, after, err := d.runs.update(ctx, runID, func(r *wire.Run) bool { return repairRun(r, found, lost, d.cfg.Now()) })
		if err != nil {
			return err
		}
		if after != nil {
			d.log.Warn().Str("run_id", runID).Strs("requeued", lost).Int("finished", len(found)).Msg("run repaired by the reconcile loop")
			if err := d.afterUpdate(ctx, before, after); err != nil {
				return err
			}
		}
	}
	return nil
}

// lastFinished returns the stored finished event of the stage's current
// attempt, if the stage's last event is one.
func lastFinished(ctx context.Context, events jetstream.Stream, runID string, s wire.StageRun) (wire.Event, bool) {
	m, err := events.GetLastMsgForSubject(ctx, subjects.StageEvent(runID, s.Key))
	if err != nil {
		return wire.Event{}, false
	}
	var ev wire.Event
	if json.Unmarshal(m.Data, &ev) != nil || ev.Type != wire.Finished || ev.Attempt != s.Attempt {
		return wire.Event{}, false
	}
	return ev, true
}
