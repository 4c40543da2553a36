package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/agent"
	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/container"
	"github.com/weft-ci/weft/runstore"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// Defaults of the chaos scenario (ChaosOptions and the CLI's flags).
const (
	DefaultChaosRuns            = 500
	DefaultChaosRepos           = 3
	DefaultChaosWIP             = 3
	DefaultChaosAgents          = 3
	DefaultChaosSlots           = 3
	DefaultChaosRate            = 10.0
	DefaultChaosAckWait         = 2 * time.Second
	DefaultChaosSweepInterval   = 5 * time.Second
	DefaultChaosReconcile       = 5 * time.Second
	DefaultChaosServerDown      = 5 * time.Second
	DefaultChaosKillEvery       = 2 * time.Second
	DefaultChaosAgentDown       = time.Second
	DefaultChaosDispatcherEvery = 6 * time.Second
	DefaultChaosDispatcherDown  = 3 * time.Second
	DefaultChaosSettle          = 60 * time.Second
	// DefaultChaosGrace gives an agent's periodic workspace sweep a
	// chance to run before workspaces count as left.
	DefaultChaosGrace       = agent.DefaultSweepInterval + 15*time.Second
	DefaultChaosStall       = 30 * time.Second
	DefaultChaosMaxRecovery = 30 * time.Second
)

// ChaosOptions size the chaos scenario. Zero fields take the
// DefaultChaos* constants.
type ChaosOptions struct {
	// Runs is how many runs are triggered.
	Runs int
	// Repos is how many repositories they are spread over, round robin.
	Repos int
	// WIP is the dispatchers' WIP limit per repository (--wip).
	WIP int
	// Agents is how many agent processes serve the queue, with Slots
	// slots each.
	Agents, Slots int
	// Rate is how many triggers are published per second.
	Rate float64
	// AckWait is the agents' AckWait; they heartbeat every third of it.
	AckWait time.Duration
	// SweepInterval and ReconcileInterval are the dispatchers'
	// (--sweep-interval, --reconcile-interval): short, so that the chaos
	// exercises them often.
	SweepInterval, ReconcileInterval time.Duration
	// KillEvery is the mean time between two agent kills; a killed agent
	// stays down for a random time up to AgentDown.
	KillEvery, AgentDown time.Duration
	// DispatcherEvery is the mean time between two kills of each of the
	// two dispatchers; a killed one stays down for a random time up to
	// DispatcherDown.
	DispatcherEvery, DispatcherDown time.Duration
	// ServerDown is how long the server stays down when it is killed,
	// once, when a third of the runs have ended: longer than AckWait, so
	// that the jobs of stages running then are due for redelivery while
	// their agents reconnect.
	ServerDown time.Duration
	// Settle is how long runs have to end after the chaos stops before
	// they count as stuck.
	Settle time.Duration
	// Grace is how long leases, workspaces and containers have to go
	// away after the settle time before they count as left.
	Grace time.Duration
	// Stall stops the chaos early when no run ended for this long after
	// every trigger was published.
	Stall time.Duration
	// MaxRecovery is the limit on the time from an agent kill to the
	// restart of a stage it ran.
	MaxRecovery time.Duration
	// HostOnly runs every stage on the host even when containerd is
	// reachable.
	HostOnly bool
	// ContainerdAddress is containerd's socket; default containerd's.
	ContainerdAddress string
	// Seed seeds the plan and the faults; 0 picks one (reported in the
	// result).
	Seed uint64
	// Dir, when set, holds the scenario's state (server store, process
	// logs, stage records, agent work directories) and is kept; by
	// default a temporary directory is used and removed.
	Dir string
	// Binary is the weft binary to run the processes with; default this
	// process's executable.
	Binary string
	// Progress receives one line per step; nil discards them.
	Progress func(format string, args ...any)
}

func (o *ChaosOptions) defaults() error {
	setInt := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	setDur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	setInt(&o.Runs, DefaultChaosRuns)
	setInt(&o.Repos, DefaultChaosRepos)
	setInt(&o.WIP, DefaultChaosWIP)
	setInt(&o.Agents, DefaultChaosAgents)
	setInt(&o.Slots, DefaultChaosSlots)
	setDur(&o.AckWait, DefaultChaosAckWait)
	setDur(&o.SweepInterval, DefaultChaosSweepInterval)
	setDur(&o.ReconcileInterval, DefaultChaosReconcile)
	setDur(&o.KillEvery, DefaultChaosKillEvery)
	setDur(&o.AgentDown, DefaultChaosAgentDown)
	setDur(&o.DispatcherEvery, DefaultChaosDispatcherEvery)
	setDur(&o.DispatcherDown, DefaultChaosDispatcherDown)
	setDur(&o.ServerDown, DefaultChaosServerDown)
	setDur(&o.Settle, DefaultChaosSettle)
	setDur(&o.Grace, DefaultChaosGrace)
	setDur(&o.Stall, DefaultChaosStall)
	setDur(&o.MaxRecovery, DefaultChaosMaxRecovery)
	if o.Rate == 0 {
		o.Rate = DefaultChaosRate
	}
	if o.Seed == 0 {
		o.Seed = rand.Uint64()
	}
	if o.Progress == nil {
		o.Progress = func(string, ...any) {}
	}
	if err := weftBinary(&o.Binary, "chaos"); err != nil {
		return err
	}
	switch {
	case o.Runs < 0 || o.Repos < 1 || o.WIP < 1 || o.Agents < 1 || o.Slots < 1 || o.Rate < 0:
		return fmt.Errorf("%w: runs, repos, wip, agents, slots and rate must be positive", ErrInvalidChaos)
	case o.Runs < o.Repos*o.WIP:
		return fmt.Errorf("%w: %d runs cannot fill %d repositories at WIP %d", ErrInvalidChaos, o.Runs, o.Repos, o.WIP)
	}
	return nil
}

// The chaos agents' job settings.
const (
	// chaosMaxDeliver is high: a job may be delivered to many agents
	// that are killed before it ends, and dead-lettering it would fail a
	// run the chaos expects to succeed.
	chaosMaxDeliver = 20
	// chaosKillGrace is short: a cancelled blocking stage ends at once.
	chaosKillGrace = time.Second
)

// ErrInvalidChaos is wrapped by the errors of invalid ChaosOptions.
var ErrInvalidChaos = errors.New("bench: invalid chaos options")

// ChaosResult is what the chaos's checker found. Figures under
// "invariants" must be 0 or within their limits; figures under
// "coverage" must not be 0, or the invariants were not put to the test.
// Problems lists each broken invariant and each coverage gap; OK says
// there is none.
type ChaosResult struct {
	// Runs is how many runs were planned, Accepted how many got a run id.
	Runs     int `json:"runs"`
	Accepted int `json:"accepted"`
	// Repos, WIPLimit, Agents and Slots are the scenario's.
	Repos    int `json:"repos"`
	WIPLimit int `json:"wip_limit"`
	Agents   int `json:"agents"`
	Slots    int `json:"slots"`
	// Containers says the plain runs had a container stage;
	// ContainersNote says which image, or why not.
	Containers     bool   `json:"containers"`
	ContainersNote string `json:"containers_note"`
	// Kinds counts the planned runs by kind (plain, group, superseded,
	// latest, cancel, cancel_early).
	Kinds map[string]int `json:"kinds"`
	// Seed reproduces the plan and the fault schedule (not their timing).
	Seed uint64 `json:"seed"`
	// Dir is where the state was kept, when asked for.
	Dir string `json:"dir,omitempty"`

	// AgentKills, DispatcherKills (per dispatcher) and ServerRestarts
	// count the SIGKILLs; ServerDown is how long the server restart kept
	// this process from the server.
	AgentKills      int           `json:"agent_kills"`
	DispatcherKills []int         `json:"dispatcher_kills"`
	ServerRestarts  int           `json:"server_restarts"`
	ServerDown      time.Duration `json:"server_down_ns"`
	// UnexpectedExits counts processes that exited by themselves (one
	// that could not connect while the server was down, or a crash).
	UnexpectedExits int `json:"unexpected_exits"`
	// SlowestRun is the run that took longest from admission to its end,
	// and SlowestRunFor how long (not an invariant: a hint at a stall).
	SlowestRun    string        `json:"slowest_run,omitempty"`
	SlowestRunFor time.Duration `json:"slowest_run_for_ns"`

	// Coverage.
	// AdmittedFromWaiting counts runs that found their repository at its
	// WIP limit when they were created (by the run documents) or whose
	// document said they waited for WIP, and were admitted later.
	AdmittedFromWaiting int `json:"admitted_from_waiting"`
	// GroupWaited counts runs that waited for their concurrency group.
	GroupWaited int `json:"group_waited"`
	// CancelledRunning and CancelledWaiting count the client's cancels
	// that ended a run while a stage ran and before admission;
	// Superseded* the same for cancel_in_progress runs.
	CancelledRunning  int `json:"cancelled_running"`
	CancelledWaiting  int `json:"cancelled_waiting"`
	SupersededRunning int `json:"superseded_running"`
	SupersededWaiting int `json:"superseded_waiting"`
	// HostStages and ContainerStages count the stage executions measured
	// on the host (records and container samples).
	HostStages      int `json:"host_stages"`
	ContainerStages int `json:"container_stages"`
	// Takeovers counts stages of a killed agent that started again.
	Takeovers int `json:"takeovers"`
	// Events counts the events read from WEFT_EVENTS.
	Events int `json:"events"`

	// Invariants.
	// Lost counts accepted runs that did not end as they must (cancelled
	// runs cancelled, superseded runs cancelled, the others succeeded),
	// Stuck those of them not terminal Settle after the chaos stopped.
	// NotAccepted counts triggers that never got a run id.
	Lost        int       `json:"lost"`
	Stuck       int       `json:"stuck"`
	NotAccepted int       `json:"not_accepted"`
	LostRuns    []LostRun `json:"lost_runs,omitempty"`
	// FinishedTwice counts stages that ran again, and succeeded twice,
	// after a success of theirs was stored in WEFT_EVENTS (a finish
	// event published twice by one attempt is one success).
	// RanAgainAfterLateFinish (not an invariant) lists stages that
	// succeeded twice because the first success was stored only after
	// the next attempt had started: at-least-once delivery when a stage
	// ends while its agent is cut off from the server for longer than
	// AckWait, or dies between its work and its finished event.
	FinishedTwice           int      `json:"finished_twice"`
	FinishedTwiceStages     []string `json:"finished_twice_stages,omitempty"`
	RanAgainAfterLateFinish []string `json:"ran_again_after_late_finish,omitempty"`
	// RunTwice counts stages two attempts executed at once, measured on
	// the host.
	RunTwice       int       `json:"run_twice"`
	RunTwiceStages []Overlap `json:"run_twice_stages,omitempty"`
	// MaxInFlight is the most runs of one repository in flight at once
	// (admitted..finished, by the run documents); MaxExecuting the most
	// executing at once (by the host's records). Both must be at most
	// WIPLimit.
	MaxInFlight       int            `json:"max_in_flight"`
	MaxInFlightByRepo map[string]int `json:"max_in_flight_by_repo"`
	MaxExecuting      int            `json:"max_executing"`
	// MaxGroupInFlight and MaxGroupExecuting are the same per
	// concurrency group; both must be at most 1.
	MaxGroupInFlight   int            `json:"max_group_in_flight"`
	MaxInFlightByGroup map[string]int `json:"max_in_flight_by_group"`
	MaxGroupExecuting  int            `json:"max_group_executing"`
	// LeasesLeft counts lease and group-lock keys left in weft_wip;
	// WaitsLeft (not an invariant) the waiting runs.
	LeasesLeft int      `json:"leases_left"`
	LeaseKeys  []string `json:"lease_keys,omitempty"`
	WaitsLeft  int      `json:"waits_left"`
	// WorkspacesLeft counts entries left in the agents' work directories.
	WorkspacesLeft   int      `json:"workspaces_left"`
	WorkspaceEntries []string `json:"workspace_entries,omitempty"`
	// ContainersLeft counts the runs' containers left in containerd.
	ContainersLeft int `json:"containers_left"`
	// Panics are the processes whose logs report a panic or a data race.
	Panics []string `json:"panics,omitempty"`
	// RecoveryP50 and RecoveryMax are the time from an agent kill to the
	// next start of a stage it ran; RecoveryMax must be at most
	// RecoveryLimit.
	RecoveryP50   time.Duration `json:"recovery_p50_ns"`
	RecoveryMax   time.Duration `json:"recovery_max_ns"`
	RecoveryLimit time.Duration `json:"recovery_limit_ns"`
	// RecoveryWorst names the stage and the kill of RecoveryMax.
	RecoveryWorst string `json:"recovery_worst,omitempty"`

	// Problems are the broken invariants and coverage gaps; OK is true
	// when there is none.
	Problems []string `json:"problems"`
	OK       bool     `json:"ok"`
	// Wall is the scenario's wall time.
	Wall time.Duration `json:"wall_ns"`
}

// Chaos runs the chaos scenario on separate processes: a `weft server`
// (file store, a fixed port), two `weft dispatcher`s and Agents `weft
// agent`s. It triggers Runs runs over Repos repositories at Rate per
// second, far more than the WIP limit admits at once, of these kinds:
// plain four-stage DAGs (with a busybox container stage when containerd
// is reachable), runs of queue-mode concurrency groups, runs of a
// cancel_in_progress group that block until the next one supersedes
// them, and runs that block until the client cancels them (while their
// stage runs, or at once while they wait). Meanwhile it SIGKILLs a random
// agent about every KillEvery and each dispatcher about every
// DispatcherEvery, restarting each after a random down time, and the
// server once, when a third of the runs have ended, for ServerDown.
//
// The chaos stops when every run has ended (or none ended for Stall);
// runs then have Settle to end. An independent checker reads every event
// of WEFT_EVENTS (ordered consumer), the run documents (and what a watch
// of them saw during the chaos), the records the host stages write into
// a shared directory (start, ticks and end, in the stage's own shell, so
// overlaps are measured on the host), the container stages' processes it
// sees on the host every 200ms, the lease keys left in weft_wip, the
// agents' work directories and containerd after Grace. Its figures and problems are the result;
// the error is for a scenario that could not be run.
//
// The busybox image is built with internal/busybox from /bin/busybox (Debian's
// busybox-static) and loaded with `weft image import`: the same image the
// end-to-end tests use, so the chaos needs no registry.
func Chaos(ctx context.Context, o ChaosOptions) (*ChaosResult, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	began := time.Now()
	dir := o.Dir
	if dir != "" {
		if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
			return nil, fmt.Errorf("%w: directory %s is not empty (its records and server state would mix with this run's)", ErrInvalidChaos, dir)
		}
	} else {
		tmp, err := os.MkdirTemp("", "weft-chaos-")
		if err != nil {
			return nil, fmt.Errorf("chaos: %w", err)
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	}
	for _, sub := range []string{"logs", "records", "agents", "server"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return nil, fmt.Errorf("chaos: %w", err)
		}
	}
	lib := filepath.Join(dir, "chaos.sh")
	if err := os.WriteFile(lib, []byte(chaosLib), 0o644); err != nil {
		return nil, fmt.Errorf("chaos: %w", err)
	}
	boot, err := bootTime()
	if err != nil {
		return nil, err
	}
	o.Progress("chaos: seed %d, state in %s", o.Seed, dir)

	rt, image, note := setupContainers(ctx, o, dir)
	if rt != nil {
		defer rt.Close()
	}
	o.Progress("chaos: %s", note)

	port, err := freePort()
	if err != nil {
		return nil, err
	}
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	mark := fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano())
	f := newFleet(o.Binary, dir, mark)
	serverCtx, stopServer := context.WithCancel(ctx)
	workCtx, stopWorkers := context.WithCancel(ctx)
	var stopOnce sync.Once
	stopFleet := func() {
		stopOnce.Do(func() {
			stopWorkers()
			// The server outlives the others, so agents can hand back
			// what they run; it is stopped last.
			stopServer()
			f.wg.Wait()
			if n := f.sweep(); n > 0 {
				o.Progress("chaos: killed %d processes left by killed agents", n)
			}
			if rt != nil {
				cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
				defer cancel()
				if _, err := rt.Cleanup(cctx); err != nil {
					o.Progress("chaos: remove leftover containers: %v", err)
				}
			}
		})
	}
	defer stopFleet()
	defer stopWorkers() // before stopFleet, on early returns: stop the agents first
	server := f.add(serverCtx, memberServer, "server", func(string) []string {
		return []string{"server", "--state", filepath.Join(dir, "server"), "--listen", fmt.Sprintf("127.0.0.1:%d", port)}
	})
	b, err := connect(ctx, url)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	runsKV, err := b.JS.KeyValue(ctx, subjects.RunsBucket)
	if err != nil {
		return nil, fmt.Errorf("chaos: bucket %s: %w", subjects.RunsBucket, err)
	}
	stagesKV, err := b.JS.KeyValue(ctx, subjects.StagesBucket)
	if err != nil {
		return nil, fmt.Errorf("chaos: bucket %s: %w", subjects.StagesBucket, err)
	}
	wipKV, err := b.JS.KeyValue(ctx, subjects.WIPBucket)
	if err != nil {
		return nil, fmt.Errorf("chaos: bucket %s: %w", subjects.WIPBucket, err)
	}

	dispatchers := make([]*member, 2)
	for i := range dispatchers {
		dispatchers[i] = f.add(workCtx, memberDispatcher, fmt.Sprintf("dispatcher%d", i+1), func(string) []string {
			return []string{"dispatcher", "--server", url, "--wip", strconv.Itoa(o.WIP),
				"--sweep-interval", o.SweepInterval.String(), "--reconcile-interval", o.ReconcileInterval.String()}
		})
	}
	executor := "process"
	if rt != nil {
		executor = "auto"
	}
	agents := make([]*member, o.Agents)
	workDirs := make([]string, o.Agents)
	for i := range agents {
		name := fmt.Sprintf("agent%d", i+1)
		workDirs[i] = filepath.Join(dir, "agents", name)
		agents[i] = f.add(workCtx, memberAgent, name, func(id string) []string {
			args := []string{"agent", "--join", url, "--id", id, "--slots", strconv.Itoa(o.Slots),
				"--ack-wait", o.AckWait.String(), "--max-deliver", strconv.Itoa(chaosMaxDeliver), "--kill-grace", chaosKillGrace.String(),
				"--work-dir", workDirs[i], "--executor", executor, "--env-allow", "CHAOS_*"}
			if o.ContainerdAddress != "" {
				args = append(args, "--containerd-address", o.ContainerdAddress)
			}
			return args
		})
	}

	rng := rand.New(rand.NewPCG(o.Seed, 1))
	d := &chaosDriver{
		o: o, js: b.JS, runsKV: runsKV, stagesKV: stagesKV, hanging: map[string]bool{}, plan: plan(o.Runs, o.Repos, rng),
		latest: map[string]*runState{}, pending: map[string]map[string]bool{}, byID: map[string]*chaosRun{},
		spans: map[containerProc]*execution{}, restarted: make(chan struct{}), submitted: make(chan struct{}),
	}
	env := stageEnv{lib: lib, records: filepath.Join(dir, "records"), deadline: int64(time.Since(boot).Seconds()) + int64(time.Hour.Seconds())}
	d.text = func(r *chaosRun) string { return pipelineText(r, env, image) }

	// Observers run until the end; the chaos until it stops.
	obsCtx, stopObservers := context.WithCancel(ctx)
	var observers sync.WaitGroup
	defer func() { stopObservers(); observers.Wait() }()
	observers.Go(func() { d.watch(obsCtx) })
	observers.Go(func() { d.watchHangs(obsCtx) })
	if rt != nil {
		observers.Go(func() { d.sample(obsCtx, env.records) })
	}
	chaosCtx, stopChaos := context.WithCancel(ctx)
	var chaos sync.WaitGroup
	defer func() { stopChaos(); chaos.Wait() }()
	o.Progress("chaos: %d runs over %d repositories at %g/s, WIP %d, 2 dispatchers, %d agents x %d slots", o.Runs, o.Repos, o.Rate, o.WIP, o.Agents, o.Slots)
	chaos.Go(func() { d.submitAll(chaosCtx, mark) })
	chaos.Go(func() { d.cancelVictims(chaosCtx) })
	chaos.Go(func() {
		d.faults(chaosCtx, f, server, dispatchers, agents, rand.New(rand.NewPCG(o.Seed, 2)))
	})
	why, err := d.awaitEnd(ctx, f)
	if err != nil {
		return nil, err
	}
	stopChaos()
	chaos.Wait()
	close(f.calm)
	stopped := time.Now()
	o.Progress("chaos: stopped (%s); runs have %s to end", why, o.Settle)

	d.settle(ctx, stopped.Add(o.Settle))
	end := time.Now()
	docs, err := d.finalDocs(ctx)
	if err != nil {
		return nil, err
	}
	o.Progress("chaos: waiting up to %s for leases, workspaces and containers to go", o.Grace)
	left := d.awaitLeftovers(ctx, wipKV, workDirs, rt, time.Now().Add(o.Grace))
	o.Progress("chaos: reading every event")
	events, heartbeats, err := readEvents(ctx, b.JS)
	if err != nil {
		return nil, err
	}
	stopObservers()
	observers.Wait()
	execs, err := readRecords(filepath.Join(dir, "records"), boot)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	for _, s := range d.spans {
		execs = append(execs, *s)
	}
	pending := d.pending
	serverDown, serverUp := d.serverDown, d.serverUp
	d.mu.Unlock()
	stopFleet()
	kills, exits := f.record()

	res := check(&observations{
		Runs: d.plan, Docs: docs, Pending: pending, Events: events, Heartbeats: heartbeats, Execs: execs,
		Kills: kills, Exits: exits, ServerDown: serverDown, ServerUp: serverUp, Stopped: stopped, End: end,
		Leases: left.leases, Waits: left.waits, Workspaces: left.workspaces, Containers: left.containers,
		Panics: f.panics(), WIP: o.WIP, AckWait: o.AckWait, MaxRecovery: o.MaxRecovery,
		ContainersOn: rt != nil, Dispatchers: len(dispatchers),
	})
	res.Agents, res.Slots, res.ContainersNote, res.Seed, res.Dir = o.Agents, o.Slots, note, o.Seed, o.Dir
	res.Wall = time.Since(began)
	return res, nil
}

// connect connects to the fleet's server, waiting up to 30s for it to
// start, and provisions weft's streams and buckets (idempotent: the
// server does it too, maybe at the same time).
func connect(ctx context.Context, url string) (*bus.Bus, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := bus.Open(ctx, bus.Config{URL: url, Name: "weft bench chaos", ConnectTimeout: time.Second})
		if err == nil {
			if err = bus.Provision(ctx, b.JS, 0); err == nil {
				return b, nil
			}
			b.Close()
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("chaos: server: %w", err)
		}
		if !pause(ctx, nil, 100*time.Millisecond) {
			return nil, ctx.Err()
		}
	}
}

// runState is the latest run document the driver saw, with its revision.
type runState struct {
	run *wire.Run
	rev uint64
}

// chaosDriver publishes the triggers and cancels and injects the faults;
// it also keeps what the observers see during the chaos.
type chaosDriver struct {
	o      ChaosOptions
	js     jetstream.JetStream
	runsKV jetstream.KeyValue
	// stagesKV holds the stage documents; the hang stages are watched.
	stagesKV jetstream.KeyValue
	plan     []*chaosRun
	text     func(*chaosRun) string

	mu      sync.Mutex                   // guards the plan's ID and cancel fields and everything below
	byID    map[string]*chaosRun         // accepted runs
	latest  map[string]*runState         // newest document seen of each run
	hanging map[string]bool              // runs whose hang stage was last seen running
	pending map[string]map[string]bool   // pending reasons seen of each run
	spans   map[containerProc]*execution // container stage attempts seen executing
	// serverDown and serverUp bound the server restart.
	serverDown, serverUp time.Time

	restarted chan struct{} // closed once the server restart is over
	submitted chan struct{} // closed once every trigger was published or given up
}

// submitAll publishes the plan's triggers at the chosen rate, each until
// a dispatcher has taken it, and cancels the kindCancelEarly runs at once.
func (d *chaosDriver) submitAll(ctx context.Context, mark string) {
	defer close(d.submitted)
	start := time.Now()
	for _, r := range d.plan {
		at := start.Add(time.Duration(float64(r.Index) / d.o.Rate * float64(time.Second)))
		if !pause(ctx, nil, time.Until(at)) {
			return
		}
		t := wire.Trigger{ID: fmt.Sprintf("chaos-%s-%d", mark, r.Index), Repo: r.Repo, Branch: r.Branch,
			Commit: fmt.Sprintf("%040d", r.Index), File: "chaos.yml", Pipeline: d.text(r)}
		id, err := d.submit(ctx, t)
		if err != nil {
			if ctx.Err() == nil {
				d.o.Progress("chaos: trigger %d: %v", r.Index, err)
			}
			continue
		}
		d.mu.Lock()
		r.ID = id
		d.byID[id] = r
		d.mu.Unlock()
		if r.Kind == kindCancelEarly {
			d.cancel(ctx, r, false)
		}
	}
}

// submit publishes t until a dispatcher has taken it: a publish or a wait
// that fails (the server or every dispatcher is down) is retried with the
// same trigger id, which makes the retry a duplicate. A refusal is final.
func (d *chaosDriver) submit(ctx context.Context, t wire.Trigger) (string, error) {
	for {
		sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		id, err := client.Submit(sctx, d.js, t)
		cancel()
		if err == nil || errors.Is(err, client.ErrRefused) {
			return id, err
		}
		if !pause(ctx, nil, 250*time.Millisecond) {
			return "", ctx.Err()
		}
	}
}

// cancel asks for r to be cancelled, retrying until the cancel is
// stored, and records when.
func (d *chaosDriver) cancel(ctx context.Context, r *chaosRun, running bool) {
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := client.Cancel(cctx, d.js, r.ID, "chaos: cancelled by the client")
		cancel()
		if err == nil {
			break
		}
		if !pause(ctx, nil, 250*time.Millisecond) {
			return
		}
	}
	d.mu.Lock()
	r.Cancelled, r.CancelledRunning = time.Now(), running
	d.mu.Unlock()
}

// holdCancelMax bounds how long a HoldCancel run is held for the server
// restart.
const holdCancelMax = 20 * time.Second

// cancelVictims cancels each kindCancel run once its blocking stage runs
// (a HoldCancel run only after the server restart, or holdCancelMax).
func (d *chaosDriver) cancelVictims(ctx context.Context) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	heldSince := map[*chaosRun]time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		restarted := false
		select {
		case <-d.restarted:
			restarted = true
		default:
		}
		var due []*chaosRun
		left := 0
		d.mu.Lock()
		for _, r := range d.plan {
			if r.Kind != kindCancel || !r.Cancelled.IsZero() {
				continue
			}
			left++
			st := d.latest[r.ID]
			if r.ID == "" || st == nil || st.run.State.Terminal() {
				continue
			}
			if !d.hanging[r.ID] {
				continue
			}
			if r.HoldCancel && !restarted {
				if heldSince[r].IsZero() {
					heldSince[r] = time.Now()
				}
				if time.Since(heldSince[r]) < holdCancelMax {
					continue
				}
			}
			due = append(due, r)
		}
		d.mu.Unlock()
		for _, r := range due {
			d.cancel(ctx, r, true)
		}
		select {
		case <-d.submitted:
			if left == 0 {
				return
			}
		default:
		}
	}
}

// faults SIGKILLs a random agent about every KillEvery and each
// dispatcher about every DispatcherEvery, and the server once when a
// third of the runs have ended, until ctx ends.
func (d *chaosDriver) faults(ctx context.Context, f *fleet, server *member, dispatchers, agents []*member, rng *rand.Rand) {
	jitter := func(mean time.Duration) time.Duration { return time.Duration(float64(mean) * (0.5 + rng.Float64())) }
	upTo := func(d time.Duration) time.Duration { return time.Duration(rng.Int64N(int64(d) + 1)) }
	agentT := time.NewTimer(jitter(d.o.KillEvery))
	disp1 := time.NewTimer(jitter(d.o.DispatcherEvery))
	disp2 := time.NewTimer(jitter(d.o.DispatcherEvery))
	check := time.NewTicker(200 * time.Millisecond)
	defer func() { agentT.Stop(); disp1.Stop(); disp2.Stop(); check.Stop() }()
	serverDone := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-agentT.C:
			agents[rng.IntN(len(agents))].sigkill(upTo(d.o.AgentDown))
			agentT.Reset(jitter(d.o.KillEvery))
		case <-disp1.C:
			dispatchers[0].sigkill(upTo(d.o.DispatcherDown))
			disp1.Reset(jitter(d.o.DispatcherEvery))
		case <-disp2.C:
			dispatchers[1].sigkill(upTo(d.o.DispatcherDown))
			disp2.Reset(jitter(d.o.DispatcherEvery))
		case <-check.C:
			if serverDone || d.ended()*3 < len(d.plan) {
				continue
			}
			killed := server.sigkill(d.o.ServerDown)
			if killed == nil {
				continue
			}
			serverDone = true
			var down time.Time
			select {
			case down = <-killed:
			case <-ctx.Done():
				return
			}
			d.mu.Lock()
			d.serverDown = down
			d.mu.Unlock()
			d.o.Progress("chaos: server killed; it stays down %s", d.o.ServerDown)
			if d.awaitServer(ctx) {
				d.mu.Lock()
				d.serverUp = time.Now()
				d.mu.Unlock()
				d.o.Progress("chaos: server back; this client's requests work again after %s", time.Since(down).Round(time.Millisecond))
			}
			close(d.restarted)
		}
	}
}

// awaitServer polls until the server answers this process's JetStream
// requests again, for at most a minute.
func (d *chaosDriver) awaitServer(ctx context.Context) bool {
	deadline := time.Now().Add(d.o.ServerDown + time.Minute)
	for time.Now().Before(deadline) {
		actx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := d.js.AccountInfo(actx)
		cancel()
		if err == nil {
			return true
		}
		if !pause(ctx, nil, 100*time.Millisecond) {
			return false
		}
	}
	return false
}

// ended returns how many accepted runs the driver has seen end.
func (d *chaosDriver) ended() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for id := range d.byID {
		if st := d.latest[id]; st != nil && st.run.State.Terminal() {
			n++
		}
	}
	return n
}

// observe records a run document revision.
func (d *chaosDriver) observe(id string, rev uint64, data []byte) {
	var r wire.Run
	if err := json.Unmarshal(data, &r); err != nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if r.Pending != nil {
		if d.pending[id] == nil {
			d.pending[id] = map[string]bool{}
		}
		d.pending[id][r.Pending.Reason] = true
	}
	if st := d.latest[id]; st == nil || st.rev < rev {
		d.latest[id] = &runState{run: &r, rev: rev}
	}
}

// watch follows every run document revision until ctx ends, starting a
// new watch if one ends (the server restart).
func (d *chaosDriver) watch(ctx context.Context) {
	for ctx.Err() == nil {
		w, err := d.runsKV.WatchAll(ctx)
		if err != nil {
			if !pause(ctx, nil, 500*time.Millisecond) {
				return
			}
			continue
		}
		func() {
			defer func() { _ = w.Stop() }()
			for {
				select {
				case <-ctx.Done():
					return
				case e, ok := <-w.Updates():
					if !ok {
						return
					}
					if e != nil && e.Operation() == jetstream.KeyValuePut {
						d.observe(e.Key(), e.Revision(), e.Value())
					}
				}
			}
		}()
	}
}

// watchHangs follows the documents of the runs' hang stages until ctx
// ends, starting a new watch if one ends (the server restart).
func (d *chaosDriver) watchHangs(ctx context.Context) {
	for ctx.Err() == nil {
		w, err := d.stagesKV.Watch(ctx, "*.hang")
		if err != nil {
			if !pause(ctx, nil, 500*time.Millisecond) {
				return
			}
			continue
		}
		func() {
			defer func() { _ = w.Stop() }()
			for {
				select {
				case <-ctx.Done():
					return
				case e, ok := <-w.Updates():
					if !ok {
						return
					}
					if e == nil || e.Operation() != jetstream.KeyValuePut {
						continue
					}
					var s wire.StageRun
					if json.Unmarshal(e.Value(), &s) == nil {
						runID, _, _ := strings.Cut(e.Key(), ".")
						d.mu.Lock()
						d.hanging[runID] = s.State == wire.StageRunning
						d.mu.Unlock()
					}
				}
			}
		}()
	}
}

// refresh reads the documents of the accepted runs not seen ended, for
// what the watch may have missed.
func (d *chaosDriver) refresh(ctx context.Context) {
	d.mu.Lock()
	var ids []string
	for id := range d.byID {
		if st := d.latest[id]; st == nil || !st.run.State.Terminal() {
			ids = append(ids, id)
		}
	}
	d.mu.Unlock()
	for _, id := range ids {
		gctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		e, err := d.runsKV.Get(gctx, id)
		cancel()
		if err == nil {
			d.observe(id, e.Revision(), e.Value())
		}
	}
}

// awaitEnd waits until every trigger was published and every accepted
// run ended, or no run ended for Stall, printing progress every five
// seconds; it says which.
func (d *chaosDriver) awaitEnd(ctx context.Context, f *fleet) (string, error) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	last, lastAt, lastRefresh, lastProgress := -1, time.Now(), time.Now(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-tick.C:
		}
		if msg := f.usageError(); msg != "" {
			return "", fmt.Errorf("chaos: a weft process cannot start: %s", msg)
		}
		if time.Since(lastRefresh) >= 5*time.Second {
			d.refresh(ctx)
			lastRefresh = time.Now()
		}
		done := d.ended()
		if done != last {
			last, lastAt = done, time.Now()
		}
		d.mu.Lock()
		accepted := len(d.byID)
		d.mu.Unlock()
		if time.Since(lastProgress) >= 5*time.Second {
			kills, _ := f.record()
			byKind := map[string]int{}
			for _, k := range kills {
				byKind[k.Kind]++
			}
			d.o.Progress("chaos: %d of %d runs ended (%d accepted); kills: %d agents, %d dispatchers, %d server", done, len(d.plan), accepted, byKind[memberAgent], byKind[memberDispatcher], byKind[memberServer])
			lastProgress = time.Now()
		}
		select {
		case <-d.submitted:
		default:
			continue
		}
		if done == accepted {
			return "every run ended", nil
		}
		if time.Since(lastAt) >= d.o.Stall {
			return fmt.Sprintf("no run ended for %s; %d of %d still live", d.o.Stall, accepted-done, accepted), nil
		}
	}
}

// settle waits until every accepted run ended or until deadline.
func (d *chaosDriver) settle(ctx context.Context, deadline time.Time) {
	for time.Now().Before(deadline) {
		d.refresh(ctx)
		d.mu.Lock()
		accepted := len(d.byID)
		d.mu.Unlock()
		if d.ended() == accepted || !pause(ctx, nil, time.Second) {
			return
		}
	}
}

// finalDocs reads the document of every accepted run.
func (d *chaosDriver) finalDocs(ctx context.Context) (map[string]*wire.Run, error) {
	d.mu.Lock()
	ids := make([]string, 0, len(d.byID))
	for id := range d.byID {
		ids = append(ids, id)
	}
	d.mu.Unlock()
	docs := map[string]*wire.Run{}
	for _, id := range ids {
		r, err := client.Get(ctx, d.js, id)
		if errors.Is(err, runstore.ErrNoRun) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("chaos: %w", err)
		}
		docs[id] = r
	}
	return docs, nil
}

// leftovers is what the runs left behind.
type leftovers struct {
	leases, waits, workspaces, containers []string
}

// awaitLeftovers polls the leases and group locks in weft_wip, the
// agents' work directories and containerd until all are empty or until
// deadline, and returns what is left.
func (d *chaosDriver) awaitLeftovers(ctx context.Context, wip jetstream.KeyValue, workDirs []string, rt *container.Runtime, deadline time.Time) leftovers {
	for {
		var l leftovers
		for _, filter := range []string{subjects.AllLeases, subjects.AllGroups} {
			keys, _ := bus.Keys(ctx, wip, filter)
			l.leases = append(l.leases, keys...)
		}
		if st, err := d.js.Stream(ctx, subjects.WaitingStream); err == nil {
			if info, err := st.Info(ctx, jetstream.WithSubjectFilter(subjects.AllWaiting)); err == nil {
				for subj := range info.State.Subjects {
					l.waits = append(l.waits, subj)
				}
			}
		}
		for _, wd := range workDirs {
			entries, _ := os.ReadDir(wd)
			for _, e := range entries {
				l.workspaces = append(l.workspaces, filepath.Base(wd)+"/"+e.Name())
			}
		}
		if rt != nil {
			ids, _, _ := rt.Leftovers(ctx)
			d.mu.Lock()
			for _, id := range ids {
				if run, _, _, ok := parseContainerID(id); ok && d.byID[run] != nil {
					l.containers = append(l.containers, id)
				}
			}
			d.mu.Unlock()
		}
		if len(l.leases)+len(l.workspaces)+len(l.containers) == 0 || time.Now().After(deadline) || !pause(ctx, nil, 500*time.Millisecond) {
			return l
		}
	}
}

// sample scans the host's processes every 200ms for the container
// stages' processes and keeps, for each stage attempt, the first and last
// time one of them was alive. A container's processes are host processes
// whose environment is the job's (WEFT_RUN_ID, WEFT_STAGE, WEFT_ATTEMPT
// and the pipeline's CHAOS_RECORDS); host stages' processes also carry
// the agent's CHAOS_MARK and are measured by their records instead.
func (d *chaosDriver) sample(ctx context.Context, records string) {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		at := time.Now()
		seen := containerProcesses(records)
		d.mu.Lock()
		for k := range seen {
			if d.byID[k.run] == nil {
				continue
			}
			if s := d.spans[k]; s != nil {
				s.End = at
			} else {
				d.spans[k] = &execution{Run: k.run, Stage: k.stage, Attempt: k.attempt, PID: k.pidNS, Container: true, Start: at, End: at}
			}
		}
		d.mu.Unlock()
	}
}

// parseContainerID splits the agent's container id
// weft-<run>-<stage>-<attempt>-<delivery>.
func parseContainerID(id string) (run, stage string, attempt int, ok bool) {
	rest, found := strings.CutPrefix(id, "weft-")
	if !found || len(rest) < 28 || rest[26] != '-' {
		return "", "", 0, false
	}
	run, rest = rest[:26], rest[27:]
	var nums [2]int
	for k := 1; k >= 0; k-- {
		i := strings.LastIndexByte(rest, '-')
		if i < 1 {
			return "", "", 0, false
		}
		n, err := strconv.Atoi(rest[i+1:])
		if err != nil {
			return "", "", 0, false
		}
		nums[k], rest = n, rest[:i]
	}
	return run, rest, nums[0], true
}
