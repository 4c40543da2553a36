package agent

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// publishRetrying publishes data to subj and waits up to timeout for the
// stream to store it, trying again while it cannot (the connection moving
// to another server or a leaf link coming back, a cluster electing the
// stream's leader), and returns the acknowledgement and how many tries it
// took. Give a message id (jetstream.WithMsgID) where a retry after a lost
// acknowledgement must not store a second copy.
func publishRetrying(ctx context.Context, js jetstream.JetStream, subj string, data []byte, timeout time.Duration, opts ...jetstream.PublishOpt) (*jetstream.PubAck, int, error) {
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for wait, tries := 50*time.Millisecond, 1; ; tries++ {
		ack, err := js.Publish(pctx, subj, data, opts...)
		if err == nil {
			return ack, tries, nil
		}
		select {
		case <-pctx.Done():
			return nil, tries, err
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}
