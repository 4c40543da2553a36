package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/subjects"
)

// pausedForever is how long a pause of the intake lasts: until resumed.
const pausedForever = 100 * 365 * 24 * time.Hour

// PauseIntake stops the dispatchers from taking triggers: the triggers
// consumer is paused (JetStream consumer pause), so triggers published
// meanwhile wait in the triggers stream, durably and in order, until
// ResumeIntake. Runs already admitted go on.
func PauseIntake(ctx context.Context, js jetstream.JetStream) error {
	if _, err := js.PauseConsumer(ctx, subjects.TriggersStream, subjects.DispatcherTriggers, time.Now().Add(pausedForever)); err != nil {
		return fmt.Errorf("pause intake: %w", intakeErr(err))
	}
	return nil
}

// ResumeIntake lets the dispatchers take triggers again, those that
// waited first, in the order they came.
func ResumeIntake(ctx context.Context, js jetstream.JetStream) error {
	if _, err := js.ResumeConsumer(ctx, subjects.TriggersStream, subjects.DispatcherTriggers); err != nil {
		return fmt.Errorf("resume intake: %w", intakeErr(err))
	}
	return nil
}

// Intake says whether the intake is paused and how many triggers wait.
func Intake(ctx context.Context, js jetstream.JetStream) (paused bool, waiting uint64, err error) {
	c, err := js.Consumer(ctx, subjects.TriggersStream, subjects.DispatcherTriggers)
	if err != nil {
		return false, 0, fmt.Errorf("intake: %w", intakeErr(err))
	}
	info := c.CachedInfo()
	return info.Paused, info.NumPending + uint64(info.NumAckPending), nil
}

// intakeErr explains a missing triggers consumer: no dispatcher has run.
func intakeErr(err error) error {
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("no dispatcher has started on this server yet: %w", err)
	}
	return err
}
