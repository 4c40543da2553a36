package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// ErrNoAgent is wrapped by DrainAgent's error when no agent of that id
// answered.
var ErrNoAgent = errors.New("client: no such agent")

// DrainAgent asks agent id to drain: take no more jobs, finish those it
// runs, leave the registry. It returns the agent's answer, which names the
// stages it still runs; it waits at most 10 s for it.
func DrainAgent(ctx context.Context, nc *nats.Conn, id string) (*wire.DrainReply, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m, err := nc.RequestWithContext(ctx, subjects.AgentDrain(id), nil)
	if errors.Is(err, nats.ErrNoResponders) {
		return nil, fmt.Errorf("drain agent %s: %w", id, ErrNoAgent)
	}
	if err != nil {
		return nil, fmt.Errorf("drain agent %s: %w", id, err)
	}
	var r wire.DrainReply
	if err := json.Unmarshal(m.Data, &r); err != nil {
		return nil, fmt.Errorf("drain agent %s: %w", id, err)
	}
	return &r, nil
}
