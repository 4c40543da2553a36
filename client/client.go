package client

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/runstore"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// ErrRefused is matched by Submit's error when the dispatcher refused the
// trigger; errors.As gives the *RefusedError with the reason.
var ErrRefused = errors.New("client: trigger refused")

// RefusedError is a refusal by the dispatcher.
type RefusedError struct {
	// Reason is wire.RefusedInvalid (the trigger is bad: the pipeline,
	// its size, the trigger itself), wire.RefusedWIP,
	// wire.RefusedBackpressure, or wire.RefusedDeadLetter (the dispatcher
	// failed on every delivery of the trigger and moved it to the
	// dead-letter stream; trying again may work).
	Reason string
	// RetryAfter is set on capacity refusals.
	RetryAfter time.Duration
	// Message is the dispatcher's explanation.
	Message string
}

func (e *RefusedError) Error() string { return "trigger refused: " + e.Message }

// Is makes errors.Is(err, ErrRefused) true.
func (e *RefusedError) Is(target error) bool { return target == ErrRefused }

// TriggerID returns the id of a trigger that has no delivery id: the same
// pipeline file, with the same content, of the same repository at the
// same branch and commit, with the same priority and variables, is the
// same trigger. A file changed to fix it is
// a new trigger, not a duplicate of the refused one.
func TriggerID(t wire.Trigger) string {
	parts := []string{t.Repo, t.File, t.Branch, t.Commit, t.Pipeline}
	if t.Priority != "" || len(t.Variables) > 0 {
		parts = append(parts, string(t.Priority))
		for _, k := range slices.Sorted(maps.Keys(t.Variables)) {
			parts = append(parts, k+"="+t.Variables[k])
		}
	}
	sum := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return "sha256-" + hex.EncodeToString(sum[:16])
}

// Submit publishes t and waits until a dispatcher has taken it (its run
// document exists), returning the run id (for a duplicate, the first
// run's); the run may still wait for admission. A trigger without an ID
// gets TriggerID(t). It returns a *RefusedError (matching ErrRefused)
// when the dispatcher refused it, or gave it up.
//
// A refusal answers the publishes of one trigger message: a trigger
// published again after the triggers stream's duplicate window is
// decided again, so Submit then waits for the new outcome instead of
// returning the one already recorded.
func Submit(ctx context.Context, js jetstream.JetStream, t wire.Trigger) (string, error) {
	if t.ID == "" {
		t.ID = TriggerID(t)
	}
	if t.Time.IsZero() {
		t.Time = time.Now()
	}
	data, err := json.Marshal(t)
	if err != nil {
		return "", fmt.Errorf("encode trigger: %w", err)
	}
	if len(data) > subjects.MaxPayload {
		return "", &RefusedError{Reason: wire.RefusedInvalid, Message: fmt.Sprintf("trigger is %d bytes, over the %d byte limit", len(data), subjects.MaxPayload)}
	}
	dedup, err := bus.KeyValue(ctx, js, subjects.DedupBucket)
	if err != nil {
		return "", err
	}
	runs, err := bus.KeyValue(ctx, js, subjects.RunsBucket)
	if err != nil {
		return "", err
	}
	key := subjects.DedupKey(t.ID)
	// earlier is the revision of the outcome recorded before this publish:
	// a refusal up to it answered an earlier message of the trigger.
	var earlier uint64
	if e, err := dedup.Get(ctx, key); err == nil {
		earlier = e.Revision()
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", fmt.Errorf("trigger outcome %s: %w", t.ID, err)
	}
	// Watch before publishing, so the outcome cannot be missed.
	w, err := dedup.Watch(ctx, key)
	if err != nil {
		return "", fmt.Errorf("watch trigger outcome: %w", err)
	}
	defer func() { _ = w.Stop() }()
	ack, err := js.Publish(ctx, subjects.Trigger(t.Repo), data, jetstream.WithMsgID(t.ID))
	if err != nil {
		return "", fmt.Errorf("publish trigger %s: %w", t.ID, err)
	}
	if ack.Duplicate {
		// The message stored earlier is the one decided: what it got
		// answers this publish too.
		earlier = 0
	}
	var (
		runID      string
		run        jetstream.KeyWatcher // the run document of runID, once known
		runUpdates <-chan jetstream.KeyValueEntry
	)
	defer func() {
		if run != nil {
			_ = run.Stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("wait for trigger %s: %w", t.ID, ctx.Err())
		case e, ok := <-w.Updates():
			if !ok {
				return "", fmt.Errorf("wait for trigger %s: watch closed", t.ID)
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			var out wire.Outcome
			if err := json.Unmarshal(e.Value(), &out); err != nil {
				return "", fmt.Errorf("decode outcome of %s: %w", t.ID, err)
			}
			switch {
			case out.Error != "" && e.Revision() > earlier:
				return "", &RefusedError{Reason: out.Reason, RetryAfter: out.RetryAfter, Message: out.Error}
			case out.RunID != "" && out.RunID != runID:
				// Taken: wait for the run document, or for a refusal that
				// replaces the run id when it could not be written.
				if run != nil {
					_ = run.Stop()
				}
				runID = out.RunID
				if _, err := runs.Get(ctx, runID); err == nil {
					return runID, nil
				} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
					return "", fmt.Errorf("get run %s: %w", runID, err)
				}
				if run, err = runs.Watch(ctx, runID); err != nil {
					return "", fmt.Errorf("watch run %s: %w", runID, err)
				}
				runUpdates = run.Updates()
			}
		case e, ok := <-runUpdates:
			if !ok {
				return "", fmt.Errorf("wait for run %s: watch closed", runID)
			}
			if e != nil && e.Operation() == jetstream.KeyValuePut {
				return runID, nil
			}
		}
	}
}

// Cancel asks the dispatcher to cancel a run, giving reason.
func Cancel(ctx context.Context, js jetstream.JetStream, runID, reason string) error {
	return CancelStage(ctx, js, runID, "", reason)
}

// CancelStage asks the dispatchers to cancel one stage of a run (the
// whole run for stage ""): pending or queued, it is cancelled at once;
// running, its agent stops it. Its dependents are skipped, the other
// stages go on, and the run ends cancelled unless a stage failed.
func CancelStage(ctx context.Context, js jetstream.JetStream, runID, stage, reason string) error {
	if err := ask(ctx, js, wire.Event{Type: wire.CancelRequested, RunID: runID, Stage: stage, Message: reason}); err != nil {
		if stage != "" {
			return fmt.Errorf("cancel stage %s of run %s: %w", stage, runID, err)
		}
		return fmt.Errorf("cancel run %s: %w", runID, err)
	}
	return nil
}

// Get returns run runID whole: its document, pipeline and stages. A
// missing run wraps runstore.ErrNoRun.
func Get(ctx context.Context, js jetstream.JetStream, runID string) (*wire.Run, error) {
	rs, err := runstore.Open(ctx, js)
	if err != nil {
		return nil, err
	}
	return rs.Get(ctx, runID)
}

// PauseQueue pauses queue: agents finish what they run but take no new job
// from it until ResumeQueue. reason is shown by weft status.
func PauseQueue(ctx context.Context, js jetstream.JetStream, queue, reason string) error {
	if err := subjects.ValidateQueue(queue); err != nil {
		return err
	}
	kv, err := bus.KeyValue(ctx, js, subjects.WIPBucket)
	if err != nil {
		return err
	}
	if _, err := kv.Put(ctx, subjects.PauseKey(queue), []byte(reason)); err != nil {
		return fmt.Errorf("pause queue %s: %w", queue, err)
	}
	return nil
}

// ResumeQueue resumes a paused queue.
func ResumeQueue(ctx context.Context, js jetstream.JetStream, queue string) error {
	if err := subjects.ValidateQueue(queue); err != nil {
		return err
	}
	kv, err := bus.KeyValue(ctx, js, subjects.WIPBucket)
	if err != nil {
		return err
	}
	if err := kv.Delete(ctx, subjects.PauseKey(queue)); err != nil {
		return fmt.Errorf("resume queue %s: %w", queue, err)
	}
	return nil
}

// StageEvents returns every stored lifecycle event of one stage of a run,
// in order.
func StageEvents(ctx context.Context, js jetstream.JetStream, runID, stage string) ([]wire.Event, error) {
	c, err := js.OrderedConsumer(ctx, subjects.EventsStream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subjects.StageEvent(runID, stage)}})
	if err != nil {
		return nil, fmt.Errorf("events of %s/%s: %w", runID, stage, err)
	}
	var out []wire.Event
	for {
		batch, err := c.FetchNoWait(100)
		if err != nil {
			return nil, fmt.Errorf("events of %s/%s: %w", runID, stage, err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			var ev wire.Event
			if json.Unmarshal(m.Data(), &ev) == nil {
				out = append(out, ev)
			}
		}
		if n == 0 {
			return out, nil
		}
	}
}
