package client

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

// ErrRefused is wrapped by Submit when the dispatcher refused the trigger;
// the error's text carries the dispatcher's reason (validation errors).
var ErrRefused = errors.New("client: trigger refused")

// Submit publishes t and waits until a dispatcher has admitted it, returning
// the run id (for a duplicate, the first run's). It returns an error
// wrapping ErrRefused when the dispatcher refused it.
func Submit(ctx context.Context, js jetstream.JetStream, t wire.Trigger) (string, error) {
	if t.ID == "" {
		return "", errors.New("client: trigger without id")
	}
	if t.Time.IsZero() {
		t.Time = time.Now()
	}
	data, err := json.Marshal(t)
	if err != nil {
		return "", fmt.Errorf("encode trigger: %w", err)
	}
	if len(data) > subjects.MaxPayload {
		return "", fmt.Errorf("%w: trigger is %d bytes, over the %d byte limit", ErrRefused, len(data), subjects.MaxPayload)
	}
	dedup, err := js.KeyValue(ctx, subjects.DedupBucket)
	if err != nil {
		return "", fmt.Errorf("bucket %s: %w", subjects.DedupBucket, err)
	}
	// Watch before publishing, so the outcome cannot be missed.
	w, err := dedup.Watch(ctx, subjects.DedupKey(t.ID))
	if err != nil {
		return "", fmt.Errorf("watch trigger outcome: %w", err)
	}
	defer func() { _ = w.Stop() }()
	if _, err := js.Publish(ctx, subjects.Trigger(t.Repo), data, jetstream.WithMsgID(t.ID)); err != nil {
		return "", fmt.Errorf("publish trigger %s: %w", t.ID, err)
	}
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
			if out.Error != "" {
				return "", fmt.Errorf("%w: %s", ErrRefused, out.Error)
			}
			return out.RunID, nil
		}
	}
}

// Cancel asks the dispatcher to cancel a run, giving reason.
func Cancel(ctx context.Context, js jetstream.JetStream, runID, reason string) error {
	data, err := json.Marshal(wire.Event{Type: wire.CancelRequested, RunID: runID, Time: time.Now(), Message: reason})
	if err != nil {
		return err
	}
	if _, err := js.Publish(ctx, subjects.RunEvent(runID), data); err != nil {
		return fmt.Errorf("cancel run %s: %w", runID, err)
	}
	return nil
}

// Get returns the run document of runID.
func Get(ctx context.Context, js jetstream.JetStream, runID string) (*wire.Run, error) {
	runs, err := js.KeyValue(ctx, subjects.RunsBucket)
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", subjects.RunsBucket, err)
	}
	e, err := runs.Get(ctx, runID)
	if err != nil {
		return nil, fmt.Errorf("get run %s: %w", runID, err)
	}
	var r wire.Run
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return nil, fmt.Errorf("decode run %s: %w", runID, err)
	}
	return &r, nil
}
