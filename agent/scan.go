package agent

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/weft-ci/weft/subjects"
)

// This file holds the scanner, which picks the next job for a free slot
// by tier, and the queue pauses it follows.

// source is one job consumer, in scan order.
type source struct {
	queue    string
	tier     subjects.Tier
	consumer jetstream.Consumer
	// limits are the consumer's AckWait and MaxDeliver, which shape the
	// handling of every job taken from it.
	limits jobLimits
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

// next returns the first job of the highest tier that has one and the
// source it came from, waiting for a wake-up or the rescan interval while
// none has. It returns nil when ctx is done.
func (s *scanner) next(ctx context.Context) (jetstream.Msg, *source) {
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
				return msg, src
			}
		}
		rescan.Reset(s.every)
		select {
		case <-ctx.Done():
			return nil, nil
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
