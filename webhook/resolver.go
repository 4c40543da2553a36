package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/weft-ci/weft/gitsrc"
	"github.com/weft-ci/weft/repos"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// Resolver consumption limits: a delivery whose pipeline cannot be read
// is tried this many times, ackWait apart at most, then given up.
const (
	resolveAckWait    = time.Minute
	resolveMaxDeliver = 5
)

// errUnbuildable wraps the resolve errors no retry can change.
var errUnbuildable = errors.New("webhook: the delivery cannot be built")

// TriggerID is the id of the trigger of a delivery: the same delivery
// starts one run.
func TriggerID(delivery string) string { return "github-" + delivery }

// Resolver turns accepted deliveries into triggers: it reads the pipeline
// file from the delivery's commit (a shallow fetch, package gitsrc) and
// publishes a trigger carrying it, with the queue and priority the
// repository's rules give the delivery's kind. The webhook answers
// GitHub before any of this, so a slow fetch delays no answer.
type Resolver struct {
	js    jetstream.JetStream
	repos *repos.Store
	git   *gitsrc.Fetcher
	log   zerolog.Logger
}

// NewResolver returns a resolver fetching into caches under gitDir.
func NewResolver(js jetstream.JetStream, rs *repos.Store, gitDir string, log zerolog.Logger) *Resolver {
	return &Resolver{js: js, repos: rs, git: gitsrc.New(gitDir), log: log.With().Str("component", "webhook-resolver").Logger()}
}

// Run resolves deliveries until ctx ends.
func (r *Resolver) Run(ctx context.Context) error {
	c, err := r.js.CreateOrUpdateConsumer(ctx, subjects.DeliveriesStream, jetstream.ConsumerConfig{
		Durable:       subjects.DeliveryResolver,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       resolveAckWait,
		MaxDeliver:    resolveMaxDeliver,
		FilterSubject: subjects.AllDeliveries,
	})
	if err != nil {
		return fmt.Errorf("webhook: deliveries consumer: %w", err)
	}
	return consume(ctx, c, r.log, r.handle)
}

// consume feeds c's messages to handle, one at a time, until ctx ends.
func consume(ctx context.Context, c jetstream.Consumer, log zerolog.Logger, handle func(context.Context, jetstream.Msg)) error {
	it, err := c.Messages()
	if err != nil {
		return fmt.Errorf("webhook: consume: %w", err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for {
		m, err := it.Next()
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) || ctx.Err() != nil {
			return nil
		}
		if err != nil {
			log.Warn().Err(err).Msg("next message")
			continue
		}
		handle(ctx, m)
	}
}

// handle resolves one delivery message and acks, naks or ends it.
func (r *Resolver) handle(ctx context.Context, m jetstream.Msg) {
	var d wire.Delivery
	if err := json.Unmarshal(m.Data(), &d); err != nil {
		r.log.Error().Err(err).Msg("dropping a malformed delivery")
		_ = m.Term()
		return
	}
	log := r.log.With().Str("delivery", d.ID).Str("repo", d.Repo).Str("commit", d.Commit).Logger()
	err := r.resolve(ctx, &d)
	meta, _ := m.Metadata()
	switch {
	case err == nil:
		_ = m.Ack()
	case errors.Is(err, gitsrc.ErrNoFile), errors.Is(err, repos.ErrNotFound), errors.Is(err, errUnbuildable):
		// No retry can change it.
		log.Warn().Err(err).Msg("delivery not built")
		_ = m.Term()
	case meta != nil && meta.NumDelivered >= resolveMaxDeliver:
		log.Error().Err(err).Uint64("deliveries", meta.NumDelivered).Msg("delivery given up")
		_ = m.Term()
	default:
		log.Warn().Err(err).Msg("resolve delivery; retrying")
		var n uint64 = 1
		if meta != nil {
			n = meta.NumDelivered
		}
		_ = m.NakWithDelay(time.Duration(n) * 2 * time.Second)
	}
}

// resolve publishes the trigger of d.
func (r *Resolver) resolve(ctx context.Context, d *wire.Delivery) error {
	repo, err := r.repos.Get(ctx, d.Repo)
	if err != nil {
		return err
	}
	fctx, cancel := context.WithTimeout(ctx, resolveAckWait/2)
	defer cancel()
	text, err := r.git.ReadFile(fctx, repo.CloneURL, repo.Token, d.Commit, repo.Pipeline)
	if err != nil {
		return err
	}
	rule := repo.Rule(d.Kind)
	t := wire.Trigger{
		ID: TriggerID(d.ID), Repo: d.Repo, File: repo.Pipeline, Pipeline: string(text),
		Branch: d.Branch, Commit: d.Commit, CloneURL: repo.CloneURL, Untrusted: d.Fork, Priority: rule.Priority, Queue: rule.Queue, Time: d.Time,
	}
	data, err := json.Marshal(t)
	if err != nil {
		return err
	}
	if len(data) > subjects.MaxPayload {
		return fmt.Errorf("%w: the trigger of %s is %d bytes, over the %d byte limit", errUnbuildable, repo.Pipeline, len(data), subjects.MaxPayload)
	}
	if _, err := r.js.Publish(ctx, subjects.Trigger(d.Repo), data, jetstream.WithMsgID(t.ID)); err != nil {
		return fmt.Errorf("publish trigger %s: %w", t.ID, err)
	}
	r.log.Info().Str("delivery", d.ID).Str("repo", d.Repo).Str("kind", d.Kind).Str("commit", d.Commit).Msg("delivery resolved into a trigger")
	return nil
}
