package test

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/weft-ci/weft/agent"
	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/dispatcher"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// StackConfig configures an in-process weft stack.
type StackConfig struct {
	// Slots of the agent; default 1.
	Slots int
	// Queues the agent serves; default ["default"].
	Queues []string
	// AckWait, when set, creates the job consumers with this AckWait
	// before the agent starts (the agent heartbeats every third of it).
	AckWait time.Duration
	// NoAgent starts no agent.
	NoAgent bool
	// KillGrace is the agent's grace between SIGTERM and SIGKILL;
	// default 2s.
	KillGrace time.Duration
	// Listen makes the embedded server listen on a free loopback port, so
	// that other processes (weft run --server) can join.
	Listen bool
	// MaxDeliver is the agent's MaxDeliver (infrastructure retries);
	// default 5.
	MaxDeliver int
	// Dispatcher configures the dispatcher; its Logger is the test's.
	Dispatcher dispatcher.Config
	// Dispatchers is how many dispatchers run, all with Dispatcher's
	// configuration; default 1.
	Dispatchers int
	// NoDispatcher starts none (StartDispatcher starts them).
	NoDispatcher bool
}

// Stack is an embedded server, a dispatcher and an agent running in this
// process, as `weft run` wires them.
type Stack struct {
	// Bus is the stack's connection to its embedded server.
	Bus *bus.Bus
	// Agent is the stack's agent, nil with NoAgent.
	Agent *agent.Agent
	// WorkDir holds the agent's run workspaces, <WorkDir>/<run id>.
	WorkDir string

	stop func()
	// ctx ends when the stack stops; wg waits for its components.
	ctx context.Context
	wg  *sync.WaitGroup
	// goRun runs a component until the stack stops.
	goRun func(name string, run func(context.Context) error)
	t     testing.TB
}

// AddAgent starts one more agent on the stack; WorkDir, Env, Logger and
// the containerd address default to the stack's.
func (s *Stack) AddAgent(cfg agent.Config) *agent.Agent {
	s.t.Helper()
	if cfg.WorkDir == "" {
		cfg.WorkDir = s.t.TempDir()
	}
	if cfg.Env == nil {
		cfg.Env = os.Environ()
	}
	if cfg.KillGrace == 0 {
		cfg.KillGrace = 2 * time.Second
	}
	if cfg.Containerd.Address == "" {
		cfg.Containerd.Address = ContainerdAddress()
	}
	cfg.Logger = Logger(s.t)
	a, err := agent.New(s.Bus, cfg)
	if err != nil {
		s.t.Fatalf("agent: %v", err)
	}
	s.goRun("agent", a.Run)
	return a
}

// StartDispatcher starts one more dispatcher with cfg (its Logger is the
// test's) and returns a function that stops it and waits for it; the
// stack stops it too.
func (s *Stack) StartDispatcher(cfg dispatcher.Config) (stop func()) {
	s.t.Helper()
	cfg.Logger = Logger(s.t)
	d, err := dispatcher.New(s.ctx, s.Bus, cfg)
	if err != nil {
		s.t.Fatalf("dispatcher: %v", err)
	}
	ctx, cancel := context.WithCancel(s.ctx)
	done := make(chan struct{})
	s.wg.Go(func() {
		defer close(done)
		if err := d.Run(ctx); err != nil {
			s.t.Errorf("dispatcher: %v", err)
		}
	})
	return func() {
		cancel()
		<-done
	}
}

// Stop stops the dispatcher and the agent and waits for them; the test's
// cleanup does it too.
func (s *Stack) Stop() { s.stop() }

// StartStack starts a stack and stops it, waiting for every component,
// when the test ends.
func StartStack(t testing.TB, cfg StackConfig) *Stack {
	t.Helper()
	var bcfg bus.Config
	if cfg.Listen {
		bcfg.Listen = "127.0.0.1:0"
	}
	b := BusWith(t, bcfg)
	ctx, cancel := context.WithCancel(context.Background())
	queues := cfg.Queues
	if len(queues) == 0 {
		queues = []string{subjects.DefaultQueue}
	}
	if cfg.AckWait > 0 {
		for _, q := range queues {
			for _, tier := range subjects.Tiers {
				c := subjects.JobConsumerFor(q, tier)
				c.AckWait = cfg.AckWait
				if _, err := b.JS.CreateOrUpdateConsumer(ctx, subjects.JobsStream, bus.JobConsumerConfig(c)); err != nil {
					t.Fatalf("consumer %s: %v", c.Name, err)
				}
			}
		}
	}
	if cfg.KillGrace == 0 {
		cfg.KillGrace = 2 * time.Second
	}
	s := &Stack{Bus: b, WorkDir: t.TempDir(), t: t, ctx: ctx}
	var wg sync.WaitGroup
	s.goRun = func(name string, run func(context.Context) error) {
		wg.Go(func() {
			if err := run(ctx); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		})
	}
	s.wg = &wg
	for i := 0; i < max(cfg.Dispatchers, 1) && !cfg.NoDispatcher; i++ {
		s.StartDispatcher(cfg.Dispatcher)
	}
	if !cfg.NoAgent {
		s.Agent = s.AddAgent(agent.Config{Queues: queues, Slots: cfg.Slots, WorkDir: s.WorkDir, KillGrace: cfg.KillGrace, MaxDeliver: cfg.MaxDeliver})
	}
	s.stop = sync.OnceFunc(func() {
		cancel()
		wg.Wait()
	})
	// Registered after Bus's cleanup, so it runs before the bus closes.
	t.Cleanup(s.stop)
	return s
}

// Submit triggers a run of the pipeline text and returns its run id.
func (s *Stack) Submit(t testing.TB, text string, opts ...func(*wire.Trigger)) string {
	t.Helper()
	tr := wire.Trigger{ID: ulid.Make().String(), File: "pipeline.yml", Pipeline: text}
	for _, o := range opts {
		o(&tr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	id, err := client.Submit(ctx, s.Bus.JS, tr)
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	return id
}

// Wait follows a run until it ends (at most a minute) and returns its
// final document and every update seen.
func (s *Stack) Wait(t testing.TB, runID string) (*wire.Run, []client.Update) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var updates []client.Update
	r, err := client.Follow(ctx, s.Bus.JS, runID, func(u client.Update) { updates = append(updates, u) })
	if err != nil {
		t.Fatalf("follow %s: %v", runID, err)
	}
	return r, updates
}

// Run submits the pipeline text and waits for the run to end.
func (s *Stack) Run(t testing.TB, text string, opts ...func(*wire.Trigger)) (*wire.Run, []client.Update) {
	t.Helper()
	return s.Wait(t, s.Submit(t, text, opts...))
}

// ulidString returns a new ULID.
func ulidString() string { return ulid.Make().String() }

// FollowOpening follows a run to its end, creating the file gate as soon as
// the output line trigger arrives, and returns the final run and every
// output line. A stage that blocks on the gate after printing trigger
// proves the line was streamed while it ran.
func (s *Stack) FollowOpening(t testing.TB, runID, trigger, gate string) (*wire.Run, []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var lines []string
	r, err := client.Follow(ctx, s.Bus.JS, runID, func(u client.Update) {
		if u.Line == nil {
			return
		}
		lines = append(lines, u.Line.Text)
		if u.Line.Text == trigger {
			if err := os.WriteFile(gate, nil, 0o644); err != nil {
				t.Error(err)
			}
		}
	})
	if err != nil {
		t.Fatalf("follow %s: %v", runID, err)
	}
	return r, lines
}
