package bus

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestEstablishAsksAgainOnlyWhileUnanswered feeds Establish the errors a
// cluster gives while it elects leaders, in both of nats.go's shapes,
// and a refusal: the first are asked again until an answer comes, the
// refusal is returned at once.
func TestEstablishAsksAgainOnlyWhileUnanswered(t *testing.T) {
	unavailable := []error{
		nats.ErrNoResponders,
		nats.ErrTimeout,
		jetstream.ErrNoStreamResponse,
		&jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"},
		fmt.Errorf("pipeline spec: %w", &nats.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}),
	}
	for _, cause := range unavailable {
		t.Run(cause.Error(), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			calls := 0
			v, done, err := Establish(ctx, func(context.Context) (string, error) {
				calls++
				if calls < 3 {
					return "", cause
				}
				return "answer", nil
			})
			if err != nil {
				t.Fatalf("Establish gave up after %d calls: %v", calls, err)
			}
			done()
			if v != "answer" || calls != 3 {
				t.Fatalf("got %q after %d calls, want \"answer\" after 3", v, calls)
			}
		})
	}

	refusal := fmt.Errorf("run 01X: %w", jetstream.ErrKeyNotFound)
	calls := 0
	_, _, err := Establish(context.Background(), func(context.Context) (string, error) {
		calls++
		return "", refusal
	})
	if !errors.Is(err, jetstream.ErrKeyNotFound) || calls != 1 {
		t.Fatalf("a refusal gave %v after %d calls, want ErrKeyNotFound after 1", err, calls)
	}
}
