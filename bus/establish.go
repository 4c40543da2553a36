package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// AttemptTimeout bounds one attempt of Establish.
const AttemptTimeout = 5 * time.Second

// Establish makes something with create (a KV watcher, a consumer, a
// bucket handle), trying again for as long as ctx lasts while the server
// does not answer: a JetStream cluster drops API requests while it
// elects a stream's leader, and the client would wait for the whole of
// ctx. Each attempt gets AttemptTimeout, and a context that lives on
// after it succeeds, for what is bound to it (a watcher stops when its
// context ends): call the returned cancel when done with the value.
// Other errors are returned at once.
func Establish[T any](ctx context.Context, create func(context.Context) (T, error)) (T, context.CancelFunc, error) {
	var zero T
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		actx, cancel := context.WithCancel(ctx)
		timer := time.AfterFunc(AttemptTimeout, cancel)
		v, err := create(actx)
		inTime := timer.Stop()
		if err == nil && inTime {
			return v, cancel, nil
		}
		cancel()
		if ctx.Err() != nil {
			return zero, nil, fmt.Errorf("%w (the server did not answer)", ctx.Err())
		}
		if inTime && !unanswered(err) {
			return zero, nil, err
		}
		select {
		case <-ctx.Done():
			return zero, nil, ctx.Err()
		case <-time.After(wait):
		}
	}
}

// unanswered reports whether err says a JetStream request got no answer
// (no responder, a timeout, a stream with no leader yet) rather than a
// refusal. A 503 comes as jetstream's APIError from most calls and as
// nats's from the Object Store's reads, which subscribe through the
// older API.
func unanswered(err error) bool {
	var apiErr *jetstream.APIError
	var oldAPIErr *nats.APIError
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrNoStreamResponse) ||
		(errors.As(err, &apiErr) && apiErr.Code == 503) ||
		(errors.As(err, &oldAPIErr) && oldAPIErr.Code == 503)
}

// KeyValue opens the KV bucket name through Establish: a request dropped
// while a cluster elects the bucket's leader is asked again rather than
// waited out for all of ctx.
func KeyValue(ctx context.Context, js jetstream.JetStream, name string) (jetstream.KeyValue, error) {
	return open(ctx, name, js.KeyValue)
}

// ObjectStore opens the object store bucket name as KeyValue opens a KV
// bucket.
func ObjectStore(ctx context.Context, js jetstream.JetStream, name string) (jetstream.ObjectStore, error) {
	return open(ctx, name, js.ObjectStore)
}

// open opens a bucket with get through Establish. A bucket handle keeps
// no context, so the attempt's is released at once.
func open[T any](ctx context.Context, name string, get func(context.Context, string) (T, error)) (T, error) {
	v, done, err := Establish(ctx, func(ctx context.Context) (T, error) { return get(ctx, name) })
	if err != nil {
		return v, fmt.Errorf("bucket %s: %w", name, err)
	}
	done()
	return v, nil
}
