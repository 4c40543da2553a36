package dispatcher

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// queueOpenBacklog bounds the queue open requests a dispatcher holds.
const queueOpenBacklog = 4096

// Bounds of what an agent may ask the job consumers it has created to
// be.
const (
	maxOpenAckWait    = 24 * time.Hour
	maxOpenMaxDeliver = 100
)

// subscribeQueueOpens subscribes to agents' queue open requests
// (subjects.QueueOpen), for serveQueueOpens to answer. Agents with
// credentials may not create consumers themselves.
func (d *Dispatcher) subscribeQueueOpens() (*nats.Subscription, chan *nats.Msg, error) {
	// Room for a fleet's agents starting at once: a request the channel
	// has no room for is dropped, and its agent asks again.
	ch := make(chan *nats.Msg, queueOpenBacklog)
	sub, err := d.nc.ChanQueueSubscribe(subjects.AllQueueOpens, subjects.QueueOpenGroup, ch)
	if err != nil {
		return nil, nil, fmt.Errorf("dispatcher: subscribe queue opens: %w", err)
	}
	return sub, ch, nil
}

// serveQueueOpens answers the queue open requests on ch until ctx ends:
// one dispatcher of the group creates the job consumers of the queue that
// are missing.
func (d *Dispatcher) serveQueueOpens(ctx context.Context, ch <-chan *nats.Msg) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-ch:
			reply := wire.QueueOpenReply{}
			if err := d.openQueue(ctx, m); err != nil {
				d.log.Warn().Err(err).Str("subject", m.Subject).Msg("queue open refused")
				reply.Error = err.Error()
			}
			data, _ := json.Marshal(reply)
			_ = m.Respond(data)
		}
	}
}

// openQueue creates the job consumers a queue open request asks for.
func (d *Dispatcher) openQueue(ctx context.Context, m *nats.Msg) error {
	var req wire.QueueOpen
	if err := json.Unmarshal(m.Data, &req); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	if m.Subject != subjects.QueueOpen(req.Queue) {
		return fmt.Errorf("queue %q asked for on %s", req.Queue, m.Subject)
	}
	if req.AckWait < 0 || req.AckWait > maxOpenAckWait || req.MaxDeliver < 0 || req.MaxDeliver > maxOpenMaxDeliver {
		return fmt.Errorf("queue %s: ack wait %s and max deliver %d: want at most %s and %d", req.Queue, req.AckWait, req.MaxDeliver, maxOpenAckWait, maxOpenMaxDeliver)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := bus.EnsureJobConsumers(ctx, d.js, req.Queue, req.AckWait, req.MaxDeliver); err != nil {
		return err
	}
	d.log.Debug().Str("queue", req.Queue).Msg("queue opened")
	return nil
}
