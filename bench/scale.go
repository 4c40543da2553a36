package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"
	"github.com/rs/zerolog"

	"github.com/weft-ci/weft/agent"
	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/dispatcher"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// ScaleScenarios are the scenarios of weft bench scale, in the order they
// run.
var ScaleScenarios = []string{"width", "throughput", "concurrency", "flood", "herd", "storage", "startup"}

// ScaleOptions size the scale scenarios. Zero values take the defaults,
// which are the sizes of the issue that asked for them; CI runs smaller
// ones.
type ScaleOptions struct {
	// Width are the stage counts of the width scenario's two pipelines
	// (default 100 and 3000), run on WidthSlots slots (default 2).
	Width      [2]int
	WidthSlots int
	// Runs runs of RunStages stages each go through the throughput
	// scenario (default 10,000 x 10) on Agents agent processes with
	// Slots slots each (default 2 x 2).
	Runs, RunStages int
	Agents, Slots   int
	// Concurrent stages sleep StageTime (default 1,000 for 70s: a minute
	// measured while all run) on ConcurrentAgents agent processes
	// (default 4), with AckWait ConcurrentAckWait (default 30s).
	Concurrent        int
	ConcurrentAgents  int
	StageTime         time.Duration
	ConcurrentAckWait time.Duration
	// Window is how long CPU is measured while every concurrent stage
	// runs (default a minute).
	Window time.Duration
	// Triggers triggers over Repos repositories with WIP limit WIP go
	// through the flood scenario (default 10,000 over 100 with WIP 3).
	Triggers, Repos, WIP int
	// HerdSlots are the idle agent slots of the herd scenario (default
	// 1, 20 and 200), which sends HerdJobs jobs (default 100) one at a
	// time.
	HerdSlots []int
	HerdJobs  int
	// StorageRuns runs of a 10-stage pipeline with logs are measured on
	// disk (default 1,000).
	StorageRuns int
	// StartupRuns is how often weft run is timed (default 20).
	StartupRuns int
	// Weft is the weft binary the process scenarios start; default this
	// executable.
	Weft string
	// Progress receives one line per step; nil discards them.
	Progress func(format string, args ...any)
	// Logger receives the in-process components' logs.
	Logger zerolog.Logger
}

func (o *ScaleOptions) defaults() error {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.Width[0], 100)
	def(&o.Width[1], 3000)
	def(&o.WidthSlots, 2)
	def(&o.Runs, 10_000)
	def(&o.RunStages, 10)
	def(&o.Agents, 2)
	def(&o.Slots, 2)
	def(&o.Concurrent, 1000)
	def(&o.ConcurrentAgents, 4)
	def(&o.Triggers, 10_000)
	def(&o.Repos, 100)
	def(&o.WIP, 3)
	def(&o.HerdJobs, 100)
	def(&o.StorageRuns, 1000)
	def(&o.StartupRuns, 20)
	if o.StageTime <= 0 {
		o.StageTime = 70 * time.Second
	}
	if o.Window <= 0 {
		o.Window = time.Minute
	}
	if o.ConcurrentAckWait <= 0 {
		o.ConcurrentAckWait = 30 * time.Second
	}
	if len(o.HerdSlots) == 0 {
		o.HerdSlots = []int{1, 20, 200}
	}
	if o.Progress == nil {
		o.Progress = func(string, ...any) {}
	}
	if err := weftBinary(&o.Weft, "bench scale"); err != nil {
		return err
	}
	return nil
}

// ScaleResult holds the figures of the scale scenarios that ran.
type ScaleResult struct {
	Width       *WidthResult       `json:"width,omitempty"`
	Throughput  *ThroughputResult  `json:"throughput,omitempty"`
	Concurrency *ConcurrencyResult `json:"concurrency,omitempty"`
	Flood       *FloodResult       `json:"flood,omitempty"`
	Herd        *HerdResult        `json:"herd,omitempty"`
	Storage     *StorageResult     `json:"storage,omitempty"`
	Startup     *StartupResult     `json:"startup,omitempty"`
}

// Scale runs the named scale scenarios (all of ScaleScenarios when none).
func Scale(ctx context.Context, o ScaleOptions, names []string) (*ScaleResult, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	if len(names) == 0 {
		names = ScaleScenarios
	}
	res := &ScaleResult{}
	for _, name := range names {
		var err error
		switch name {
		case "width":
			res.Width, err = Width(ctx, o)
		case "throughput":
			res.Throughput, err = Throughput(ctx, o)
		case "concurrency":
			res.Concurrency, err = Concurrency(ctx, o)
		case "flood":
			res.Flood, err = Flood(ctx, o)
		case "herd":
			res.Herd, err = Herd(ctx, o)
		case "storage":
			res.Storage, err = Storage(ctx, o)
		case "startup":
			res.Startup, err = Startup(ctx, o)
		default:
			return nil, fmt.Errorf("bench scale: unknown scenario %q", name)
		}
		if err != nil {
			return nil, fmt.Errorf("bench scale %s: %w", name, err)
		}
	}
	return res, nil
}

// independent returns a pipeline of n independent stages running cmd.
func independent(name string, n int, cmd string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "name: %s\nstages:\n", name)
	for i := range n {
		fmt.Fprintf(&b, "  - {key: s%d, commands: [%q]}\n", i, cmd)
	}
	return b.String()
}

// WidthResult is the rate of one wide pipeline of independent `true`
// stages against a narrow one, on the same slots.
type WidthResult struct {
	Slots int `json:"slots"`
	// Small and Large are the stage counts; their rates are stages per
	// second from admission to the run's end.
	Small     int     `json:"small"`
	Large     int     `json:"large"`
	SmallRate float64 `json:"small_stages_per_s"`
	LargeRate float64 `json:"large_stages_per_s"`
	// Ratio is LargeRate / SmallRate: 1 is flat.
	Ratio float64 `json:"ratio"`
}

// Width runs a pipeline of Width[0] and one of Width[1] independent `true`
// stages on WidthSlots slots, each on a fresh embedded stack.
func Width(ctx context.Context, o ScaleOptions) (*WidthResult, error) {
	res := &WidthResult{Slots: o.WidthSlots, Small: o.Width[0], Large: o.Width[1]}
	rate := func(n int) (float64, error) {
		e, err := start(ctx, dispatcher.Config{}, o.Logger)
		if err != nil {
			return 0, err
		}
		defer e.close()
		if err := e.agent(subjects.DefaultQueue, o.WidthSlots); err != nil {
			return 0, err
		}
		o.Progress("width: one pipeline of %d independent stages on %d slots", n, o.WidthSlots)
		id, err := e.submit(ctx, independent(fmt.Sprintf("width-%d", n), n, "true"))
		if err != nil {
			return 0, err
		}
		r, err := e.wait(ctx, id)
		if err != nil {
			return 0, err
		}
		if r.State != wire.RunSucceeded {
			return 0, fmt.Errorf("the %d-stage run %s", n, r.State)
		}
		return float64(n) / r.Finished.Sub(r.Admitted).Seconds(), e.close()
	}
	var err error
	if res.SmallRate, err = rate(o.Width[0]); err != nil {
		return nil, err
	}
	if res.LargeRate, err = rate(o.Width[1]); err != nil {
		return nil, err
	}
	res.Ratio = res.LargeRate / res.SmallRate
	return res, nil
}

// FloodResult is the cost of a trigger while thousands of runs wait, and
// the queue time of a critical run triggered meanwhile.
type FloodResult struct {
	Triggers int `json:"triggers"`
	Repos    int `json:"repos"`
	WIP      int `json:"wip"`
	// PerTriggerLow and PerTriggerHigh are the median submit-to-recorded
	// times of the Sample triggers that found about Low and High runs
	// waiting.
	Low            int           `json:"low_waiting"`
	High           int           `json:"high_waiting"`
	Sample         int           `json:"sample"`
	PerTriggerLow  time.Duration `json:"per_trigger_low_ns"`
	PerTriggerHigh time.Duration `json:"per_trigger_high_ns"`
	// Ratio is PerTriggerHigh / PerTriggerLow: 1 is flat.
	Ratio float64 `json:"ratio"`
	// Critical is the queue time (queued to started) of a critical run
	// triggered with High runs waiting, on a queue with a free slot;
	// CriticalSubmit its trigger's submit-to-recorded time.
	Critical       time.Duration `json:"critical_ns"`
	CriticalSubmit time.Duration `json:"critical_submit_ns"`
	// Total is the flood's wall time.
	Total time.Duration `json:"total_ns"`
}

// Flood sends Triggers triggers over Repos repositories with WIP limit
// WIP, whose runs all hold their stage until the end (so all but
// Repos*WIP wait), one at a time, timing each; then a critical run on a
// queue of its own.
func Flood(ctx context.Context, o ScaleOptions) (*FloodResult, error) {
	e, err := start(ctx, dispatcher.Config{WIPLimit: o.WIP}, o.Logger)
	if err != nil {
		return nil, err
	}
	defer e.close()
	if err := e.agent(subjects.DefaultQueue, 4); err != nil {
		return nil, err
	}
	if err := e.agent("hotfix", 1); err != nil {
		return nil, err
	}
	gate := filepath.Join(e.dir, "gate")
	held := fmt.Sprintf("name: flood\nenv: {GATE: %q}\nstages:\n  - key: s\n    commands: ['while [ ! -f \"$GATE\" ]; do sleep 0.05; done']\n", gate)
	inFlight := o.Repos * o.WIP
	res := &FloodResult{Triggers: o.Triggers, Repos: o.Repos, WIP: o.WIP, Sample: max(1, o.Triggers/100)}
	res.High = o.Triggers - inFlight
	res.Low = min(res.High, max(res.Sample, res.High/10))
	times := make([]time.Duration, o.Triggers)
	start := time.Now()
	o.Progress("flood: %d triggers over %d repositories, WIP %d", o.Triggers, o.Repos, o.WIP)
	for i := range o.Triggers {
		repo := fmt.Sprintf("flood/repo-%03d", i%o.Repos)
		t0 := time.Now()
		if _, err := e.submit(ctx, held, func(t *wire.Trigger) { t.Repo = repo }); err != nil {
			return nil, err
		}
		times[i] = time.Since(t0)
		if (i+1)%1000 == 0 {
			o.Progress("flood: %d triggers, %d waiting; the last thousand took %s each (median)", i+1, max(0, i+1-inFlight), Percentile(times[i-999:i+1], 0.5))
		}
	}
	res.Total = time.Since(start)
	median := func(waiting int) time.Duration {
		// The trigger that finds waiting runs waiting is number
		// waiting+inFlight; the sample ends there.
		end := min(o.Triggers, waiting+inFlight)
		return Percentile(times[max(0, end-res.Sample):end], 0.5)
	}
	res.PerTriggerLow, res.PerTriggerHigh = median(res.Low), median(res.High)
	res.Ratio = float64(res.PerTriggerHigh) / float64(res.PerTriggerLow)
	o.Progress("flood: a critical run with %d waiting", res.High)
	t0 := time.Now()
	crit, err := e.submit(ctx, "name: hotfix\nqueue: hotfix\nstages:\n  - key: fix\n    commands: [true]\n", func(t *wire.Trigger) {
		t.Repo, t.Priority = "flood/hotfix", subjects.Critical
	})
	if err != nil {
		return nil, err
	}
	res.CriticalSubmit = time.Since(t0)
	r, err := e.wait(ctx, crit)
	if err != nil {
		return nil, err
	}
	st := r.Stage("fix")
	res.Critical = st.Started.Sub(st.Queued)
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		return nil, err
	}
	return res, nil
}

// HerdSize is the herd scenario at one number of idle slots.
type HerdSize struct {
	Slots int `json:"slots"`
	// PullsPerJob is the pull requests ($JS.API.CONSUMER.MSG.NEXT.>)
	// per job, counted while the jobs went through one at a time.
	PullsPerJob float64 `json:"pulls_per_job"`
	// DispatchP50 and P99 are queued-to-started of the jobs.
	DispatchP50 time.Duration `json:"dispatch_p50_ns"`
	DispatchP99 time.Duration `json:"dispatch_p99_ns"`
}

// HerdResult is what idle agents cost the server per job.
type HerdResult struct {
	Jobs  int        `json:"jobs"`
	Sizes []HerdSize `json:"sizes"`
	// Ratio is the pull requests per job at the most slots over that at
	// the fewest: 1 is flat.
	Ratio float64 `json:"ratio"`
}

// Herd runs HerdJobs one-stage runs one at a time on one queue served by
// each of HerdSlots idle slots (that many one-slot agents, in this
// process), counting the pull requests the server receives.
func Herd(ctx context.Context, o ScaleOptions) (*HerdResult, error) {
	res := &HerdResult{Jobs: o.HerdJobs}
	for _, n := range o.HerdSlots {
		hs, err := herdAt(ctx, o, n)
		if err != nil {
			return nil, err
		}
		res.Sizes = append(res.Sizes, *hs)
	}
	if first, last := res.Sizes[0], res.Sizes[len(res.Sizes)-1]; first.PullsPerJob > 0 {
		res.Ratio = last.PullsPerJob / first.PullsPerJob
	}
	return res, nil
}

func herdAt(ctx context.Context, o ScaleOptions, slots int) (*HerdSize, error) {
	e, err := start(ctx, dispatcher.Config{WIPLimit: 1000}, o.Logger)
	if err != nil {
		return nil, err
	}
	defer e.close()
	o.Progress("herd: %d idle agents of one slot, %d jobs one at a time", slots, o.HerdJobs)
	for i := range slots {
		if _, err := e.st.AddAgent(agent.Config{
			Queues: []string{"herd"}, Slots: 1, WorkDir: filepath.Join(e.dir, fmt.Sprintf("work-%d", i)),
			Env: os.Environ(), Executor: agent.ExecutorProcess,
		}); err != nil {
			return nil, err
		}
	}
	// The stack's connection sees every client's pull requests (the
	// server echoes its own).
	nc := e.b.Conn
	var pulls atomic.Int64
	sub, err := nc.Subscribe("$JS.API.CONSUMER.MSG.NEXT.>", func(*nats.Msg) { pulls.Add(1) })
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.Flush(); err != nil {
		return nil, err
	}
	var lat []time.Duration
	text := "name: herd\nqueue: herd\nstages:\n  - key: s\n    commands: [true]\n"
	pulls.Store(0)
	for range o.HerdJobs {
		id, err := e.submit(ctx, text)
		if err != nil {
			return nil, err
		}
		r, err := e.wait(ctx, id)
		if err != nil {
			return nil, err
		}
		st := r.Stage("s")
		lat = append(lat, st.Started.Sub(st.Queued))
	}
	if err := nc.Flush(); err != nil {
		return nil, err
	}
	return &HerdSize{
		Slots: slots, PullsPerJob: float64(pulls.Load()) / float64(o.HerdJobs),
		DispatchP50: Percentile(lat, 0.5), DispatchP99: Percentile(lat, 0.99),
	}, nil
}

// StorageResult is what finished runs leave on disk.
type StorageResult struct {
	Runs   int `json:"runs"`
	Stages int `json:"stages_per_run"`
	// BytesPerRun is the growth of the JetStream store per finished run,
	// ByStream its part in each stream (what `nats stream info` shows).
	BytesPerRun float64            `json:"bytes_per_run"`
	ByStream    map[string]float64 `json:"bytes_per_run_by_stream"`
	// Retention is how long it is kept; Bound the store's size at that
	// retention for 100,000 runs a day.
	Retention time.Duration `json:"retention_ns"`
	Bound     float64       `json:"bytes_at_100k_runs_a_day"`
}

// Storage runs StorageRuns runs of a 10-stage pipeline whose stages each
// write a line, and measures every stream's growth.
func Storage(ctx context.Context, o ScaleOptions) (*StorageResult, error) {
	const stages = 10
	e, err := start(ctx, dispatcher.Config{WIPLimit: 1000}, o.Logger)
	if err != nil {
		return nil, err
	}
	defer e.close()
	if err := e.agent(subjects.DefaultQueue, 4); err != nil {
		return nil, err
	}
	sizes := func() (map[string]uint64, error) {
		out := map[string]uint64{}
		for name := range e.b.JS.StreamNames(ctx).Name() {
			st, err := e.b.JS.Stream(ctx, name)
			if err != nil {
				return nil, err
			}
			info, err := st.Info(ctx)
			if err != nil {
				return nil, err
			}
			out[name] = info.State.Bytes
		}
		return out, nil
	}
	before, err := sizes()
	if err != nil {
		return nil, err
	}
	text := independent("storage", stages, "echo one line of output from this stage")
	o.Progress("storage: %d runs of %d stages", o.StorageRuns, stages)
	lost, err := runMany(ctx, e.b, o.StorageRuns, 8, func(int) (string, string) { return text, "bench/storage" }, nil)
	if err != nil {
		return nil, err
	}
	if lost > 0 {
		return nil, fmt.Errorf("%d of %d runs did not succeed", lost, o.StorageRuns)
	}
	after, err := sizes()
	if err != nil {
		return nil, err
	}
	res := &StorageResult{Runs: o.StorageRuns, Stages: stages, ByStream: map[string]float64{}}
	for name, n := range after {
		if d := float64(n) - float64(before[name]); d > 0 {
			res.ByStream[name] = d / float64(o.StorageRuns)
			res.BytesPerRun += d / float64(o.StorageRuns)
		}
	}
	kv, err := e.b.JS.KeyValue(ctx, subjects.RunsBucket)
	if err != nil {
		return nil, err
	}
	status, err := kv.Status(ctx)
	if err != nil {
		return nil, err
	}
	res.Retention = status.TTL()
	res.Bound = res.BytesPerRun * 100_000 * res.Retention.Hours() / 24
	return res, nil
}

// StartupResult is the wall time of weft run on a one-stage pipeline,
// process start to exit, next to the same binary printing its version.
type StartupResult struct {
	Runs int `json:"runs"`
	// Min, P50 and Max are weft run's; Baseline is the median of weft
	// version (the process start alone).
	Min      time.Duration `json:"min_ns"`
	P50      time.Duration `json:"p50_ns"`
	Max      time.Duration `json:"max_ns"`
	Baseline time.Duration `json:"baseline_p50_ns"`
}

// Startup times StartupRuns runs of weft run on a one-stage `true`
// pipeline in a fresh directory, and as many of weft version.
func Startup(ctx context.Context, o ScaleOptions) (*StartupResult, error) {
	dir, err := os.MkdirTemp("", "weft-bench-startup-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	file := filepath.Join(dir, "one.yml")
	if err := os.WriteFile(file, []byte("name: one\nstages:\n  - key: s\n    commands: [true]\n"), 0o600); err != nil {
		return nil, err
	}
	o.Progress("startup: weft run of a one-stage pipeline, %d times", o.StartupRuns)
	time1 := func(args ...string) (time.Duration, error) {
		cmd := exec.CommandContext(ctx, o.Weft, args...)
		cmd.Dir = dir
		t0 := time.Now()
		out, err := cmd.CombinedOutput()
		d := time.Since(t0)
		if err != nil {
			return 0, fmt.Errorf("weft %s: %w: %s", strings.Join(args, " "), err, out)
		}
		return d, nil
	}
	var runs, base []time.Duration
	for range o.StartupRuns {
		d, err := time1("run", file)
		if err != nil {
			return nil, err
		}
		runs = append(runs, d)
		if d, err = time1("version"); err != nil {
			return nil, err
		}
		base = append(base, d)
	}
	return &StartupResult{
		Runs: o.StartupRuns, Min: Percentile(runs, 0), P50: Percentile(runs, 0.5), Max: Percentile(runs, 1),
		Baseline: Percentile(base, 0.5),
	}, nil
}

// newID returns a trigger id.
func newID() string { return ulid.Make().String() }

// rawLoop is the baseline of the throughput scenario: jobs stages
// published to a work-queue stream of their own and worked by slots
// workers that each fetch one, start `sh -c true`, ack and wait for it,
// with no weft logic. It returns the stages per second.
func rawLoop(ctx context.Context, js jetstream.JetStream, jobs, slots int) (float64, error) {
	const stream = "BENCH_RAW"
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: stream, Subjects: []string{"bench.raw"}, Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage,
	}); err != nil {
		return 0, err
	}
	defer func() { _ = js.DeleteStream(context.WithoutCancel(ctx), stream) }()
	c, err := js.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{Durable: "w", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		return 0, err
	}
	for i := 0; i < jobs; i += 500 {
		var fs []jetstream.PubAckFuture
		for j := i; j < min(i+500, jobs); j++ {
			f, err := js.PublishAsync("bench.raw", []byte("job"))
			if err != nil {
				return 0, err
			}
			fs = append(fs, f)
		}
		for _, f := range fs {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				return 0, err
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		}
	}
	var left atomic.Int64
	left.Store(int64(jobs))
	var wg sync.WaitGroup
	errs := make(chan error, slots)
	t0 := time.Now()
	for range slots {
		wg.Go(func() {
			for left.Load() > 0 && ctx.Err() == nil {
				batch, err := c.Fetch(1, jetstream.FetchMaxWait(time.Second))
				if err != nil {
					continue
				}
				for msg := range batch.Messages() {
					cmd := exec.CommandContext(ctx, "sh", "-c", "true")
					if err := cmd.Run(); err != nil {
						errs <- err
						return
					}
					if err := msg.DoubleAck(ctx); err != nil {
						errs <- err
						return
					}
					left.Add(-1)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	return float64(jobs) / time.Since(t0).Seconds(), ctx.Err()
}

// submitN submits one run of text through the client on js.
func submitN(ctx context.Context, js jetstream.JetStream, text, repo string) (string, error) {
	return client.Submit(ctx, js, wire.Trigger{ID: newID(), File: "bench.yml", Pipeline: text, Repo: repo})
}
