package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/weft-ci/weft/subjects"
)

// This file holds the scanner, which picks the next job for a free slot
// by tier; the wake-ups, sweeps and shared rescans that tell it where to
// look; and the queue pauses it follows.

// confirmWait is how long the fetch that follows a wake-up waits for the
// job it announced: the server republishes a stored job before its
// consumer counts it, so a no-wait fetch right after the wake-up can miss
// it (measured here: 4-8 % of the time, found again within 0.2 ms). A
// waiting fetch returns as soon as the job is there, in one pull request.
const confirmWait = 20 * time.Millisecond

// queue is the scan state of one queue the agent serves.
type queue struct {
	name    string
	sources []*source // critical first

	// The fields below are guarded by scanner.mu.

	// paused is set while the queue is paused (weft queue pause).
	paused bool
	// due is when this agent sweeps the queue unless it hears of another
	// sweep first.
	due time.Time
	// sub is the queue-group wake-up subscription, held while the agent
	// has a free slot; nil otherwise.
	sub *nats.Subscription
}

// source is one job consumer, in scan order.
type source struct {
	queue    *queue
	tier     subjects.Tier
	consumer jetstream.Consumer
	// wake is the subject of the source's wake-ups.
	wake string
	// limits are the consumer's AckWait and MaxDeliver, which shape the
	// handling of every job taken from it.
	limits jobLimits

	// The fields below are guarded by scanner.mu.

	// woken counts the wake-ups received for the source and not used yet.
	woken int
	// look is set when the source should be fetched from without a
	// wake-up: by a sweep, or because the last fetch found a job.
	look bool
}

// scanner picks the next job: the first job of the highest tier that may
// have one. A wake-up reaches one agent with a free slot; an agent whose
// slot frees after it was full sweeps its queues once, since it missed the
// wake-ups meanwhile; and the idle agents of a queue share one sweep per
// rescan interval, which finds what no wake-up announces (redeliveries,
// hand-backs, a wake-up lost with a connection).
type scanner struct {
	nc    *nats.Conn
	every time.Duration
	log   zerolog.Logger
	// rand returns a number in [0, 1) for the jitter of the rescans.
	rand func() float64

	queues  []*queue
	sources []*source          // scan order: every queue's critical tier first
	bySubj  map[string]*source // by wake-up subject
	byScan  map[string]*queue  // by scan notice subject
	wake    chan struct{}      // signalled when there may be something to fetch
	notices []*nats.Subscription

	mu      sync.Mutex // guards free, stopped and the fields so marked in queue and source
	free    int        // free slots
	stopped bool       // set by stop
}

// newScanner returns a scanner for an agent with slots slots; add its
// sources, then start it.
func newScanner(nc *nats.Conn, slots int, every time.Duration, log zerolog.Logger) *scanner {
	return &scanner{
		nc: nc, every: every, log: log, rand: rand.Float64, free: slots,
		bySubj: map[string]*source{}, byScan: map[string]*queue{}, wake: make(chan struct{}, 1),
	}
}

// add adds the consumer of queue and tier. Sources are scanned in the
// order they are added: add every queue's critical tier first.
func (s *scanner) add(name string, tier subjects.Tier, c jetstream.Consumer, limits jobLimits) {
	var q *queue
	for _, have := range s.queues {
		if have.name == name {
			q = have
		}
	}
	if q == nil {
		q = &queue{name: name}
		s.queues = append(s.queues, q)
		s.byScan[subjects.Scanned(name)] = q
	}
	src := &source{queue: q, tier: tier, consumer: c, wake: subjects.WakeFor(name, tier), limits: limits}
	q.sources = append(q.sources, src)
	s.sources = append(s.sources, src)
	s.bySubj[src.wake] = src
}

// start subscribes to the scan notices and the wake-ups. Its first sweep
// of each queue comes soon, as after a resume: agents that start together
// (a fleet, a bench) share it, and a job stored from now on wakes one of
// them anyway. Flush the connection before the first scan, so the
// subscriptions are in place when the sweep looks. Call stop when done,
// also after an error.
func (s *scanner) start() error {
	for _, q := range s.queues {
		sub, err := s.nc.Subscribe(subjects.Scanned(q.name), s.heard)
		if err != nil {
			return fmt.Errorf("subscribe scan notices of %s: %w", q.name, err)
		}
		s.notices = append(s.notices, sub)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	for _, q := range s.queues {
		sub, err := s.nc.QueueSubscribe(subjects.Wake(q.name), subjects.WakeGroup, s.woke)
		if err != nil {
			return fmt.Errorf("subscribe wake-ups of %s: %w", q.name, err)
		}
		q.sub = sub
		// A starting agent checks its queues at once: a job published
		// before its subscription reached the server announced itself to
		// nobody (and weft run's one agent must not wait for it).
		q.due = now
	}
	if err := s.nc.Flush(); err != nil {
		return fmt.Errorf("subscribe wake-ups: %w", err)
	}
	return nil
}

// stop leaves the wake-up group and passes on the wake-ups the agent did
// not use; a wake-up still in flight to it is passed on as it arrives.
// Calling it again does nothing more.
func (s *scanner) stop() {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return
	}
	s.stopped = true
	s.leaveLocked()
	pass := s.unusedLocked()
	s.mu.Unlock()
	for _, src := range pass {
		s.passOn(src.wake, nil)
	}
	for _, sub := range s.notices {
		_ = sub.Unsubscribe()
	}
}

// woke handles a wake-up; it runs on the subscription's goroutine. An agent
// with a free slot counts it for the next scan; a full or stopped one
// passes it on to the group (it has left it, so the server hands it to
// another member). A wake-up for a paused queue is dropped: the resume
// sweeps.
func (s *scanner) woke(m *nats.Msg) {
	src := s.bySubj[m.Subject]
	if src == nil {
		return
	}
	s.mu.Lock()
	pass := false
	switch {
	case src.queue.paused:
	case s.free == 0 || s.stopped:
		pass = true
	default:
		src.woken++
	}
	s.mu.Unlock()
	if pass {
		s.passOn(m.Subject, m.Header)
		return
	}
	s.signal()
}

// heard handles another agent's (or this one's) scan notice: the queue is
// being swept now, so this agent's own rescan of it can wait.
func (s *scanner) heard(m *nats.Msg) {
	q := s.byScan[m.Subject]
	if q == nil {
		return
	}
	s.mu.Lock()
	q.due = time.Now().Add(s.jitter())
	s.mu.Unlock()
}

// passOn publishes a wake-up to the group again.
func (s *scanner) passOn(subject string, hdr nats.Header) {
	if err := s.nc.PublishMsg(&nats.Msg{Subject: subject, Header: hdr}); err != nil {
		s.log.Debug().Err(err).Str("subject", subject).Msg("pass on wake-up")
	}
}

// handedBack announces a job the agent gave back while stopping: its
// redelivery is not republished, and a wake-up gets it to an idle agent
// without waiting for a rescan. Should the job have been acked after all,
// one idle agent fetches nothing.
func (s *scanner) handedBack(src *source) { s.passOn(src.wake, nil) }

// released is called when a job ends. An agent that was full joins the
// wake-up group again and sweeps its queues: it missed their wake-ups.
func (s *scanner) released() {
	s.mu.Lock()
	s.free++
	var sweeps []*queue
	if s.free == 1 && !s.stopped {
		now := time.Now()
		s.joinLocked()
		for _, q := range s.queues {
			sweeps = s.sweepLocked(sweeps, q, now)
		}
	}
	s.mu.Unlock()
	s.announce(sweeps)
	s.signal()
}

// pause pauses or resumes the sources of name and of its label queues.
// A resume sweeps the queue soon (soonLocked), so the fleet's idle agents
// do not all sweep it at once.
func (s *scanner) pause(name string, paused bool) {
	s.mu.Lock()
	for _, q := range s.queues {
		if subjects.BaseQueue(q.name) != name || q.paused == paused {
			continue
		}
		q.paused = paused
		for _, src := range q.sources {
			src.woken, src.look = 0, false
		}
		s.soonLocked(q, time.Now())
	}
	s.mu.Unlock()
	s.signal()
}

// signal wakes next.
func (s *scanner) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// soonLocked makes the sweep of q due at a random point in the first
// quarter of the rescan interval from now; the first agent of the fleet
// to start it postpones the others' with its notice. s.mu is held.
func (s *scanner) soonLocked(q *queue, now time.Time) {
	q.due = now.Add(time.Duration(s.rand() * float64(s.every/4)))
}

// jitter returns when, after a sweep it started or heard of, this agent's
// own next sweep is due: a random point in the second half of the rescan
// interval.
func (s *scanner) jitter() time.Duration {
	return s.every/2 + time.Duration(s.rand()*float64(s.every/2))
}

// next returns the first job of the highest tier that has one and the
// source it came from, waiting for a wake-up, a freed slot or a rescan
// while none has. It returns nil when ctx is done. Call it only while the
// agent has a free slot.
func (s *scanner) next(ctx context.Context) (jetstream.Msg, *source) {
	timer := time.NewTimer(s.every)
	defer timer.Stop()
	for ctx.Err() == nil {
		src, woken, wait := s.pick(time.Now())
		if src == nil {
			timer.Reset(wait)
			select {
			case <-ctx.Done():
			case <-s.wake:
			case <-timer.C:
			}
			continue
		}
		msg, err := s.fetch(src, woken > 0)
		switch {
		case msg != nil:
			s.took(src, woken)
			return msg, src
		case err != nil:
			s.failed(ctx, src, woken, err)
		default:
			s.missed(src, woken)
		}
	}
	return nil, nil
}

// pick returns the source to fetch from next, the number of its wake-ups
// the fetch answers, or, when there is none, how long to wait for the next
// rescan. It starts the sweeps that are due at now.
func (s *scanner) pick(now time.Time) (src *source, woken int, wait time.Duration) {
	var sweeps []*queue
	defer func() { s.announce(sweeps) }()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, q := range s.queues {
		if !now.Before(q.due) {
			sweeps = s.sweepLocked(sweeps, q, now)
		}
	}
	for _, src := range s.sources {
		if src.queue.paused || (src.woken == 0 && !src.look) {
			continue
		}
		src.look = false
		return src, src.woken, 0
	}
	wait = time.Hour
	for _, q := range s.queues {
		if !q.paused {
			wait = min(wait, q.due.Sub(now))
		}
	}
	return nil, 0, max(wait, 0)
}

// took records that a fetch from src found a job. The source is fetched
// from again at the next free slot. An agent that is full now leaves the
// wake-up group and passes on the wake-ups it cannot use; when no wake-up
// announced the job (a sweep found it: a redelivery, a hand-back, a job
// stored while every agent was full), it passes one on for the source
// too, as more may wait there and its sweep's notice made the others
// postpone theirs.
func (s *scanner) took(src *source, woken int) {
	s.mu.Lock()
	if woken > 0 {
		src.woken--
	}
	src.look = true
	s.free--
	var pass []*source
	if s.free == 0 {
		s.leaveLocked()
		pass = s.unusedLocked()
		if woken == 0 {
			pass = append(pass, src)
		}
	}
	s.mu.Unlock()
	for _, p := range pass {
		s.passOn(p.wake, nil)
	}
}

// missed records that a fetch from src found nothing: the wake-ups it
// answered were stale (another agent's sweep took their jobs).
func (s *scanner) missed(src *source, woken int) {
	s.mu.Lock()
	src.woken -= woken
	s.mu.Unlock()
}

// failed records a fetch error: the wake-ups it answered are dropped, and
// the queue's next rescan, within the rescan interval, tries again.
func (s *scanner) failed(ctx context.Context, src *source, woken int, err error) {
	s.mu.Lock()
	src.woken -= woken
	src.queue.due = time.Now().Add(s.jitter())
	s.mu.Unlock()
	if ctx.Err() == nil {
		s.log.Warn().Err(err).Str("queue", src.queue.name).Str("tier", string(src.tier)).Msg("fetch")
	}
}

// sweepLocked starts a sweep of q: every tier is fetched from once, and
// this agent's own next sweep is due a rescan interval from now (with
// jitter). It returns sweeps with q appended unless q is paused, for
// announce. s.mu is held.
func (s *scanner) sweepLocked(sweeps []*queue, q *queue, now time.Time) []*queue {
	q.due = now.Add(s.jitter())
	if q.paused {
		return sweeps
	}
	for _, src := range q.sources {
		src.look = true
	}
	return append(sweeps, q)
}

// announce publishes a scan notice for each queue in sweeps, before the
// sweep fetches anything, so that the other agents postpone their own.
func (s *scanner) announce(sweeps []*queue) {
	for _, q := range sweeps {
		if err := s.nc.Publish(subjects.Scanned(q.name), nil); err != nil {
			s.log.Debug().Err(err).Str("queue", q.name).Msg("announce sweep")
		}
	}
}

// joinLocked subscribes to the wake-ups of every queue in the group. s.mu
// is held.
func (s *scanner) joinLocked() {
	for _, q := range s.queues {
		if q.sub != nil {
			continue
		}
		sub, err := s.nc.QueueSubscribe(subjects.Wake(q.name), subjects.WakeGroup, s.woke)
		if err != nil {
			// The shared rescan still finds this queue's jobs.
			s.log.Warn().Err(err).Str("queue", q.name).Msg("subscribe wake-ups")
			continue
		}
		q.sub = sub
	}
}

// leaveLocked drains the wake-up subscriptions: the server sends them
// nothing more once it has the unsubscribe, which precedes any wake-up the
// agent passes on; what it sent before still reaches woke, which passes it
// on. s.mu is held.
func (s *scanner) leaveLocked() {
	for _, q := range s.queues {
		if q.sub == nil {
			continue
		}
		if err := q.sub.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			s.log.Debug().Err(err).Str("queue", q.name).Msg("leave wake-ups")
		}
		q.sub = nil
	}
}

// unusedLocked returns one source per unused wake-up and forgets them, to
// be passed on. s.mu is held.
func (s *scanner) unusedLocked() []*source {
	var pass []*source
	for _, src := range s.sources {
		for ; src.woken > 0; src.woken-- {
			pass = append(pass, src)
		}
	}
	return pass
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

// fetch takes one job from src, or returns nil. After a wake-up it waits
// up to confirmWait for the job the wake-up announced; otherwise it does
// not wait.
func (s *scanner) fetch(src *source, woken bool) (jetstream.Msg, error) {
	var batch jetstream.MessageBatch
	var err error
	if woken {
		batch, err = src.consumer.Fetch(1, jetstream.FetchMaxWait(confirmWait))
	} else {
		batch, err = src.consumer.FetchNoWait(1)
	}
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", src.wake, err)
	}
	for msg := range batch.Messages() {
		return msg, nil
	}
	if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
		return nil, fmt.Errorf("fetch %s: %w", src.wake, err)
	}
	return nil, nil
}
