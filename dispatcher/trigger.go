package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"

	"github.com/weft-ci/weft/pipeline"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// handleTrigger takes one trigger: validate, dedup, create the run waiting
// for admission (or refuse it, by policy), then admit what can be.
func (d *Dispatcher) handleTrigger(ctx context.Context, msg jetstream.Msg) error {
	var t wire.Trigger
	if err := json.Unmarshal(msg.Data(), &t); err != nil || t.ID == "" {
		d.log.Error().Err(err).Str("subject", msg.Subject()).Msg("dropping malformed trigger")
		return nil
	}
	var seq uint64
	if meta, err := msg.Metadata(); err == nil {
		seq = meta.Sequence.Stream
	}
	log := d.log.With().Str("trigger_id", t.ID).Logger()
	key := subjects.DedupKey(t.ID)
	p, perr := pipeline.Parse(t.File, []byte(t.Pipeline))
	if perr == nil && t.Priority != "" {
		if _, err := subjects.ParseTier(string(t.Priority)); err != nil {
			perr = err
		}
	}
	if perr == nil && t.Queue != "" {
		perr = subjects.ValidateQueue(t.Queue)
	}
	if perr != nil {
		log.Info().Err(perr).Msg("trigger refused")
		return d.recordOutcome(ctx, key, wire.Outcome{Error: perr.Error(), Reason: wire.RefusedInvalid}, d.cfg.DedupWindow)
	}
	// A duplicate gets the first run's id.
	if entry, err := d.dedup.Get(ctx, key); err == nil {
		var out wire.Outcome
		if err := json.Unmarshal(entry.Value(), &out); err == nil && out.RunID != "" {
			log.Info().Str("run_id", out.RunID).Msg("duplicate trigger")
			return d.createRun(ctx, out.RunID, t, p, seq)
		}
		return nil
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("dedup %s: %w", key, err)
	}
	if refusal, err := d.refusal(ctx, t, p); err != nil {
		return err
	} else if refusal != nil {
		log.Info().Str("reason", refusal.Reason).Msg(refusal.Error)
		return d.recordOutcome(ctx, key, *refusal, subjects.TriggerDuplicates)
	}
	out := wire.Outcome{RunID: ulid.Make().String()}
	data, _ := json.Marshal(out)
	if _, err := d.dedup.Create(ctx, key, data, jetstream.KeyTTL(d.cfg.DedupWindow)); err != nil {
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("dedup %s: %w", key, err)
		}
		// Another dispatcher took it in between: handle it as a duplicate.
		return d.handleTrigger(ctx, msg)
	}
	return d.createRun(ctx, out.RunID, t, p, seq)
}

// createRun creates the run document, waiting for admission, if it does
// not exist, and admits what can be admitted. Called again for the same
// run it republishes the run's queued jobs (their message ids make that a
// no-op when they were sent).
func (d *Dispatcher) createRun(ctx context.Context, id string, t wire.Trigger, p *pipeline.Pipeline, seq uint64) error {
	now := d.cfg.Now()
	r := newRun(id, t, p, seq, now)
	err := d.runs.create(ctx, r)
	switch {
	case err == nil:
		d.log.Info().Str("run_id", id).Str("pipeline", p.Name).Str("repo", r.Repo).Str("tier", string(r.Tier)).Msg("run created")
	case errors.Is(err, jetstream.ErrKeyExists):
		if r, _, err = d.runs.get(ctx, id); err != nil {
			return err
		}
		if err := d.publishJobs(ctx, r, queuedKeys(r)); err != nil {
			return err
		}
	default:
		return err
	}
	if r.Lease == "" && !r.State.Terminal() {
		if _, err := d.wip.Create(ctx, subjects.WaitKey(r.Repo, r.Seq), []byte(id)); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("queue run %s for admission: %w", id, err)
		}
	}
	if p.Concurrency != nil && p.Concurrency.CancelInProgress {
		if err := d.supersede(ctx, r); err != nil {
			return err
		}
	}
	return d.admit(ctx, subjects.RepoToken(r.Repo))
}

// recordOutcome records a refused trigger's outcome for ttl.
func (d *Dispatcher) recordOutcome(ctx context.Context, key string, out wire.Outcome, ttl time.Duration) error {
	data, _ := json.Marshal(out)
	if _, err := d.dedup.Create(ctx, key, data, jetstream.KeyTTL(ttl)); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("dedup %s: %w", key, err)
	}
	return nil
}
