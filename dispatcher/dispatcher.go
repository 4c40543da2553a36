package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/pipeline"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// Config configures a dispatcher.
type Config struct {
	// DedupWindow is how long a trigger id is remembered; default
	// subjects.DefaultDedupWindow.
	DedupWindow time.Duration
	// WIPLimit is how many runs of one repository are in flight at once;
	// default subjects.DefaultWIPLimit.
	WIPLimit int
	// WIPLimits overrides WIPLimit per repository name.
	WIPLimits map[string]int
	// WIPPolicy is PolicyQueue (default: wait in arrival order) or
	// PolicyRefuse (refuse with a retry-after) for a full WIP limit.
	WIPPolicy string
	// MaxPending bounds the pending jobs of one queue; a run whose root
	// stages' queue is at the bound waits or is refused, by
	// BackpressurePolicy. 0 is no bound.
	MaxPending int
	// BackpressurePolicy is PolicyQueue (default) or PolicyRefuse.
	BackpressurePolicy string
	// RetryAfter is what a refusal tells the client; default 30s.
	RetryAfter time.Duration
	// LeaseTTL is how long a WIP lease or group lock survives without
	// renewal (the dispatchers renew every third of it); default
	// subjects.DefaultLeaseTTL.
	LeaseTTL time.Duration
	// RecheckInterval is how often waiting runs are reconsidered without
	// an event (backpressure clears without one); default 2s.
	RecheckInterval time.Duration
	// ReconcileInterval is how often admitted runs are checked for what
	// events missed (a lost job, a lost finished event); default 30s.
	ReconcileInterval time.Duration
	// Logger receives the dispatcher's logs.
	Logger zerolog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// A dispatcher that dies holds up to prefetch messages of each consumer
// un-acked; they go to the other dispatchers (or its successor) after
// handlerAckWait. Handling one message takes milliseconds.
const (
	prefetch       = 16
	handlerAckWait = 10 * time.Second
)

// ErrInvalidConfig is wrapped by Config validation errors.
var ErrInvalidConfig = errors.New("dispatcher: invalid config")

// Dispatcher admits triggers and drives runs. Create it with New and start
// it with Run.
type Dispatcher struct {
	cfg   Config
	nc    *nats.Conn
	js    jetstream.JetStream
	runs  jetstream.KeyValue
	dedup jetstream.KeyValue
	wip   jetstream.KeyValue
	log   zerolog.Logger
	// limits are the WIP limits by repository token.
	limits map[string]int

	admitMu sync.Mutex // serializes admit in this process

	mu    sync.Mutex           // guards cache
	cache map[string]cachedRun // run documents as last read or written
}

// cachedRun is a run document and its revision. The cache only saves a
// read: every write is a compare-and-set on the revision, and a conflict
// drops the entry and reads the document again.
type cachedRun struct {
	run *wire.Run
	rev uint64
}

// maxCachedRuns bounds the cache; past it the cache starts over.
const maxCachedRuns = 4096

// New returns a dispatcher on b. The streams and buckets must have been
// provisioned (bus.Provision). It starts nothing.
func New(ctx context.Context, b *bus.Bus, cfg Config) (*Dispatcher, error) {
	if cfg.DedupWindow == 0 {
		cfg.DedupWindow = subjects.DefaultDedupWindow
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.WIPLimit == 0 {
		cfg.WIPLimit = subjects.DefaultWIPLimit
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = subjects.DefaultLeaseTTL
	}
	if cfg.RetryAfter == 0 {
		cfg.RetryAfter = 30 * time.Second
	}
	if cfg.RecheckInterval == 0 {
		cfg.RecheckInterval = 2 * time.Second
	}
	if cfg.ReconcileInterval == 0 {
		cfg.ReconcileInterval = 30 * time.Second
	}
	for _, pol := range []*string{&cfg.WIPPolicy, &cfg.BackpressurePolicy} {
		switch *pol {
		case "":
			*pol = PolicyQueue
		case PolicyQueue, PolicyRefuse:
		default:
			return nil, fmt.Errorf("%w: policy %q is not queue or refuse", ErrInvalidConfig, *pol)
		}
	}
	if cfg.WIPLimit < 1 || cfg.LeaseTTL < 3*time.Second {
		return nil, fmt.Errorf("%w: wip limit must be >= 1 and lease ttl >= 3s", ErrInvalidConfig)
	}
	limits := map[string]int{}
	for repo, n := range cfg.WIPLimits {
		if n < 1 {
			return nil, fmt.Errorf("%w: wip limit of %s must be >= 1", ErrInvalidConfig, repo)
		}
		limits[subjects.RepoToken(repo)] = n
	}
	wip, err := b.JS.KeyValue(ctx, subjects.WIPBucket)
	if err != nil {
		return nil, fmt.Errorf("dispatcher: bucket %s: %w", subjects.WIPBucket, err)
	}
	runs, err := b.JS.KeyValue(ctx, subjects.RunsBucket)
	if err != nil {
		return nil, fmt.Errorf("dispatcher: bucket %s: %w", subjects.RunsBucket, err)
	}
	dedup, err := b.JS.KeyValue(ctx, subjects.DedupBucket)
	if err != nil {
		return nil, fmt.Errorf("dispatcher: bucket %s: %w", subjects.DedupBucket, err)
	}
	return &Dispatcher{
		cfg: cfg, nc: b.Conn, js: b.JS, runs: runs, dedup: dedup, wip: wip, limits: limits, cache: map[string]cachedRun{},
		log: cfg.Logger.With().Str("component", "dispatcher").Logger(),
	}, nil
}

// Run consumes triggers and events until ctx is done. It returns nil after
// ctx is cancelled and every goroutine it started has returned, or the
// first error that stops a consumer.
func (d *Dispatcher) Run(ctx context.Context) error {
	triggers, err := d.js.CreateOrUpdateConsumer(ctx, subjects.TriggersStream, jetstream.ConsumerConfig{
		Durable:       subjects.DispatcherTriggers,
		FilterSubject: subjects.AllTriggers,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       handlerAckWait,
	})
	if err != nil {
		return fmt.Errorf("dispatcher: triggers consumer: %w", err)
	}
	events, err := d.js.CreateOrUpdateConsumer(ctx, subjects.EventsStream, jetstream.ConsumerConfig{
		Durable:       subjects.DispatcherEvents,
		FilterSubject: subjects.AllEvents,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       handlerAckWait,
	})
	if err != nil {
		return fmt.Errorf("dispatcher: events consumer: %w", err)
	}
	deadLetters, err := d.js.CreateOrUpdateConsumer(ctx, subjects.AdvisoriesStream, jetstream.ConsumerConfig{
		Durable:       subjects.DispatcherDeadLetters,
		FilterSubject: subjects.MaxDeliveries,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       handlerAckWait,
	})
	if err != nil {
		return fmt.Errorf("dispatcher: dead-letter consumer: %w", err)
	}
	d.log.Info().Msg("dispatcher started")
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return d.consume(gctx, triggers, d.handleTrigger) })
	g.Go(func() error { return d.consume(gctx, events, d.handleEvent) })
	g.Go(func() error { return d.consume(gctx, deadLetters, d.handleDeadLetter) })
	g.Go(func() error { return d.watchReleases(gctx) })
	g.Go(func() error { return d.maintain(gctx) })
	err = g.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// consume feeds messages to handle one at a time and acks each one handle
// accepted; a handler error naks the message for a retry.
func (d *Dispatcher) consume(ctx context.Context, c jetstream.Consumer, handle func(context.Context, jetstream.Msg) error) error {
	it, err := c.Messages(jetstream.PullMaxMessages(prefetch))
	if err != nil {
		return fmt.Errorf("dispatcher: consume: %w", err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for {
		msg, err := it.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("dispatcher: next message: %w", err)
		}
		if err := handle(ctx, msg); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			d.log.Error().Err(err).Str("subject", msg.Subject()).Msg("handling message, will retry")
			_ = msg.NakWithDelay(time.Second)
			continue
		}
		if err := msg.Ack(); err != nil {
			d.log.Warn().Err(err).Str("subject", msg.Subject()).Msg("ack")
		}
	}
}

// handleTrigger takes one trigger: validate, dedup, create the run waiting
// for admission (or refuse it, by policy), then admit what can be.
func (d *Dispatcher) handleTrigger(ctx context.Context, msg jetstream.Msg) error {
	var t wire.Trigger
	if err := json.Unmarshal(msg.Data(), &t); err != nil || t.ID == "" {
		d.log.Error().Err(err).Str("subject", msg.Subject()).Msg("dropping malformed trigger")
		return nil
	}
	var seq uint64
	if meta, err := msg.Metadata(); err == nil {
		seq = meta.Sequence.Stream
	}
	log := d.log.With().Str("trigger_id", t.ID).Logger()
	key := subjects.DedupKey(t.ID)
	p, perr := pipeline.Parse(t.File, []byte(t.Pipeline))
	if perr == nil && t.Priority != "" {
		if _, err := subjects.ParseTier(string(t.Priority)); err != nil {
			perr = err
		}
	}
	if perr == nil && t.Queue != "" {
		perr = subjects.ValidateQueue(t.Queue)
	}
	if perr != nil {
		log.Info().Err(perr).Msg("trigger refused")
		return d.recordOutcome(ctx, key, wire.Outcome{Error: perr.Error(), Reason: wire.RefusedInvalid}, d.cfg.DedupWindow)
	}
	// A duplicate gets the first run's id.
	if entry, err := d.dedup.Get(ctx, key); err == nil {
		var out wire.Outcome
		if err := json.Unmarshal(entry.Value(), &out); err == nil && out.RunID != "" {
			log.Info().Str("run_id", out.RunID).Msg("duplicate trigger")
			return d.createRun(ctx, out.RunID, t, p, seq)
		}
		return nil
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("dedup %s: %w", key, err)
	}
	if refusal, err := d.refusal(ctx, t, p); err != nil {
		return err
	} else if refusal != nil {
		log.Info().Str("reason", refusal.Reason).Msg(refusal.Error)
		return d.recordOutcome(ctx, key, *refusal, subjects.TriggerDuplicates)
	}
	out := wire.Outcome{RunID: ulid.Make().String()}
	data, _ := json.Marshal(out)
	if _, err := d.dedup.Create(ctx, key, data, jetstream.KeyTTL(d.cfg.DedupWindow)); err != nil {
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("dedup %s: %w", key, err)
		}
		// Another dispatcher took it in between: handle it as a duplicate.
		return d.handleTrigger(ctx, msg)
	}
	return d.createRun(ctx, out.RunID, t, p, seq)
}

// createRun creates the run document, waiting for admission, if it does
// not exist, and admits what can be admitted. Called again for the same
// run it republishes the run's queued jobs (their message ids make that a
// no-op when they were sent).
func (d *Dispatcher) createRun(ctx context.Context, id string, t wire.Trigger, p *pipeline.Pipeline, seq uint64) error {
	now := d.cfg.Now()
	r := newRun(id, t, p, seq, now)
	data, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode run %s: %w", id, err)
	}
	rev, err := d.runs.Create(ctx, id, data)
	switch {
	case err == nil:
		d.remember(clone(r), rev)
		d.log.Info().Str("run_id", id).Str("pipeline", p.Name).Str("repo", r.Repo).Str("tier", string(r.Tier)).Msg("run created")
	case errors.Is(err, jetstream.ErrKeyExists):
		if r, _, err = d.get(ctx, id); err != nil {
			return err
		}
		if err := d.publishJobs(ctx, r, queuedKeys(r)); err != nil {
			return err
		}
	default:
		return fmt.Errorf("create run %s: %w", id, err)
	}
	if r.Lease == "" && !r.State.Terminal() {
		if _, err := d.wip.Create(ctx, subjects.WaitKey(r.Repo, r.Seq), []byte(id)); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("queue run %s for admission: %w", id, err)
		}
	}
	if p.Concurrency != nil && p.Concurrency.CancelInProgress {
		if err := d.supersede(ctx, r); err != nil {
			return err
		}
	}
	return d.admit(ctx, subjects.RepoToken(r.Repo))
}

// recordOutcome records a refused trigger's outcome for ttl.
func (d *Dispatcher) recordOutcome(ctx context.Context, key string, out wire.Outcome, ttl time.Duration) error {
	data, _ := json.Marshal(out)
	if _, err := d.dedup.Create(ctx, key, data, jetstream.KeyTTL(ttl)); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("dedup %s: %w", key, err)
	}
	return nil
}

// handleEvent applies a lifecycle event to its run.
func (d *Dispatcher) handleEvent(ctx context.Context, msg jetstream.Msg) error {
	var ev wire.Event
	if err := json.Unmarshal(msg.Data(), &ev); err != nil || ev.RunID == "" {
		d.log.Error().Err(err).Str("subject", msg.Subject()).Msg("dropping malformed event")
		return nil
	}
	var err error
	switch ev.Type {
	case wire.CancelRequested:
		err = d.cancel(ctx, ev)
	case wire.Started, wire.Heartbeat, wire.Finished:
		err = d.stageEvent(ctx, ev)
	case wire.ReplayRequested:
		err = d.replay(ctx, ev)
	default:
		return nil
	}
	if err != nil {
		return err
	}
	// A redelivered event may have been applied by a dispatcher that died
	// before it published what the change called for: finish that work.
	if meta, merr := msg.Metadata(); merr == nil && meta.NumDelivered > 1 {
		return d.repair(ctx, ev.RunID)
	}
	return nil
}

// repair publishes what a run document calls for, in case the dispatcher
// that changed it died before doing so: the jobs of its queued stages
// (their message ids make this a no-op when they were published within the
// stream's duplicate window) and, for an ended run, the release of its
// lease and lock.
func (d *Dispatcher) repair(ctx context.Context, runID string) error {
	d.forget(runID) // repair works from the stored document
	r, _, _, err := d.load(ctx, runID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if r.State.Terminal() {
		return d.release(ctx, r)
	}
	if r.CancelReason != "" {
		if err := d.notifyCancel(runID); err != nil {
			return err
		}
	}
	return d.publishJobs(ctx, r, queuedKeys(r))
}

func (d *Dispatcher) stageEvent(ctx context.Context, ev wire.Event) error {
	var v verdict
	before, after, err := d.update(ctx, ev.RunID, func(r *wire.Run) bool {
		v = apply(r, ev, d.cfg.Now())
		if v != applied {
			return false
		}
		advance(r, d.cfg.Now())
		return true
	})
	if err != nil {
		return err
	}
	if v == recancel {
		return d.notifyCancel(ev.RunID)
	}
	if v != applied {
		if ev.Type == wire.Finished {
			d.log.Info().Str("run_id", ev.RunID).Str("stage", ev.Stage).Int("attempt", ev.Attempt).Msg("stale finish ignored")
		}
		return nil
	}
	return d.afterUpdate(ctx, before, after)
}

func (d *Dispatcher) cancel(ctx context.Context, ev wire.Event) error {
	reason := ev.Message
	if reason == "" {
		reason = "cancel requested"
	}
	before, after, err := d.update(ctx, ev.RunID, func(r *wire.Run) bool {
		return cancel(r, reason, d.cfg.Now())
	})
	if err != nil || after == nil {
		return err
	}
	d.log.Info().Str("run_id", ev.RunID).Str("reason", reason).Msg("run cancelling")
	if err := d.notifyCancel(ev.RunID); err != nil {
		return err
	}
	return d.afterUpdate(ctx, before, after)
}

// afterUpdate publishes what a successful run update calls for: the jobs of
// newly queued stage attempts, and the run's end.
func (d *Dispatcher) afterUpdate(ctx context.Context, before, after *wire.Run) error {
	var keys []string
	for i, s := range after.Stages {
		b := before.Stages[i]
		if s.State == wire.StageQueued && (b.State != wire.StageQueued || b.Attempt != s.Attempt) {
			keys = append(keys, s.Key)
		}
	}
	if err := d.publishJobs(ctx, after, keys); err != nil {
		return err
	}
	if after.State.Terminal() && !before.State.Terminal() {
		d.log.Info().Str("run_id", after.ID).Str("state", string(after.State)).Msg("run finished")
		data, _ := json.Marshal(wire.Event{Type: wire.RunFinished, RunID: after.ID, Time: after.Finished, Message: string(after.State)})
		if _, err := d.js.Publish(ctx, subjects.RunEvent(after.ID), data); err != nil {
			return fmt.Errorf("publish run %s finished: %w", after.ID, err)
		}
		return d.release(ctx, after)
	}
	return nil
}

func (d *Dispatcher) notifyCancel(runID string) error {
	if err := d.nc.Publish(subjects.Cancel(runID), nil); err != nil {
		return fmt.Errorf("cancel notice %s: %w", runID, err)
	}
	return nil
}

// publishJobs publishes the job of each stage key with its attempt's
// message id, so publishing twice stores it once.
func (d *Dispatcher) publishJobs(ctx context.Context, r *wire.Run, keys []string) error {
	seqs := map[string]uint64{}
	jobs := queuedJobs(r, keys)
	for _, job := range jobs {
		data, err := json.Marshal(job)
		if err != nil {
			return fmt.Errorf("encode job %s: %w", job.Stage.Key, err)
		}
		subj := subjects.Job(job.Stage.Queue, tierOf(r))
		id := subjects.JobMsgID(r.ID, job.Stage.Key, job.Attempt)
		ack, err := d.js.Publish(ctx, subj, data, jetstream.WithMsgID(id))
		if err != nil {
			return fmt.Errorf("publish stage %s: %w", id, err)
		}
		seqs[job.Stage.Key] = ack.Sequence
		d.log.Debug().Str("run_id", r.ID).Str("stage", job.Stage.Key).Int("attempt", job.Attempt).
			Str("queue", job.Stage.Queue).Str("tier", string(r.Tier)).Msg("stage queued")
	}
	if len(jobs) == 0 {
		return nil
	}
	// Record where the jobs are, for the reconcile loop.
	_, _, err := d.update(ctx, r.ID, func(r *wire.Run) bool {
		changed := false
		for _, job := range jobs {
			s := r.Stage(job.Stage.Key)
			if s != nil && s.Job == job.Attempt && s.JobSeq != seqs[s.Key] && (s.State == wire.StageQueued || s.State == wire.StageRunning) {
				s.JobSeq = seqs[s.Key]
				changed = true
			}
		}
		return changed
	})
	return err
}

// get reads a run document and its revision.
func (d *Dispatcher) get(ctx context.Context, id string) (*wire.Run, uint64, error) {
	entry, err := d.runs.Get(ctx, id)
	if err != nil {
		return nil, 0, fmt.Errorf("get run %s: %w", id, err)
	}
	var r wire.Run
	if err := json.Unmarshal(entry.Value(), &r); err != nil {
		return nil, 0, fmt.Errorf("decode run %s: %w", id, err)
	}
	return &r, entry.Revision(), nil
}

// update applies change to the run document by compare-and-set, retrying
// on a revision conflict. It returns the document before and after, or a
// nil after when change reported no change (or the run does not exist).
func (d *Dispatcher) update(ctx context.Context, id string, change func(*wire.Run) bool) (before, after *wire.Run, err error) {
	for {
		r, rev, cached, err := d.load(ctx, id)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			d.log.Warn().Str("run_id", id).Msg("event for unknown run")
			return nil, nil, nil
		}
		if err != nil {
			return nil, nil, err
		}
		old := clone(r)
		if !change(r) {
			if cached {
				// Another dispatcher may have moved the run on: decide
				// "nothing to do" only on a fresh read.
				d.forget(id)
				continue
			}
			return old, nil, nil
		}
		data, err := json.Marshal(r)
		if err != nil {
			return nil, nil, fmt.Errorf("encode run %s: %w", id, err)
		}
		rev, err = d.runs.Update(ctx, id, data, rev)
		if err != nil {
			d.forget(id)
			if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || isWrongLastSequence(err) {
				continue
			}
			return nil, nil, fmt.Errorf("update run %s: %w", id, err)
		}
		d.remember(r, rev)
		return old, r, nil
	}
}

// load returns a copy of the run document and its revision, from the cache
// (cached is true) or from the bucket.
func (d *Dispatcher) load(ctx context.Context, id string) (r *wire.Run, rev uint64, cached bool, err error) {
	d.mu.Lock()
	c, ok := d.cache[id]
	d.mu.Unlock()
	if ok {
		return clone(c.run), c.rev, true, nil
	}
	r, rev, err = d.get(ctx, id)
	if err == nil {
		d.remember(r, rev)
		r = clone(r)
	}
	return r, rev, false, err
}

func (d *Dispatcher) remember(r *wire.Run, rev uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if r.State.Terminal() {
		delete(d.cache, r.ID)
		return
	}
	if len(d.cache) >= maxCachedRuns {
		clear(d.cache)
	}
	d.cache[r.ID] = cachedRun{run: r, rev: rev}
}

func (d *Dispatcher) forget(id string) {
	d.mu.Lock()
	delete(d.cache, id)
	d.mu.Unlock()
}

// clone copies a run document deeply enough to change it: the pipeline is
// never changed and is shared.
func clone(r *wire.Run) *wire.Run {
	c := *r
	c.Stages = slices.Clone(r.Stages)
	return &c
}

func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}
