package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"
	"github.com/rs/zerolog"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/container"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// ErrInvalidConfig is wrapped by Config validation errors.
var ErrInvalidConfig = errors.New("agent: invalid config")

// Config configures an agent.
type Config struct {
	// ID names the agent in events and logs; default a new ULID.
	ID string
	// Queues are the queues the agent serves; default ["default"].
	Queues []string
	// Slots is how many stages run at once; default 1.
	Slots int
	// WorkDir holds the per-run workspaces; required.
	WorkDir string
	// Env is the base environment of host stages (KEY=VALUE).
	Env []string
	// KillGrace is how long a stage has between SIGTERM and SIGKILL;
	// default 10s.
	KillGrace time.Duration
	// RescanInterval is how often an idle agent looks for jobs without a
	// wake-up; default 1s.
	RescanInterval time.Duration
	// LogFlush is how long output may wait before it is published;
	// default 50ms.
	LogFlush time.Duration
	// AckWait is the AckWait of the job consumers this agent creates
	// (existing ones keep theirs); default subjects.DefaultAckWait. The
	// agent heartbeats every third of the consumer's actual AckWait.
	AckWait time.Duration
	// MaxDeliver is the MaxDeliver of the job consumers this agent
	// creates: after that many deliveries a job is dead-lettered. Default
	// subjects.DefaultMaxDeliver.
	MaxDeliver int
	// Executor is ExecutorAuto (default), ExecutorProcess or
	// ExecutorContainerd.
	Executor string
	// Containerd configures the containerd executor; its KillGrace
	// defaults to KillGrace.
	Containerd container.Config
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
	// runs is the runs bucket, read to judge redelivered jobs and to see
	// a stage taken over. Set by Run before any job starts.
	runs jetstream.KeyValue

	busy    atomic.Int32  // stages running now
	changed chan struct{} // signalled when busy changes

	mu        sync.Mutex                   // guards active and cancelled
	active    map[string]map[*job]struct{} // running jobs by run id
	cancelled map[string]time.Time         // runs cancelled recently, by notice time
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
	return &Agent{
		cfg:       cfg,
		nc:        b.Conn,
		js:        b.JS,
		log:       cfg.Logger.With().Str("component", "agent").Str("agent", cfg.ID).Logger(),
		process:   processExecutor{killGrace: cfg.KillGrace, baseEnv: cfg.Env},
		active:    map[string]map[*job]struct{}{},
		changed:   make(chan struct{}, 1),
		cancelled: map[string]time.Time{},
	}, nil
}

// ID returns the agent's id.
func (a *Agent) ID() string { return a.cfg.ID }

// source is one job consumer, in scan order.
type source struct {
	queue    string
	tier     subjects.Tier
	consumer jetstream.Consumer
	// pending is set when a job may be waiting: by a wake-up for this
	// queue and tier, or a fetch that found one. An empty fetch clears it.
	pending atomic.Bool
	// woken is set by a wake-up and cleared by the fetch that follows it.
	woken atomic.Bool
	// paused is set while the queue is paused (weft queue pause).
	paused atomic.Bool
}

// confirmWait is how long a fetch after a wake-up waits when a no-wait
// fetch found nothing: the server republishes a stored job before its
// consumer counts it, so a no-wait fetch right after the wake-up can miss
// it (measured here: 4-8 % of the time, found again within 0.2 ms).
const confirmWait = 20 * time.Millisecond

// scanner picks the next job: the first job of the highest tier that may
// have one. It fetches only from sources marked pending, and from all of
// them every RescanInterval, which catches what no wake-up announces
// (redeliveries, a wake-up lost on a slow connection).
type scanner struct {
	sources  []*source
	bySubj   map[string]*source // by wake-up subject
	wake     chan struct{}      // signalled by wake-ups
	every    time.Duration
	lastFull time.Time
	log      zerolog.Logger
}

// woke marks the source of a wake-up subject pending and signals the wake
// channel; it runs on the NATS subscription goroutine.
func (s *scanner) woke(m *nats.Msg) {
	if src := s.bySubj[m.Subject]; src != nil {
		src.pending.Store(true)
		src.woken.Store(true)
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// next returns the first job of the highest tier that has one, waiting for
// a wake-up or the rescan interval while none has. It returns nil when ctx
// is done.
func (s *scanner) next(ctx context.Context) jetstream.Msg {
	rescan := time.NewTimer(s.every)
	defer rescan.Stop()
	for {
		full := time.Since(s.lastFull) >= s.every
		if full {
			s.lastFull = time.Now()
		}
		for _, src := range s.sources {
			if src.paused.Load() || (!full && !src.pending.Load()) {
				continue
			}
			// Clear before fetching: a wake-up during the fetch sets it again.
			woken := src.woken.Swap(false)
			src.pending.Store(false)
			if msg := s.fetch(ctx, src, woken); msg != nil {
				src.pending.Store(true)
				return msg
			}
		}
		rescan.Reset(s.every)
		select {
		case <-ctx.Done():
			return nil
		case <-s.wake:
		case <-rescan.C:
		}
	}
}

// pause pauses or resumes the sources of queue; a resume wakes the scan.
func (s *scanner) pause(queue string, paused bool) {
	for _, src := range s.sources {
		if src.queue == queue {
			src.paused.Store(paused)
			src.pending.Store(true)
		}
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// watchPauses follows the pause keys of the WIP bucket until ctx ends.
func (s *scanner) watchPauses(ctx context.Context, js jetstream.JetStream) {
	kv, err := js.KeyValue(ctx, subjects.WIPBucket)
	if err != nil {
		s.log.Warn().Err(err).Msg("watch queue pauses")
		return
	}
	w, err := kv.Watch(ctx, subjects.AllPauses)
	if err != nil {
		s.log.Warn().Err(err).Msg("watch queue pauses")
		return
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil {
				continue
			}
			queue := subjects.PausedQueue(e.Key())
			paused := e.Operation() == jetstream.KeyValuePut
			s.pause(queue, paused)
			s.log.Info().Str("queue", queue).Bool("paused", paused).Msg("queue pause changed")
		}
	}
}

// fetch takes one job from src without waiting, or returns nil. After a
// wake-up it waits up to confirmWait for the job the wake-up announced.
func (s *scanner) fetch(ctx context.Context, src *source, woken bool) jetstream.Msg {
	batch, err := src.consumer.FetchNoWait(1)
	if err == nil {
		for msg := range batch.Messages() {
			return msg
		}
		err = batch.Error()
	}
	if err == nil && woken {
		batch, err = src.consumer.Fetch(1, jetstream.FetchMaxWait(confirmWait))
		if err == nil {
			for msg := range batch.Messages() {
				return msg
			}
			err = batch.Error()
		}
	}
	if err != nil && ctx.Err() == nil && !errors.Is(err, nats.ErrTimeout) {
		s.log.Warn().Err(err).Str("queue", src.queue).Str("tier", string(src.tier)).Msg("fetch")
		src.pending.Store(true) // try again on the next scan
	}
	return nil
}

// Run takes and runs jobs until ctx is done, then stops the running stages
// (their jobs are nak'ed for another agent), removes its workspaces and
// returns once every goroutine it started has returned.
func (a *Agent) Run(ctx context.Context) error {
	if err := os.MkdirAll(a.cfg.WorkDir, 0o750); err != nil {
		return fmt.Errorf("agent: work dir: %w", err)
	}
	runs, err := a.js.KeyValue(ctx, subjects.RunsBucket)
	if err != nil {
		return fmt.Errorf("agent: bucket %s: %w", subjects.RunsBucket, err)
	}
	a.runs = runs
	if err := a.openContainerd(ctx); err != nil {
		return err
	}
	if a.containers != nil {
		defer a.containers.Close()
	}
	sc := &scanner{bySubj: map[string]*source{}, wake: make(chan struct{}, 1), every: a.cfg.RescanInterval, log: a.log}
	for _, q := range a.cfg.Queues {
		if err := bus.EnsureJobConsumers(ctx, a.js, q, a.cfg.AckWait, a.cfg.MaxDeliver); err != nil {
			return fmt.Errorf("agent: %w", err)
		}
	}
	for _, tier := range subjects.Tiers {
		for _, q := range a.cfg.Queues {
			c, err := bus.JobConsumer(ctx, a.js, q, tier)
			if err != nil {
				return fmt.Errorf("agent: %w", err)
			}
			src := &source{queue: q, tier: tier, consumer: c}
			sc.sources = append(sc.sources, src)
			sc.bySubj[subjects.WakeFor(q, tier)] = src
		}
	}
	limits := jobLimits{
		ackWait:    sc.sources[0].consumer.CachedInfo().Config.AckWait,
		maxDeliver: sc.sources[0].consumer.CachedInfo().Config.MaxDeliver,
	}

	var subs []*nats.Subscription
	defer func() {
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
	}()
	for _, q := range a.cfg.Queues {
		s, err := a.nc.Subscribe(subjects.Wake(q), sc.woke)
		if err != nil {
			return fmt.Errorf("agent: subscribe wake-ups: %w", err)
		}
		subs = append(subs, s)
	}
	s, err := a.nc.Subscribe(subjects.AllCancel, func(m *nats.Msg) {
		a.cancelRun(subjects.CancelRun(m.Subject))
	})
	if err != nil {
		return fmt.Errorf("agent: subscribe cancels: %w", err)
	}
	subs = append(subs, s)
	s, err = a.nc.Subscribe(subjects.RunEvents, a.onRunEvent)
	if err != nil {
		return fmt.Errorf("agent: subscribe run events: %w", err)
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
	defer func() {
		stopRegistry()
		registry.Wait()
	}()
	defer func() {
		wg.Wait()
		a.removeWorkspaces()
	}()
	slots := make(chan struct{}, a.cfg.Slots)
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		msg := sc.next(ctx)
		if msg == nil {
			return nil
		}
		a.setBusy(1)
		wg.Go(func() {
			defer func() { <-slots; a.setBusy(-1) }()
			a.runJob(ctx, msg, limits)
		})
	}
}

// cancelRun cancels the running jobs of a run and remembers the run, so a
// job of it fetched later is not started.
func (a *Agent) cancelRun(runID string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	for id, t := range a.cancelled {
		if now.Sub(t) > time.Hour {
			delete(a.cancelled, id)
		}
	}
	a.cancelled[runID] = now
	for j := range a.active[runID] {
		j.cancel(errRunCancelled)
	}
}

// register records a running job; it reports false when its run was
// cancelled already.
func (a *Agent) register(j *job) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.cancelled[j.RunID]; ok {
		return false
	}
	if a.active[j.RunID] == nil {
		a.active[j.RunID] = map[*job]struct{}{}
	}
	a.active[j.RunID][j] = struct{}{}
	return true
}

func (a *Agent) unregister(j *job) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.active[j.RunID], j)
	if len(a.active[j.RunID]) == 0 {
		delete(a.active, j.RunID)
	}
}

// onRunEvent removes the workspace of a finished run when no stage of it
// runs here.
func (a *Agent) onRunEvent(m *nats.Msg) {
	var ev wire.Event
	if err := json.Unmarshal(m.Data, &ev); err != nil || ev.Type != wire.RunFinished {
		return
	}
	dir, err := a.workspace(ev.RunID)
	if err != nil {
		return
	}
	runID := ev.RunID
	a.mu.Lock()
	busy := len(a.active[runID]) > 0
	a.mu.Unlock()
	if busy {
		return
	}
	if err := os.RemoveAll(dir); err != nil {
		a.log.Warn().Err(err).Str("run_id", runID).Msg("remove workspace")
	}
}

// workspace returns the workspace directory of a run; the run id must be a
// ULID, so it can never name a path outside WorkDir.
func (a *Agent) workspace(runID string) (string, error) {
	if _, err := ulid.ParseStrict(runID); err != nil {
		return "", fmt.Errorf("run id %q: %w", runID, err)
	}
	return filepath.Join(a.cfg.WorkDir, runID), nil
}

// removeWorkspaces removes every run workspace under WorkDir (the entries
// named by a run id) and nothing else.
func (a *Agent) removeWorkspaces() {
	entries, err := os.ReadDir(a.cfg.WorkDir)
	if err != nil {
		a.log.Warn().Err(err).Msg("list workspaces")
		return
	}
	for _, e := range entries {
		if dir, err := a.workspace(e.Name()); err == nil && e.IsDir() {
			if err := os.RemoveAll(dir); err != nil {
				a.log.Warn().Err(err).Str("run_id", e.Name()).Msg("remove workspace")
			}
		}
	}
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

func (a *Agent) setBusy(delta int32) {
	a.busy.Add(delta)
	select {
	case a.changed <- struct{}{}:
	default:
	}
}

// advertise keeps the agent's entry in the registry: at start, when its
// busy count changes, and every third of the registry TTL; it deletes the
// entry when ctx ends.
func (a *Agent) advertise(ctx context.Context) {
	kv, err := a.js.KeyValue(ctx, subjects.AgentsBucket)
	if err != nil {
		a.log.Warn().Err(err).Msg("agent registry")
		return
	}
	host, _ := os.Hostname()
	info := wire.Agent{ID: a.cfg.ID, Hostname: host, Queues: a.cfg.Queues, Slots: a.cfg.Slots, Executor: a.cfg.Executor, Started: time.Now()}
	put := func() {
		info.Busy, info.Seen = int(a.busy.Load()), time.Now()
		data, _ := json.Marshal(info)
		if _, err := kv.Put(ctx, a.cfg.ID, data); err != nil && ctx.Err() == nil {
			a.log.Warn().Err(err).Msg("agent registry")
		}
	}
	tick := time.NewTicker(subjects.AgentTTL / 3)
	defer tick.Stop()
	put()
	for {
		select {
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_ = kv.Delete(dctx, a.cfg.ID)
			cancel()
			return
		case <-a.changed:
			put()
		case <-tick.C:
			put()
		}
	}
}
