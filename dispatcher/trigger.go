package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"

	"github.com/weft-ci/weft/pipeline"
	"github.com/weft-ci/weft/runstore"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// errMalformedTrigger is wrapped by the error of a trigger message that is
// not a wire.Trigger with an id.
var errMalformedTrigger = errors.New("dispatcher: malformed trigger")

// errRunTooLarge is wrapped by the refusal of a trigger whose run
// document would not fit in one message.
var errRunTooLarge = errors.New("dispatcher: run document too large")

// kvHeaderRoom is the room left in a message for the headers of a KV
// write (the expected revision, a TTL).
const kvHeaderRoom = 1 << 10

// triggersConsumer returns the configuration of the durable consumer the
// dispatchers share on the triggers stream. Its redelivery delays are
// naks with subjects.TriggerRetryDelay, not a BackOff (see
// subjects.TriggerMaxDeliver).
func triggersConsumer() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       subjects.DispatcherTriggers,
		FilterSubject: subjects.AllTriggers,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       handlerAckWait,
		MaxDeliver:    subjects.TriggerMaxDeliver,
	}
}

// triggerHandling is how consumeWith treats triggers: retried with a
// growing delay, given up (giveUpTrigger) at once when they cannot
// succeed and after their last delivery otherwise.
func (d *Dispatcher) triggerHandling() handling {
	return handling{
		handle:     d.handleTrigger,
		maxDeliver: subjects.TriggerMaxDeliver,
		retryDelay: subjects.TriggerRetryDelay,
		permanent:  permanentTriggerError,
		giveUp:     d.giveUpTrigger,
		// Triggers of one repository are taken in order (their arrival
		// order is their admission order); repositories at once.
		partition: subjectToken(2),
		workers:   workers,
	}
}

// handleTrigger takes one trigger: validate, dedup, create the run waiting
// for admission (or refuse it: invalid, too large, or by policy), then
// admit what can be. Every check that can refuse a trigger runs before
// anything is written.
func (d *Dispatcher) handleTrigger(ctx context.Context, msg jetstream.Msg) error {
	t, err := decodeTrigger(msg.Data())
	if err != nil {
		return err
	}
	var (
		seq    uint64
		stored time.Time
	)
	if meta, err := msg.Metadata(); err == nil {
		seq, stored = meta.Sequence.Stream, meta.Timestamp
	}
	log := d.log.With().Str("trigger_id", t.ID).Logger()
	key := subjects.DedupKey(t.ID)
	prior, err := d.priorOutcome(ctx, key, stored)
	if err != nil {
		return err
	}
	if prior != nil && prior.RunID == "" {
		return nil // refused already: this is a redelivery
	}
	r, p, refused := d.draft(t, seq)
	if refused != nil {
		log.Info().Str("reason", refused.Reason).Msg(refused.Error)
		d.cfg.Metrics.Triggers.WithLabelValues("refused", refused.Reason).Inc()
		return d.recordOutcome(ctx, key, *refused, subjects.TriggerDuplicates)
	}
	// A duplicate gets the first run's id.
	if prior != nil {
		log.Info().Str("run_id", prior.RunID).Msg("duplicate trigger")
		d.cfg.Metrics.Triggers.WithLabelValues("deduped", "").Inc()
		r.ID = prior.RunID
		return d.createRun(ctx, r, p)
	}
	if refusal, err := d.refusal(ctx, t, p); err != nil {
		return err
	} else if refusal != nil {
		log.Info().Str("reason", refusal.Reason).Msg(refusal.Error)
		d.cfg.Metrics.Triggers.WithLabelValues("refused", refusal.Reason).Inc()
		return d.recordOutcome(ctx, key, *refusal, subjects.TriggerDuplicates)
	}
	data, _ := json.Marshal(wire.Outcome{RunID: r.ID})
	if _, err := d.dedup.Create(ctx, key, data, jetstream.KeyTTL(d.cfg.DedupWindow)); err != nil {
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("dedup %s: %w", key, err)
		}
		// Another dispatcher took it in between: handle it as a duplicate.
		return d.handleTrigger(ctx, msg)
	}
	d.cfg.Metrics.Triggers.WithLabelValues("admitted", "").Inc()
	return d.createRun(ctx, r, p)
}

// decodeTrigger decodes a trigger message. Its error wraps
// errMalformedTrigger; the trigger it returns then carries the id when
// one could be read, so that the refusal can be recorded.
func decodeTrigger(data []byte) (wire.Trigger, error) {
	var t wire.Trigger
	if err := json.Unmarshal(data, &t); err != nil {
		var id struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(data, &id)
		return wire.Trigger{ID: id.ID}, fmt.Errorf("%w: %v", errMalformedTrigger, err)
	}
	if t.ID == "" {
		return t, fmt.Errorf("%w: no id", errMalformedTrigger)
	}
	return t, nil
}

// priorOutcome returns the outcome recorded under key that answers the
// trigger message stored at stored, or nil when there is none. A refusal
// recorded before the message was stored answered an earlier publish of
// the same trigger id, before the stream's duplicate window passed: it is
// deleted, so that the trigger is decided again.
func (d *Dispatcher) priorOutcome(ctx context.Context, key string, stored time.Time) (*wire.Outcome, error) {
	for {
		entry, err := d.dedup.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("dedup %s: %w", key, err)
		}
		var out wire.Outcome
		if err := json.Unmarshal(entry.Value(), &out); err == nil && (out.RunID != "" || !entry.Created().Before(stored)) {
			return &out, nil
		}
		err = d.dedup.Delete(ctx, key, jetstream.LastRevision(entry.Revision()))
		if err == nil {
			return nil, nil
		}
		if !runstore.IsConflict(err) {
			return nil, fmt.Errorf("dedup %s: drop an earlier refusal: %w", key, err)
		}
	}
}

// draft validates a trigger and returns its run document, waiting for
// admission under a new run id, and its pipeline; or the refusal of a
// trigger that is invalid or whose run document would not fit.
func (d *Dispatcher) draft(t wire.Trigger, seq uint64) (*wire.Run, *pipeline.Pipeline, *wire.Outcome) {
	p, err := pipeline.Parse(t.File, []byte(t.Pipeline))
	if err == nil && t.Priority != "" {
		_, err = subjects.ParseTier(string(t.Priority))
	}
	if err == nil && t.Queue != "" {
		err = subjects.ValidateQueue(t.Queue)
	}
	if err == nil {
		err = validateVariables(t.Variables)
	}
	if err != nil {
		return nil, nil, &wire.Outcome{Error: err.Error(), Reason: wire.RefusedInvalid}
	}
	r := newRun(ulid.Make().String(), t, p, seq, d.cfg.Now())
	if err := d.fits(r); err != nil {
		return nil, nil, &wire.Outcome{Error: err.Error(), Reason: wire.RefusedInvalid}
	}
	return r, p, nil
}

// validateVariables checks a trigger's variable names: shell variable
// names, none of them WEFT_ (those are weft's own).
func validateVariables(vars map[string]string) error {
	for _, k := range slices.Sorted(maps.Keys(vars)) {
		if !pipeline.ValidEnvName(k) {
			return fmt.Errorf("variable %q: want a name of letters, digits and _, not starting with a digit", k)
		}
		if strings.HasPrefix(k, "WEFT_") {
			return fmt.Errorf("variable %q: WEFT_ variables are weft's own", k)
		}
	}
	return nil
}

// fits checks that what the run writes fits in one message with room for
// the headers of a KV write: its run document (which holds the
// repository, branch and commit) and the job of each stage (which holds
// the stage, its environment and the branch and commit again). The limit
// is subjects.MaxPayload, or the server's max_payload when that is
// smaller. A stage document is small whatever the trigger. The error
// wraps errRunTooLarge.
func (d *Dispatcher) fits(r *wire.Run) error {
	limit := d.maxPayload()
	data, err := json.Marshal(r.Document())
	if err != nil {
		return fmt.Errorf("%w: %s: encode: %v", errRunTooLarge, r.File, err)
	}
	if need := int64(len(data) + kvHeaderRoom); need > limit {
		return fmt.Errorf("%w: %s: the run document would need %d KiB (with the repository, branch and commit), over the limit of %d KiB a message may hold",
			errRunTooLarge, r.File, (need+1023)/1024, limit/1024)
	}
	for i := range r.Pipeline.Stages {
		st := &r.Pipeline.Stages[i]
		job := wire.Job{RunID: r.ID, Pipeline: r.Pipeline.Name, Attempt: 1, Job: 1, Tier: r.Tier, Stage: *st,
			Env: wire.JobEnv(r.Pipeline, st, r.ID, r.Branch, r.Commit, 1)}
		data, err := json.Marshal(job)
		if err != nil {
			return fmt.Errorf("%w: %s: encode stage %s: %v", errRunTooLarge, r.File, st.Key, err)
		}
		if need := int64(len(data) + kvHeaderRoom); need > limit {
			return fmt.Errorf("%w: %s: the job of stage %s would need %d KiB (its commands and environment, with the branch and commit), over the limit of %d KiB a message may hold",
				errRunTooLarge, r.File, st.Key, (need+1023)/1024, limit/1024)
		}
	}
	return nil
}

// maxPayload is the largest message weft writes: subjects.MaxPayload, or
// the server's max_payload when that is smaller.
func (d *Dispatcher) maxPayload() int64 {
	limit := int64(subjects.MaxPayload)
	if d.nc != nil {
		if mp := d.nc.MaxPayload(); mp > 0 && mp < limit {
			limit = mp
		}
	}
	return limit
}

// createRun creates the run document r, waiting for admission, if it
// does not exist, and admits what can be admitted. Called again for the
// same run it republishes the run's queued jobs (their message ids make
// that a no-op when they were sent).
func (d *Dispatcher) createRun(ctx context.Context, r *wire.Run, p *pipeline.Pipeline) error {
	id := r.ID
	spec, err := d.runs.rs.StoreSpec(ctx, p)
	if err != nil {
		return err
	}
	r.Spec = spec
	err = d.runs.create(ctx, r)
	switch {
	case err == nil:
		d.log.Info().Str("run_id", id).Str("pipeline", p.Name).Str("repo", r.Repo).Str("tier", string(r.Tier)).Msg("run created")
	case errors.Is(err, jetstream.ErrKeyExists):
		if r, err = d.runs.get(ctx, id); err != nil {
			return err
		}
		if err := d.publishJobs(ctx, r, unpublishedKeys(r)); err != nil {
			return err
		}
	default:
		return err
	}
	if r.Lease == "" && !r.State.Terminal() {
		if err := d.queueForAdmission(ctx, r); err != nil {
			return err
		}
	}
	if p.Concurrency != nil && p.Concurrency.CancelInProgress {
		if err := d.supersede(ctx, r); err != nil {
			return err
		}
	}
	if err := d.admit(ctx, subjects.RepoToken(r.Repo)); err != nil {
		return err
	}
	// Admission looked at the first waiting runs only: a run further back
	// says why it waits until its turn to be looked at comes.
	if b, _, err := d.runs.brief(ctx, id); err == nil && b.Lease == "" && b.Pending != nil && b.Pending.Reason == wire.PendingAdmission {
		d.pend(ctx, id, wire.PendingWIP, "earlier runs of "+repoName(r.Repo)+" wait for the WIP limit before it")
	}
	return nil
}

// recordOutcome records a refused trigger's outcome for ttl.
func (d *Dispatcher) recordOutcome(ctx context.Context, key string, out wire.Outcome, ttl time.Duration) error {
	data, _ := json.Marshal(out)
	if _, err := d.dedup.Create(ctx, key, data, jetstream.KeyTTL(ttl)); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("dedup %s: %w", key, err)
	}
	return nil
}

// permanentTriggerError reports whether handling a trigger failed in a
// way no retry can change: the message is not a trigger, or what it asks
// for cannot be written in one message.
func permanentTriggerError(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, errMalformedTrigger) || errors.Is(err, errRunTooLarge) || errors.Is(err, pipeline.ErrInvalid) ||
		errors.Is(err, nats.ErrMaxPayload) ||
		errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum
}

// giveUpTrigger ends a trigger that cannot succeed: handling it failed
// with a permanent error, or failed on its last delivery (cause is the
// error). It answers the trigger with a refusal carrying cause, unless a
// run was created for it, and copies the message to the dead-letter
// stream. consumeWith acks the message once it returns nil.
func (d *Dispatcher) giveUpTrigger(ctx context.Context, msg jetstream.Msg, delivered uint64, cause error) error {
	dt := deadTrigger{subject: msg.Subject(), data: msg.Data()}
	if meta, err := msg.Metadata(); err == nil {
		dt.seq, dt.stored = meta.Sequence.Stream, meta.Timestamp
	}
	return d.bury(ctx, dt, delivered, cause)
}

// deadTrigger is a trigger message being given up.
type deadTrigger struct {
	subject string
	data    []byte
	// seq and stored are the message's triggers-stream sequence and
	// time; 0 and zero when unknown.
	seq    uint64
	stored time.Time
}

// bury answers a trigger given up with a refusal carrying cause (reason
// invalid for a permanent error, dead_letter otherwise), unless a run was
// created for it, and copies it to the dead-letter stream.
func (d *Dispatcher) bury(ctx context.Context, dt deadTrigger, delivered uint64, cause error) error {
	t, _ := decodeTrigger(dt.data)
	why := cause.Error()
	if t.ID != "" {
		out := wire.Outcome{Error: why, Reason: wire.RefusedInvalid}
		if !permanentTriggerError(cause) {
			out = wire.Outcome{Error: fmt.Sprintf("the dispatcher gave up on the trigger after %d deliveries: %v", delivered, cause), Reason: wire.RefusedDeadLetter}
		}
		if err := d.answer(ctx, subjects.DedupKey(t.ID), out, dt.stored); err != nil {
			return err
		}
	}
	if err := d.deadLetterTrigger(ctx, dt, t.ID, delivered, why); err != nil {
		return err
	}
	d.log.Warn().Err(cause).Str("trigger_id", t.ID).Str("subject", dt.subject).Uint64("deliveries", delivered).
		Msg("trigger given up and copied to the dead-letter stream")
	return nil
}

// errTriggerAbandoned is the cause of a trigger whose last delivery no
// dispatcher finished (it died while handling it).
var errTriggerAbandoned = errors.New("dispatcher: no dispatcher finished handling its last delivery")

// handleDeadTrigger gives up a trigger the server reports as out of
// deliveries: its last delivery was taken and never acked (the
// dispatcher handling it died). The work queue would keep it forever and
// its client would wait forever: it is answered, copied to the
// dead-letter stream and deleted. Each step is idempotent.
func (d *Dispatcher) handleDeadTrigger(ctx context.Context, adv maxDeliveriesAdvisory) error {
	st, err := d.js.Stream(ctx, subjects.TriggersStream)
	if err != nil {
		return fmt.Errorf("triggers stream: %w", err)
	}
	raw, err := st.GetMsg(ctx, adv.StreamSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil // acked at the last moment, or buried already
	}
	if err != nil {
		return fmt.Errorf("get dead trigger %d: %w", adv.StreamSeq, err)
	}
	dt := deadTrigger{subject: raw.Subject, data: raw.Data, seq: raw.Sequence, stored: raw.Time}
	if err := d.bury(ctx, dt, adv.Deliveries, errTriggerAbandoned); err != nil {
		return err
	}
	if err := st.DeleteMsg(ctx, adv.StreamSeq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("delete dead trigger %d: %w", adv.StreamSeq, err)
	}
	return nil
}

// answer records out as the outcome of the trigger under key, for
// subjects.TriggerDuplicates. It replaces a run id whose run document was
// never written, and a refusal recorded before the trigger's message was
// stored; a run that exists keeps its outcome.
func (d *Dispatcher) answer(ctx context.Context, key string, out wire.Outcome, stored time.Time) error {
	data, _ := json.Marshal(out)
	for {
		entry, err := d.dedup.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			_, err = d.dedup.Create(ctx, key, data, jetstream.KeyTTL(subjects.TriggerDuplicates))
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue
			}
			if err != nil {
				return fmt.Errorf("dedup %s: %w", key, err)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("dedup %s: %w", key, err)
		}
		var prior wire.Outcome
		if json.Unmarshal(entry.Value(), &prior) == nil {
			if prior.RunID == "" && !entry.Created().Before(stored) {
				return nil // refused already
			}
			if prior.RunID != "" {
				_, err := d.runs.header(ctx, prior.RunID)
				if err == nil {
					return nil // the trigger took effect
				}
				if !errors.Is(err, jetstream.ErrKeyNotFound) {
					return err
				}
			}
		}
		// A CAS write with a TTL: KeyValue.Update would drop the TTL.
		_, err = d.js.Publish(ctx, subjects.KVSubject(subjects.DedupBucket, key), data,
			jetstream.WithExpectLastSequencePerSubject(entry.Revision()), jetstream.WithMsgTTL(subjects.TriggerDuplicates))
		if err == nil {
			return nil
		}
		if !runstore.IsConflict(err) {
			return fmt.Errorf("dedup %s: %w", key, err)
		}
	}
}

// maxErrorHeader bounds the error a dead trigger's copy carries.
const maxErrorHeader = 1 << 10

// deadLetterTrigger copies a trigger message to the dead-letter stream,
// on subjects.TriggerDLQ of its subject, with why it was given up. A
// trigger too large to copy with its headers is copied without its body.
func (d *Dispatcher) deadLetterTrigger(ctx context.Context, dt deadTrigger, id string, delivered uint64, why string) error {
	m := nats.NewMsg(subjects.TriggerDLQ(dt.subject))
	m.Header.Set(subjects.HeaderSubject, dt.subject)
	m.Header.Set(subjects.HeaderDeliveries, strconv.FormatUint(delivered, 10))
	if id != "" {
		m.Header.Set(subjects.HeaderTrigger, headerValue(id, maxErrorHeader))
	}
	m.Header.Set(subjects.HeaderError, headerValue(why, maxErrorHeader))
	m.Data = dt.data
	if int64(len(m.Data)+4*maxErrorHeader) > d.maxPayload() {
		m.Data = nil
		m.Header.Set(subjects.HeaderError, headerValue(fmt.Sprintf("%s (the trigger's %d bytes are too large to copy with this header)", why, len(dt.data)), maxErrorHeader))
	}
	var opts []jetstream.PublishOpt
	if dt.seq != 0 {
		opts = append(opts, jetstream.WithMsgID(subjects.TriggerDLQMsgID(dt.seq)))
	}
	if _, err := d.js.PublishMsg(ctx, m, opts...); err != nil {
		return fmt.Errorf("dead-letter trigger %s: %w", id, err)
	}
	return nil
}

// headerValue returns s on one line, at most n bytes long.
func headerValue(s string, n int) string {
	var lines []string
	for line := range strings.Lines(s) {
		if line = strings.Join(strings.Fields(line), " "); line != "" {
			lines = append(lines, line)
		}
	}
	s = strings.Join(lines, " | ")
	if len(s) > n {
		s = strings.ToValidUTF8(s[:n-3], "") + "..."
	}
	return s
}
