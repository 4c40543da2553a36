package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"
	"github.com/rs/zerolog"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/container"
	"github.com/weft-ci/weft/internal/bytesize"
	"github.com/weft-ci/weft/objectstore"
	"github.com/weft-ci/weft/stagenet"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// ErrInvalidConfig is wrapped by Config validation errors.
var ErrInvalidConfig = errors.New("agent: invalid config")

// DefaultSweepInterval is how often an agent sweeps its work directory
// for the workspaces of ended runs by default.
const DefaultSweepInterval = time.Minute

// Config configures an agent.
type Config struct {
	// ID names the agent in events and logs; default a new ULID.
	ID string
	// Queues are the queues the agent serves; default ["default"].
	Queues []string
	// Slots is how many stages run at once; default 1.
	Slots int
	// WorkDir holds the run workspaces, one stable path per repository,
	// pipeline and lane (see Workspace); required.
	WorkDir string
	// KeepWorkspaces keeps a run's workspace when it ends, for the next
	// run of its pipeline to find; by default it is removed.
	KeepWorkspaces bool
	// Labels are the agent's labels: besides its queues' stages that ask
	// for no labels it runs those that ask for some of these (at most
	// subjects.MaxLabels).
	Labels map[string]string
	// ExitWhenIdle drains the agent (Drain) once it ran nothing for this
	// long, so an autoscaler's extra agents go away; 0 never does.
	ExitWhenIdle time.Duration
	// DrainTimeout bounds a drain (Drain): the stages still running
	// after it are stopped and their jobs handed back; 0 waits for them.
	DrainTimeout time.Duration
	// Env is the environment host stages start from (KEY=VALUE), the
	// agent's own from the CLI: a stage gets only the variables
	// DefaultEnvAllow and EnvAllow name, never weft's own (WEFT_*), with
	// the job's environment over them.
	Env []string
	// EnvAllow names more variables of Env host stages get, NAME or
	// PREFIX*.
	EnvAllow []string
	// KillGrace is how long a stage has between SIGTERM and SIGKILL;
	// default 10s.
	KillGrace time.Duration
	// RescanInterval bounds how long a queue goes without a look at every
	// tier while this agent has a free slot, which finds the jobs no
	// wake-up announces (redeliveries, hand-backs); default 1s. The idle
	// agents of a queue share that rescan: each one's turn comes at a
	// random point in the second half of the interval after the last
	// rescan it heard of, so a fleet rescans about as often as one agent.
	RescanInterval time.Duration
	// LogFlush is how long output may wait before it is published;
	// default 50ms.
	LogFlush time.Duration
	// LogCap bounds the output each attempt of a stage keeps in the logs
	// stream, in bytes (each line counting its newline); default
	// DefaultLogCap, at least MinLogCap. Over it the log keeps its head
	// (the cap minus the tail, published as it comes), a system line
	// saying how many lines and bytes were dropped, and its tail (the last
	// DefaultLogTail, or half the cap when that is less, published when
	// the stage ends). The agent's memory stays bounded whatever a stage
	// prints.
	LogCap int64
	// OpenByDispatcher says the agent may not create the job consumers of
	// its queues (its credentials forbid it): where they are missing it
	// asks a dispatcher to (subjects.QueueOpen) and waits until one
	// does. Without it the agent creates them itself when no dispatcher
	// answers.
	OpenByDispatcher bool
	// AckWait is the AckWait of the job consumers this agent creates
	// (existing ones keep theirs); default subjects.DefaultAckWait. A job
	// is heartbeated every third of the actual AckWait of the consumer it
	// came from, as read when the agent starts.
	AckWait time.Duration
	// MaxDeliver is the MaxDeliver of the job consumers this agent
	// creates: after that many deliveries a job is dead-lettered. Default
	// subjects.DefaultMaxDeliver.
	MaxDeliver int
	// StageNetwork is NetworkHost (default: stages share the agent's
	// network) or NetworkIsolated: each stage gets a network of its own
	// (package stagenet) that reaches the outside but no port of this
	// machine, unless it asks for network: host. Isolating needs root,
	// ip and iptables; New's caller learns at Run when they are missing.
	StageNetwork string
	// StageSubnet is the IPv4 range of isolated stage networks; default
	// stagenet.DefaultSubnet.
	StageSubnet string
	// Executor is ExecutorAuto (default), ExecutorProcess or
	// ExecutorContainerd.
	Executor string
	// SweepInterval is how often the agent removes the workspaces of
	// runs that ended or are gone (a run-finished notice it missed); it
	// also sweeps once at start. Default DefaultSweepInterval.
	SweepInterval time.Duration
	// Containerd configures the containerd executor; its KillGrace
	// defaults to KillGrace.
	Containerd container.Config
	// ArtifactLimits bound the artifacts the agent stores; zero fields
	// are objectstore's defaults.
	ArtifactLimits objectstore.Limits
	// CacheLimits bound the stage caches the agent saves, per repository;
	// zero fields are objectstore's defaults.
	CacheLimits objectstore.CacheLimits
	// Logger receives the agent's logs (not the stages' output).
	Logger zerolog.Logger
}

// Agent pulls and runs stage jobs. Create it with New, start it with Run.
type Agent struct {
	cfg Config
	nc  *nats.Conn
	js  jetstream.JetStream
	log zerolog.Logger

	process executor
	// containers is the containerd runtime, nil when containerd is not
	// used or could not be reached (containerdErr says why). Set by Run
	// before any job starts.
	containers    *container.Runtime
	containerdErr error
	// stages is the stages bucket, whose documents judge every job, at
	// every heartbeat and before every ack. An agent reads no run
	// document. Set by Run before any job starts.
	stages jetstream.KeyValue
	// nets makes the stages' own networks; nil when stages run in the
	// agent's. Set by Run before any job starts.
	nets *stagenet.Manager
	// events is the events stream, read for the stored finish of a
	// redelivered job and the end of a run whose workspace is left. Set
	// by Run before any job starts.
	events jetstream.Stream

	storeMu sync.Mutex         // guards store and cache
	store   *objectstore.Store // the artifact store, opened at first use
	cache   *objectstore.Cache // the stage cache, opened at first use

	busy       atomic.Int32  // jobs held now (see Busy)
	lastChange atomic.Int64  // when busy last changed, in Unix ns
	changed    chan struct{} // signalled when busy changes

	mu        sync.Mutex                   // guards active, cancelled and lanes
	lanes     map[string]string            // workspace by run id, of runs holding one here
	active    map[string]map[*job]struct{} // running jobs by run id
	cancelled map[string]cancelMark        // runs cancelled recently

	// draining ends when the agent is to drain (Drain): take no job,
	// finish those it runs, leave the registry, return.
	draining context.Context
	drain    context.CancelFunc
}

// New returns an agent on b. It validates cfg and fills defaults; it starts
// nothing.
func New(b *bus.Bus, cfg Config) (*Agent, error) {
	if cfg.ID == "" {
		cfg.ID = ulid.Make().String()
	}
	if len(cfg.Queues) == 0 {
		cfg.Queues = []string{subjects.DefaultQueue}
	}
	for _, q := range cfg.Queues {
		if err := subjects.ValidateQueue(q); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
	}
	if cfg.Slots == 0 {
		cfg.Slots = 1
	}
	if cfg.Slots < 0 {
		return nil, fmt.Errorf("%w: slots must be >= 1, got %d", ErrInvalidConfig, cfg.Slots)
	}
	if cfg.WorkDir == "" {
		return nil, fmt.Errorf("%w: a work directory is required", ErrInvalidConfig)
	}
	if cfg.KillGrace == 0 {
		cfg.KillGrace = 10 * time.Second
	}
	if cfg.RescanInterval == 0 {
		cfg.RescanInterval = time.Second
	}
	if cfg.RescanInterval < 0 {
		return nil, fmt.Errorf("%w: rescan interval must be positive, got %s", ErrInvalidConfig, cfg.RescanInterval)
	}
	switch cfg.Executor {
	case "":
		cfg.Executor = ExecutorAuto
	case ExecutorAuto, ExecutorProcess, ExecutorContainerd:
	default:
		return nil, fmt.Errorf("%w: executor %q is not one of auto, process, containerd", ErrInvalidConfig, cfg.Executor)
	}
	if cfg.Containerd.KillGrace == 0 {
		cfg.Containerd.KillGrace = cfg.KillGrace
	}
	if cfg.LogFlush == 0 {
		cfg.LogFlush = 50 * time.Millisecond
	}
	if cfg.LogCap == 0 {
		cfg.LogCap = DefaultLogCap
	}
	if cfg.LogCap < MinLogCap {
		return nil, fmt.Errorf("%w: log cap must be at least %s, got %s", ErrInvalidConfig, bytesize.Format(MinLogCap), bytesize.Format(cfg.LogCap))
	}
	if cfg.SweepInterval == 0 {
		cfg.SweepInterval = DefaultSweepInterval
	}
	if cfg.SweepInterval < 0 {
		return nil, fmt.Errorf("%w: sweep interval must be positive, got %s", ErrInvalidConfig, cfg.SweepInterval)
	}
	if err := checkEnvAllow(cfg.EnvAllow); err != nil {
		return nil, err
	}
	if err := checkStageNetwork(&cfg); err != nil {
		return nil, err
	}
	if len(cfg.Labels) > subjects.MaxLabels {
		return nil, fmt.Errorf("%w: %d labels, at most %d", ErrInvalidConfig, len(cfg.Labels), subjects.MaxLabels)
	}
	for k, v := range cfg.Labels {
		if err := subjects.ValidateLabel(k, v); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
	}
	draining, drain := context.WithCancel(context.Background())
	return &Agent{
		cfg:       cfg,
		nc:        b.Conn,
		js:        b.JS,
		log:       cfg.Logger.With().Str("component", "agent").Str("agent", cfg.ID).Logger(),
		process:   processExecutor{killGrace: cfg.KillGrace, baseEnv: hostEnv(cfg.Env, append(DefaultEnvAllow(), cfg.EnvAllow...))},
		active:    map[string]map[*job]struct{}{},
		changed:   make(chan struct{}, 1),
		cancelled: map[string]cancelMark{},
		lanes:     map[string]string{},
		draining:  draining,
		drain:     drain,
	}, nil
}

// ID returns the agent's id.
func (a *Agent) ID() string { return a.cfg.ID }

// Run takes and runs jobs until ctx is done, then stops the running stages
// (their jobs are nak'ed for another agent), removes its workspaces and
// returns once every goroutine it started has returned.
func (a *Agent) Run(ctx context.Context) error {
	if err := os.MkdirAll(a.cfg.WorkDir, 0o750); err != nil {
		return fmt.Errorf("agent: work dir: %w", err)
	}
	stages, err := a.js.KeyValue(ctx, subjects.StagesBucket)
	if err != nil {
		return fmt.Errorf("agent: bucket %s: %w", subjects.StagesBucket, err)
	}
	a.stages = stages
	events, err := a.js.Stream(ctx, subjects.EventsStream)
	if err != nil {
		return fmt.Errorf("agent: stream %s: %w", subjects.EventsStream, err)
	}
	a.events = events
	if err := a.setupNetworks(ctx); err != nil {
		return err
	}
	if err := a.openContainerd(ctx); err != nil {
		return err
	}
	if a.containers != nil {
		defer a.containers.Close()
	}
	sc := newScanner(a.nc, a.cfg.Slots, a.cfg.RescanInterval, a.log)
	// The queues, and the label queues of every subset of the labels.
	served := subjects.ServedQueues(a.cfg.Queues, a.cfg.Labels)
	for _, q := range served {
		if err := a.openQueue(ctx, q); err != nil {
			return fmt.Errorf("agent: %w", err)
		}
	}
	for _, tier := range subjects.Tiers {
		for _, q := range served {
			c, err := bus.JobConsumer(ctx, a.js, q, tier)
			if err != nil {
				return fmt.Errorf("agent: %w", err)
			}
			info := c.CachedInfo().Config
			limits := jobLimits{ackWait: info.AckWait, maxDeliver: info.MaxDeliver}
			if limits.ackWait <= 0 {
				limits.ackWait = subjects.DefaultAckWait // the server's default too
			}
			sc.add(q, tier, c, limits)
		}
	}

	var subs []*nats.Subscription
	defer func() {
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
	}()
	// The scanner stops (leaves the wake-up group, passing on what it
	// holds) before Run waits for its jobs (below), and on any early
	// return; stopping twice does nothing more.
	defer sc.stop()
	if err := sc.start(); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	s, err := a.nc.Subscribe(subjects.AllCancel, a.onCancel)
	if err != nil {
		return fmt.Errorf("agent: subscribe cancels: %w", err)
	}
	subs = append(subs, s)
	s, err = a.nc.Subscribe(subjects.RunEvents, a.onRunEvent)
	if err != nil {
		return fmt.Errorf("agent: subscribe run events: %w", err)
	}
	subs = append(subs, s)
	s, err = a.nc.Subscribe(subjects.AgentDrain(a.cfg.ID), func(m *nats.Msg) {
		a.Drain()
		data, _ := json.Marshal(wire.DrainReply{Agent: a.cfg.ID, Running: a.runningStages()})
		_ = m.Respond(data)
	})
	if err != nil {
		return fmt.Errorf("agent: subscribe drain requests: %w", err)
	}
	subs = append(subs, s)
	if err := a.nc.FlushTimeout(10 * time.Second); err != nil {
		return fmt.Errorf("agent: flush subscriptions: %w", err)
	}

	a.log.Info().Strs("queues", a.cfg.Queues).Int("slots", a.cfg.Slots).Msg("agent started")
	var wg sync.WaitGroup
	regCtx, stopRegistry := context.WithCancel(context.WithoutCancel(ctx))
	var registry sync.WaitGroup
	registry.Go(func() { a.advertise(regCtx) })
	registry.Go(func() { sc.watchPauses(regCtx, a.js) })
	registry.Go(func() { a.sweepWorkspaces(regCtx) })
	if a.cfg.ExitWhenIdle > 0 {
		registry.Go(func() { a.exitWhenIdle(regCtx) })
	}
	defer func() {
		stopRegistry()
		registry.Wait()
	}()
	// Taking jobs ends with ctx, or with a drain; the jobs taken run on
	// until ctx ends, or the drain's timeout (these defers run after the
	// wait for the jobs, below).
	takeCtx, stopTaking := context.WithCancel(ctx)
	defer stopTaking()
	jobCtx, stopJobs := context.WithCancel(ctx)
	defer stopJobs()
	// The drain's timeout stops the jobs; armed when the drain starts.
	drainTimer := time.AfterFunc(time.Hour, func() {
		a.log.Warn().Strs("stages", a.runningStages()).Msg("drain timed out: handing the running stages back")
		stopJobs()
	})
	drainTimer.Stop()
	defer drainTimer.Stop()
	defer context.AfterFunc(a.draining, func() {
		a.log.Info().Dur("timeout", a.cfg.DrainTimeout).Msg("draining: taking no more jobs, finishing those running")
		stopTaking()
		if a.cfg.DrainTimeout > 0 {
			drainTimer.Reset(a.cfg.DrainTimeout)
		}
	})()
	defer func() {
		wg.Wait()
		a.removeWorkspaces()
	}()
	defer sc.stop()
	slots := make(chan struct{}, a.cfg.Slots)
	for {
		select {
		case slots <- struct{}{}:
		case <-takeCtx.Done():
			return nil
		}
		msg, src := sc.next(takeCtx)
		if msg == nil {
			return nil
		}
		a.setBusy(1)
		wg.Go(func() {
			defer func() { sc.released(); <-slots; a.setBusy(-1) }()
			a.runJob(jobCtx, msg, src.limits)
			if jobCtx.Err() != nil {
				// Stopping: the job was most likely handed back.
				sc.handedBack(src)
			}
		})
	}
}

// exitWhenIdle drains the agent once it held no job for
// Config.ExitWhenIdle.
func (a *Agent) exitWhenIdle(ctx context.Context) {
	tick := time.NewTicker(min(a.cfg.ExitWhenIdle/4, time.Second))
	defer tick.Stop()
	a.lastChange.CompareAndSwap(0, time.Now().UnixNano())
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		idle := time.Since(time.Unix(0, a.lastChange.Load()))
		if a.busy.Load() == 0 && idle >= a.cfg.ExitWhenIdle {
			a.log.Info().Dur("idle", idle).Msg("idle: leaving the fleet")
			a.Drain()
			return
		}
	}
}

// Drain makes Run take no more jobs, finish those it runs, leave the
// registry and return nil; the registry shows the agent draining until
// then. Cancelling Run's context still stops the running stages and
// hands their jobs back. Draining twice is draining once.
func (a *Agent) Drain() {
	a.drain()
	a.signalChanged()
}

// openContainerd connects to containerd unless the agent runs host
// processes only, and removes what crashed weft processes left there. With
// ExecutorAuto an unreachable containerd only fails image stages.
func (a *Agent) openContainerd(ctx context.Context) error {
	if a.cfg.Executor == ExecutorProcess {
		return nil
	}
	rt, err := container.Connect(ctx, a.cfg.Containerd)
	if err != nil {
		if a.cfg.Executor == ExecutorContainerd {
			return fmt.Errorf("agent: %w", err)
		}
		a.containerdErr = err
		a.log.Info().Err(err).Msg("containerd not available: stages with an image will fail")
		return nil
	}
	n, err := rt.Cleanup(ctx)
	if err != nil {
		a.log.Warn().Err(err).Msg("remove leftover containers")
	} else if n > 0 {
		a.log.Info().Int("removed", n).Msg("removed containers and snapshots left by a crashed agent")
	}
	a.containers = rt
	return nil
}
