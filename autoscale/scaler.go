package autoscale

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/metrics"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// ErrInvalidConfig is wrapped by the errors of New, NewHooks and
// NewLocal.
var ErrInvalidConfig = errors.New("autoscale: invalid config")

// readTimeout bounds one reading of the queues and the registry.
const readTimeout = 10 * time.Second

// Actuator applies the decisions that change a queue (Decision.Changes).
// The Scaler calls it from its Run goroutine only.
type Actuator interface {
	// Scale moves d.Queue from d.Agents towards d.Target agents. An error
	// is logged and counted; the next decision asks again if it must.
	Scale(ctx context.Context, d Decision) error
	// Removable returns how many agents of queue Scale could remove; -1
	// when it cannot tell.
	Removable(queue string) int
	// Close stops what the actuator started and waits for it.
	Close() error
}

// Config configures a Scaler.
type Config struct {
	// Policy is what queues are scaled by; it must be valid
	// (Policy.Validate).
	Policy Policy
	// Queues are the queues to scale; empty scales every queue seen, in
	// the jobs stream or served by an agent of the registry (label queues
	// left out: an agent started without labels cannot serve them).
	Queues []string
	// Interval is how often the queues are read and decided on; 0 is
	// DefaultInterval.
	Interval time.Duration
	// Actuator applies the decisions; required. Run closes it.
	Actuator Actuator
	// Metrics receives what the Scaler counts; nil counts on a registry
	// of its own.
	Metrics *metrics.Autoscale
	// Logger receives every decision: changes at info, the rest at debug
	// (the first hold at the maximum of a streak at info).
	Logger zerolog.Logger
}

// Scaler scales the agents of queues by their depth: every interval it
// reads the depth of the queues (client.QueueDepths) and the registry
// (client.Agents), decides on each queue (Decide) and applies what
// changes through its Actuator.
type Scaler struct {
	js  jetstream.JetStream
	cfg Config
	log zerolog.Logger
	// state, last and seen belong to the Run goroutine: what Decide
	// remembers of each queue, the last action of each queue (for
	// logging) and the queues seen so far.
	state map[string]State
	last  map[string]Action
	seen  map[string]bool
}

// New returns a Scaler that reads the fleet through js; it starts
// nothing. Its errors wrap ErrInvalidConfig or ErrInvalidPolicy.
func New(js jetstream.JetStream, cfg Config) (*Scaler, error) {
	if err := cfg.Policy.Validate(); err != nil {
		return nil, err
	}
	if cfg.Actuator == nil {
		return nil, fmt.Errorf("%w: no actuator", ErrInvalidConfig)
	}
	if cfg.Interval < 0 {
		return nil, fmt.Errorf("%w: interval %v: want more than 0", ErrInvalidConfig, cfg.Interval)
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	for _, q := range cfg.Queues {
		if err := subjects.ValidateQueue(q); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewAutoscale(prometheus.NewRegistry())
	}
	return &Scaler{
		js: js, cfg: cfg, log: cfg.Logger.With().Str("component", "autoscale").Logger(),
		state: map[string]State{}, last: map[string]Action{}, seen: map[string]bool{},
	}, nil
}

// Run decides every interval until ctx ends, then closes the actuator,
// which stops and waits for what it started, and returns its error. A
// reading of the fleet that fails is logged and tried again at the next
// interval.
func (s *Scaler) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	for {
		s.tick(ctx)
		select {
		case <-ctx.Done():
			if err := s.cfg.Actuator.Close(); err != nil {
				return fmt.Errorf("autoscale: stop: %w", err)
			}
			return nil
		case <-t.C:
		}
	}
}

// tick reads the fleet once and decides on every queue.
func (s *Scaler) tick(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, readTimeout)
	defer cancel()
	depths, err := client.QueueDepths(rctx, s.js)
	if err == nil {
		var agents []wire.Agent
		if agents, err = client.Agents(rctx, s.js); err == nil {
			s.decide(ctx, depths, agents, time.Now())
			return
		}
	}
	if ctx.Err() == nil {
		s.log.Warn().Err(err).Dur("interval", s.cfg.Interval).Msg("cannot read the fleet; trying again at the next interval")
	}
}

func (s *Scaler) decide(ctx context.Context, depths []client.QueueDepth, agents []wire.Agent, now time.Time) {
	m := s.cfg.Metrics
	for _, q := range s.queues(depths, agents) {
		o := observe(q, depths, agents)
		o.Removable = s.cfg.Actuator.Removable(q)
		st, d := Decide(s.cfg.Policy, s.state[q], o, now)
		m.Decisions.WithLabelValues(q, string(d.Action)).Inc()
		m.Agents.WithLabelValues(q).Set(float64(d.Agents))
		m.Target.WithLabelValues(q).Set(float64(d.Target))
		m.Min.WithLabelValues(q).Set(float64(d.Min))
		s.logDecision(d)
		if d.Changes() {
			if err := s.cfg.Actuator.Scale(ctx, d); err != nil && ctx.Err() == nil {
				m.HookFailures.WithLabelValues(q).Inc()
				s.log.Error().Err(err).Str("queue", q).Int("agents", d.Agents).Int("target", d.Target).
					Str("action", string(d.Action)).Msg("scaling failed; the next decision tries again")
				st.Changed = time.Time{}
			}
		}
		if n := s.cfg.Actuator.Removable(q); n >= 0 {
			m.Managed.WithLabelValues(q).Set(float64(n))
		}
		s.state[q] = st
	}
}

// queues returns the queues to decide on, sorted.
func (s *Scaler) queues(depths []client.QueueDepth, agents []wire.Agent) []string {
	if len(s.cfg.Queues) > 0 {
		return s.cfg.Queues
	}
	for _, d := range depths {
		if !strings.Contains(d.Queue, "+") {
			s.seen[d.Queue] = true
		}
	}
	for _, a := range agents {
		for _, q := range a.Queues {
			s.seen[q] = true
		}
	}
	return slices.Sorted(maps.Keys(s.seen))
}

// observe returns what depths and agents say of queue q.
func observe(q string, depths []client.QueueDepth, agents []wire.Agent) Observation {
	o := Observation{Queue: q}
	for _, d := range depths {
		if d.Queue == q {
			o.Waiting, o.Running = d.Waiting, d.Running
		}
	}
	for _, a := range agents {
		if !a.Draining && slices.Contains(a.Queues, q) {
			o.Agents++
		}
	}
	return o
}

// logDecision logs d: a change at info, a first hold at the maximum at
// info, the rest at debug.
func (s *Scaler) logDecision(d Decision) {
	ev := s.log.Debug()
	if d.Changes() || (d.Action == HoldAtMax && s.last[d.Queue] != HoldAtMax) {
		ev = s.log.Info()
	}
	s.last[d.Queue] = d.Action
	ev.Str("queue", d.Queue).Uint64("waiting", d.Waiting).Uint64("running", d.Running).Int("agents", d.Agents).
		Int("target", d.Target).Int("min", d.Min).Str("action", string(d.Action)).Str("reason", d.Reason).Msg("autoscale decision")
}
