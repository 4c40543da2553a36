package bus

import (
	"context"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// pendingBatch bounds the messages ReadPending fetches at once.
const pendingBatch = 1000

// ReadPending reads, with an ordered consumer of stream made from cfg,
// the messages cfg selects that were stored when it began, in stream
// order, calling fn with each; it stops at the first error fn returns.
// Messages stored meanwhile cannot keep it going, and, unlike a KV watch
// abandoned after its initial values, it leaves no goroutine of the
// client library blocked on a message nobody reads. It fetches what is
// there without waiting for more, so a message removed meanwhile (a
// waiting run admitted, an expired key) ends the read early rather than
// holding it.
func ReadPending(ctx context.Context, js jetstream.JetStream, stream string, cfg jetstream.OrderedConsumerConfig, fn func(jetstream.Msg) error) error {
	c, err := js.OrderedConsumer(ctx, stream, cfg)
	if err != nil {
		return err
	}
	info, err := c.Info(ctx)
	if err != nil {
		return err
	}
	for want, got := info.NumPending, uint64(0); got < want; {
		if err := ctx.Err(); err != nil {
			return err
		}
		batch, err := c.FetchNoWait(int(min(want-got, pendingBatch)))
		if err != nil {
			return err
		}
		n := 0
		for m := range batch.Messages() {
			n++
			got++
			if meta, err := m.Metadata(); err == nil && meta.NumPending == 0 {
				want = got // the last of the stream as it was
			}
			if err := fn(m); err != nil {
				return err
			}
		}
		if err := batch.Error(); err != nil {
			return err
		}
		if n == 0 {
			return nil // what was pending went meanwhile
		}
	}
	return nil
}

// Values calls fn with the key and value of every key of the KV bucket
// as it was when Values began (its last revision; deleted and expired
// keys left out), in the order they were last written, read from the
// bucket's stream with ReadPending.
func Values(ctx context.Context, js jetstream.JetStream, bucket string, fn func(key string, value []byte) error) error {
	prefix := "$KV." + bucket + "."
	err := ReadPending(ctx, js, "KV_"+bucket, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{prefix + ">"},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	}, func(m jetstream.Msg) error {
		if h := m.Headers(); h.Get("KV-Operation") != "" || h.Get(jetstream.MarkerReasonHeader) != "" {
			return nil // a delete, a purge or an expiry
		}
		return fn(strings.TrimPrefix(m.Subject(), prefix), m.Data())
	})
	if err != nil {
		return fmt.Errorf("read bucket %s: %w", bucket, err)
	}
	return nil
}
