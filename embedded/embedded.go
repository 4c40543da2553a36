// Package embedded runs weft in one process: a bus (an embedded
// nats-server with JetStream, or a connection to one), its streams and
// buckets provisioned, dispatchers and agents. `weft run`, `weft bench`
// and the tests build their stacks with it, so there is one way to wire
// them. It holds no logic of its own; it may import every component
// package, and only cmd/weft, bench and test import it.
//
// Decisions taken where the design was silent:
//
//   - A component that stops with an error does not stop the others: the
//     stack records the first error (Err) and closes Failed, and whoever
//     runs the stack decides (weft run ends its run; a test fails).
//   - Close stops every component, waits for them, then closes the bus:
//     agents hand their running jobs back before the server goes away.
package embedded

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/weft-ci/weft/agent"
	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/dispatcher"
)

// Config configures a stack.
type Config struct {
	// Bus says how to reach NATS; an empty URL starts an embedded server
	// in Bus.StoreDir.
	Bus bus.Config
	// Dispatchers is how many dispatchers start with Dispatcher's
	// configuration; 0 starts none (StartDispatcher starts more).
	Dispatchers int
	// Dispatcher configures the dispatchers.
	Dispatcher dispatcher.Config
	// Agents start one agent each.
	Agents []agent.Config
	// Retention is how long runs, events, logs and artifacts are kept
	// (bus.Provision); 0 keeps what the streams have, or the default.
	Retention time.Duration
	// Logger receives the logs of the bus and of every component (the
	// Logger fields of the component configurations are ignored).
	Logger zerolog.Logger
}

// Stack is a running bus and the components started on it. Start it with
// Start; Close stops it.
type Stack struct {
	// Bus is the stack's connection, and its embedded server if any.
	Bus *bus.Bus

	log    zerolog.Logger
	ctx    context.Context // ends when the stack closes
	cancel context.CancelFunc
	wg     sync.WaitGroup // the components' goroutines

	mu     sync.Mutex // guards err and agents
	err    error
	agents []*agent.Agent

	failed    context.Context // done when a component failed, or at Close
	failNow   context.CancelCauseFunc
	closeOnce sync.Once
}

// Start opens the bus, provisions weft's streams and buckets (in memory
// for an ephemeral bus, see bus.Config.Ephemeral; only for an embedded
// server or a stack with dispatchers), and starts the
// configured dispatchers and agents. Errors opening the bus wrap
// bus.ErrUnavailable; configuration errors wrap the components'
// ErrInvalidConfig.
func Start(ctx context.Context, cfg Config) (*Stack, error) {
	cfg.Bus.Logger = cfg.Logger
	b, err := bus.Open(ctx, cfg.Bus)
	if err != nil {
		return nil, err
	}
	// A client of a fleet's server (no dispatcher of its own) finds them
	// provisioned, and its credentials may not.
	if b.Embedded() || cfg.Dispatchers > 0 {
		if err := b.Provision(ctx, cfg.Retention); err != nil {
			b.Close()
			return nil, fmt.Errorf("%w: %w", bus.ErrUnavailable, err)
		}
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	failed, failNow := context.WithCancelCause(context.Background())
	s := &Stack{Bus: b, log: cfg.Logger, ctx: sctx, cancel: cancel, failed: failed, failNow: failNow}
	for range cfg.Dispatchers {
		if _, err := s.StartDispatcher(cfg.Dispatcher); err != nil {
			s.Close()
			return nil, err
		}
	}
	for _, a := range cfg.Agents {
		if _, err := s.AddAgent(a); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// StartDispatcher starts one more dispatcher with cfg and returns a
// function that stops it and waits for it to return; Close stops it too.
func (s *Stack) StartDispatcher(cfg dispatcher.Config) (stop func(), err error) {
	cfg.Logger = s.log
	d, err := dispatcher.New(s.ctx, s.Bus, cfg)
	if err != nil {
		return nil, err
	}
	return s.run("dispatcher", d.Run), nil
}

// AddAgent starts one more agent with cfg and returns it; Close stops it.
func (s *Stack) AddAgent(cfg agent.Config) (*agent.Agent, error) {
	cfg.Logger = s.log
	a, err := agent.New(s.Bus, cfg)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.agents = append(s.agents, a)
	s.mu.Unlock()
	s.run("agent "+a.ID(), a.Run)
	return a, nil
}

// run runs a component until the stack closes or stop is called, which
// waits for it to return.
func (s *Stack) run(name string, run func(context.Context) error) (stop func()) {
	ctx, cancel := context.WithCancel(s.ctx)
	done := make(chan struct{})
	s.wg.Go(func() {
		defer close(done)
		if err := run(ctx); err != nil && ctx.Err() == nil {
			s.fail(fmt.Errorf("%s: %w", name, err))
		}
	})
	return func() {
		cancel()
		<-done
	}
}

func (s *Stack) fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.mu.Unlock()
	s.failNow(err)
}

// Failed returns a context that is done when a component stopped with an
// error (Err says which), or when the stack is closed.
func (s *Stack) Failed() context.Context { return s.failed }

// Err returns the first error a component stopped with, or nil.
func (s *Stack) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close stops every component, waits for them and closes the bus. It
// returns Err. Calling it again does nothing more.
func (s *Stack) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		s.wg.Wait()
		s.Bus.Close()
		s.failNow(nil)
	})
	return s.Err()
}
