package bus

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// valuesBatch bounds the messages Values fetches at once.
const valuesBatch = 1000

// Values calls fn with the key and value of every key of the KV bucket
// as it was when Values began (its last revision; deleted and expired
// keys left out), in the order they were last written. It reads the
// bucket's stream with an ordered consumer and stops at what was stored
// when it began: writes meanwhile cannot keep it going, and, unlike a KV
// watch abandoned after its initial values, it leaves no goroutine of
// the client library blocked on an update nobody reads.
func Values(ctx context.Context, js jetstream.JetStream, bucket string, fn func(key string, value []byte) error) error {
	prefix := "$KV." + bucket + "."
	c, err := js.OrderedConsumer(ctx, "KV_"+bucket, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{prefix + ">"},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	})
	if err != nil {
		return fmt.Errorf("read bucket %s: %w", bucket, err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		return fmt.Errorf("read bucket %s: %w", bucket, err)
	}
	for want, got := info.NumPending, uint64(0); got < want; {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("read bucket %s: %w", bucket, err)
		}
		batch, err := c.Fetch(int(min(want-got, valuesBatch)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return fmt.Errorf("read bucket %s: %w", bucket, err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			got++
			if meta, err := m.Metadata(); err == nil && meta.NumPending == 0 {
				want = got // the last of the bucket as it was
			}
			if h := m.Headers(); h.Get("KV-Operation") != "" || h.Get(jetstream.MarkerReasonHeader) != "" {
				continue // a delete, a purge or an expiry
			}
			if err := fn(strings.TrimPrefix(m.Subject(), prefix), m.Data()); err != nil {
				return err
			}
		}
		if err := batch.Error(); err != nil {
			return fmt.Errorf("read bucket %s: %w", bucket, err)
		}
		if n == 0 {
			return fmt.Errorf("read bucket %s: %d of %d keys came, then none", bucket, got, want)
		}
	}
	return nil
}
