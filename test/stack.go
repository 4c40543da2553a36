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
	"github.com/weft-ci/weft/embedded"
	"github.com/weft-ci/weft/runstore"
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
	// Retention is how long runs, events and logs are kept; default
	// subjects.DefaultRetention.
	Retention time.Duration
}

// Stack is an embedded server, a dispatcher and an agent running in this
// process, as `weft run` wires them (package embedded).
type Stack struct {
	// Bus is the stack's connection to its embedded server.
	Bus *bus.Bus
	// Agent is the stack's agent, nil with NoAgent.
	Agent *agent.Agent
	// WorkDir holds the agent's run workspaces (agent.Agent.Workspace).
	WorkDir string

	st *embedded.Stack // nil for a Stack on a fleet's bus
	t  testing.TB

	runsMu sync.Mutex      // guards runs
	runs   *runstore.Store // opened by Runs
}

// Runs returns a run store on the stack's bus, opened once: the tests
// read runs through it as often as they like.
func (s *Stack) Runs(t testing.TB) *runstore.Store {
	t.Helper()
	s.runsMu.Lock()
	defer s.runsMu.Unlock()
	if s.runs == nil {
		rs, err := runstore.Open(context.Background(), s.Bus.JS)
		if err != nil {
			t.Fatalf("open the run store: %v", err)
		}
		s.runs = rs
	}
	return s.runs
}

// AddAgent starts one more agent on the stack; WorkDir, Env and the
// containerd address default to the stack's.
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
	a, err := s.st.AddAgent(cfg)
	if err != nil {
		s.t.Fatalf("agent: %v", err)
	}
	return a
}

// StartDispatcher starts one more dispatcher with cfg and returns a
// function that stops it and waits for it; the stack stops it too.
func (s *Stack) StartDispatcher(cfg dispatcher.Config) (stop func()) {
	s.t.Helper()
	stop, err := s.st.StartDispatcher(cfg)
	if err != nil {
		s.t.Fatalf("dispatcher: %v", err)
	}
	return stop
}

// Stop stops the dispatchers and agents, waits for them and closes the
// bus; the test's cleanup does it too. A component that failed fails the
// test.
func (s *Stack) Stop() {
	if err := s.st.Close(); err != nil {
		s.t.Errorf("stack: %v", err)
	}
}

// StartStack starts a stack and stops it, waiting for every component,
// when the test ends.
func StartStack(t testing.TB, cfg StackConfig) *Stack {
	t.Helper()
	bcfg := bus.Config{StoreDir: t.TempDir()}
	if cfg.Listen {
		bcfg.Listen = "127.0.0.1:0"
	}
	dispatchers := max(cfg.Dispatchers, 1)
	if cfg.NoDispatcher {
		dispatchers = 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := embedded.Start(ctx, embedded.Config{Bus: bcfg, Dispatchers: dispatchers, Dispatcher: cfg.Dispatcher, Retention: cfg.Retention, Logger: Logger(t)})
	if err != nil {
		t.Fatalf("stack: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() }) // if the test fails before the end
	s := &Stack{Bus: st.Bus, WorkDir: t.TempDir(), st: st, t: t}
	queues := cfg.Queues
	if len(queues) == 0 {
		queues = []string{subjects.DefaultQueue}
	}
	if cfg.AckWait > 0 {
		for _, q := range queues {
			for _, tier := range subjects.Tiers {
				c := subjects.JobConsumerFor(q, tier)
				c.AckWait = cfg.AckWait
				if _, err := st.Bus.JS.CreateOrUpdateConsumer(ctx, subjects.JobsStream, bus.JobConsumerConfig(c)); err != nil {
					t.Fatalf("consumer %s: %v", c.Name, err)
				}
			}
		}
	}
	if cfg.KillGrace == 0 {
		cfg.KillGrace = 2 * time.Second
	}
	if !cfg.NoAgent {
		s.Agent = s.AddAgent(agent.Config{Queues: queues, Slots: cfg.Slots, WorkDir: s.WorkDir, KillGrace: cfg.KillGrace, MaxDeliver: cfg.MaxDeliver})
	}
	// Registered after the work directories, so it runs before they are
	// removed.
	t.Cleanup(s.Stop)
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

// FollowGated follows runs at once to their ends, creating the file gate
// once every one of them has printed a line that reached accepts, and
// returns their final documents and output lines in the order of ids. A
// stage that blocks on the gate after such a line proves that the runs
// were at that point together.
func (s *Stack) FollowGated(t testing.TB, ids []string, reached func(line string) bool, gate string) ([]*wire.Run, [][]string) {
	t.Helper()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		there = map[string]bool{}
		runs  = make([]*wire.Run, len(ids))
		lines = make([][]string, len(ids))
	)
	for i, id := range ids {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			r, err := client.Follow(ctx, s.Bus.JS, id, func(u client.Update) {
				if u.Line == nil {
					return
				}
				lines[i] = append(lines[i], u.Line.Text)
				if !reached(u.Line.Text) {
					return
				}
				mu.Lock()
				defer mu.Unlock()
				if there[id] = true; len(there) == len(ids) {
					if err := os.WriteFile(gate, nil, 0o644); err != nil {
						t.Error(err)
					}
				}
			})
			if err != nil {
				t.Errorf("follow %s: %v", id, err)
			}
			runs[i] = r
		})
	}
	wg.Wait()
	return runs, lines
}

// ulidString returns a new ULID.
func ulidString() string { return ulid.Make().String() }

// FollowOpening follows a run to its end, creating the file gate() names
// as soon as the output line trigger arrives, and returns the final run and every
// output line. A stage that blocks on the gate after printing trigger
// proves the line was streamed while it ran.
func (s *Stack) FollowOpening(t testing.TB, runID, trigger string, gate func() string) (*wire.Run, []string) {
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
			if err := os.WriteFile(gate(), nil, 0o644); err != nil {
				t.Error(err)
			}
		}
	})
	if err != nil {
		t.Fatalf("follow %s: %v", runID, err)
	}
	return r, lines
}
