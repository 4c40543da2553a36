package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// maxDeliveriesAdvisory is the part of the server's advisory weft reads.
type maxDeliveriesAdvisory struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
}

// handleDeadLetter moves a job that exhausted its deliveries to the DLQ:
// copy, delete from the jobs stream (a work queue keeps it otherwise), and
// fail its stage with category dead_letter. Each step is idempotent, so a
// redelivered advisory finishes what a dead dispatcher started.
func (d *Dispatcher) handleDeadLetter(ctx context.Context, msg jetstream.Msg) error {
	var adv maxDeliveriesAdvisory
	if err := json.Unmarshal(msg.Data(), &adv); err != nil {
		return nil
	}
	switch adv.Stream {
	case subjects.TriggersStream:
		return d.handleDeadTrigger(ctx, adv)
	case subjects.JobsStream:
	default:
		return nil
	}
	jobs, err := d.js.Stream(ctx, subjects.JobsStream)
	if err != nil {
		return fmt.Errorf("jobs stream: %w", err)
	}
	raw, err := jobs.GetMsg(ctx, adv.StreamSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil // acked at the last moment, or moved already
	}
	if err != nil {
		return fmt.Errorf("get dead job %d: %w", adv.StreamSeq, err)
	}
	var job wire.Job
	if err := json.Unmarshal(raw.Data, &job); err != nil {
		d.log.Error().Err(err).Uint64("seq", adv.StreamSeq).Msg("dead job is not a job; deleting it")
		return jobs.DeleteMsg(ctx, adv.StreamSeq)
	}
	log := d.log.With().Str("run_id", job.RunID).Str("stage", job.Stage.Key).Int("job", job.Attempt).Logger()
	hdr := nats.Header{}
	hdr.Set(subjects.HeaderRun, job.RunID)
	hdr.Set(subjects.HeaderStage, job.Stage.Key)
	hdr.Set(subjects.HeaderJob, strconv.Itoa(job.Attempt))
	hdr.Set(subjects.HeaderSubject, raw.Subject)
	hdr.Set(subjects.HeaderDeliveries, strconv.FormatUint(adv.Deliveries, 10))
	if _, err := d.js.PublishMsg(ctx, &nats.Msg{Subject: subjects.DLQ(job.Stage.Queue), Header: hdr, Data: raw.Data},
		jetstream.WithMsgID(subjects.DLQMsgID(job.RunID, job.Stage.Key, job.Attempt))); err != nil {
		return fmt.Errorf("copy dead job to the DLQ: %w", err)
	}
	if err := jobs.DeleteMsg(ctx, adv.StreamSeq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("delete dead job %d: %w", adv.StreamSeq, err)
	}
	log.Warn().Uint64("deliveries", adv.Deliveries).Msg("job dead-lettered")
	d.cfg.Metrics.DeadLetters.WithLabelValues(job.Stage.Queue).Inc()
	after, w, err := d.runs.update(ctx, job.RunID, []string{job.Stage.Key}, func(r *wire.Run) bool {
		changed := deadLetter(r, job.Stage.Key, job.Attempt, fmt.Sprintf("its job was dead-lettered after %d deliveries (weft dlq replay runs it again)", adv.Deliveries), d.cfg.Now())
		advance(r, d.cfg.Now())
		return changed
	})
	if err != nil || after == nil {
		return err
	}
	return d.afterUpdate(ctx, after, w)
}

// replay runs a failed stage again on an operator's request. A run that
// had ended waits for admission again, in its original arrival order, so
// it holds a WIP slot and its group's lock while the stage runs.
func (d *Dispatcher) replay(ctx context.Context, ev wire.Event) error {
	return d.reopenRun(ctx, ev, "stage replayed", func(r *wire.Run, now time.Time) bool { return replayStage(r, ev.Stage, now) })
}

// retry runs an ended run again from the stages that did not succeed, on
// an operator's request; it waits for admission again as a replayed run
// does.
func (d *Dispatcher) retry(ctx context.Context, ev wire.Event) error {
	return d.reopenRun(ctx, ev, "run retried", retryRun)
}

// reopenRun applies reopen, a replay or a retry, to the run of ev; a run
// it took back from its end is queued for admission again.
func (d *Dispatcher) reopenRun(ctx context.Context, ev wire.Event, what string, reopen func(*wire.Run, time.Time) bool) error {
	after, w, err := d.runs.update(ctx, ev.RunID, nil, func(r *wire.Run) bool {
		changed := reopen(r, d.cfg.Now())
		advance(r, d.cfg.Now())
		return changed
	})
	if err != nil || after == nil {
		return err
	}
	d.log.Info().Str("run_id", ev.RunID).Str("stage", ev.Stage).Msg(what)
	if after.Lease == "" {
		if err := d.queueForAdmission(ctx, after); err != nil {
			return err
		}
		return d.admit(ctx, subjects.RepoToken(after.Repo))
	}
	return d.afterUpdate(ctx, after, w)
}

// reprioritize moves a run that has not ended to the tier ev names:
// its queued jobs are published again there and the ones they replace
// deleted.
func (d *Dispatcher) reprioritize(ctx context.Context, ev wire.Event) error {
	tier, err := subjects.ParseTier(ev.Message)
	if err != nil {
		d.log.Error().Err(err).Str("run_id", ev.RunID).Msg("dropping a priority change to no tier")
		return nil
	}
	var replaced []uint64
	after, w, err := d.runs.update(ctx, ev.RunID, nil, func(r *wire.Run) bool {
		var changed bool
		replaced, changed = reprioritize(r, tier, d.cfg.Now())
		return changed
	})
	if err != nil || after == nil {
		return err
	}
	d.log.Info().Str("run_id", ev.RunID).Str("tier", string(tier)).Int("jobs_moved", len(replaced)).Msg("run moved to another tier")
	if err := d.afterUpdate(ctx, after, w); err != nil {
		return err
	}
	jobs, err := d.js.Stream(ctx, subjects.JobsStream)
	if err != nil {
		return fmt.Errorf("jobs stream: %w", err)
	}
	for _, seq := range replaced {
		if err := jobs.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return fmt.Errorf("delete job %d moved to tier %s: %w", seq, tier, err)
		}
	}
	return nil
}
