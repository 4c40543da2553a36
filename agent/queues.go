package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// openRetry is how long the agent waits between asks while no dispatcher
// answers a queue open request.
const openRetry = time.Second

// openTimeout bounds one queue open request.
const openTimeout = 10 * time.Second

// openQueue makes sure the job consumers of job queue q exist: those
// missing a dispatcher creates when asked (subjects.QueueOpen), or, when
// none answers and the agent may (not Config.OpenByDispatcher), the agent
// itself. An agent that may not waits for a dispatcher, saying so once;
// a request no dispatcher answered in time is sent again.
func (a *Agent) openQueue(ctx context.Context, q string) error {
	missing := false
	for _, tier := range subjects.Tiers {
		_, err := a.js.Consumer(ctx, subjects.JobsStream, subjects.JobConsumer(q, tier))
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			missing = true
			break
		}
		if err != nil {
			return fmt.Errorf("queue %s: consumer %s: %w", q, subjects.JobConsumer(q, tier), err)
		}
	}
	if !missing {
		return nil
	}
	req, _ := json.Marshal(wire.QueueOpen{Queue: q, AckWait: a.cfg.AckWait, MaxDeliver: a.cfg.MaxDeliver})
	said := false
	for {
		rctx, cancel := context.WithTimeout(ctx, openTimeout)
		m, err := a.nc.RequestWithContext(rctx, subjects.QueueOpen(q), req)
		cancel()
		switch {
		case err == nil:
			var reply wire.QueueOpenReply
			if err := json.Unmarshal(m.Data, &reply); err != nil {
				return fmt.Errorf("queue %s: a dispatcher's answer: %w", q, err)
			}
			if reply.Error != "" {
				return fmt.Errorf("queue %s: a dispatcher could not create its consumers: %s", q, reply.Error)
			}
			return nil
		case errors.Is(err, nats.ErrNoResponders) && !a.cfg.OpenByDispatcher:
			return bus.EnsureJobConsumers(ctx, a.js, q, a.cfg.AckWait, a.cfg.MaxDeliver)
		case errors.Is(err, nats.ErrNoResponders), (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout)) && ctx.Err() == nil:
			// No dispatcher yet, or a busy one dropped the request.
			if !said {
				a.log.Warn().Err(err).Str("queue", q).Msg("waiting for a dispatcher to create this queue's job consumers")
				said = true
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("queue %s: no dispatcher created its consumers: %w", q, ctx.Err())
			case <-time.After(openRetry):
			}
		default:
			return fmt.Errorf("queue %s: ask a dispatcher to create its consumers: %w", q, err)
		}
	}
}
