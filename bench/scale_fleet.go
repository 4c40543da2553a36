package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/dispatcher"
	"github.com/weft-ci/weft/internal/procs"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// processes is a weft server, a dispatcher and agents as processes of
// their own, started from the weft binary (not restarted: see fleet for
// that), with their logs in dir/logs.
type processes struct {
	f          *fleet
	dir, url   string
	server     *fleetProc
	dispatcher *fleetProc
	agents     []*fleetProc
	b          *bus.Bus
}

// startServer starts a weft server process, its state and the logs of
// every process started from it in a new temporary directory named after
// name, and connects to it.
func startServer(ctx context.Context, weft, name string) (*processes, error) {
	dir, err := os.MkdirTemp("", "weft-bench-"+name+"-")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	p := &processes{f: newFleet(weft, dir, fmt.Sprintf("%s-%d-%d", name, os.Getpid(), time.Now().UnixNano())), dir: dir, url: fmt.Sprintf("nats://127.0.0.1:%d", port)}
	if p.server, err = p.f.spawn("server", []string{"server", "--state", filepath.Join(dir, "server"), "--listen", fmt.Sprintf("127.0.0.1:%d", port)}); err != nil {
		p.stop()
		return nil, err
	}
	if p.b, err = connect(ctx, p.url); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// startProcesses starts a server, one dispatcher with dispatcherArgs and
// agents agent processes with agentArgs, and connects to the server.
func startProcesses(ctx context.Context, weft string, agents int, dispatcherArgs, agentArgs []string) (*processes, error) {
	p, err := startServer(ctx, weft, "scale")
	if err != nil {
		return nil, err
	}
	dir := p.dir
	if p.dispatcher, err = p.f.spawn("dispatcher", append([]string{"dispatcher", "--server", p.url}, dispatcherArgs...)); err != nil {
		p.stop()
		return nil, err
	}
	for i := range agents {
		a, err := p.f.spawn(fmt.Sprintf("agent-%d", i+1), append([]string{"agent", "--join", p.url, "--executor", "process",
			"--work-dir", filepath.Join(dir, fmt.Sprintf("work-%d", i+1))}, agentArgs...))
		if err != nil {
			p.stop()
			return nil, err
		}
		p.agents = append(p.agents, a)
	}
	// Ready once every agent is in the registry.
	kv, err := p.b.JS.KeyValue(ctx, subjects.AgentsBucket)
	if err != nil {
		p.stop()
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		keys, err := bus.Keys(ctx, kv, ">")
		if err == nil && len(keys) >= agents {
			return p, nil
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("%d of %d agents joined within 30s (logs in %s)", len(keys), agents, dir)
		}
		if !pause(ctx, nil, 50*time.Millisecond) {
			p.stop()
			return nil, ctx.Err()
		}
	}
}

// stop stops the agents, the dispatcher and the server, in that order,
// and removes their state.
func (p *processes) stop() {
	for _, a := range p.agents {
		a.stop()
	}
	if p.dispatcher != nil {
		p.dispatcher.stop()
	}
	if p.b != nil {
		p.b.Close()
	}
	if p.server != nil {
		p.server.stop()
	}
	p.f.wg.Wait()
	p.f.sweep()
	os.RemoveAll(p.dir)
}

// counter reads a dispatcher counter (stats.<name>), 0 when unset.
func counter(ctx context.Context, b *bus.Bus, name string) uint64 {
	kv, err := b.JS.KeyValue(ctx, subjects.WIPBucket)
	if err != nil {
		return 0
	}
	e, err := kv.Get(ctx, subjects.StatsKey(name))
	if err != nil {
		return 0
	}
	var n uint64
	_ = json.Unmarshal(e.Value(), &n)
	return n
}

// ThroughputResult is the rate of many small runs through a dispatcher
// and agents as processes, against the raw loop on the same slots.
type ThroughputResult struct {
	Runs         int `json:"runs"`
	StagesPerRun int `json:"stages_per_run"`
	Agents       int `json:"agents"`
	Slots        int `json:"slots_per_agent"`
	// Rate is stages per second from the first trigger to the last run's
	// end; RawRate the raw fetch+fork+ack loop's on Agents*Slots workers.
	Rate    float64 `json:"stages_per_s"`
	RawRate float64 `json:"raw_stages_per_s"`
	// Ratio is Rate / RawRate.
	Ratio float64 `json:"ratio"`
	// Lost counts the runs that did not succeed; ReconcileFinished the
	// finishes the reconcile loop applied (none should be left to it).
	Lost              int           `json:"lost"`
	ReconcileFinished uint64        `json:"reconcile_finished"`
	Wall              time.Duration `json:"wall_ns"`
}

// Throughput sends Runs runs of RunStages independent `true` stages
// through weft server, weft dispatcher and Agents weft agent processes of
// Slots slots, then the same number of stages through the raw loop.
func Throughput(ctx context.Context, o ScaleOptions) (*ThroughputResult, error) {
	p, err := startProcesses(ctx, o.Weft, o.Agents, []string{"--wip", "100000"}, []string{"--slots", strconv.Itoa(o.Slots)})
	if err != nil {
		return nil, err
	}
	defer p.stop()
	res := &ThroughputResult{Runs: o.Runs, StagesPerRun: o.RunStages, Agents: o.Agents, Slots: o.Slots}
	text := independent("throughput", o.RunStages, "true")
	o.Progress("throughput: %d runs of %d stages on %d agents x %d slots", o.Runs, o.RunStages, o.Agents, o.Slots)
	t0 := time.Now()
	var ended atomic.Int64
	lost, err := runMany(ctx, p.b, o.Runs, 8, func(int) (string, string) { return text, "bench/throughput" }, func() {
		if n := ended.Add(1); n%1000 == 0 {
			o.Progress("throughput: %d runs ended", n)
		}
	})
	if err != nil {
		return nil, err
	}
	res.Wall = time.Since(t0)
	res.Lost = lost
	res.Rate = float64(o.Runs*o.RunStages) / res.Wall.Seconds()
	res.ReconcileFinished = counter(ctx, p.b, dispatcher.StatReconcileFinished)
	o.Progress("throughput: the raw loop, %d stages on %d workers", o.Runs*o.RunStages, o.Agents*o.Slots)
	if res.RawRate, err = rawLoop(ctx, p.b.JS, o.Runs*o.RunStages, o.Agents*o.Slots); err != nil {
		return nil, err
	}
	res.Ratio = res.Rate / res.RawRate
	return res, nil
}

// runMany submits n runs (text and repository of run i from run) from
// workers goroutines and waits until every one ended, counting the ends
// from the run-finished events. It returns how many did not succeed.
func runMany(ctx context.Context, b *bus.Bus, n, workers int, run func(i int) (text, repo string), ended func()) (int, error) {
	var (
		mu    sync.Mutex
		ids   = map[string]bool{} // submitted
		ends  = map[string]bool{} // ended: succeeded or not
		bad   int
		all   = make(chan struct{})
		total atomic.Int64
	)
	check := func() {
		if len(ends) == n && len(ids) == n {
			select {
			case <-all:
			default:
				close(all)
			}
		}
	}
	sub, err := b.Conn.Subscribe(subjects.RunEvents, func(m *nats.Msg) {
		var ev wire.Event
		if json.Unmarshal(m.Data, &ev) != nil || ev.Type != wire.RunFinished {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if ends[ev.RunID] {
			return
		}
		ends[ev.RunID] = true
		if ev.Message != string(wire.RunSucceeded) {
			bad++
		}
		if ended != nil {
			ended()
		}
		check()
	})
	if err != nil {
		return 0, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := b.Conn.Flush(); err != nil {
		return 0, err
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				text, repo := run(i)
				id, err := submitN(ctx, b.JS, text, repo)
				if err != nil {
					errs <- err
					return
				}
				total.Add(1)
				mu.Lock()
				ids[id] = true
				check()
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	// Runs that never end count as lost: wait while runs keep ending.
	last, lastAt := -1, time.Now()
	for {
		select {
		case <-all:
			mu.Lock()
			defer mu.Unlock()
			return bad, nil
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(time.Second):
		}
		mu.Lock()
		got := len(ends)
		mu.Unlock()
		if got != last {
			last, lastAt = got, time.Now()
		}
		if time.Since(lastAt) > time.Minute {
			mu.Lock()
			defer mu.Unlock()
			return bad + n - len(ends), nil
		}
	}
}

// ConcurrencyResult is what many stages running at once cost the server
// and the dispatcher.
type ConcurrencyResult struct {
	Stages    int           `json:"stages"`
	Agents    int           `json:"agents"`
	StageTime time.Duration `json:"stage_time_ns"`
	AckWait   time.Duration `json:"ack_wait_ns"`
	// MostRunning is the most stages seen running at one moment.
	MostRunning int `json:"most_running"`
	// Redeliveries counts job redeliveries (the consumer's); the
	// reconcile figures what was left to the reconcile loop.
	Redeliveries      uint64 `json:"redeliveries"`
	ReconcileFinished uint64 `json:"reconcile_finished"`
	ReconcileLost     uint64 `json:"reconcile_lost"`
	Succeeded         int    `json:"succeeded"`
	// Window is how long CPU was measured while every stage ran; the
	// cores are CPU time over it. Idle* are the same processes over as
	// long before any run, with the agents connected: the baseline.
	Window              time.Duration    `json:"window_ns"`
	ServerCores         float64          `json:"server_cores"`
	DispatcherCores     float64          `json:"dispatcher_cores"`
	IdleServerCores     float64          `json:"idle_server_cores"`
	IdleDispatcherCores float64          `json:"idle_dispatcher_cores"`
	RSS                 map[string]int64 `json:"rss_bytes"`
}

// Concurrency runs Concurrent stages of `sleep StageTime` at once on
// ConcurrentAgents agent processes, and measures the server's and the
// dispatcher's CPU from /proc over Window while all of them run.
func Concurrency(ctx context.Context, o ScaleOptions) (*ConcurrencyResult, error) {
	slots := (o.Concurrent + o.ConcurrentAgents - 1) / o.ConcurrentAgents
	p, err := startProcesses(ctx, o.Weft, o.ConcurrentAgents, []string{"--wip", "100000"},
		[]string{"--slots", strconv.Itoa(slots), "--ack-wait", o.ConcurrentAckWait.String()})
	if err != nil {
		return nil, err
	}
	defer p.stop()
	res := &ConcurrencyResult{Stages: o.Concurrent, Agents: o.ConcurrentAgents, StageTime: o.StageTime, AckWait: o.ConcurrentAckWait, RSS: map[string]int64{}}
	cores := func(window time.Duration) (server, disp float64, err error) {
		s0, err := procs.Of(p.server.cmd.Process.Pid)
		if err != nil {
			return 0, 0, err
		}
		d0, err := procs.Of(p.dispatcher.cmd.Process.Pid)
		if err != nil {
			return 0, 0, err
		}
		t0 := time.Now()
		if !pause(ctx, nil, window) {
			return 0, 0, ctx.Err()
		}
		s1, err := procs.Of(p.server.cmd.Process.Pid)
		if err != nil {
			return 0, 0, err
		}
		d1, err := procs.Of(p.dispatcher.cmd.Process.Pid)
		if err != nil {
			return 0, 0, err
		}
		el := time.Since(t0).Seconds()
		return (s1.CPU - s0.CPU).Seconds() / el, (d1.CPU - d0.CPU).Seconds() / el, nil
	}
	idle := min(o.Window, 10*time.Second)
	o.Progress("concurrency: the idle baseline, %s", idle)
	if res.IdleServerCores, res.IdleDispatcherCores, err = cores(idle); err != nil {
		return nil, err
	}
	const runs = 10
	per := (o.Concurrent + runs - 1) / runs
	text := independent("concurrency", per, fmt.Sprintf("sleep %g", o.StageTime.Seconds()))
	o.Progress("concurrency: %d runs of %d stages of sleep %s on %d agents x %d slots", runs, per, o.StageTime, o.ConcurrentAgents, slots)
	var ids []string
	submitted := time.Now()
	for i := range runs {
		id, err := submitN(ctx, p.b.JS, text, fmt.Sprintf("bench/concurrency-%d", i))
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	running := func() int {
		n := 0
		for _, id := range ids {
			r, err := client.Get(ctx, p.b.JS, id)
			if err != nil {
				continue
			}
			for _, s := range r.Stages {
				if s.State == wire.StageRunning {
					n++
				}
			}
		}
		return n
	}
	// Wait until every stage runs (or half the stage time passed).
	for res.MostRunning < runs*per && time.Since(submitted) < o.StageTime/2 {
		res.MostRunning = max(res.MostRunning, running())
		if !pause(ctx, nil, 200*time.Millisecond) {
			return nil, ctx.Err()
		}
	}
	window := min(o.Window, o.StageTime-time.Since(submitted)-5*time.Second)
	res.Window = window
	o.Progress("concurrency: %d stages running; measuring for %s", res.MostRunning, window)
	if res.ServerCores, res.DispatcherCores, err = cores(window); err != nil {
		return nil, err
	}
	res.MostRunning = max(res.MostRunning, running())
	for name, pr := range map[string]*fleetProc{"server": p.server, "dispatcher": p.dispatcher} {
		if u, err := procs.Of(pr.cmd.Process.Pid); err == nil {
			res.RSS[name] = u.RSS
		}
	}
	for i, a := range p.agents {
		if u, err := procs.Of(a.cmd.Process.Pid); err == nil {
			res.RSS[fmt.Sprintf("agent-%d", i+1)] = u.RSS
		}
	}
	o.Progress("concurrency: waiting for the runs to end")
	for _, id := range ids {
		r, err := client.Follow(ctx, p.b.JS, id, func(client.Update) {})
		if err != nil {
			return nil, err
		}
		if r.State == wire.RunSucceeded {
			res.Succeeded += len(r.Stages)
		}
	}
	c, err := p.b.JS.Consumer(ctx, subjects.JobsStream, subjects.JobConsumer(subjects.DefaultQueue, subjects.Normal))
	if err != nil {
		return nil, err
	}
	info, err := c.Info(ctx)
	if err != nil {
		return nil, err
	}
	res.Redeliveries = uint64(info.NumRedelivered)
	res.ReconcileFinished = counter(ctx, p.b, dispatcher.StatReconcileFinished)
	res.ReconcileLost = counter(ctx, p.b, dispatcher.StatReconcileLost)
	return res, nil
}
