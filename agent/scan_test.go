package agent

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/subjects"
)

// scanBus starts an embedded server with weft's streams and the job
// consumers of the default queue.
func scanBus(t *testing.T) *bus.Bus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := bus.Open(ctx, bus.Config{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	if err := bus.Provision(ctx, b.JS, 0); err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureJobConsumers(ctx, b.JS, subjects.DefaultQueue, 0, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// startScanner starts the scanner of a one-slot agent on the default queue
// that rescans every every, with no jitter; the test stops it.
func startScanner(t *testing.T, b *bus.Bus, every time.Duration) *scanner {
	t.Helper()
	s := newScanner(b.Conn, 1, every, zerolog.Nop())
	s.rand = func() float64 { return 0 }
	for _, tier := range subjects.Tiers {
		c, err := bus.JobConsumer(t.Context(), b.JS, subjects.DefaultQueue, tier)
		if err != nil {
			t.Fatal(err)
		}
		s.add(subjects.DefaultQueue, tier, c, jobLimits{ackWait: time.Minute, maxDeliver: 5})
	}
	t.Cleanup(s.stop)
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
	if err := b.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	return s
}

// publishJob stores a job of the default queue in tier.
func publishJob(t *testing.T, b *bus.Bus, tier subjects.Tier, payload string) {
	t.Helper()
	if _, err := b.JS.Publish(t.Context(), subjects.Job(subjects.DefaultQueue, tier), []byte(payload)); err != nil {
		t.Fatal(err)
	}
}

// waitStored waits until the consumer of tier counts n jobs: a no-wait
// fetch right after a publish may not see the job yet.
func waitStored(t *testing.T, b *bus.Bus, tier subjects.Tier, n uint64) {
	t.Helper()
	c, err := bus.JobConsumer(t.Context(), b.JS, subjects.DefaultQueue, tier)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "stored", func() bool {
		info, err := c.Info(t.Context())
		return err == nil && info.NumPending == n
	})
}

// nextJob waits (at most 10s) for the scanner's next job and acks it.
func nextJob(t *testing.T, s *scanner) (string, *source) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	msg, src := s.next(ctx)
	if msg == nil {
		t.Fatal("no job within 10s")
	}
	if err := msg.Ack(); err != nil {
		t.Fatal(err)
	}
	return string(msg.Data()), src
}

// countPulls counts the pull requests on the job consumers from now on.
func countPulls(t *testing.T, b *bus.Bus) *atomic.Int64 {
	t.Helper()
	var n atomic.Int64
	sub, err := b.Conn.Subscribe("$JS.API.CONSUMER.MSG.NEXT."+subjects.JobsStream+".>", func(*nats.Msg) { n.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := b.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	return &n
}

// eventually polls cond every 5ms for at most 10s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// wokenFor returns how many unused wake-ups s holds for tier.
func (s *scanner) wokenFor(tier subjects.Tier) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, src := range s.sources {
		if src.tier == tier {
			return src.woken
		}
	}
	return 0
}

// A freed slot sweeps every tier, highest first: the wake-ups of the jobs
// stored while the agent was full reached nobody.
func TestAFreedSlotTakesTheHighestTierFirst(t *testing.T) {
	b := scanBus(t)
	s := startScanner(t, b, time.Hour)
	publishJob(t, b, subjects.Normal, "first")
	if got, _ := nextJob(t, s); got != "first" {
		t.Fatalf("first job %q", got)
	}
	// Full: the agent left the wake-up group.
	publishJob(t, b, subjects.Low, "low")
	publishJob(t, b, subjects.Critical, "critical")
	waitStored(t, b, subjects.Low, 1)
	waitStored(t, b, subjects.Critical, 1)
	if n := s.wokenFor(subjects.Low) + s.wokenFor(subjects.Critical); n != 0 {
		t.Errorf("a full agent holds %d wake-ups, want none", n)
	}
	s.released()
	for _, want := range []string{"critical", "low"} {
		if got, _ := nextJob(t, s); got != want {
			t.Fatalf("next job %q, want %q", got, want)
		}
		s.released()
	}
}

// A wake-up goes to one idle agent, which fetches once; the others do not
// fetch at all.
func TestAWakeUpReachesOneIdleAgent(t *testing.T) {
	b := scanBus(t)
	pulls := countPulls(t, b)
	const agents = 5
	var scanners []*scanner
	for range agents {
		s := startScanner(t, b, time.Hour)
		// No start sweep: the job's wake-up is the only reason to fetch.
		s.mu.Lock()
		s.queues[0].due = time.Now().Add(time.Hour)
		s.mu.Unlock()
		scanners = append(scanners, s)
	}
	ctx, cancel := context.WithCancel(t.Context())
	type took struct {
		i   int
		msg jetstream.Msg
	}
	got := make(chan took, agents)
	for i, s := range scanners {
		go func() {
			msg, _ := s.next(ctx)
			got <- took{i, msg}
		}()
	}
	running := agents
	defer func() {
		cancel()
		for ; running > 0; running-- {
			<-got
		}
	}()
	publishJob(t, b, subjects.High, "job")
	w := <-got
	running--
	if w.msg == nil || string(w.msg.Data()) != "job" {
		t.Fatalf("agent %d took %v", w.i, w.msg)
	}
	_ = w.msg.Ack()
	// A round trip on the connection that carries every pull request.
	if err := b.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := pulls.Load(); n != 1 {
		t.Errorf("%d pull requests for one job with %d idle agents, want 1", n, agents)
	}
}

// A wake-up that reaches an agent that cannot use it (it is full) is passed
// on to an idle one.
func TestAFullAgentPassesAWakeUpOn(t *testing.T) {
	b := scanBus(t)
	full := startScanner(t, b, time.Hour)
	publishJob(t, b, subjects.Normal, "first")
	if got, _ := nextJob(t, full); got != "first" {
		t.Fatalf("first job %q", got)
	}
	// Stored while no agent is idle: its wake-up reaches nobody.
	publishJob(t, b, subjects.Normal, "second")
	idle := startScanner(t, b, time.Hour)
	// As if the wake-up had reached the full agent just before it left
	// the group.
	full.woke(&nats.Msg{Subject: subjects.WakeFor(subjects.DefaultQueue, subjects.Normal)})
	eventually(t, "passed on", func() bool { return idle.wokenFor(subjects.Normal) > 0 })
	if got, _ := nextJob(t, idle); got != "second" {
		t.Fatalf("idle agent took %q, want the second job", got)
	}
	if n := full.wokenFor(subjects.Normal); n != 0 {
		t.Errorf("the full agent kept %d wake-ups", n)
	}
}

// Idle agents share the rescan: a sweep's notice postpones the others'
// rescans of the queue by half an interval to an interval.
func TestASweepPostponesTheOthersRescans(t *testing.T) {
	b := scanBus(t)
	const every = time.Hour
	s := startScanner(t, b, every)
	for _, tier := range subjects.Tiers {
		src, _, _ := s.pick(time.Now())
		if src == nil || src.tier != tier {
			t.Fatalf("start sweep picked %v, want tier %s", src, tier)
		}
	}
	if src, _, wait := s.pick(time.Now()); src != nil || wait < every/2-time.Minute || wait > every/2 {
		t.Fatalf("after the sweep: pick %v, wait %v; want nothing for %v", src, wait, every/2)
	}
	// Later, when the rescan is due, another agent sweeps and says so (the
	// start sweep's own notice, which comes back to it, is heard the same
	// way).
	s.mu.Lock()
	for _, q := range s.queues {
		q.due = time.Time{}
	}
	s.mu.Unlock()
	s.heard(&nats.Msg{Subject: subjects.Scanned(subjects.DefaultQueue)})
	if src, _, wait := s.pick(time.Now()); src != nil || wait < every/2-time.Minute {
		t.Fatalf("after another agent's sweep: pick %v, wait %v; want nothing for %v", src, wait, every/2)
	}
	// Once the rescan is due, it sweeps every tier.
	if src, _, _ := s.pick(time.Now().Add(every)); src == nil || src.tier != subjects.Critical {
		t.Fatalf("due rescan picked %v, want the critical tier", src)
	}
}

// A paused queue is not fetched from, and its wake-ups are dropped; a
// resume sweeps it soon.
func TestAPausedQueueIsNotFetched(t *testing.T) {
	b := scanBus(t)
	s := startScanner(t, b, time.Hour)
	s.pause(subjects.DefaultQueue, true)
	s.woke(&nats.Msg{Subject: subjects.WakeFor(subjects.DefaultQueue, subjects.Normal)})
	if src, _, _ := s.pick(time.Now()); src != nil {
		t.Fatalf("picked %s on a paused queue", src.tier)
	}
	publishJob(t, b, subjects.Normal, "job")
	waitStored(t, b, subjects.Normal, 1)
	s.pause(subjects.DefaultQueue, false)
	// The resume sweep is due within a quarter interval; no jitter here.
	if got, _ := nextJob(t, s); got != "job" {
		t.Fatalf("after the resume took %q", got)
	}
}
