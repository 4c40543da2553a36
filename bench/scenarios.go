package bench

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/dispatcher"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// HotfixResult is the queue time of a critical stage behind a low-tier
// burst, in weft and through one FIFO subject.
type HotfixResult struct {
	// Jobs low-tier stages saturate Slots agent slots.
	Jobs  int `json:"jobs"`
	Slots int `json:"slots"`
	// StageRun is the median run time of a burst stage in weft.
	StageRun time.Duration `json:"stage_run_ns"`
	// Critical is the critical stage's queue time in weft (queued to
	// started); Backlog is how many low stages were still queued then.
	Critical time.Duration `json:"critical_ns"`
	Backlog  int           `json:"backlog"`
	// FIFO is the critical job's queue time through one FIFO subject.
	FIFO time.Duration `json:"fifo_ns"`
	// Speedup is FIFO / Critical.
	Speedup float64 `json:"speedup"`
}

// Hotfix saturates a queue with Jobs low-tier stages on Slots slots, then
// queues one critical stage and measures its queue time; then the same
// workload through one FIFO work-queue subject.
func Hotfix(ctx context.Context, o Options) (*HotfixResult, error) {
	o.defaults()
	e, err := start(ctx, dispatcher.Config{WIPLimit: 100000}, o.Logger)
	if err != nil {
		return nil, err
	}
	defer e.close()
	if err := e.agent("bench", o.Slots); err != nil {
		return nil, err
	}
	res := &HotfixResult{Jobs: o.Jobs, Slots: o.Slots}
	o.Progress("hotfix: queueing %d low-tier stages on %d slots", o.Jobs, o.Slots)
	var ids []string
	for _, text := range burst("low", "bench", o.Jobs, o.StageTime) {
		id, err := e.submit(ctx, text, func(t *wire.Trigger) { t.Priority = subjects.Low })
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	if err := admitted(ctx, e, ids); err != nil {
		return nil, err
	}
	o.Progress("hotfix: queueing one critical stage")
	crit, err := e.submit(ctx, fmt.Sprintf("name: hotfix\nqueue: bench\nstages:\n  - key: fix\n    commands: [sleep %g]\n", o.StageTime.Seconds()),
		func(t *wire.Trigger) { t.Priority = subjects.Critical })
	if err != nil {
		return nil, err
	}
	r, err := e.wait(ctx, crit)
	if err != nil {
		return nil, err
	}
	st := r.Stage("fix")
	res.Critical = st.Started.Sub(st.Queued)
	var runs []time.Duration
	for _, id := range ids {
		lr, err := client.Get(ctx, e.b.JS, id)
		if err != nil {
			return nil, err
		}
		for _, s := range lr.Stages {
			switch s.State {
			case wire.StageQueued:
				res.Backlog++
			case wire.StageSucceeded:
				runs = append(runs, s.Finished.Sub(s.Started))
			}
		}
	}
	res.StageRun = Percentile(runs, 0.5)

	o.Progress("hotfix: the same workload through one FIFO subject")
	if res.FIFO, err = fifo(ctx, e, o); err != nil {
		return nil, err
	}
	if res.Critical > 0 {
		res.Speedup = float64(res.FIFO) / float64(res.Critical)
	}
	return res, e.close()
}

// admitted waits until every run is admitted (its stages are queued).
func admitted(ctx context.Context, e *local, ids []string) error {
	for _, id := range ids {
		for {
			r, err := client.Get(ctx, e.b.JS, id)
			if err != nil {
				return err
			}
			if r.Lease != "" {
				break
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	return nil
}

// fifo publishes Jobs low jobs and one critical job to one work-queue
// subject, works them with Slots workers that each run `sleep StageTime`,
// and returns the critical job's queue time.
func fifo(ctx context.Context, e *local, o Options) (time.Duration, error) {
	js := e.b.JS
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "BENCH_FIFO", Subjects: []string{"bench.fifo"}, Retention: jetstream.WorkQueuePolicy}); err != nil {
		return 0, err
	}
	c, err := js.CreateOrUpdateConsumer(ctx, "BENCH_FIFO", jetstream.ConsumerConfig{Durable: "w", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		return 0, err
	}
	for range o.Jobs {
		if _, err := js.Publish(ctx, "bench.fifo", []byte("low")); err != nil {
			return 0, err
		}
	}
	published := time.Now()
	if _, err := js.Publish(ctx, "bench.fifo", []byte("critical")); err != nil {
		return 0, err
	}
	var (
		mu      sync.Mutex // guards waited and errs
		waited  time.Duration
		errs    []error
		wg      sync.WaitGroup
		sleep   = strconv.FormatFloat(o.StageTime.Seconds(), 'f', -1, 64)
		fctx, s = context.WithCancel(ctx)
	)
	defer s()
	for range o.Slots {
		wg.Go(func() {
			for fctx.Err() == nil {
				batch, err := c.Fetch(1, jetstream.FetchMaxWait(time.Second))
				if err != nil {
					continue
				}
				for msg := range batch.Messages() {
					if string(msg.Data()) == "critical" {
						mu.Lock()
						waited = time.Since(published)
						mu.Unlock()
						s()
					}
					if err := exec.CommandContext(ctx, "sleep", sleep).Run(); err != nil {
						mu.Lock()
						errs = append(errs, err)
						mu.Unlock()
					}
					_ = msg.Ack()
				}
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return 0, errs[0]
	}
	return waited, nil
}

// IsolationResult is the queue time of main stages without and with a
// burst on the background queue.
type IsolationResult struct {
	Probes int `json:"probes"`
	Burst  int `json:"burst"`
	// Quiet and Busy are the p50 and p99 queue times of main stages
	// without and during the burst.
	QuietP50 time.Duration `json:"quiet_p50_ns"`
	QuietP99 time.Duration `json:"quiet_p99_ns"`
	BusyP50  time.Duration `json:"busy_p50_ns"`
	BusyP99  time.Duration `json:"busy_p99_ns"`
	// Backlog is how many background stages were still queued when the
	// last probe ran: the burst was on for the whole measurement.
	Backlog int `json:"backlog"`
	// Ratio is BusyP50 / QuietP50.
	Ratio float64 `json:"ratio"`
}

// Isolation measures main-queue stage queue times, then queues a burst on
// the background queue (its own agent) and measures them again.
func Isolation(ctx context.Context, o Options) (*IsolationResult, error) {
	o.defaults()
	e, err := start(ctx, dispatcher.Config{WIPLimit: 100000}, o.Logger)
	if err != nil {
		return nil, err
	}
	defer e.close()
	if err := e.agent("main", 1); err != nil {
		return nil, err
	}
	if err := e.agent("background", o.Slots); err != nil {
		return nil, err
	}
	probe := func() ([]time.Duration, error) {
		var out []time.Duration
		for range o.Probes {
			id, err := e.submit(ctx, "name: main\nqueue: main\nstages:\n  - key: s\n    commands: [true]\n", func(t *wire.Trigger) { t.Repo = "main" })
			if err != nil {
				return nil, err
			}
			r, err := e.wait(ctx, id)
			if err != nil {
				return nil, err
			}
			st := r.Stage("s")
			out = append(out, st.Started.Sub(st.Queued))
		}
		return out, nil
	}
	res := &IsolationResult{Probes: o.Probes, Burst: o.Jobs}
	o.Progress("isolation: %d main stages on a quiet fleet", o.Probes)
	quiet, err := probe()
	if err != nil {
		return nil, err
	}
	o.Progress("isolation: a burst of %d background stages", o.Jobs)
	var ids []string
	for _, text := range burst("background", "background", o.Jobs, o.StageTime) {
		id, err := e.submit(ctx, text, func(t *wire.Trigger) { t.Repo = "background" })
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	if err := admitted(ctx, e, ids); err != nil {
		return nil, err
	}
	o.Progress("isolation: %d main stages during the burst", o.Probes)
	busy, err := probe()
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		r, err := client.Get(ctx, e.b.JS, id)
		if err != nil {
			return nil, err
		}
		for _, s := range r.Stages {
			if s.State == wire.StageQueued {
				res.Backlog++
			}
		}
	}
	res.QuietP50, res.QuietP99 = Percentile(quiet, 0.5), Percentile(quiet, 0.99)
	res.BusyP50, res.BusyP99 = Percentile(busy, 0.5), Percentile(busy, 0.99)
	if res.QuietP50 > 0 {
		res.Ratio = float64(res.BusyP50) / float64(res.QuietP50)
	}
	return res, e.close()
}

// WIPResult is what 20 simultaneous triggers of one repository under a WIP
// limit did.
type WIPResult struct {
	Triggers int `json:"triggers"`
	Limit    int `json:"limit"`
	// MaxInFlight is the most runs admitted and not finished at once.
	MaxInFlight int `json:"max_in_flight"`
	// Finished counts the runs that succeeded.
	Finished int `json:"finished"`
	// InOrder is true when the runs were admitted in trigger order.
	InOrder bool `json:"in_order"`
	// Total is the time from the first trigger to the last run's end.
	Total time.Duration `json:"total_ns"`
}

// WIP sends 20 triggers of one repository at once with a WIP limit of 3.
func WIP(ctx context.Context, o Options) (*WIPResult, error) {
	o.defaults()
	const triggers, limit = 20, 3
	e, err := start(ctx, dispatcher.Config{WIPLimit: limit}, o.Logger)
	if err != nil {
		return nil, err
	}
	defer e.close()
	if err := e.agent(subjects.DefaultQueue, limit+1); err != nil {
		return nil, err
	}
	o.Progress("wip: %d simultaneous triggers, WIP limit %d", triggers, limit)
	text := fmt.Sprintf("name: wip\nstages:\n  - key: s\n    commands: [sleep %g]\n", (5 * o.StageTime).Seconds())
	start := time.Now()
	ids := make([]string, triggers)
	var wg sync.WaitGroup
	errs := make([]error, triggers)
	for i := range triggers {
		wg.Go(func() {
			ids[i], errs[i] = e.submit(ctx, text, func(t *wire.Trigger) { t.Repo = "bench/wip" })
		})
	}
	wg.Wait()
	var runs []*wire.Run
	for i, id := range ids {
		if errs[i] != nil {
			return nil, errs[i]
		}
		r, err := e.wait(ctx, id)
		if err != nil {
			return nil, err
		}
		runs = append(runs, r)
	}
	res := &WIPResult{Triggers: triggers, Limit: limit, Total: time.Since(start), InOrder: true}
	for _, r := range runs {
		if r.State == wire.RunSucceeded {
			res.Finished++
		}
	}
	res.MaxInFlight = MaxInFlight(runs)
	slices.SortFunc(runs, func(a, b *wire.Run) int { return int(a.Seq) - int(b.Seq) })
	for i := 1; i < len(runs); i++ {
		if runs[i].Admitted.Before(runs[i-1].Admitted) {
			res.InOrder = false
		}
	}
	return res, e.close()
}

// MaxInFlight returns the most runs that were admitted and not finished at
// one instant; a run ending at the instant another is admitted does not
// overlap it.
func MaxInFlight(runs []*wire.Run) int {
	type edge struct {
		at    time.Time
		delta int
	}
	var edges []edge
	for _, r := range runs {
		edges = append(edges, edge{r.Admitted, 1}, edge{r.Finished, -1})
	}
	slices.SortFunc(edges, func(a, b edge) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return a.delta - b.delta
	})
	n, most := 0, 0
	for _, e := range edges {
		n += e.delta
		most = max(most, n)
	}
	return most
}
