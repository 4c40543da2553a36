package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/wire"
)

// ChaosOptions size the chaos scenario.
type ChaosOptions struct {
	// Runs is how many runs are triggered; default 200.
	Runs int
	// Agents is how many agent processes serve the queue; default 3.
	Agents int
	// AckWait is the agents' AckWait; default 2s.
	AckWait time.Duration
	// KillEvery is the mean time between two agent kills; default 1s.
	KillEvery time.Duration
	// DispatcherEvery is the mean time between two dispatcher kills;
	// default 4s.
	DispatcherEvery time.Duration
	// Binary is the weft binary to run agents and dispatchers with;
	// default this process's executable.
	Binary string
	// Progress receives one line per step.
	Progress func(format string, args ...any)
}

// ChaosResult is what survived the chaos.
type ChaosResult struct {
	Runs int `json:"runs"`
	// Succeeded and Lost (not succeeded) runs.
	Succeeded int `json:"succeeded"`
	Lost      int `json:"lost"`
	// AgentKills and DispatcherKills count the SIGKILLs.
	AgentKills      int `json:"agent_kills"`
	DispatcherKills int `json:"dispatcher_kills"`
	// FinishedTwice counts stages that reported a successful finish more
	// than once (ran to completion twice: an agent killed between its
	// finished event and its ack, before a dispatcher recorded the
	// finish). The run document records one finish either way.
	FinishedTwice int `json:"finished_twice"`
	// Takeovers counts stages that ran again after their agent was
	// killed; Recovery* is the time from the kill to the next start.
	Takeovers   int           `json:"takeovers"`
	RecoveryP50 time.Duration `json:"recovery_p50_ns"`
	RecoveryMax time.Duration `json:"recovery_max_ns"`
	// Wall is the scenario's wall time.
	Wall time.Duration `json:"wall_ns"`
}

// chaosProc is a weft process the chaos may kill.
type chaosProc struct {
	id   string
	cmd  *exec.Cmd
	done chan struct{}
}

// Chaos triggers Runs two-stage runs on a fleet of agent processes and one
// dispatcher process on an embedded server, SIGKILLs a random agent every
// KillEvery and the dispatcher every DispatcherEvery (each is restarted at
// once), and reports what happened to the runs.
func Chaos(ctx context.Context, o ChaosOptions) (*ChaosResult, error) {
	if o.Runs == 0 {
		o.Runs = 200
	}
	if o.Agents == 0 {
		o.Agents = 3
	}
	if o.AckWait == 0 {
		o.AckWait = 2 * time.Second
	}
	if o.KillEvery == 0 {
		o.KillEvery = time.Second
	}
	if o.DispatcherEvery == 0 {
		o.DispatcherEvery = 4 * time.Second
	}
	if o.Progress == nil {
		o.Progress = func(string, ...any) {}
	}
	if o.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		o.Binary = exe
	}
	dir, err := os.MkdirTemp("", "weft-chaos-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	b, err := bus.Open(ctx, bus.Config{StoreDir: filepath.Join(dir, "js"), Listen: "127.0.0.1:0"})
	if err != nil {
		return nil, err
	}
	defer b.Close()
	if err := bus.Provision(ctx, b.JS); err != nil {
		return nil, err
	}
	url := b.ClientURL()

	var (
		mu     sync.Mutex // guards procs, kills
		procs  = map[string]*chaosProc{}
		kills  = map[string]time.Time{} // agent id -> when it was killed
		wg     sync.WaitGroup
		serial int
	)
	start := func(kind string, args ...string) *chaosProc {
		mu.Lock()
		serial++
		id := fmt.Sprintf("%s-%d", kind, serial)
		mu.Unlock()
		if kind == "agent" {
			args = append(args, "--id", id)
		}
		cmd := exec.Command(o.Binary, append([]string{kind}, args...)...)
		cmd.Env = append(os.Environ(), "WEFT_LOG_LEVEL=error")
		p := &chaosProc{id: id, cmd: cmd, done: make(chan struct{})}
		if err := cmd.Start(); err != nil {
			close(p.done)
			return p
		}
		wg.Go(func() { _ = cmd.Wait(); close(p.done) })
		mu.Lock()
		procs[id] = p
		mu.Unlock()
		return p
	}
	kill := func(p *chaosProc) {
		if p.cmd.Process != nil {
			_ = p.cmd.Process.Kill()
		}
		<-p.done
		mu.Lock()
		delete(procs, p.id)
		kills[p.id] = time.Now()
		mu.Unlock()
	}
	agentArgs := []string{"--join", url, "--executor", "process", "--slots", "2", "--ack-wait", o.AckWait.String(), "--max-deliver", "20", "--work-dir", filepath.Join(dir, "work")}
	dispArgs := []string{"--server", url, "--wip", "100000"}
	defer func() {
		mu.Lock()
		all := make([]*chaosProc, 0, len(procs))
		for _, p := range procs {
			all = append(all, p)
		}
		mu.Unlock()
		for _, p := range all {
			kill(p)
		}
		wg.Wait()
	}()
	disp := start("dispatcher", dispArgs...)
	agents := make([]*chaosProc, o.Agents)
	for i := range agents {
		agents[i] = start("agent", agentArgs...)
	}

	o.Progress("chaos: triggering %d runs on %d agents", o.Runs, o.Agents)
	began := time.Now()
	text := "name: chaos\nstages:\n  - key: a\n    commands: [sleep 0.2]\n  - key: b\n    depends_on: [a]\n    commands: [sleep 0.2]\n"
	ids := make([]string, 0, o.Runs)
	for i := range o.Runs {
		id, err := client.Submit(ctx, b.JS, wire.Trigger{ID: fmt.Sprintf("chaos-%d-%d", os.Getpid(), i), Repo: fmt.Sprintf("chaos/%d", i%20), File: "chaos.yml", Pipeline: text})
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}

	res := &ChaosResult{Runs: o.Runs}
	cctx, stopChaos := context.WithCancel(ctx)
	var chaos sync.WaitGroup
	chaos.Go(func() {
		nextAgent := time.After(jitter(o.KillEvery))
		nextDisp := time.After(jitter(o.DispatcherEvery))
		for {
			select {
			case <-cctx.Done():
				return
			case <-nextAgent:
				i := rand.IntN(len(agents))
				kill(agents[i])
				res.AgentKills++
				agents[i] = start("agent", agentArgs...)
				nextAgent = time.After(jitter(o.KillEvery))
			case <-nextDisp:
				kill(disp)
				res.DispatcherKills++
				disp = start("dispatcher", dispArgs...)
				nextDisp = time.After(jitter(o.DispatcherEvery))
			}
		}
	})
	o.Progress("chaos: killing agents about every %s and the dispatcher about every %s", o.KillEvery, o.DispatcherEvery)
	deadline := time.Now().Add(10 * time.Minute)
	var runs []*wire.Run
	for _, id := range ids {
		for {
			r, err := client.Get(ctx, b.JS, id)
			if err == nil && r.State.Terminal() {
				runs = append(runs, r)
				break
			}
			if time.Now().After(deadline) {
				stopChaos()
				chaos.Wait()
				return nil, fmt.Errorf("run %s not finished after 10 minutes", id)
			}
			select {
			case <-ctx.Done():
				stopChaos()
				chaos.Wait()
				return nil, ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	stopChaos()
	chaos.Wait()
	res.Wall = time.Since(began)
	o.Progress("chaos: all runs ended; reading their events")

	var recoveries []time.Duration
	for _, r := range runs {
		if r.State == wire.RunSucceeded {
			res.Succeeded++
		} else {
			res.Lost++
		}
		for _, st := range r.Stages {
			evs, err := client.StageEvents(ctx, b.JS, r.ID, st.Key)
			if err != nil {
				return nil, err
			}
			ok := 0
			var prevAgent string
			for _, ev := range evs {
				switch ev.Type {
				case wire.Finished:
					if ev.ExitCode == 0 && ev.Category == wire.CategoryNone {
						ok++
					}
				case wire.Started:
					if prevAgent != "" && prevAgent != ev.Agent {
						mu.Lock()
						killed, wasKilled := kills[prevAgent]
						mu.Unlock()
						if wasKilled && ev.Time.After(killed) {
							res.Takeovers++
							recoveries = append(recoveries, ev.Time.Sub(killed))
						}
					}
					prevAgent = ev.Agent
				}
			}
			if ok > 1 {
				res.FinishedTwice++
			}
		}
	}
	res.RecoveryP50, res.RecoveryMax = Percentile(recoveries, 0.5), Percentile(recoveries, 1)
	return res, nil
}

func jitter(mean time.Duration) time.Duration {
	return time.Duration(float64(mean) * (0.5 + rand.Float64()))
}
