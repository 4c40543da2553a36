package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/metrics"
	"github.com/weft-ci/weft/repos"
	"github.com/weft-ci/weft/runstore"
	"github.com/weft-ci/weft/subjects"
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
	// SweepInterval is how often the leases and locks of ended runs are
	// deleted (those a dispatcher that died did not release); default
	// DefaultSweepInterval.
	SweepInterval time.Duration
	// RecheckInterval is how often waiting runs are reconsidered without
	// an event (backpressure clears without one); default 2s.
	RecheckInterval time.Duration
	// ReconcileInterval is how often admitted runs are checked for what
	// events missed (a lost job, a lost finished event); default 30s.
	ReconcileInterval time.Duration
	// Logger receives the dispatcher's logs.
	Logger zerolog.Logger
	// Metrics receives what the dispatcher counts (package metrics); nil
	// counts on a registry nobody serves.
	Metrics *metrics.Dispatcher
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// A dispatcher that dies holds up to prefetch messages of each consumer
// un-acked; they go to the other dispatchers (or its successor) after
// handlerAckWait. Handling one message takes milliseconds; workers
// handle the messages of different runs (events) or repositories
// (triggers) at once, each partition's in order.
const (
	prefetch       = 64
	handlerAckWait = 10 * time.Second
	workers        = 8
)

// Defaults of Config.
const (
	// DefaultSweepInterval is how often leases and locks of ended runs are
	// swept.
	DefaultSweepInterval = 20 * time.Second
	// DefaultReconcileInterval is how often admitted runs are reconciled.
	DefaultReconcileInterval = 30 * time.Second
	// DefaultRecheckInterval is how often waiting runs are reconsidered.
	DefaultRecheckInterval = 2 * time.Second
)

// ErrInvalidConfig is wrapped by Config validation errors.
var ErrInvalidConfig = errors.New("dispatcher: invalid config")

// Dispatcher admits triggers and drives runs. Create it with New and start
// it with Run.
type Dispatcher struct {
	cfg   Config
	nc    *nats.Conn
	js    jetstream.JetStream
	runs  *store
	repos *repos.Store
	// repoWIP are the WIP limits repository settings give, by token;
	// guarded by repoMu, kept by watchRepoWIP.
	repoMu  sync.Mutex
	repoWIP map[string]int
	dedup   jetstream.KeyValue
	wip     jetstream.KeyValue
	// waiting is the stream of the runs waiting for admission.
	waiting jetstream.Stream
	log     zerolog.Logger
	// limits are the WIP limits by repository token.
	limits map[string]int

	admitting keyLocks // per repository token: serializes admit in this process
	// leases is the copy of the slot leases admission reads.
	leases *leaseView
}

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
	if cfg.SweepInterval == 0 {
		cfg.SweepInterval = DefaultSweepInterval
	}
	if cfg.RetryAfter == 0 {
		cfg.RetryAfter = 30 * time.Second
	}
	if cfg.RecheckInterval == 0 {
		cfg.RecheckInterval = DefaultRecheckInterval
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewDispatcher(prometheus.NewRegistry())
	}
	if cfg.ReconcileInterval == 0 {
		cfg.ReconcileInterval = DefaultReconcileInterval
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
	if cfg.WIPLimit < 1 || cfg.SweepInterval < 0 || cfg.ReconcileInterval < 0 || cfg.RecheckInterval < 0 {
		return nil, fmt.Errorf("%w: wip limit must be >= 1 and intervals > 0", ErrInvalidConfig)
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
	runs, err := runstore.Open(ctx, b.JS)
	if err != nil {
		return nil, fmt.Errorf("dispatcher: %w", err)
	}
	dedup, err := b.JS.KeyValue(ctx, subjects.DedupBucket)
	if err != nil {
		return nil, fmt.Errorf("dispatcher: bucket %s: %w", subjects.DedupBucket, err)
	}
	waiting, err := b.JS.Stream(ctx, subjects.WaitingStream)
	if err != nil {
		return nil, fmt.Errorf("dispatcher: stream %s: %w", subjects.WaitingStream, err)
	}
	rs, err := repos.Open(ctx, b.JS)
	if err != nil {
		return nil, fmt.Errorf("dispatcher: %w", err)
	}
	log := cfg.Logger.With().Str("component", "dispatcher").Logger()
	return &Dispatcher{
		cfg: cfg, nc: b.Conn, js: b.JS, runs: newStore(runs, log), repos: rs, repoWIP: map[string]int{}, dedup: dedup, wip: wip, waiting: waiting, limits: limits, log: log,
		leases: newLeaseView(),
	}, nil
}

// Run consumes triggers and events until ctx is done. It returns nil after
// ctx is cancelled and every goroutine it started has returned, or the
// first error that stops a consumer.
func (d *Dispatcher) Run(ctx context.Context) error {
	tc := triggersConsumer()
	// A paused intake (weft intake pause) stays paused across restarts:
	// the update keeps the pause.
	if c, err := d.js.Consumer(ctx, subjects.TriggersStream, tc.Durable); err == nil {
		tc.PauseUntil = c.CachedInfo().Config.PauseUntil
	}
	triggers, err := d.js.CreateOrUpdateConsumer(ctx, subjects.TriggersStream, tc)
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
		Durable:        subjects.DispatcherDeadLetters,
		FilterSubjects: []string{subjects.MaxDeliveries, subjects.TriggerMaxDeliveries},
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        handlerAckWait,
	})
	if err != nil {
		return fmt.Errorf("dispatcher: dead-letter consumer: %w", err)
	}
	opens, openCh, err := d.subscribeQueueOpens()
	if err != nil {
		return err
	}
	defer func() { _ = opens.Unsubscribe() }()
	d.log.Info().Msg("dispatcher started")
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return d.consumeWith(gctx, triggers, d.triggerHandling()) })
	g.Go(func() error { return d.consumeWith(gctx, events, d.eventHandling()) })
	g.Go(func() error { return d.consume(gctx, deadLetters, d.handleDeadLetter) })
	g.Go(func() error { return d.watchReleases(gctx) })
	g.Go(func() error { return d.maintain(gctx) })
	g.Go(func() error { return d.serveQueueOpens(gctx, openCh) })
	g.Go(func() error {
		return d.repos.WatchWIP(gctx, func(token string, wip int) {
			d.repoMu.Lock()
			d.repoWIP[token] = wip
			d.repoMu.Unlock()
			d.log.Debug().Str("repo_token", token).Int("wip", wip).Msg("repository WIP limit")
		})
	})
	err = g.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// consume feeds messages to handle one at a time and acks each one handle
// accepted; a handler error naks the message for a retry a second later,
// without a bound.
func (d *Dispatcher) consume(ctx context.Context, c jetstream.Consumer, handle func(context.Context, jetstream.Msg) error) error {
	return d.consumeWith(ctx, c, handling{handle: handle})
}

// handling says how consumeWith treats the messages of one consumer.
type handling struct {
	// handle handles one message; an error hands it back for a retry.
	handle func(context.Context, jetstream.Msg) error
	// maxDeliver is the consumer's MaxDeliver; 0 for no bound.
	maxDeliver int
	// retryDelay is how long a message whose delivery number delivered
	// (from 1) failed waits for the next one; nil is a second.
	retryDelay func(delivered uint64) time.Duration
	// permanent reports the errors no retry can change; nil for none.
	permanent func(error) bool
	// giveUp, when set, ends a message that cannot succeed: its handler
	// failed with a permanent error, or failed on its last delivery. The
	// message is acked when giveUp returns nil, and handed back (for the
	// deliveries it has left) when it fails.
	giveUp func(ctx context.Context, msg jetstream.Msg, delivered uint64, err error) error
	// partition, with workers > 1, names a message's partition: the
	// messages of one partition are handled one at a time in the order
	// they came, those of different ones by up to workers at once.
	partition func(jetstream.Msg) string
	workers   int
}

// subjectToken returns a partition function naming a message by the
// i-th token of its subject (from 0): weft.events.<run>..., or
// weft.triggers.<repo>.
func subjectToken(i int) func(jetstream.Msg) string {
	return func(msg jetstream.Msg) string {
		parts := strings.SplitN(msg.Subject(), ".", i+2)
		if len(parts) <= i {
			return ""
		}
		return parts[i]
	}
}

// consumeWith feeds messages to h.handle (one at a time, or in
// partitions, see handling), acks each one it accepted, and retries or
// gives up the others as h says.
func (d *Dispatcher) consumeWith(ctx context.Context, c jetstream.Consumer, h handling) error {
	it, err := c.Messages(jetstream.PullMaxMessages(prefetch))
	if err != nil {
		return fmt.Errorf("dispatcher: consume: %w", err)
	}
	// Stopped when ctx ends, and on every return: an error return
	// (the iterator failed) must not leave its pulls running.
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	defer it.Stop()
	var (
		queues []chan jetstream.Msg
		wg     sync.WaitGroup
	)
	if h.workers > 1 && h.partition != nil {
		for range h.workers {
			q := make(chan jetstream.Msg, prefetch)
			queues = append(queues, q)
			wg.Go(func() {
				for msg := range q {
					d.settle(ctx, msg, h)
				}
			})
		}
		defer func() {
			for _, q := range queues {
				close(q)
			}
			wg.Wait()
		}()
	}
	for {
		msg, err := it.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("dispatcher: next message: %w", err)
		}
		if queues == nil {
			d.settle(ctx, msg, h)
			continue
		}
		f := fnv.New32a()
		f.Write([]byte(h.partition(msg)))
		select {
		case queues[f.Sum32()%uint32(len(queues))] <- msg:
		case <-ctx.Done():
			return nil
		}
	}
}

// settle handles one message and acks it, or retries or gives it up as
// h says.
func (d *Dispatcher) settle(ctx context.Context, msg jetstream.Msg, h handling) {
	d.conclude(ctx, msg, h, h.handle(ctx, msg))
}

// conclude acks a message its handler accepted (err is nil), or retries
// or gives it up as h says.
func (d *Dispatcher) conclude(ctx context.Context, msg jetstream.Msg, h handling, err error) {
	if err == nil {
		if err := msg.Ack(); err != nil {
			d.log.Warn().Err(err).Str("subject", msg.Subject()).Msg("ack")
		}
		return
	}
	if ctx.Err() != nil {
		return
	}
	delivered := uint64(1)
	if meta, merr := msg.Metadata(); merr == nil {
		delivered = meta.NumDelivered
	}
	delay := time.Second
	if h.retryDelay != nil {
		delay = h.retryDelay(delivered)
	}
	last := h.maxDeliver > 0 && delivered >= uint64(h.maxDeliver)
	if h.giveUp != nil && (last || h.permanent != nil && h.permanent(err)) {
		gerr := h.giveUp(ctx, msg, delivered, err)
		if gerr == nil {
			if err := msg.Ack(); err != nil {
				d.log.Warn().Err(err).Str("subject", msg.Subject()).Msg("ack")
			}
			return
		}
		if ctx.Err() != nil {
			return
		}
		d.log.Error().Err(gerr).AnErr("cause", err).Str("subject", msg.Subject()).Uint64("deliveries", delivered).
			Msg("giving up on a message failed; it is retried while it has deliveries left, then stays in its stream")
	} else {
		d.log.Error().Err(err).Str("subject", msg.Subject()).Uint64("deliveries", delivered).Dur("retry_in", delay).
			Msg("handling message, will retry")
	}
	_ = msg.NakWithDelay(delay)
}
