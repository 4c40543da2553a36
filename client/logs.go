package client

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/runstore"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// Logs calls fn for every stored output line of a run (of one stage when
// stage is not empty), in the order stored. With follow it goes on with
// the lines still to come and returns once the run ended and all of its
// output arrived; without, it returns after the lines stored when it
// started. A run that does not exist wraps runstore.ErrNoRun.
func Logs(ctx context.Context, js jetstream.JetStream, runID, stage string, follow bool, fn func(Line)) error {
	rs, err := runstore.Open(ctx, js)
	if err != nil {
		return err
	}
	if _, _, err := rs.Header(ctx, runID); err != nil {
		return err
	}
	if follow {
		_, err := Follow(ctx, js, runID, func(u Update) {
			if u.Line != nil && (stage == "" || u.Line.Stage == stage) {
				fn(*u.Line)
			}
		})
		return err
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
		batch, err := c.Fetch(int(min(left, 256)))
		if err != nil {
			return fmt.Errorf("logs of %s: %w", runID, err)
		}
		for msg := range batch.Messages() {
			left--
			var b wire.LogBatch
			if json.Unmarshal(msg.Data(), &b) != nil {
				continue
			}
			key := msg.Subject()[strings.LastIndexByte(msg.Subject(), '.')+1:]
			for _, l := range b.Lines {
				fn(Line{Stage: key, Attempt: b.Attempt, LogLine: l})
			}
		}
		if err := batch.Error(); err != nil {
			return fmt.Errorf("logs of %s: %w", runID, err)
		}
	}
	return nil
}
