package client

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/runstore"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// Logs calls fn for every stored output line of a run (of one stage when
// stage is not empty), in the order stored. With follow it goes on with
// the lines still to come and returns once all of the output arrived of
// the run after it ended, or of the stage after it ended (its final
// finish: a finish followed by a retry goes on with the retry's lines);
// without, it returns after the lines stored when it started. Either way
// it holds a few MiB of output at most, however long the log. A run that
// does not exist wraps runstore.ErrNoRun, a stage its pipeline does not
// have ErrNoStage.
func Logs(ctx context.Context, js jetstream.JetStream, runID, stage string, follow bool, fn func(Line)) error {
	rs, err := runstore.Open(ctx, js)
	if err != nil {
		return err
	}
	h, _, err := rs.Header(ctx, runID)
	if err != nil {
		return err
	}
	if stage != "" {
		p, err := rs.Spec(ctx, h.Spec)
		if err != nil {
			return fmt.Errorf("logs of %s: %w", runID, err)
		}
		if p.Index(stage) < 0 {
			return fmt.Errorf("logs of %s: stage %q: %w", runID, stage, ErrNoStage)
		}
	}
	if follow {
		return followLogs(ctx, js, runID, stage, fn)
	}
	filter := subjects.RunLogs(runID)
	if stage != "" {
		filter = subjects.Logs(runID, stage)
	}
	c, err := js.OrderedConsumer(ctx, subjects.LogsStream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
	if err != nil {
		return fmt.Errorf("logs of %s: %w", runID, err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		return fmt.Errorf("logs of %s: %w", runID, err)
	}
	for left := info.NumPending; left > 0; {
		batch, err := c.Fetch(int(min(left, 256)), jetstream.FetchMaxBytes(logBufferBytes))
		if err != nil {
			return fmt.Errorf("logs of %s: %w", runID, err)
		}
		for msg := range batch.Messages() {
			left--
			var b wire.LogBatch
			if json.Unmarshal(msg.Data(), &b) != nil {
				continue
			}
			key := subjects.LogStage(msg.Subject())
			for _, l := range b.Lines {
				fn(Line{Stage: key, Attempt: b.Attempt, Seq: b.Seq, LogLine: l})
			}
		}
		if err := batch.Error(); err != nil {
			return fmt.Errorf("logs of %s: %w", runID, err)
		}
	}
	return nil
}

// followLogs is Logs with follow: the lines of a follow of the run, or of
// the stage alone.
func followLogs(ctx context.Context, js jetstream.JetStream, runID, stage string, fn func(Line)) error {
	_, err := follow(ctx, js, runID, stage, func(u Update) {
		if u.Line != nil {
			fn(*u.Line)
		}
	})
	return err
}
